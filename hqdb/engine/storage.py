"""Shadow-table storage of one code set of an hq table, and its in-memory code cache.

Each hq table ``t`` owns ordinary tables in the same database file (names:
:mod:`hqdb.engine.catalog`):

``t_rows(rowid INTEGER PRIMARY KEY, <chunk, slot per code set>, <metadata columns>)``
    one row per item: where its codes live, and the user's metadata (so metadata filters are
    plain SQL over an ordinary table).
``t_chunks(chunk INTEGER PRIMARY KEY, valid, rowids, codes, qcodes)``
    codes stored ``chunk_size`` rows to a BLOB (like sqlite-vec's chunks), so opening a table of
    a million rows reads about a thousand BLOBs rather than a million rows. ``valid`` holds one
    byte per slot (1 = occupied); a deleted row's slot is zeroed and reused later (lowest free
    slot first), and a chunk that becomes empty is deleted.

:class:`CodeStore` keeps the contiguous arrays the search kernels scan (``codes``, ``qcodes``,
``rowids``, ``valid``; slot ``s`` of the ``i``-th chunk is row ``i * chunk_size + s``), hands
out free slots (:meth:`reserve`, :meth:`allocate`) and applies a batch of changes to the arrays
and the file at once (:meth:`apply`). Only :class:`hqdb.engine.table.Table` calls it.

Coherence: the cache remembers the catalog *generation* it reflects. Every change to the table
writes a new random generation in the same transaction (:func:`catalog.write_generation`), so a
commit by another connection, or a rollback of our own writes, shows up as a generation other
than the cache's, and the cache reloads. A random value cannot come back the way a counter can
(rolled back to V, then someone else's commit to V+1).
"""

from __future__ import annotations

from typing import Any

import apsw
import numpy as np

from ..errors import CorruptTableError
from .catalog import VECTORS, chunks_name, qualified, quote_ident, scalar
from .options import CodeSet, TableOptions

# How a rerank table stores each row's vector: numpy dtype of one value. int8 rows also keep a
# float32 scale (value = int8 * scale, scale = max |x| / 127).
RERANK_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1")}


_INT8_BLOCK = 2048  # rows of encode_vectors' int8 conversion at a time


def encode_vectors(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 vectors (n, dim) as a rerank table stores them: (values, scales float32 (n,))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if kind == "int8":
        values = np.empty(x.shape, dtype=np.int8)
        scales = np.empty(len(x), dtype=np.float32)
        for s in range(0, len(x), _INT8_BLOCK):  # blocks whose temporaries stay in cache
            xb = x[s : s + _INT8_BLOCK]
            top = np.abs(xb).max(axis=1)  # a block has rows and dim >= 8 columns
            sb = scales[s : s + _INT8_BLOCK] = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
            q = xb / sb[:, None]
            np.rint(q, out=q)
            np.clip(q, -127, 127, out=q)
            values[s : s + _INT8_BLOCK] = q
        return values, scales
    values = x.astype(RERANK_DTYPES[kind])
    if not np.isfinite(values).all():
        raise ValueError(f"a vector has values beyond {kind}'s range")
    return values, np.ones(len(x), dtype=np.float32)


def vectors_name(table: str) -> str:
    return table + VECTORS


# A chunk with at most this many changed slots in one batch is patched slot by slot through
# incremental BLOB I/O; with more it is written back whole in one UPDATE.
SLOT_WRITE_MAX = 16


class CodeStore:
    """Codes of one code set of one hq table, for one connection: cache, slots, write-back."""

    def __init__(self, conn: apsw.Connection, schema: str, table: str, opts: TableOptions, codeset: CodeSet):
        self.conn = conn
        self.schema = schema
        self.name = table
        self.opts = opts
        self.codeset = codeset
        self.cs = opts.chunk_size
        self.chunks_name = chunks_name(table, codeset)
        self.chunks_table = qualified(schema, self.chunks_name)
        self.vectors_name = vectors_name(table)
        self.vectors_table = qualified(schema, self.vectors_name)
        self.loaded = False
        self.generation: int | None = None  # catalog generation the arrays reflect
        self.index: Any = None  # an in-memory index over the codes (hqdb.engine.mih), told of every change
        self._empty()

    # ---------------------------------------------------------------- shadow table
    @staticmethod
    def create_sql(schema: str, table: str, codeset: CodeSet, rerank: str | None = None) -> str:
        sql = (
            f"CREATE TABLE {qualified(schema, chunks_name(table, codeset))} ("
            "chunk INTEGER PRIMARY KEY, valid BLOB NOT NULL, rowids BLOB NOT NULL, "
            "codes BLOB NOT NULL, qcodes BLOB NOT NULL);"
        )
        if rerank:  # each row's vector, chunked like its codes (same chunk numbers and slots)
            sql += (
                f"CREATE TABLE {qualified(schema, vectors_name(table))} ("
                "chunk INTEGER PRIMARY KEY, vectors BLOB NOT NULL, scales BLOB NOT NULL);"
            )
        return sql

    # ---------------------------------------------------------------- cache
    def _empty(self) -> None:
        self.chunk_ids: list[int] = []
        self.chunk_index: dict[int, int] = {}
        self.present: list[bool] = []  # chunk row exists in the database (empty ones are deleted)
        self.n_rows = 0
        self._alloc(0)
        self.reset_allocator()

    def _alloc(self, n_chunks: int) -> None:
        o = self.opts
        n = n_chunks * self.cs
        self.valid = np.zeros(n, dtype=np.uint8)
        self.rowids = np.zeros(n, dtype=np.int64)
        self.codes = np.zeros((n, o.code_bytes), dtype=np.uint8)
        self.qcodes = np.zeros((n, o.books), dtype=np.dtype(o.qcode_dtype).newbyteorder("="))
        vdim = o.dim if o.rerank else 0
        self.vectors = np.zeros((n, vdim), dtype=RERANK_DTYPES[o.rerank or "int8"])
        self.scales = np.zeros(n if o.rerank else 0, dtype=np.float32)

    @property
    def size(self) -> int:
        """Number of slots the cache arrays cover (occupied or not)."""
        return len(self.chunk_ids) * self.cs

    def is_fresh(self, generation: int) -> bool:
        return self.loaded and generation == self.generation

    def ensure_fresh(self, generation: int) -> None:
        """Make the cache match the database at catalog ``generation`` (load, or reload if stale)."""
        if not self.is_fresh(generation):
            self.load()
            self.generation = generation

    def invalidate(self) -> None:
        """Forget the cache (after a rollback the database is the truth)."""
        self.loaded = False
        self.generation = None
        self._empty()

    def load(self) -> None:
        """Read every chunk into the arrays, one chunk at a time (the arrays are sized from a
        count first, so loading needs no second copy of the codes in memory).

        The count is trusted only as far as the file can back it: a chunk of this table's shape
        takes at least ``chunk_bytes`` bytes of the database, so the arrays start at no more
        chunks than the file could hold and grow (geometrically) only as chunks of the right
        size are actually read. No stored value makes the cache allocate far beyond the file."""
        o = self.opts
        cs = self.cs
        expected = scalar(self.conn, f"SELECT count(*) FROM {self.chunks_table}")
        self._empty()
        self._alloc(min(expected, self._chunks_the_file_can_hold()))
        # Only BLOBs are read as such: a chunk column overwritten with TEXT is reported as
        # corrupt below (wrong kind) instead of failing to decode as UTF-8.
        cursor = self.conn.execute(
            "SELECT chunk, CASE WHEN typeof(valid) = 'blob' THEN valid END, "
            "CASE WHEN typeof(rowids) = 'blob' THEN rowids END, CASE WHEN typeof(codes) = 'blob' THEN codes END, "
            f"CASE WHEN typeof(qcodes) = 'blob' THEN qcodes END FROM {self.chunks_table} ORDER BY chunk"
        )
        for i, (chunk, valid, rowids, codes, qcodes) in enumerate(cursor):
            if (
                not isinstance(valid, bytes)
                or len(valid) != cs
                or not isinstance(rowids, bytes)
                or len(rowids) != cs * 8
                or not isinstance(codes, bytes)
                or len(codes) != cs * o.code_bytes
                or not isinstance(qcodes, bytes)
                or len(qcodes) != cs * o.qcode_bytes
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
            raise CorruptTableError(f"hq table {self.name}: stored qcodes exceed codewords={o.codewords}")
        if np.any(self.valid[:n] > 1):
            raise CorruptTableError(f"hq table {self.name}: corrupt validity map")
        self.n_rows = int(self.valid[:n].sum(dtype=np.int64))
        if o.rerank:
            self._load_vectors()
        self.reset_allocator()
        self.loaded = True
        if self.index is not None:
            self.index.reset()

    def _load_vectors(self) -> None:
        """A rerank table's vectors, one row of ``<t>_vectors`` per chunk of codes."""
        o, cs = self.opts, self.cs
        width = cs * o.dim * RERANK_DTYPES[o.rerank or "int8"].itemsize
        seen = 0
        for chunk, vectors, scales in self.conn.execute(
            "SELECT chunk, CASE WHEN typeof(vectors) = 'blob' THEN vectors END, "
            f"CASE WHEN typeof(scales) = 'blob' THEN scales END FROM {self.vectors_table}"
        ):
            idx = self.chunk_index.get(chunk)
            if idx is None or not isinstance(vectors, bytes) or len(vectors) != width:
                raise CorruptTableError(f"hq table {self.name}: vectors of chunk {chunk} are missing or the wrong size")
            if not isinstance(scales, bytes) or len(scales) != 4 * cs:
                raise CorruptTableError(f"hq table {self.name}: vector scales of chunk {chunk} are the wrong size")
            sl = slice(idx * cs, (idx + 1) * cs)
            self.vectors[sl] = np.frombuffer(vectors, dtype=self.vectors.dtype).reshape(cs, o.dim)
            self.scales[sl] = np.frombuffer(scales, dtype="<f4")
            seen += 1
        if seen != len(self.chunk_ids):
            raise CorruptTableError(f"hq table {self.name}: {len(self.chunk_ids) - seen} chunks have no vectors")
        n = self.size
        if not np.isfinite(self.scales[:n]).all() or (
            self.vectors.dtype.kind == "f" and not np.isfinite(self.vectors[:n]).all()
        ):
            raise CorruptTableError(f"hq table {self.name}: stored vectors contain NaN or infinity")

    def _chunks_the_file_can_hold(self) -> int:
        o = self.opts
        chunk_bytes = self.cs * (1 + 8 + o.code_bytes + o.qcode_bytes)
        schema = quote_ident(self.schema)
        file_bytes = scalar(self.conn, f"PRAGMA {schema}.page_count") * scalar(self.conn, f"PRAGMA {schema}.page_size")
        return int(file_bytes) // chunk_bytes

    def _grow(self, n_chunks: int) -> None:
        """Reallocate the arrays for ``n_chunks`` chunks, keeping what they hold."""
        old = (self.valid, self.rowids, self.codes, self.qcodes, self.vectors, self.scales)
        self._alloc(n_chunks)
        n = len(old[0])
        self.valid[:n], self.rowids[:n], self.codes[:n], self.qcodes[:n] = old[:4]
        if self.opts.rerank:
            self.vectors[:n], self.scales[:n] = old[4:]

    # ---------------------------------------------------------------- slots
    def position(self, chunk: int, slot: int) -> int:
        """Cache index of (chunk, slot); :class:`CorruptTableError` if no such slot."""
        idx = self.chunk_index.get(chunk) if type(chunk) is int else None
        if idx is None or type(slot) is not int or not 0 <= slot < self.cs:
            raise CorruptTableError(
                f"hq table {self.name}: a row points at chunk {chunk} slot {slot}, which does not exist"
            )
        return idx * self.cs + slot

    def holds(self, chunk: int, slot: int, rowid: int) -> int | None:
        """Cache index of (chunk, slot) if it holds ``rowid``'s codes, else None."""
        idx = self.chunk_index.get(chunk) if type(chunk) is int else None
        if idx is None or type(slot) is not int or not 0 <= slot < self.cs:
            return None
        pos = idx * self.cs + slot
        return pos if pos < self.size and self.valid[pos] and self.rowids[pos] == rowid else None

    def reset_allocator(self) -> None:
        """Forget reservations: the next :meth:`reserve` starts from the cache's free slots.
        Only when the cache (re)loads: slots handed out and not yet written are free in the
        arrays, so recounting while a write is buffered would hand them out twice."""
        self._free: np.ndarray | None = None
        self._free_at = 0
        self._freed: list[int] = []  # slots :meth:`apply` freed since the free list was made
        self._new_chunk = 0
        self._new_slot = 0

    def reserve(self) -> tuple[int, int]:
        """A free (chunk, slot) for one new row, not handed out since the last reset: free
        slots of existing chunks first (lowest first), then slots of new chunks."""
        self._start_allocator()
        assert self._free is not None
        if self._free_at < len(self._free):
            pos = int(self._free[self._free_at])
            self._free_at += 1
            return self.chunk_ids[pos // self.cs], pos % self.cs
        if self._freed:
            pos = self._freed.pop()
            return self.chunk_ids[pos // self.cs], pos % self.cs
        chunk, slot = self._new_chunk, self._new_slot
        self._new_slot += 1
        if self._new_slot == self.cs:
            self._new_chunk += 1
            self._new_slot = 0
        return chunk, slot

    def allocate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, slot) arrays for n new rows (vectorised :meth:`reserve`)."""
        self._start_allocator()
        assert self._free is not None
        take = self._free[self._free_at : self._free_at + n]
        self._free_at += len(take)
        if len(take) < n and self._freed:
            more = self._freed[-(n - len(take)) :][::-1]
            del self._freed[len(self._freed) - len(more) :]
            take = np.concatenate([take, np.asarray(more, dtype=np.int64)])
        chunk_ids = np.asarray(self.chunk_ids, dtype=np.int64)
        chunks = chunk_ids[take // self.cs] if len(take) else np.zeros(0, dtype=np.int64)
        slots = (take % self.cs).astype(np.int64)
        rest = n - len(take)
        if rest:
            start = self._new_chunk * self.cs + self._new_slot
            new = start + np.arange(rest, dtype=np.int64)
            chunks = np.concatenate([chunks, new // self.cs])
            slots = np.concatenate([slots, new % self.cs])
            end = start + rest
            self._new_chunk, self._new_slot = divmod(end, self.cs)
        return chunks.astype(np.int64), slots.astype(np.int64)

    def _start_allocator(self) -> None:
        if self._free is None:
            self._free = np.flatnonzero(self.valid[: self.size] == 0)
            self._free_at = 0
            self._new_chunk = (max(self.chunk_ids) + 1) if self.chunk_ids else 1
            self._new_slot = 0

    def _chunk_idx(self, chunk: int) -> int:
        """Cache index of ``chunk``, adding it to the arrays if new (not yet to the file)."""
        idx = self.chunk_index.get(chunk)
        if idx is None:
            idx = len(self.chunk_ids)
            if self.size == len(self.valid):  # grow geometrically: bulk inserts stay linear
                self._grow(max(4, 2 * len(self.chunk_ids)))
            self.chunk_ids.append(chunk)
            self.chunk_index[chunk] = idx
            self.present.append(False)
        return idx

    # ---------------------------------------------------------------- batched changes
    def apply(
        self,
        put_chunks: np.ndarray,
        put_slots: np.ndarray,
        put_rowids: np.ndarray,
        codes: np.ndarray,
        qcodes: np.ndarray | None,
        clear_chunks: np.ndarray,
        clear_slots: np.ndarray,
        *,
        expect_rowids: np.ndarray | None = None,
        vectors: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Store codes in (chunk, slot)s and free other slots, in the arrays and in the file.

        A rerank table's puts also carry their vectors as :func:`encode_vectors` makes them
        (``vectors``: values (n, dim), scales (n,)).

        Puts go to free slots, or (``expect_rowids`` given: an UPDATE) to slots holding those
        rowids. Slots are distinct. Each touched chunk is written once:
        patched slot by slot when few of its slots changed, else whole; a chunk left empty is
        deleted (its pages go back to SQLite's free list, and its deleted codes do not linger).
        """
        cs = self.cs
        # One _chunk_idx per distinct chunk, in the order the chunks first appear (new chunks join
        # the cache in that order), then every put mapped through it.
        put_chunks = np.asarray(put_chunks, dtype=np.int64)
        chunks, first, inverse = np.unique(put_chunks, return_index=True, return_inverse=True)
        chunk_idx = np.empty(len(chunks), dtype=np.int64)
        for u in np.argsort(first, kind="stable"):
            chunk_idx[u] = self._chunk_idx(int(chunks[u]))
        put_idx = chunk_idx[inverse.reshape(-1)]
        pos = put_idx * cs + np.asarray(put_slots, dtype=np.int64)
        cpos = np.fromiter(
            (self.position(int(c), int(s)) for c, s in zip(clear_chunks, clear_slots)),
            dtype=np.int64,
            count=len(clear_chunks),
        )
        both = np.concatenate([pos, cpos])
        if len(np.unique(both)) != len(both):
            raise CorruptTableError(f"hq table {self.name}: one batch changes a slot twice")
        overwrite = expect_rowids is not None
        if overwrite:
            if len(pos) and (not self.valid[pos].all() or (self.rowids[pos] != expect_rowids).any()):
                raise CorruptTableError(f"hq table {self.name}: update of a slot that holds another row")
        elif self.valid[pos].any():
            raise CorruptTableError(f"hq table {self.name}: insert into an occupied slot")
        if len(cpos) and not self.valid[cpos].all():
            raise CorruptTableError(f"hq table {self.name}: delete of a free slot")
        if self.opts.rerank and vectors is None and len(pos):
            raise CorruptTableError(f"hq table {self.name}: a row of a rerank table without its vector")
        self.valid[cpos] = 0
        self.rowids[cpos] = 0
        self.codes[cpos] = 0
        self.qcodes[cpos] = 0
        if self.opts.rerank:
            self.vectors[cpos] = 0
            self.scales[cpos] = 0
            if vectors is not None:
                self.vectors[pos], self.scales[pos] = vectors
        self.valid[pos] = 1
        self.rowids[pos] = put_rowids
        self.codes[pos] = codes
        if qcodes is not None and self.opts.books:
            self.qcodes[pos] = qcodes
        self.n_rows += (0 if overwrite else len(pos)) - len(cpos)
        if self._free is not None:  # freed slots are free for the next rows
            self._freed.extend(sorted(cpos.tolist(), reverse=True))
        if self.index is not None:
            self.index.touched(both)
        self._write_back(both)

    def _write_back(self, changed: np.ndarray) -> None:
        if not len(changed):
            return
        cs, o = self.cs, self.opts
        by_chunk = changed // cs
        order = np.argsort(by_chunk, kind="stable")
        changed, by_chunk = changed[order], by_chunk[order]
        bounds = np.flatnonzero(np.diff(by_chunk)) + 1
        whole, deleted, patches = [], [], []
        for group in np.split(changed, bounds):
            idx = int(group[0] // cs)
            chunk = self.chunk_ids[idx]
            sl = slice(idx * cs, (idx + 1) * cs)
            if not self.valid[sl].any():
                if self.present[idx]:
                    deleted.append((chunk,))
                    self.present[idx] = False
            elif not self.present[idx] or len(group) > SLOT_WRITE_MAX:
                whole.append(idx)
            else:
                patches.append((chunk, group))
        if deleted:
            self.conn.executemany(f"DELETE FROM {self.chunks_table} WHERE chunk = ?", deleted)
            if o.rerank:
                self.conn.executemany(f"DELETE FROM {self.vectors_table} WHERE chunk = ?", deleted)
        if whole:
            rows = []
            for idx in whole:
                sl = slice(idx * cs, (idx + 1) * cs)
                rows.append(
                    (
                        self.chunk_ids[idx],
                        self.valid[sl].tobytes(),
                        self.rowids[sl].astype("<i8", copy=False).tobytes(),
                        self.codes[sl].tobytes(),
                        self.qcodes[sl].astype(o.qcode_dtype, copy=False).tobytes(),
                    )
                )
                self.present[idx] = True
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {self.chunks_table}(chunk, valid, rowids, codes, qcodes) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            if o.rerank:
                self.conn.executemany(
                    f"INSERT OR REPLACE INTO {self.vectors_table}(chunk, vectors, scales) VALUES (?, ?, ?)",
                    [
                        (
                            self.chunk_ids[idx],
                            self.vectors[idx * cs : (idx + 1) * cs].tobytes(),
                            self.scales[idx * cs : (idx + 1) * cs].astype("<f4", copy=False).tobytes(),
                        )
                        for idx in whole
                    ],
                )
        for chunk, group in patches:
            self._patch(chunk, group)

    def _patch(self, chunk: int, positions: np.ndarray) -> None:
        """Write a few slots' bytes into the chunk's BLOBs (incremental BLOB I/O)."""
        o, cs = self.opts, self.cs
        columns = [
            ("valid", 1, lambda p: self.valid[p : p + 1].tobytes()),
            ("rowids", 8, lambda p: self.rowids[p : p + 1].astype("<i8", copy=False).tobytes()),
            ("codes", o.code_bytes, lambda p: self.codes[p].tobytes()),
        ]
        if o.books:
            columns.append(
                ("qcodes", o.qcode_bytes, lambda p: self.qcodes[p].astype(o.qcode_dtype, copy=False).tobytes())
            )
        tables = [self.chunks_name] * len(columns)
        if o.rerank:
            columns += [
                ("vectors", o.dim * self.vectors.itemsize, lambda p: self.vectors[p].tobytes()),
                ("scales", 4, lambda p: self.scales[p : p + 1].astype("<f4", copy=False).tobytes()),
            ]
            tables += [self.vectors_name] * 2
        for table, (column, width, data) in zip(tables, columns):
            blob = self.conn.blob_open(self.schema, table, column, chunk, True)
            try:
                for p in positions.tolist():
                    blob.seek((p % cs) * width)
                    blob.write(data(p))
            finally:
                blob.close()
