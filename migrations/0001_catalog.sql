-- hqdb catalog, version 1.
-- One row per hq virtual table: its shape, its options (JSON) and its codebooks
-- (float32 little-endian, books x codewords x dim). The per-table rows and codes live in
-- the table's own shadow tables (<name>_rows, <name>_chunks). `version` is bumped by every
-- write to the table, so each connection's in-memory code cache can tell it is stale (after
-- another connection's commit, or a rollback of its own writes).
CREATE TABLE IF NOT EXISTS hqdb_tables (
    name        TEXT PRIMARY KEY,
    dim         INTEGER NOT NULL CHECK (dim > 0 AND dim % 8 = 0),
    books       INTEGER NOT NULL CHECK (books >= 0),
    codewords   INTEGER NOT NULL CHECK (codewords >= 1),
    chunk_size  INTEGER NOT NULL CHECK (chunk_size > 0),
    options     TEXT NOT NULL DEFAULT '{}',
    codebooks   BLOB,
    version     INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
