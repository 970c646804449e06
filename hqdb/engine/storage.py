"""Shadow-table storage of an hq table and its in-memory code cache.

Each hq table ``t`` owns two ordinary tables in the same database file:

``t_rows(rowid INTEGER PRIMARY KEY, chunk, slot, <metadata columns>)``
    one row per item: where its codes live, and the user's metadata (so metadata filters are
    plain SQL over an ordinary table).
``t_chunks(chunk INTEGER PRIMARY KEY, valid, rowids, codes, qcodes)``
    codes stored ``chunk_size`` rows to a BLOB (like sqlite-vec's chunks), so opening a table of
    a million rows reads about a thousand BLOBs rather than a million rows. ``valid`` holds one
    byte per slot (1 = occupied); a deleted row's slot is zeroed and reused by the next insert
    (lowest free slot first), and a chunk that becomes empty is deleted.

:class:`CodeStore` keeps the contiguous arrays the search kernels scan (``codes``, ``qcodes``,
``rowids``, ``valid``; slot ``s`` of the ``i``-th chunk is row ``i * chunk_size + s``).
Writes go through to the database at once (incremental BLOB I/O on the slot's bytes) and are
mirrored in the arrays, so SQLite's own transactions, savepoints and statement rollbacks keep
the file right. The cache knows it is stale by the table's ``version`` counter in the catalog:
every write bumps it in the same transaction, so a commit by another connection, or a rollback
of our own writes (which SQLite does not always announce to a virtual table), shows up as a
counter different from the one the cache was built or last updated at.
"""

from __future__ import annotations

import numpy as np

import apsw

from ..errors import CorruptTableError
from .catalog import quote_ident
from .options import CodeSet, TableOptions



class CodeStore:
    """Codes of one hq table for one connection: cache, slot allocation and write-back."""

    def __init__(self, conn: apsw.Connection, schema: str, table: str, opts: TableOptions, codeset: CodeSet):
        self.conn = conn
        self.schema = schema
        self.name = table
        self.opts = opts
        self.codeset = codeset
        self.cs = opts.chunk_size
        self.chunks_name = table + codeset.chunks_suffix
        self.chunks_table = f"{quote_ident(schema)}.{quote_ident(self.chunks_name)}"
        self.loaded = False
        self.version: int | None = None  # catalog version the arrays reflect
        self._empty()

    # ---------------------------------------------------------------- shadow tables
    @staticmethod
    def shadow_suffixes(opts: TableOptions) -> list[str]:
        suffixes = ["_rows"] + [c.chunks_suffix for c in opts.code_sets]
        return suffixes + (["_pending"] if opts.model else [])

    @staticmethod
    def create_tables(conn: apsw.Connection, schema: str, name: str, opts: TableOptions) -> None:
        q = quote_ident
        # Raw tables always have codes; in a model-bound table a row may lack a modality.
        null = " NOT NULL" if opts.model is None else ""
        locs = "".join(f", {q(c.chunk_col)} INTEGER{null}, {q(c.slot_col)} INTEGER{null}" for c in opts.code_sets)
        cols = "".join(
            f", {q(c.name)} {c.type}{' UNIQUE' if c.key else ''}" for c in opts.columns
        )
        sql = f"CREATE TABLE {q(schema)}.{q(name + '_rows')} (rowid INTEGER PRIMARY KEY{locs}{cols});"
        for c in opts.code_sets:
            sql += (
                f"CREATE TABLE {q(schema)}.{q(name + c.chunks_suffix)} ("
                "chunk INTEGER PRIMARY KEY, valid BLOB NOT NULL, rowids BLOB NOT NULL, "
                "codes BLOB NOT NULL, qcodes BLOB NOT NULL);"
            )
        if opts.model:
            # Inputs waiting to be encoded: rows inserted by SQL are encoded in batches.
            sql += (
                f"CREATE TABLE {q(schema)}.{q(name + '_pending')} ("
                "rowid INTEGER NOT NULL, codeset TEXT NOT NULL, value NOT NULL, "
                "PRIMARY KEY (rowid, codeset)) WITHOUT ROWID;"
            )
        conn.execute(sql)

    @staticmethod
    def drop_tables(conn: apsw.Connection, schema: str, name: str, opts: TableOptions) -> None:
        q = quote_ident
        conn.execute("".join(
            f"DROP TABLE IF EXISTS {q(schema)}.{q(name + s)};" for s in CodeStore.shadow_suffixes(opts)
        ))

    @staticmethod
    def rename_tables(conn: apsw.Connection, schema: str, old: str, new: str, opts: TableOptions) -> None:
        q = quote_ident
        for suffix in CodeStore.shadow_suffixes(opts):
            conn.execute(f"ALTER TABLE {q(schema)}.{q(old + suffix)} RENAME TO {q(new + suffix)}")

    # ---------------------------------------------------------------- cache
    def _empty(self) -> None:
        o = self.opts
        self.chunk_ids: list[int] = []
        self.chunk_index: dict[int, int] = {}
        self.present: list[bool] = []  # chunk row exists in the database (empty ones are deleted)
        self.free: list[int] = []  # free slots per chunk (by chunk index)
        self._fill_hint = 0  # no chunk before this index has a free slot
        self.n_rows = 0
        self._alloc(0)

    def _alloc(self, n_chunks: int) -> None:
        o = self.opts
        n = n_chunks * self.cs
        self.valid = np.zeros(n, dtype=np.uint8)
        self.rowids = np.zeros(n, dtype=np.int64)
        self.codes = np.zeros((n, o.code_bytes), dtype=np.uint8)
        self.qcodes = np.zeros((n, o.books), dtype=np.dtype(o.qcode_dtype).newbyteorder("="))

    @property
    def size(self) -> int:
        """Number of slots in use by the cache arrays (occupied or not)."""
        return len(self.chunk_ids) * self.cs

    def ensure_fresh(self, version: int) -> None:
        """Make the cache match the database at catalog ``version`` (load, or reload if stale)."""
        if not self.loaded or version != self.version:
            self.load()
            self.version = version

    def invalidate(self) -> None:
        """Forget the cache (after a rollback the database is the truth)."""
        self.loaded = False
        self.version = None
        self._empty()

    def load(self) -> None:
        """Read every chunk into the arrays, one chunk at a time (the arrays are sized from a
        count first, so loading needs no second copy of the codes in memory)."""
        o = self.opts
        cs = self.cs
        (expected,) = self.conn.execute(f"SELECT count(*) FROM {self.chunks_table}").fetchone()
        self._empty()
        self._alloc(expected)
        # CAST: a chunk column someone overwrote with TEXT is reported as corrupt below (a BLOB
        # of the wrong size or kind) instead of failing to decode as UTF-8.
        cursor = self.conn.execute(
            "SELECT chunk, CASE WHEN typeof(valid) = 'blob' THEN valid END, "
            "CASE WHEN typeof(rowids) = 'blob' THEN rowids END, CASE WHEN typeof(codes) = 'blob' THEN codes END, "
            f"CASE WHEN typeof(qcodes) = 'blob' THEN qcodes END FROM {self.chunks_table} ORDER BY chunk"
        )
        for i, (chunk, valid, rowids, codes, qcodes) in enumerate(cursor):
            if (
                not isinstance(valid, bytes) or len(valid) != cs
                or not isinstance(rowids, bytes) or len(rowids) != cs * 8
                or not isinstance(codes, bytes) or len(codes) != cs * o.code_bytes
                or not isinstance(qcodes, bytes) or len(qcodes) != cs * o.qcode_bytes
            ):
                cursor.close()
                raise CorruptTableError(
                    f"hq table {self.name}: chunk {chunk} in {self.chunks_name} has wrong BLOB sizes"
                )
            if (i + 1) * cs > len(self.valid):  # another writer added chunks since the count
                self._grow(2 * (i + 1))
            sl = slice(i * cs, (i + 1) * cs)
            self.valid[sl] = np.frombuffer(valid, dtype=np.uint8)
            self.rowids[sl] = np.frombuffer(rowids, dtype="<i8")
            self.codes[sl] = np.frombuffer(codes, dtype=np.uint8).reshape(cs, o.code_bytes)
            if o.books:
                self.qcodes[sl] = np.frombuffer(qcodes, dtype=o.qcode_dtype).reshape(cs, o.books)
            self.chunk_ids.append(int(chunk))
            self.chunk_index[int(chunk)] = i
            self.present.append(True)
        n = self.size
        if o.books and n and int(self.qcodes[:n].max(initial=0)) >= o.codewords:
            raise CorruptTableError(
                f"hq table {self.name}: stored qcodes exceed codewords={o.codewords}"
            )
        if np.any(self.valid[:n] > 1):
            raise CorruptTableError(f"hq table {self.name}: corrupt validity map")
        per_chunk = self.valid[:n].reshape(-1, cs).sum(axis=1, dtype=np.int64)
        self.free = [cs - int(x) for x in per_chunk]
        self.n_rows = int(per_chunk.sum())
        self._fill_hint = 0
        self.loaded = True

    def _grow(self, n_chunks: int) -> None:
        """Reallocate the arrays for ``n_chunks`` chunks, keeping what they hold."""
        old = (self.valid, self.rowids, self.codes, self.qcodes)
        self._alloc(n_chunks)
        n = len(old[0])
        self.valid[:n], self.rowids[:n], self.codes[:n], self.qcodes[:n] = old

    # ---------------------------------------------------------------- slots
    def position(self, chunk: int, slot: int) -> int:
        try:
            return self.chunk_index[chunk] * self.cs + slot
        except KeyError:
            raise CorruptTableError(
                f"hq table {self.name}: a row points at chunk {chunk}, which does not exist"
            ) from None

    def next_free(self) -> tuple[int, int]:
        """The (chunk, slot) the next insert will use: the lowest free slot, or a new chunk."""
        i = self._fill_hint
        while i < len(self.free) and self.free[i] == 0:
            i += 1
        self._fill_hint = i
        if i == len(self.free):
            return (self.chunk_ids[-1] + 1 if self.chunk_ids else 1), 0
        base = i * self.cs
        slot = int(self.valid[base : base + self.cs].argmin())  # first free slot (valid is 0/1)
        return self.chunk_ids[i], slot

    def allocate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, slot) for n new rows: free slots of existing chunks first, then new chunks."""
        free_pos = np.flatnonzero(self.valid[: self.size] == 0)[:n]
        chunk_ids = np.asarray(self.chunk_ids, dtype=np.int64)
        chunks = chunk_ids[free_pos // self.cs] if len(free_pos) else np.zeros(0, dtype=np.int64)
        slots = free_pos % self.cs
        rest = n - len(free_pos)
        if rest:
            first = (chunk_ids.max() + 1) if len(chunk_ids) else 1
            new = np.arange(rest, dtype=np.int64)
            chunks = np.concatenate([chunks, first + new // self.cs])
            slots = np.concatenate([slots, new % self.cs])
        return chunks.astype(np.int64), slots.astype(np.int64)

    def _ensure_chunk(self, chunk: int) -> int:
        """Cache index of ``chunk``, creating it (in the arrays and as a database row) if needed."""
        idx = self.chunk_index.get(chunk)
        if idx is None:
            idx = len(self.chunk_ids)
            if self.size == len(self.valid):  # grow geometrically: bulk inserts stay linear
                self._grow(max(4, 2 * len(self.chunk_ids)))
            self.chunk_ids.append(chunk)
            self.chunk_index[chunk] = idx
            self.free.append(self.cs)
            self.present.append(False)
        if not self.present[idx]:
            o, cs = self.opts, self.cs
            self.conn.execute(
                f"INSERT INTO {self.chunks_table}(chunk, valid, rowids, codes, qcodes) "
                "VALUES (?, zeroblob(?), zeroblob(?), zeroblob(?), zeroblob(?))",
                (chunk, cs, cs * 8, cs * o.code_bytes, cs * o.qcode_bytes),
            )
            self.present[idx] = True
        return idx

    def _write_slot(self, chunk: int, pos: int, slot: int) -> None:
        """Write one slot's bytes (from the arrays) into the chunk's BLOBs."""
        o = self.opts
        parts = [
            ("valid", slot, self.valid[pos : pos + 1].tobytes()),
            ("rowids", slot * 8, self.rowids[pos : pos + 1].astype("<i8", copy=False).tobytes()),
            ("codes", slot * o.code_bytes, self.codes[pos].tobytes()),
        ]
        if o.books:
            parts.append(("qcodes", slot * o.qcode_bytes,
                          self.qcodes[pos].astype(o.qcode_dtype, copy=False).tobytes()))
        for column, offset, data in parts:
            blob = self.conn.blob_open(self.schema, self.chunks_name, column, chunk, True)
            try:
                blob.seek(offset)
                blob.write(data)
            finally:
                blob.close()

    def put(self, chunk: int, slot: int, rowid: int, code: np.ndarray, qcode: np.ndarray | None) -> None:
        """Store a row's codes in (chunk, slot), which must be free."""
        idx = self._ensure_chunk(chunk)
        pos = idx * self.cs + slot
        if self.valid[pos]:
            raise CorruptTableError(f"hq table {self.name}: slot {chunk}/{slot} is already occupied")
        self.valid[pos] = 1
        self.rowids[pos] = rowid
        self.codes[pos] = code
        if qcode is not None:
            self.qcodes[pos] = qcode
        self.free[idx] -= 1
        self.n_rows += 1
        self._write_slot(chunk, pos, slot)

    def put_many(self, chunks: np.ndarray, slots: np.ndarray, rowids: np.ndarray,
                 codes: np.ndarray, qcodes: np.ndarray | None) -> None:
        """Vectorised :meth:`put` for bulk loads (slots must be free and distinct): each touched
        chunk is written back whole, once."""
        touched = np.unique(chunks)
        for c in touched:
            self._ensure_chunk(int(c))
        idx = np.fromiter((self.chunk_index[int(c)] for c in chunks), dtype=np.int64, count=len(chunks))
        pos = idx * self.cs + slots
        if self.valid[pos].any():
            raise CorruptTableError(f"hq table {self.name}: bulk insert into occupied slots")
        self.valid[pos] = 1
        self.rowids[pos] = rowids
        self.codes[pos] = codes
        if qcodes is not None and self.opts.books:
            self.qcodes[pos] = qcodes
        counts = np.bincount(idx, minlength=len(self.free))
        for i in np.flatnonzero(counts):
            self.free[i] -= int(counts[i])
        self.n_rows += len(pos)
        self._write_chunks(int(c) for c in touched)

    def _write_chunks(self, chunks) -> None:
        cs, o = self.cs, self.opts
        rows = []
        for chunk in chunks:
            sl = slice(self.chunk_index[chunk] * cs, (self.chunk_index[chunk] + 1) * cs)
            rows.append((
                self.valid[sl].tobytes(),
                self.rowids[sl].astype("<i8", copy=False).tobytes(),
                self.codes[sl].tobytes(),
                self.qcodes[sl].astype(o.qcode_dtype, copy=False).tobytes(),
                chunk,
            ))
        self.conn.executemany(
            f"UPDATE {self.chunks_table} SET valid = ?, rowids = ?, codes = ?, qcodes = ? WHERE chunk = ?",
            rows,
        )

    def update(self, chunk: int, slot: int, rowid: int, code: np.ndarray, qcode: np.ndarray | None) -> None:
        pos = self.position(chunk, slot)
        self.rowids[pos] = rowid
        self.codes[pos] = code
        if qcode is not None:
            self.qcodes[pos] = qcode
        self._write_slot(chunk, pos, slot)

    def clear(self, chunk: int, slot: int) -> None:
        """Free a slot; its bytes are zeroed so deleted codes do not linger in the file, and a
        chunk left empty is deleted (its pages go back to SQLite's free list)."""
        pos = self.position(chunk, slot)
        if not self.valid[pos]:
            raise CorruptTableError(f"hq table {self.name}: slot {chunk}/{slot} is already free")
        idx = self.chunk_index[chunk]
        self.valid[pos] = 0
        self.rowids[pos] = 0
        self.codes[pos] = 0
        self.qcodes[pos] = 0
        self.free[idx] += 1
        self.n_rows -= 1
        self._fill_hint = min(self._fill_hint, idx)
        if self.free[idx] == self.cs:
            self.conn.execute(f"DELETE FROM {self.chunks_table} WHERE chunk = ?", (chunk,))
            self.present[idx] = False
        else:
            self._write_slot(chunk, pos, slot)

    def clear_many(self, chunks: np.ndarray, slots: np.ndarray) -> None:
        """Vectorised :meth:`clear` for bulk deletes: each touched chunk is written back whole
        once, or deleted when it is left empty."""
        pos = np.fromiter((self.position(int(c), int(s)) for c, s in zip(chunks, slots)),
                          dtype=np.int64, count=len(chunks))
        if not self.valid[pos].all() or len(np.unique(pos)) != len(pos):
            raise CorruptTableError(f"hq table {self.name}: bulk delete of free or repeated slots")
        self.valid[pos] = 0
        self.rowids[pos] = 0
        self.codes[pos] = 0
        self.qcodes[pos] = 0
        idx = pos // self.cs
        counts = np.bincount(idx, minlength=len(self.free))
        emptied, kept = [], []
        for i in np.flatnonzero(counts):
            self.free[i] += int(counts[i])
            (emptied if self.free[i] == self.cs else kept).append(self.chunk_ids[i])
        self.n_rows -= len(pos)
        if len(pos):
            self._fill_hint = min(self._fill_hint, int(idx.min()))
        if emptied:
            self.conn.executemany(f"DELETE FROM {self.chunks_table} WHERE chunk = ?", [(c,) for c in emptied])
            for c in emptied:
                self.present[self.chunk_index[c]] = False
        self._write_chunks(kept)

