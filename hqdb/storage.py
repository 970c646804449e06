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
``rowids``, ``valid``; slot ``s`` of the ``i``-th chunk is row ``i * chunk_size + s``). The
arrays double as the write buffer: writes change them in place and mark the chunk dirty, and
:meth:`CodeStore.flush` writes dirty chunks back (the virtual table calls it from xSync and
xSavepoint, the way FTS5 flushes its pending terms). The cache is reloaded when another
connection committed (``PRAGMA data_version`` moved) or after a rollback.
"""

from __future__ import annotations

import numpy as np

import apsw

from .options import TableOptions


class CorruptTableError(apsw.CorruptError if hasattr(apsw, "CorruptError") else Exception):
    pass


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class CodeStore:
    """Codes of one hq table for one connection: cache, slot allocation and write-back."""

    def __init__(self, conn: apsw.Connection, schema: str, name: str, opts: TableOptions):
        self.conn = conn
        self.schema = schema
        self.name = name
        self.opts = opts
        self.cs = opts.chunk_size
        self.rows_table = f"{quote_ident(schema)}.{quote_ident(name + '_rows')}"
        self.chunks_table = f"{quote_ident(schema)}.{quote_ident(name + '_chunks')}"
        self.loaded = False
        self.data_version: int | None = None
        self._dirty: set[int] = set()
        self._empty()

    # ---------------------------------------------------------------- shadow tables
    @staticmethod
    def create_tables(conn: apsw.Connection, schema: str, name: str, opts: TableOptions) -> None:
        cols = "".join(
            f", {quote_ident(c.name)} {c.type}{' UNIQUE' if c.key else ''}" for c in opts.columns
        )
        q = quote_ident
        conn.execute(
            f"CREATE TABLE {q(schema)}.{q(name + '_rows')} ("
            f"rowid INTEGER PRIMARY KEY, chunk INTEGER NOT NULL, slot INTEGER NOT NULL{cols});"
            f"CREATE TABLE {q(schema)}.{q(name + '_chunks')} ("
            "chunk INTEGER PRIMARY KEY, valid BLOB NOT NULL, rowids BLOB NOT NULL, "
            "codes BLOB NOT NULL, qcodes BLOB NOT NULL);"
        )

    @staticmethod
    def drop_tables(conn: apsw.Connection, schema: str, name: str) -> None:
        q = quote_ident
        conn.execute(
            f"DROP TABLE IF EXISTS {q(schema)}.{q(name + '_rows')};"
            f"DROP TABLE IF EXISTS {q(schema)}.{q(name + '_chunks')};"
        )

    @staticmethod
    def rename_tables(conn: apsw.Connection, schema: str, old: str, new: str) -> None:
        q = quote_ident
        for suffix in ("_rows", "_chunks"):
            conn.execute(f"ALTER TABLE {q(schema)}.{q(old + suffix)} RENAME TO {q(new + suffix)}")

    # ---------------------------------------------------------------- cache
    def _empty(self) -> None:
        o = self.opts
        self.chunk_ids: list[int] = []
        self.chunk_index: dict[int, int] = {}
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

    def ensure_fresh(self) -> None:
        """Make the cache match the database: load it, or reload after another connection's commit."""
        version = self.conn.data_version(self.schema)
        if self.loaded and version == self.data_version:
            return
        self.load()
        self.data_version = version

    def invalidate(self) -> None:
        """Forget the cache and any unflushed writes (after a rollback the database is the truth)."""
        self._dirty.clear()
        self.loaded = False
        self._empty()

    def load(self) -> None:
        o = self.opts
        if self._dirty:
            self.flush()
        rows = self.conn.execute(
            f"SELECT chunk, valid, rowids, codes, qcodes FROM {self.chunks_table} ORDER BY chunk"
        ).fetchall()
        self._empty()
        self._alloc(len(rows))
        qdt = self.qcodes.dtype
        cs = self.cs
        for i, (chunk, valid, rowids, codes, qcodes) in enumerate(rows):
            if (
                not isinstance(valid, bytes) or len(valid) != cs
                or not isinstance(rowids, bytes) or len(rowids) != cs * 8
                or not isinstance(codes, bytes) or len(codes) != cs * o.code_bytes
                or not isinstance(qcodes, bytes) or len(qcodes) != cs * o.qcode_bytes
            ):
                raise CorruptTableError(
                    f"hq table {self.name}: chunk {chunk} in {self.name}_chunks has wrong BLOB sizes"
                )
            sl = slice(i * cs, (i + 1) * cs)
            self.valid[sl] = np.frombuffer(valid, dtype=np.uint8)
            self.rowids[sl] = np.frombuffer(rowids, dtype="<i8")
            self.codes[sl] = np.frombuffer(codes, dtype=np.uint8).reshape(cs, o.code_bytes)
            if o.books:
                self.qcodes[sl] = np.frombuffer(qcodes, dtype=o.qcode_dtype).reshape(cs, o.books)
            self.chunk_ids.append(int(chunk))
            self.chunk_index[int(chunk)] = i
        if o.books and len(rows) and int(self.qcodes.max(initial=0)) >= o.codewords:
            raise CorruptTableError(
                f"hq table {self.name}: stored qcodes exceed codewords={o.codewords}"
            )
        if np.any(self.valid > 1):
            raise CorruptTableError(f"hq table {self.name}: corrupt validity map")
        per_chunk = self.valid.reshape(-1, cs).sum(axis=1, dtype=np.int64) if rows else np.zeros(0)
        self.free = [cs - int(x) for x in per_chunk]
        self.n_rows = int(per_chunk.sum()) if rows else 0
        self._fill_hint = 0
        self.loaded = True

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
        slot = int(np.flatnonzero(self.valid[base : base + self.cs] == 0)[0])
        return self.chunk_ids[i], slot

    def _ensure_chunk(self, chunk: int) -> int:
        idx = self.chunk_index.get(chunk)
        if idx is not None:
            return idx
        idx = len(self.chunk_ids)
        if self.size == len(self.valid):  # grow capacity geometrically: bulk inserts stay linear
            old = (self.valid, self.rowids, self.codes, self.qcodes)
            self._alloc(max(4, 2 * len(self.chunk_ids)))
            n = len(old[0])
            self.valid[:n], self.rowids[:n], self.codes[:n], self.qcodes[:n] = old
        self.chunk_ids.append(chunk)
        self.chunk_index[chunk] = idx
        self.free.append(self.cs)
        return idx

    def put(self, chunk: int, slot: int, rowid: int, code: np.ndarray, qcode: np.ndarray | None) -> None:
        """Store a row's codes in (chunk, slot), which must be free."""
        idx = self._ensure_chunk(chunk)
        pos = idx * self.cs + slot
        assert self.valid[pos] == 0, "slot already occupied"
        self.valid[pos] = 1
        self.rowids[pos] = rowid
        self.codes[pos] = code
        if qcode is not None:
            self.qcodes[pos] = qcode
        self.free[idx] -= 1
        self.n_rows += 1
        self._dirty.add(chunk)

    def put_many(self, chunks: np.ndarray, slots: np.ndarray, rowids: np.ndarray,
                 codes: np.ndarray, qcodes: np.ndarray | None) -> None:
        """Vectorised :meth:`put` for bulk loads (slots must be free and distinct)."""
        for c in np.unique(chunks):
            self._ensure_chunk(int(c))
        idx = np.fromiter((self.chunk_index[int(c)] for c in chunks), dtype=np.int64, count=len(chunks))
        pos = idx * self.cs + slots
        self.valid[pos] = 1
        self.rowids[pos] = rowids
        self.codes[pos] = codes
        if qcodes is not None and self.opts.books:
            self.qcodes[pos] = qcodes
        counts = np.bincount(idx, minlength=len(self.free))
        for i in np.flatnonzero(counts):
            self.free[i] -= int(counts[i])
        self.n_rows += len(pos)
        self._dirty.update(int(c) for c in np.unique(chunks))

    def update(self, chunk: int, slot: int, rowid: int, code: np.ndarray, qcode: np.ndarray | None) -> None:
        pos = self.position(chunk, slot)
        self.rowids[pos] = rowid
        self.codes[pos] = code
        if qcode is not None:
            self.qcodes[pos] = qcode
        self._dirty.add(chunk)

    def clear(self, chunk: int, slot: int) -> None:
        """Free a slot; its bytes are zeroed so deleted codes do not linger in the file."""
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
        self._dirty.add(chunk)

    def flush(self) -> None:
        """Write dirty chunks back to the shadow table (an empty chunk is deleted)."""
        if not self._dirty:
            return
        cs = self.cs
        upserts, deletes = [], []
        for chunk in sorted(self._dirty):
            idx = self.chunk_index[chunk]
            sl = slice(idx * cs, (idx + 1) * cs)
            if self.free[idx] == cs:
                deletes.append((chunk,))
                continue
            upserts.append((
                chunk,
                self.valid[sl].tobytes(),
                self.rowids[sl].astype("<i8", copy=False).tobytes(),
                self.codes[sl].tobytes(),
                self.qcodes[sl].astype(self.opts.qcode_dtype, copy=False).tobytes(),
            ))
        if upserts:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {self.chunks_table}(chunk, valid, rowids, codes, qcodes) "
                "VALUES (?, ?, ?, ?, ?)",
                upserts,
            )
        if deletes:
            self.conn.executemany(f"DELETE FROM {self.chunks_table} WHERE chunk = ?", deletes)
        self._dirty.clear()
