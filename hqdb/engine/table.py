"""The one :class:`Table`: the only code that writes an hq table's rows and codes.

SQL statements (through :mod:`hqdb.sql.vtab`), the bulk API (:mod:`hqdb.bulk`), collections and
``rebuild`` all write through these methods:

* :meth:`Table.insert`, :meth:`Table.update`, :meth:`Table.delete` — one row, *buffered*: the
  row's metadata and the location of its codes go into ``<t>_rows`` at once (so SQLite enforces
  the rowid and key constraints and assigns rowids), while its codes wait in memory;
* :meth:`Table.flush` — applies the buffer: encodes queued model inputs in one batch per
  modality, writes each touched chunk once, updates the cache in place and writes a new
  random generation. The SQL adapter flushes at commit (xSync), at every savepoint and before
  any read; a buffer of :data:`MAX_PENDING` rows flushes itself;
* :meth:`Table.write_many`, :meth:`Table.delete_many` — arrays of rows in one call;
* :meth:`Table.rewrite` — dense rewrite of every chunk (``rebuild``).

Searches (:meth:`Table.search`, :meth:`Table.search_many`) run on the per-connection cache of
:class:`~hqdb.engine.storage.CodeStore`, brought up to date by :meth:`Table.fresh`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import apsw
import numpy as np

from .. import kernels, quantize
from ..errors import ConstraintError, CorruptTableError, HqError, ModelError, StaleTableError
from ..model.store import load_model
from . import catalog, fts, mih
from .catalog import qualified, quote_ident
from .options import TableOptions
from .query import Params, decode_query, resolve
from .storage import CodeStore, encode_vectors

MAX_PENDING = 65536  # buffered rows that make the buffer flush itself

ON_CONFLICT = ("abort", "replace", "ignore")

# A metadata condition of a search or scan: (operator, column, value); the column is a
# metadata column name or "rowid"; operators as in SQL ("=", "<", "IN", "ISNULL", ...).
Cond = tuple[str, str, Any]
_OPS = frozenset({"=", ">", "<=", "<", ">=", "!=", "IS", "IS NOT", "LIKE", "GLOB", "ISNULL", "NOTNULL", "IN"})


class Table:
    """One hq table on one connection: layout, cache, write buffer, search."""

    def __init__(self, conn: apsw.Connection, schema: str, name: str, opts: TableOptions):
        self.conn = conn
        self.schema = schema
        self.opts = opts
        self.sets = opts.code_sets
        self.meta_names = [c.name for c in opts.columns]
        self._opts_json = opts.to_json()  # as the catalog stores it: a recreated table differs
        self._codebooks: np.ndarray | None = None
        self._codebooks_gen: int | None = None
        self._cb_norms: tuple[np.ndarray, np.ndarray] | None = None
        self._model = None
        self._device_cache: dict[int, tuple] = {}
        self._joint_cache: dict[int, tuple] = {}  # per code set: (key, bit codes | qcodes) for 'bits_pq'
        self._slot_ids: np.ndarray | None = None
        self._lut_plans: tuple[np.ndarray, list | None] | None = None
        self._pin: int | None = None
        self._cache_checked = False  # the generation while a search runs (see _pinned)
        self._flushes = 0
        self._savepoints: dict[int, int] = {}
        self._set_name(name)
        self._clear_buffer()

    def _set_name(self, name: str) -> None:
        self.name = name
        self.rows_table = qualified(self.schema, catalog.rows_name(name))
        self.stores = [CodeStore(self.conn, self.schema, name, self.opts, c) for c in self.sets]
        if self.opts.index == "mih":
            for st in self.stores:
                st.index = mih.MIHIndex(st, self.opts.mih_m)
        locs = [col for c in self.sets for col in (c.chunk_col, c.slot_col)]
        names = ["rowid", *locs, *self.meta_names]
        self._row_cols = names
        self._select_rows = f"SELECT {', '.join(map(quote_ident, names))} FROM {self.rows_table}"
        self._insert_sql = (
            f"INSERT INTO {self.rows_table}({', '.join(map(quote_ident, names))}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )
        self._locate_sql = f"SELECT {', '.join(map(quote_ident, locs))} FROM {self.rows_table} WHERE rowid = ?"
        self._delete_sql = f"DELETE FROM {self.rows_table} WHERE rowid = ?"
        sets = ", ".join(f"{quote_ident(n)} = ?" for n in names)
        self._update_sql = f"UPDATE {self.rows_table} SET {sets} WHERE rowid = ?"

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, conn: apsw.Connection, schema: str, name: str, opts: TableOptions) -> Table:
        """Create the shadow tables and the catalog entry of a new table."""
        q = quote_ident
        null = " NOT NULL" if opts.model is None else ""  # a model-bound row may lack a modality
        locs = "".join(f", {q(c.chunk_col)} INTEGER{null}, {q(c.slot_col)} INTEGER{null}" for c in opts.code_sets)
        cols = "".join(f", {q(c.name)} {c.type}{' UNIQUE' if c.key else ''}" for c in opts.columns)
        sql = f"CREATE TABLE {qualified(schema, catalog.rows_name(name))} (rowid INTEGER PRIMARY KEY{locs}{cols});"
        sql += "".join(CodeStore.create_sql(schema, name, c, opts.rerank) for c in opts.code_sets)
        conn.execute(sql)
        catalog.insert_entry(conn, schema, name, opts)
        return cls(conn, schema, name, opts)

    @classmethod
    def open(cls, conn: apsw.Connection, schema: str, name: str) -> Table:
        entry = catalog.read_entry(conn, schema, name)
        if entry is None:
            raise HqError(f"hq table {name!r} is missing from the hqdb catalog ({schema}.{catalog.TABLE})")
        missing = [
            entry.name + s
            for s in catalog.shadow_suffixes(entry.opts)
            if s != catalog.LEGACY_PENDING
            and not conn.execute(
                f"SELECT 1 FROM {quote_ident(schema)}.sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                (entry.name + s,),
            ).fetchone()
        ]
        if missing:
            raise CorruptTableError(
                f"hq table {entry.name}: its shadow table(s) {', '.join(missing)} are missing; the table cannot be "
                "used (drop it, or restore the file from a backup)"
            )
        return cls(conn, schema, entry.name, entry.opts)

    def destroy(self) -> None:
        """Drop the shadow tables and the catalog entry (DROP TABLE)."""
        self._clear_buffer()
        self.conn.execute(
            "".join(
                f"DROP TABLE IF EXISTS {qualified(self.schema, self.name + s)};"
                for s in catalog.shadow_suffixes(self.opts)
            )
        )
        fts.drop_orphan(self.conn, self.schema, self.name)  # its triggers went with the rows table
        catalog.delete_entry(self.conn, self.schema, self.name)

    def rename(self, new: str) -> None:
        """ALTER TABLE ... RENAME TO: the shadow tables and the catalog entry follow."""
        self.flush()
        keyword_cols = fts.columns(self.conn, self.schema, self.name)
        for suffix in catalog.shadow_suffixes(self.opts):
            exists = self.conn.execute(
                f"SELECT 1 FROM {quote_ident(self.schema)}.sqlite_master WHERE type = 'table' "
                "AND name = ? COLLATE NOCASE",
                (self.name + suffix,),
            ).fetchone()
            if exists:
                self.conn.execute(
                    f"ALTER TABLE {qualified(self.schema, self.name + suffix)} RENAME TO {quote_ident(new + suffix)}"
                )
        if keyword_cols is not None:
            fts.rename(self.conn, self.schema, self.name, new, keyword_cols)
        catalog.rename_entry(self.conn, self.schema, self.name, new)
        self._set_name(new)
        self._codebooks_gen = None

    # ------------------------------------------------------------------ coherence
    def fresh(self) -> int:
        """Bring every code cache up to the database; return the catalog generation.

        :class:`StaleTableError` if the table was dropped, or dropped and recreated with another
        shape, by another connection since this object was opened. Inside :meth:`_pinned` (one
        search) the generation read when it began."""
        if self._pin is not None:
            return self._pin
        row = catalog.read_generation(self.conn, self.schema, self.name)
        o = self.opts
        if row is None:
            raise StaleTableError(f"hq table {self.name} no longer exists (dropped by another connection)")
        generation, dim, books, codewords, chunk_size, options = row
        if (dim, books, codewords, chunk_size) != (
            o.dim,
            o.books,
            o.codewords,
            o.chunk_size,
        ) or options != self._opts_json:
            raise StaleTableError(
                f"hq table {self.name} was dropped and recreated by another connection; open it again"
            )
        for st in self.stores:
            st.ensure_fresh(generation)
        if not self._cache_checked:  # once per table object: the codebooks' size, not the BLOB
            self._cache_checked = True
            size = catalog.scalar(
                self.conn,
                f"SELECT length(codebooks) FROM {qualified(self.schema, catalog.TABLE)} WHERE name = ? COLLATE NOCASE",
                (self.name,),
            )
            if isinstance(size, int) and size > 0:
                self._cache_room(size)
        return generation

    @contextlib.contextmanager
    def _pinned(self):
        """One search: buffered writes flushed, the catalog read once (reading the generation
        walks past the codebooks BLOB stored before it in the row, which costs milliseconds when
        the codebooks are megabytes), the caches checked against it."""
        if self._pin is not None:
            yield
            return
        self.flush()
        self._pin = self.fresh()
        try:
            yield
        finally:
            self._pin = None

    def invalidate(self) -> None:
        """Forget the caches: the next use reloads from the database."""
        for st in self.stores:
            st.invalidate()
        self._codebooks_gen = None
        self._device_cache.clear()
        self._joint_cache.clear()

    def _changed(self) -> None:
        """Record a change in the catalog; our caches saw it, so they move along."""
        generation = catalog.write_generation(self.conn, self.schema, self.name)
        for st in self.stores:
            if st.loaded:
                st.generation = generation

    # ------------------------------------------------------------------ transactions
    def savepoint(self, level: int) -> None:
        self.flush()
        self._savepoints[level] = self._flushes

    def release(self, level: int) -> None:
        for lv in [lv for lv in self._savepoints if lv >= level]:
            del self._savepoints[lv]

    def rollback_to(self, level: int) -> None:
        """Savepoint ``level`` rolled back: drop what was buffered since; if a flush wrote to the
        file since, SQLite undid it, so the caches reload."""
        self._clear_buffer()
        if self._savepoints.get(level) != self._flushes:
            self.invalidate()
        self._savepoints[level] = self._flushes

    def rollback(self) -> None:
        self._clear_buffer()
        self._savepoints.clear()
        self.invalidate()

    # ------------------------------------------------------------------ codebooks and model
    def codebooks(self) -> np.ndarray | None:
        """The table's codebooks (books x codewords x dim float32), or None if not set yet."""
        if self.opts.model:
            return self.model().codebooks
        generation = self.fresh()
        if self._codebooks_gen != generation:
            blob = catalog.read_codebooks(self.conn, self.schema, self.name)
            self._codebooks = None if blob is None else self._parse_codebooks(blob)
            self._codebooks_gen = generation
            if blob is not None:
                self._cache_room(len(blob))
        return self._codebooks

    def joint_books(self) -> int:
        """How many books in front of the table's codebooks score the bit code's bytes
        (quantizer 'bits_pq': dim/8), else 0. Read from the stored codebooks' size."""
        cb = None if self.opts.model else self.codebooks()
        return 0 if cb is None else cb.shape[0] - self.opts.books

    def _parse_codebooks(self, blob) -> np.ndarray:
        """Stored codebooks, shape-checked: books x codewords x dim float32, or with codewords
        = 256 (dim/8 + books) x 256 x dim, whose first dim/8 books score the bit code's bytes
        (:func:`hqdb.quantize.fit_bits_pq`)."""
        o = self.opts
        if not isinstance(blob, bytes):
            raise HqError(f"codebooks for {self.name} must be a BLOB of float32, got {type(blob).__name__}")
        expected = o.books * o.codewords * o.dim * 4
        books = o.books
        if o.codewords == 256 and o.books and len(blob) == (o.books + o.code_bytes) * 256 * o.dim * 4:
            books = o.books + o.code_bytes
        elif len(blob) != expected:
            extra = (
                f" (or {o.code_bytes + o.books}x256x{o.dim}: the bit code's books first)" if o.codewords == 256 else ""
            )
            raise HqError(
                f"codebooks for {self.name} must be {o.books}x{o.codewords}x{o.dim} float32 "
                f"({expected} bytes){extra}, got {len(blob)} bytes"
            )
        cb = np.frombuffer(blob, dtype="<f4").reshape(books, o.codewords, o.dim).astype(np.float32)
        if not np.isfinite(cb).all():
            raise HqError(f"codebooks for {self.name} contain NaN or infinity")
        return cb

    def _cache_room(self, nbytes: int) -> None:
        """Let the connection's page cache hold the codebooks BLOB twice over. Every search reads
        the catalog row's generation, which SQLite stores after the BLOB: it walks the BLOB's
        overflow pages, from the cache in microseconds, from the file in milliseconds once the
        BLOB outgrows the default cache (2 MB; 'bits_pq' codebooks of 16 books at 128 dims are 4 MB).
        Only ever raised, never lowered."""
        schema = quote_ident(self.schema)
        size = int(catalog.scalar(self.conn, f"PRAGMA {schema}.cache_size"))
        page = int(catalog.scalar(self.conn, f"PRAGMA {schema}.page_size"))
        have = -size * 1024 if size < 0 else size * page
        want = 2 * nbytes + (2 << 20)
        if have < want:
            self.conn.execute(f"PRAGMA {schema}.cache_size = {-(want // 1024)}")

    def set_codebooks(self, blob) -> None:
        if self.opts.model:
            raise HqError(f"hq table {self.name} takes its codebooks from model {self.opts.model!r}")
        if self.opts.books == 0:
            raise HqError(f"hq table {self.name} has books=0: it stores no quantization codes")
        self._parse_codebooks(blob)
        self.flush()
        self.fresh()
        generation = catalog.write_codebooks(self.conn, self.schema, self.name, blob)
        for st in self.stores:
            if st.loaded:
                st.generation = generation
        self._codebooks_gen = None

    def model(self):
        """The trained model a model-bound table encodes with (loaded once per connection)."""
        if self._model is None:
            if self.opts.model is None:
                raise HqError(f"hq table {self.name} is a raw table: it has no model")
            try:
                model = load_model(self.conn, self.opts.model)
            except ModelError as e:
                raise HqError(f"hq table {self.name}: {e}") from None
            o = self.opts
            if (model.bits, model.books, model.codewords, model.metric, tuple(model.modalities)) != (
                o.dim,
                o.books,
                o.codewords,
                o.metric,
                tuple(o.modalities),
            ):
                raise CorruptTableError(
                    f"hq table {self.name}: model {o.model!r} no longer has the table's shape ({o.dim} bits, "
                    f"{o.books} books of {o.codewords}, metric {o.metric!r}, modalities {list(o.modalities)})"
                )
            self._model = model
        return self._model

    def default_mode(self) -> str:
        """The search mode when a query names none: a model-bound table searches the way its
        model was trained to be searched ('aqd' for cq / spdq / cdq, 'hamming' for chn / dcmh /
        lossless, 'two_stage' for hq and c+d); a raw table 'two_stage'."""
        if not self.opts.model:
            return "two_stage"
        search = self.model().search
        return search if search in kernels.MODES else "hamming"  # 'float' (lossless): its bit codes

    def params(self, k, candidates=None, mode=None, *, k_name: str = "k") -> Params:
        """Validated search parameters for this table: its own default mode, and 'hamming' where
        it has no quantization codes (:func:`hqdb.engine.query.resolve`) — except that a rerank
        table's 'two_stage' (Hamming shortlist, exact re-rank) needs none."""
        default = self.default_mode() if mode is None else "two_stage"
        books = self.opts.books or (1 if self.opts.rerank and mode != "aqd" else 0)
        return resolve(k, candidates, mode, default_mode=default, books=books, table=self.name, k_name=k_name)

    def _reranked(self, set_idx: int, bits: np.ndarray, vecs: np.ndarray, params: Params, conds, threads: int):
        """A rerank table's search: each query's shortlist of ``candidates`` rows by Hamming
        distance ('two_stage') or AQD ('aqd'), then the exact score on the stored vectors.
        ``distance`` is −⟨q, x⟩ (metric 'ip') or ‖q − x‖² ('l2') of the stored vector x; ties go
        to the smaller Hamming distance, then the smaller rowid. [(rowids, distances, hamming)]
        per query."""
        _, codes, qcodes, rowids, valid = self._arrays(set_idx, conds)
        st = self.stores[set_idx]
        n = len(rowids)
        if n == 0:
            empty = (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int32))
            return [empty for _ in vecs]
        stage = "aqd" if params.run_mode == "aqd" else "hamming"
        c = min(max(params.candidates, params.k), n)
        if self._slot_ids is None or len(self._slot_ids) != n:
            self._slot_ids = np.arange(n, dtype=np.int64)  # the kernel ranks slots: it returns where they are
        luts = self.luts(vecs)[0] if stage == "aqd" else None
        slots, _, hams = self._kernel(set_idx, conds, many=True)(
            codes, qcodes, self._slot_ids, valid, bits, luts, k=c, candidates=c, mode=stage, threads=threads
        )
        out = []
        for j, q in enumerate(vecs.astype(np.float64)):
            pos = slots[j][slots[j] >= 0]
            x = st.vectors[pos].astype(np.float64) * st.scales[pos, None]
            dist = -(x @ q) if self.opts.metric != "l2" else ((x - q) ** 2).sum(1)
            ham = hams[j][: len(pos)]
            order = np.lexsort((rowids[pos], ham, dist))[: params.k]
            out.append((rowids[pos][order], dist[order], ham[order].astype(np.int32)))
        return out

    def vector_of(self, set_idx: int, rowid: int) -> bytes | None:
        """A rerank table's stored vector of a row, as float32 bytes (int8 and float16 decoded)."""
        self.flush()
        self.fresh()
        loc = self._locate(rowid)
        if not self.opts.rerank or loc is None or loc[set_idx] is None:
            return None
        st = self.stores[set_idx]
        pos = st.holds(loc[set_idx][0], loc[set_idx][1], rowid)
        if pos is None:
            raise CorruptTableError(f"hq table {self.name}: row {rowid} points at a slot that does not hold it")
        return (st.vectors[pos].astype(np.float32) * st.scales[pos]).astype("<f4").tobytes()

    def set_index(self, modality: str) -> int:
        names = [c.name for c in self.sets]
        if modality not in names:
            raise HqError(f"model {self.opts.model!r} has no modality {modality!r} (it has: {', '.join(names)})")
        return names.index(modality)

    def encode_inputs(self, set_idx: int, values: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (float32 blobs or an (N, d) array) or raw text of one modality → (bit
        features, common-space vectors), both (N, dim): the bit code is the signs of the first
        (the same array unless the model has separate hash towers, c+d)."""
        model = self.model()
        modality = self.sets[set_idx].name
        try:
            if isinstance(values, np.ndarray):
                x = model.featurize(modality, values)
            else:
                texts = [v for v in values if isinstance(v, str)]
                if texts and len(texts) != len(values):
                    raise HqError(f"{self.name}.{modality}: mix of text and feature blobs in one batch")
                if texts:
                    x = model.featurize(modality, texts)
                else:
                    x = model.featurize(
                        modality, np.stack([np.frombuffer(v, dtype="<f4") for v in values]).astype(np.float32)
                    )
            return model.encode(modality, x)
        except (ValueError, TypeError) as e:
            raise HqError(f"{self.name}.{modality}: {e}") from None

    def check_input(self, set_idx: int, value) -> str | bytes:
        """Validate one modality input when it is written, so the batched encode cannot fail."""
        model = self.model()
        modality = self.sets[set_idx].name
        if isinstance(value, str):
            if not model.has_featurizer(modality):
                raise HqError(
                    f"{self.name}.{modality}: model {self.opts.model!r} has no text featurizer for "
                    f"{modality!r}; insert a float32 feature BLOB of {model.input_dim(modality)} values"
                )
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            d = model.input_dim(modality)
            if len(value) != 4 * d:
                raise HqError(
                    f"{self.name}.{modality} must be a float32 BLOB of {d} values "
                    f"({4 * d} bytes); got {len(value)} bytes"
                )
            if not np.isfinite(np.frombuffer(value, dtype="<f4")).all():
                raise HqError(f"{self.name}.{modality}: features contain NaN or infinity")
            return value
        raise HqError(
            f"{self.name}.{modality} must be a BLOB of float32 features"
            + (" or TEXT" if model.has_featurizer(modality) else "")
            + f", got {type(value).__name__}"
        )

    # ------------------------------------------------------------------ row validation
    def check_code(self, set_idx: int, value) -> bytes:
        o = self.opts
        if type(value) is bytes and len(value) == o.code_bytes:
            return value
        label = f"{self.name}.{self.sets[set_idx].code_col}"
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            if len(value) == o.code_bytes:
                return value
            if len(value) == o.dim * 4:  # a float32 vector: store its sign bits
                vec = np.frombuffer(value, dtype="<f4")
                if not np.isfinite(vec).all():
                    raise HqError(f"{label}: float32 vector contains NaN or infinity")
                return kernels.pack_bits(vec).tobytes()
            raise HqError(
                f"{label} must be a BLOB of {o.code_bytes} bytes (dim={o.dim} bits) "
                f"or a float32 vector of {o.dim} values ({o.dim * 4} bytes); got {len(value)} bytes"
            )
        if value is None:
            raise HqError(f"{label} cannot be NULL")
        raise HqError(f"{label} must be a BLOB, got {type(value).__name__}")

    def check_qcode(self, set_idx: int, value) -> bytes | None:
        o = self.opts
        label = f"{self.name}.{self.sets[set_idx].qcode_col}"
        if o.books == 0:
            if value is not None:
                raise HqError(f"{self.name} has books=0: {self.sets[set_idx].qcode_col} must be NULL")
            return None
        if value is None:
            raise HqError(f"{label} cannot be NULL (table has books={o.books})")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise HqError(f"{label} must be a BLOB, got {type(value).__name__}")
        value = bytes(value)
        if len(value) != o.qcode_bytes:
            width = "uint8" if o.codewords <= 256 else "uint16 little-endian"
            raise HqError(f"{label} must be {o.books} {width} indices ({o.qcode_bytes} bytes); got {len(value)} bytes")
        top = max(value) if o.codewords <= 256 else int(np.frombuffer(value, dtype="<u2").max())
        if top >= o.codewords:
            raise HqError(f"{label}: index {top} out of range (codewords={o.codewords})")
        return value

    def check_vector(self, value) -> bytes:
        """A rerank table's row vector: float32 BLOB of ``dim`` finite values."""
        o = self.opts
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise HqError(f"{self.name}.vector must be a BLOB of {o.dim} float32 values, got {type(value).__name__}")
        value = bytes(value)
        if len(value) != 4 * o.dim:
            raise HqError(
                f"{self.name}.vector must be {o.dim} float32 values ({4 * o.dim} bytes); got {len(value)} bytes"
            )
        x = np.frombuffer(value, dtype="<f4")
        if not np.isfinite(x).all() or (o.rerank == "float16" and np.abs(x).max() > np.finfo(np.float16).max):
            raise HqError(f"{self.name}.vector contains NaN, infinity or values beyond {o.rerank}'s range")
        return value

    def check_item(self, set_idx: int, value=None, code=None, qcode=None, vector=None):
        """One code set's part of a row: ``('codes', code, qcode, vector)``, ``('input', value)``
        or None (a model-bound row without this modality). On a rerank table the vector is
        required, and codes left out are computed from it at the flush."""
        if value is not None:
            return ("input", self.check_input(set_idx, value))
        if self.opts.rerank:
            if vector is None:
                raise HqError(
                    f"{self.name} keeps each row's vector (rerank={self.opts.rerank!r}): give vector, a float32 "
                    f"BLOB of {self.opts.dim} values (code and qcode are then computed from it)"
                )
            vector = self.check_vector(vector)
            if qcode is None and self.opts.books and self._codebooks is None and self.codebooks() is None:
                raise HqError(
                    f"{self.name} has no codebooks to compute qcode with: fit them with "
                    f"hqdb.fit_table(db, {self.name!r}, sample) or give qcode"
                )
            return (
                "codes",
                None if code is None else self.check_code(set_idx, code),
                None if qcode is None else self.check_qcode(set_idx, qcode),
                vector,
            )
        if vector is not None:
            raise HqError(f"{self.name} has no vector column (create it with rerank='int8' to keep vectors)")
        if code is not None or not self.opts.model:
            return ("codes", self.check_code(set_idx, code), self.check_qcode(set_idx, qcode), None)
        if qcode is not None:
            cs = self.sets[set_idx]
            raise HqError(f"{self.name}.{cs.qcode_col} given without {cs.code_col}")
        return None

    def check_meta(self, meta: Sequence) -> list:
        for c, v in zip(self.opts.columns, meta):
            if isinstance(v, float) and math.isnan(v):
                raise HqError(f"{self.name}.{c.name}: NaN is not a value")
        return list(meta)

    # ------------------------------------------------------------------ buffered writes
    def _clear_buffer(self) -> None:
        n = len(self.sets)
        self._puts: list[list] = [[] for _ in range(n)]  # (chunk, slot, rowid, code, qcode)
        self._encodes: list[list] = [[] for _ in range(n)]  # (chunk, slot, rowid, input value)
        self._clears: list[list] = [[] for _ in range(n)]  # (chunk, slot, rowid)
        self._pending = 0

    @property
    def pending(self) -> int:
        """Rows written but not flushed yet."""
        return self._pending

    def _begin_write(self) -> None:
        if not self._pending:
            self.fresh()

    def _queued(self) -> None:
        self._pending += 1
        if self._pending >= MAX_PENDING:
            self.flush()

    def _locate(self, rowid: int) -> list | None:
        """[(chunk, slot) or None per code set] of a row, or None if there is no such row."""
        row = self.conn.execute(self._locate_sql, (rowid,)).fetchone()
        if row is None:
            return None
        return [None if row[2 * i] is None else (row[2 * i], row[2 * i + 1]) for i in range(len(self.sets))]

    def _settled(self, rowid: int, locs: list) -> None:
        """Make sure the cache holds the row's codes where its row points (flush if they are
        still in the buffer); :class:`CorruptTableError` if they are not there even then."""
        for attempt in (0, 1):
            if all(loc is None or st.holds(loc[0], loc[1], rowid) is not None for st, loc in zip(self.stores, locs)):
                return
            if attempt == 0 and self._pending:
                self.flush()
                self.fresh()
            else:
                raise CorruptTableError(f"hq table {self.name}: row {rowid} points at a slot that does not hold it")

    def _conflicts(self, rowid, meta) -> list[int]:
        found = []
        if rowid is not None and self._locate(rowid) is not None:
            found.append(rowid)
        key = self.opts.key_column
        if key is not None:
            v = meta[self.meta_names.index(key.name)]
            if v is not None:
                row = self.conn.execute(
                    f"SELECT rowid FROM {self.rows_table} WHERE {quote_ident(key.name)} = ?", (v,)
                ).fetchone()
                if row and row[0] not in found:
                    found.append(row[0])
        return found

    def _constraint(self, e: apsw.ConstraintError) -> ConstraintError:
        key = self.opts.key_column
        what = key.name if key is not None and f".{key.name}" in str(e) else "rowid"
        return ConstraintError(f"UNIQUE constraint failed: {self.name}.{what}")

    def insert(self, rowid: int | None, items: list, meta: list, on_conflict: str = "abort") -> int:
        """Insert one row (items from :meth:`check_item`, meta from :meth:`check_meta`); return
        its rowid. ``on_conflict``: 'abort' (raise :class:`ConstraintError`), 'replace' (delete
        the rows holding the rowid or key first), 'ignore' (keep them, insert nothing).
        Buffered: the codes reach the file at the next :meth:`flush`."""
        self._begin_write()
        if on_conflict != "abort":
            conflicts = self._conflicts(rowid, meta)
            if conflicts and on_conflict == "ignore":
                return conflicts[0]
            for r in conflicts:
                self.delete(r)
        locs: list = []
        for st, item in zip(self.stores, items):
            locs += st.reserve() if item is not None else (None, None)
        try:
            self.conn.execute(self._insert_sql, (rowid, *locs, *meta))
        except apsw.ConstraintError as e:
            raise self._constraint(e) from None
        if rowid is None:
            rowid = self.conn.last_insert_rowid()
        for i, item in enumerate(items):
            if item is None:
                continue
            chunk, slot = locs[2 * i], locs[2 * i + 1]
            if item[0] == "codes":
                self._puts[i].append((chunk, slot, rowid, item[1], item[2], item[3]))
            else:
                self._encodes[i].append((chunk, slot, rowid, item[1]))
        self._queued()
        return rowid

    def delete(self, rowid: int) -> bool:
        """Delete one row; False if there was none. Buffered like :meth:`insert`."""
        self._begin_write()
        locs = self._locate(rowid)
        if locs is None:
            return False
        self._settled(rowid, locs)
        self.conn.execute(self._delete_sql, (rowid,))
        for i, loc in enumerate(locs):
            if loc is not None:
                self._clears[i].append((*loc, rowid))
        self._queued()
        return True

    def update(self, rowid: int, newrowid: int, items: list, meta: list, on_conflict: str = "abort") -> None:
        """Replace row ``rowid`` by (``newrowid``, items, meta); codes given for a code set the
        row already has are rewritten in place. Applied at once (not buffered)."""
        self.flush()
        self.fresh()
        old = self._locate(rowid)
        if old is None:
            raise CorruptTableError(f"hq table {self.name}: row {rowid} vanished during UPDATE")
        if newrowid != rowid and self._locate(newrowid) is not None:
            if on_conflict != "replace":
                raise ConstraintError(f"UNIQUE constraint failed: {self.name}.rowid")
            self.delete(newrowid)
            self.flush()
        self._settled(rowid, old)
        codes: list[tuple[bytes | None, bytes | None, bytes | None] | None] = []
        for i, item in enumerate(items):
            if item is not None and item[0] == "input":
                bitf, f = self.encode_inputs(i, [item[1]])
                q = self.model().quantize(f) if self.opts.books else None
                codes.append(
                    (
                        kernels.pack_bits(bitf)[0].tobytes(),
                        None if q is None else q[0].astype(self.opts.qcode_dtype).tobytes(),
                        None,
                    )
                )
            else:
                codes.append(None if item is None else (item[1], item[2], item[3]))
        locs: list = []
        changes: list[tuple[CodeStore, list, list, int | None]] = []
        for st, code, loc in zip(self.stores, codes, old):
            if loc is not None and code is not None:  # rewritten in place
                locs += loc
                changes.append((st, [(*loc, newrowid, *code)], [], rowid))
            elif loc is not None:  # the modality was removed
                locs += (None, None)
                changes.append((st, [], [loc], None))
            elif code is not None:
                new = st.reserve()
                locs += new
                changes.append((st, [(*new, newrowid, *code)], [], None))
            else:
                locs += (None, None)
        try:
            self.conn.execute(self._update_sql, (newrowid, *locs, *meta, rowid))
        except apsw.ConstraintError as e:
            self._clear_buffer()
            raise self._constraint(e) from None
        try:
            for st, puts, clears, expect in changes:
                ch, sl, ids, c, q, vecs = self._assemble(puts)
                cc = np.array([x for x, _ in clears], dtype=np.int64)
                cl = np.array([y for _, y in clears], dtype=np.int64)
                st.apply(
                    ch,
                    sl,
                    ids,
                    c,
                    q,
                    cc,
                    cl,
                    expect_rowids=None if expect is None else np.array([expect], dtype=np.int64),
                    vectors=vecs,
                )
            self._changed()
        except BaseException:
            self.invalidate()
            raise
        finally:
            self._clear_buffer()
        self._flushes += 1

    def _reconcile(self, batch: list) -> list:
        """Keep the buffered changes the rows table still agrees with.

        SQLite does not always tell a virtual table that a statement was rolled back (a
        multi-row INSERT that fails half-way inside a transaction): the rows it undid are gone
        from ``<t>_rows`` but not from this buffer. A put is kept only if its row still points
        at its slot; a clear only if no row points at that slot any more."""
        ids = sorted({e[2] for puts, encodes, clears in batch for e in (*puts, *encodes, *clears)})
        where = {}
        for lo in range(0, len(ids), 100_000):
            for r in self.conn.execute(
                self._select_rows.split(" FROM ")[0] + f" FROM {self.rows_table} "
                "WHERE rowid IN (SELECT value FROM json_each(?))",
                (json.dumps(ids[lo : lo + 100_000]),),
            ):
                where[r[0]] = r[1 : 1 + 2 * len(self.sets)]
        out = []
        for i, (puts, encodes, clears) in enumerate(batch):

            def at(e, i=i):
                loc = where.get(e[2])
                return loc is not None and loc[2 * i] == e[0] and loc[2 * i + 1] == e[1]

            out.append(([e for e in puts if at(e)], [e for e in encodes if at(e)], [e for e in clears if not at(e)]))
        return out

    def flush(self) -> None:
        """Apply every buffered write to the file and the cache, then record the change."""
        if not self._pending:
            return
        o = self.opts
        # Take the buffer first: the statements below make SQLite call back (xSavepoint), and a
        # flush from there must find nothing to do.
        batch = list(zip(self._puts, self._encodes, self._clears))
        self._clear_buffer()
        # A flush at COMMIT must not change what last_insert_rowid() reports for the user's INSERT.
        last_rowid = self.conn.last_insert_rowid()
        try:
            batch = self._reconcile(batch)
            for i, (st, (puts, encodes, clears)) in enumerate(zip(self.stores, batch)):
                if encodes:
                    bitf, f = self.encode_inputs(i, [e[3] for e in encodes])
                    bits = kernels.pack_bits(bitf)
                    q = self.model().quantize(f).astype(o.qcode_dtype) if o.books else None
                    puts = puts + [
                        (c, s, r, bits[j].tobytes(), None if q is None else q[j].tobytes(), None)
                        for j, (c, s, r, _) in enumerate(encodes)
                    ]
                if puts or clears:
                    ch, sl, ids, codes, qcodes, vecs = self._assemble(puts)
                    cc = np.array([c for c, _, _ in clears], dtype=np.int64)
                    cl = np.array([s for _, s, _ in clears], dtype=np.int64)
                    st.apply(ch, sl, ids, codes, qcodes, cc, cl, vectors=vecs)
            self._changed()
        except BaseException:
            # The file may hold part of the batch: the statement or transaction fails, and the
            # caches reload from whatever SQLite rolls back to.
            self.invalidate()
            raise
        finally:
            self.conn.set_last_insert_rowid(last_rowid)
        self._flushes += 1
        self._device_cache.clear()
        self._joint_cache.clear()

    def _assemble(self, puts: list):
        """Arrays of buffered puts ``(chunk, slot, rowid, code, qcode, vector)``: (chunks, slots,
        rowids, codes (n, code_bytes), qcodes (n, books) or None, stored vectors or None). On a
        rerank table, a code or qcode left out is computed from the row's vector (its sign bits;
        its indices with the table's codebooks)."""
        o = self.opts
        n = len(puts)
        chunks = np.fromiter((p[0] for p in puts), dtype=np.int64, count=n)
        slots = np.fromiter((p[1] for p in puts), dtype=np.int64, count=n)
        ids = np.fromiter((p[2] for p in puts), dtype=np.int64, count=n)
        x = None
        if o.rerank and n:
            x = np.frombuffer(b"".join(p[5] for p in puts), dtype="<f4").reshape(n, o.dim)
        codes = _given(puts, 3, o.code_bytes, np.dtype(np.uint8))
        if codes is None:
            assert x is not None  # a row without codes is a rerank row, which has its vector
            codes = np.empty((n, o.code_bytes), dtype=np.uint8)
            missing = np.array([p[3] is None for p in puts])
            codes[~missing] = _given([p for p in puts if p[3] is not None], 3, o.code_bytes, np.dtype(np.uint8))
            codes[missing] = kernels.pack_bits(x[missing])
        qcodes = None
        if o.books:
            qdt = np.dtype(o.qcode_dtype)
            qcodes = _given(puts, 4, o.books, qdt)
            if qcodes is None:
                assert x is not None
                cb = self.codebooks()
                if cb is None:
                    raise HqError(f"{self.name} has no codebooks to compute qcode with: hqdb.fit_table() first")
                qcodes = np.empty((n, o.books), dtype=qdt.newbyteorder("="))
                missing = np.array([p[4] is None for p in puts])
                qcodes[~missing] = _given([p for p in puts if p[4] is not None], 4, o.books, qdt)
                qcodes[missing] = quantize.encode_rows(x[missing], cb, o.books, codes[missing])
        vectors = None if x is None else encode_vectors(x, str(o.rerank))
        return chunks, slots, ids, codes, qcodes, vectors

    # ------------------------------------------------------------------ writes in bulk
    def write_many(
        self,
        n: int,
        rowids: np.ndarray | None,
        meta: dict[str, Sequence],
        codes_by_set: dict[int, tuple[np.ndarray, np.ndarray | None]],
        vectors: np.ndarray | None = None,
    ) -> np.ndarray:
        """Insert n rows at once: codes given per code set (``{set: (bit codes (n, code_bytes)
        uint8, qcodes (n, books) or None)}``; sets left out stay empty), and on a rerank table
        the rows' float32 vectors (n, dim). Arrays are validated by the caller (:mod:`hqdb.bulk`).
        Returns the rowids. The caller holds a transaction."""
        if bool(self.opts.rerank) != (vectors is not None):
            raise HqError(
                f"{self.name}: insert vectors with hqdb.insert_vectors()"
                if self.opts.rerank
                else f"{self.name} keeps no vectors (create it with rerank= to keep them)"
            )
        self.flush()
        self.fresh()
        if rowids is None:
            top = catalog.scalar(self.conn, f"SELECT coalesce(max(rowid), 0) FROM {self.rows_table}")
            rowids = np.arange(top + 1, top + 1 + n, dtype=np.int64)
        locs: list = []
        for i, st in enumerate(self.stores):
            locs += st.allocate(n) if i in codes_by_set else ([None] * n, [None] * n)
        cols = [meta.get(name, [None] * n) for name in self.meta_names]
        try:
            self.conn.executemany(
                self._insert_sql, zip(rowids.tolist(), *(np.asarray(x).tolist() for x in locs), *cols)
            )
        except apsw.ConstraintError as e:
            self._clear_buffer()
            raise self._constraint(e) from None
        try:
            empty = np.zeros(0, np.int64)
            stored = None if vectors is None else encode_vectors(vectors, str(self.opts.rerank))
            for i, (codes, qcodes) in codes_by_set.items():
                self.stores[i].apply(locs[2 * i], locs[2 * i + 1], rowids, codes, qcodes, empty, empty, vectors=stored)
            self._changed()
        except BaseException:
            self.invalidate()
            raise
        finally:
            self._clear_buffer()
        self._flushes += 1
        return rowids

    def delete_many(self, rowids: np.ndarray) -> int:
        """Delete rows by rowid (ids not in the table are ignored); return how many existed.
        The caller holds a transaction."""
        self.flush()
        self.fresh()
        locs_sql = ", ".join(f"{quote_ident(c.chunk_col)}, {quote_ident(c.slot_col)}" for c in self.sets)
        found: list = []
        for lo in range(0, len(rowids), 100_000):  # JSON arrays of bounded size
            batch = json.dumps(rowids[lo : lo + 100_000].tolist())
            found += self.conn.execute(
                f"SELECT rowid, {locs_sql} FROM {self.rows_table} WHERE rowid IN (SELECT value FROM json_each(?))",
                (batch,),
            ).fetchall()
            self.conn.execute(
                f"DELETE FROM {self.rows_table} WHERE rowid IN (SELECT value FROM json_each(?))", (batch,)
            )
        if not found:
            return 0
        try:
            empty = np.zeros(0, np.int64)
            for i, st in enumerate(self.stores):
                located = [(r[1 + 2 * i], r[2 + 2 * i]) for r in found if r[1 + 2 * i] is not None]
                if located:
                    chunks, slots = (np.array(x, dtype=np.int64) for x in zip(*located))
                    st.apply(empty, empty, empty, np.zeros((0, self.opts.code_bytes), np.uint8), None, chunks, slots)
            self._changed()
        except BaseException:
            self.invalidate()
            raise
        self._flushes += 1
        return len(found)

    def rewrite(self, per_set: list[tuple], drop: np.ndarray) -> None:
        """Rewrite every chunk densely: ``per_set[i] = (rowids, codes, qcodes[, vectors, scales])``
        sorted by rowid are the codes (and a rerank table's stored vectors) that code set keeps;
        rows in ``drop`` are deleted; a model-bound row not in a set's rowids loses that modality.
        The caller holds a transaction (``rebuild``)."""
        self._clear_buffer()
        cs, o = self.opts.chunk_size, self.opts
        if len(drop):
            self.conn.executemany(self._delete_sql, [(int(r),) for r in drop])
        for cset, st, kept in zip(self.sets, self.stores, per_set):
            ids, codes, qcodes = kept[:3]
            n = len(ids)
            n_chunks = (n + cs - 1) // cs
            valid = np.zeros(n_chunks * cs, np.uint8)
            valid[:n] = 1
            rid = np.zeros(n_chunks * cs, "<i8")
            rid[:n] = ids
            allc = np.zeros((n_chunks * cs, o.code_bytes), np.uint8)
            allc[:n] = codes
            allq = np.zeros((n_chunks * cs, o.books), o.qcode_dtype)
            allq[:n] = qcodes
            self.conn.execute(f"DELETE FROM {st.chunks_table}")
            if o.rerank:
                vecs = np.zeros((n_chunks * cs, o.dim), st.vectors.dtype)
                vecs[:n] = kept[3]
                scales = np.zeros(n_chunks * cs, "<f4")
                scales[:n] = kept[4]
                self.conn.execute(f"DELETE FROM {st.vectors_table}")
                self.conn.executemany(
                    f"INSERT INTO {st.vectors_table}(chunk, vectors, scales) VALUES (?, ?, ?)",
                    [
                        (c + 1, vecs[c * cs : (c + 1) * cs].tobytes(), scales[c * cs : (c + 1) * cs].tobytes())
                        for c in range(n_chunks)
                    ],
                )
            self.conn.executemany(
                f"INSERT INTO {st.chunks_table}(chunk, valid, rowids, codes, qcodes) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        c + 1,
                        valid[c * cs : (c + 1) * cs].tobytes(),
                        rid[c * cs : (c + 1) * cs].tobytes(),
                        allc[c * cs : (c + 1) * cs].tobytes(),
                        allq[c * cs : (c + 1) * cs].tobytes(),
                    )
                    for c in range(n_chunks)
                ],
            )
            if o.model:
                self.conn.execute(
                    f"UPDATE {self.rows_table} SET {quote_ident(cset.chunk_col)} = NULL, "
                    f"{quote_ident(cset.slot_col)} = NULL"
                )
            pos = np.arange(n)
            self.conn.executemany(
                f"UPDATE {self.rows_table} SET {quote_ident(cset.chunk_col)} = ?, {quote_ident(cset.slot_col)} = ? "
                "WHERE rowid = ?",
                zip((pos // cs + 1).tolist(), (pos % cs).tolist(), ids.tolist()),
            )
        catalog.write_generation(self.conn, self.schema, self.name)
        self.invalidate()
        self._flushes += 1

    # ------------------------------------------------------------------ reads
    def _where(self, conds: Sequence[Cond], *, skip_in: bool = False) -> tuple[list[str], list]:
        where, params = [], []
        for op, col, value in conds:
            if op not in _OPS or (col != "rowid" and col not in self.meta_names):
                raise HqError(f"hq table {self.name}: cannot filter on {col!r} with {op!r}")
            name = quote_ident(col)
            if op == "IN":
                values = list(value)
                if skip_in or any(isinstance(v, bytes) for v in values):  # JSON can't carry BLOBs
                    continue
                where.append(f"{name} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(values))
            elif op in ("ISNULL", "NOTNULL"):
                where.append(f"{name} {op}")
            else:
                where.append(f"{name} {op} ?")
                params.append(value)
        return where, params

    def scan(self, conds: Sequence[Cond] = ()) -> list[tuple]:
        """Rows (rowid, chunk, slot per code set..., metadata...) passing ``conds``, by rowid.
        IN conditions are left to the caller (SQLite re-checks them)."""
        self.flush()
        where, params = self._where(conds, skip_in=True)
        sql = self._select_rows + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid"
        return self._fetch(sql, tuple(params))

    def rows_by_id(self, rowids: Sequence[int]) -> dict[Any, tuple]:
        """{rowid: (chunk, slot per code set..., metadata...)} of the rows that exist."""
        self.flush()
        got = self._fetch(
            self._select_rows + " WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(list(rowids)),)
        )
        return {r[0]: r[1:] for r in got}

    def _fetch(self, sql: str, params: tuple) -> list[tuple]:
        """Rows of the rows table; TEXT that is not UTF-8 (written by another program) is a
        :class:`CorruptTableError` naming the table, not a decoding crash."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except UnicodeDecodeError:
            raise CorruptTableError(
                f"hq table {self.name}: a row's metadata is TEXT that is not UTF-8 (written outside hqdb?)"
            ) from None

    def codes_of(self, set_idx: int, rowid: int) -> tuple[bytes, bytes | None] | None:
        """(bit code, qcode or None) of a row as the file holds them now, or None if the row
        has no codes in this set (or no longer exists)."""
        self.flush()
        self.fresh()
        loc = self._locate(rowid)
        if loc is None or loc[set_idx] is None:
            return None
        st = self.stores[set_idx]
        chunk, slot = loc[set_idx]
        pos = st.holds(chunk, slot, rowid)
        if pos is None:
            raise CorruptTableError(f"hq table {self.name}: row {rowid} points at a slot that does not hold it")
        q = st.qcodes[pos].astype(self.opts.qcode_dtype, copy=False).tobytes() if self.opts.books else None
        return st.codes[pos].tobytes(), q

    def count(self) -> int:
        self.flush()
        return int(catalog.scalar(self.conn, f"SELECT count(*) FROM {self.rows_table}"))

    # ------------------------------------------------------------------ search
    def parse_query(self, value, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate one query; return (bits, float vector or None).

        A query is a float32 vector of ``dim`` values in the common space, ``dim/8`` bytes of
        bit code ('hamming' mode only), or — on a model-bound table — ``hq_query(modality,
        value)``, which this table's model encodes first."""
        o = self.opts
        decoded = decode_query(value)
        if decoded is not None:
            if not o.model:
                raise HqError(
                    f"hq_query() needs a model-bound table; {self.name} is a raw table: "
                    f"pass a float32 vector of {o.dim} values"
                )
            modality, raw = decoded
            qi = self.set_index(modality)
            bitf, vec = self.encode_inputs(qi, [self.check_input(qi, raw)])
            return kernels.pack_bits(bitf[0]), vec[0]
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise HqError(
                f"hq_match query for {self.name} must be a BLOB (float32 x {o.dim}, or {o.code_bytes} "
                f"bytes of bit code{', or hq_query(modality, value)' if o.model else ''}), got {type(value).__name__}"
            )
        value = bytes(value)
        if len(value) == o.dim * 4:
            vec = np.frombuffer(value, dtype="<f4")  # read-only: nothing downstream writes to it
            try:
                return kernels.pack_bits(vec), vec
            except ValueError:
                raise HqError(f"hq_match query for {self.name} contains NaN or infinity") from None
        if len(value) == o.code_bytes:
            if mode != "hamming":
                raise HqError(
                    f"hq_match query for {self.name} is a {o.code_bytes}-byte bit code: it can only "
                    f"be searched with mode = 'hamming' (AQD needs a float32 vector of {o.dim} values)"
                )
            return np.frombuffer(value, dtype=np.uint8), None
        raise HqError(
            f"hq_match query for {self.name} must be a float32 vector of {o.dim} values "
            f"({o.dim * 4} bytes) or a bit code of {o.code_bytes} bytes; got {len(value)} bytes"
        )

    def parse_queries(self, queries, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(bits (Q, code_bytes) uint8, vectors (Q, dim) float32 or None) of a batch of queries:
        a sequence of values as :meth:`parse_query` takes them, or a float32 (Q, dim) array."""
        o = self.opts
        if isinstance(queries, np.ndarray):
            if queries.dtype != np.float32 or queries.ndim != 2 or queries.shape[1] != o.dim:
                raise HqError(
                    f"search_many on {self.name}: an array of queries must be float32 of "
                    f"shape (Q, {o.dim}), got {queries.dtype} {queries.shape}"
                )
            vecs = np.ascontiguousarray(queries)
            if not np.isfinite(vecs).all():
                raise HqError(f"search_many on {self.name}: queries contain NaN or infinity")
            return kernels.pack_bits(vecs), vecs
        if isinstance(queries, (str, bytes, bytearray, memoryview)):
            raise HqError(f"search_many on {self.name} takes a sequence of queries, not one query")
        parsed = [self.parse_query(q, mode) for q in queries]
        bits = np.empty((len(parsed), o.code_bytes), dtype=np.uint8)
        for j, (b, _) in enumerate(parsed):
            bits[j] = b
        if mode == "hamming":
            return bits, None
        vecs = np.empty((len(parsed), o.dim), dtype=np.float32)  # every query has a vector here
        for j, (_, v) in enumerate(parsed):
            vecs[j] = v
        return bits, vecs

    def luts(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One AQD lookup table per query vector, (Q, books, codewords), and each query's
        distance offset (Q,) float64.

        The kernel reports distance = −Σ_l LUT[l][b_l]. Metric 'ip': LUT[l][j] = ⟨q, C^l_j⟩, so
        the distance is −⟨q, Σ_l C^l b_l⟩, offset 0. Metric 'l2': LUT[l][j] = 2⟨q, C^l_j⟩ − ‖C^l_j‖²,
        so the distance is Σ_l ‖C^l b_l‖² − 2⟨q, Σ_l C^l b_l⟩, and offset ‖q‖² + ε makes it
        ‖q − Σ_l C^l b_l‖² exactly when the cross-book products Σ_{l≠l'} ⟨C^l b_l, C^{l'} b_{l'}⟩
        equal the constant ε (CQ's constraint; ε from the model, 0 for raw tables). The offset
        does not change the order."""
        cb = self.codebooks()
        if cb is None:
            raise HqError(
                f"hq table {self.name} has no codebooks: set them with "
                f"SELECT hq_set_codebooks('{self.name}', :blob), or search with mode = 'hamming'"
            )
        luts = np.empty((len(vecs), cb.shape[0], cb.shape[1]), dtype=np.float32)
        plan = self._lut_plan(cb)
        try:
            for j, vec in enumerate(vecs):
                if plan is None:
                    luts[j] = kernels.aqd_lut(vec, cb)
                    continue
                for book, (support, compact, width) in enumerate(plan):
                    if compact is None:
                        luts[j, book] = kernels.aqd_lut(vec, cb[book : book + 1])[0] if width else 0.0
                    else:
                        luts[j, book] = kernels.aqd_lut(np.ascontiguousarray(vec[support]), compact)[0]
        except ValueError:  # the only way a finite query and finite codebooks fail here
            raise HqError(
                f"hq_match on {self.name}: the query's products with the codebooks overflow float32 "
                "(query or codebook values too large)"
            ) from None
        offsets = np.zeros(len(vecs), dtype=np.float64)
        if self.opts.metric == "l2":
            if self._cb_norms is None or self._cb_norms[0] is not cb:
                self._cb_norms = (cb, (cb.astype(np.float64) ** 2).sum(2))
            luts = (2.0 * luts.astype(np.float64) - self._cb_norms[1]).astype(np.float32)
            eps = float(self.model().epsilon) if self.opts.model else 0.0
            offsets = (vecs.astype(np.float64) ** 2).sum(1) + eps
        return luts, offsets

    def _lut_plan(self, cb: np.ndarray) -> list | None:
        """For codebooks that are mostly zeros (the bit code's books and product-quantized books of
        'bits_pq'): each book's nonzero dimensions and its codewords on them, so the LUT is
        computed on those only (the same float64 sums: the skipped products are exact zeros);
        None for dense codebooks."""
        if self._lut_plans is None or self._lut_plans[0] is not cb:
            plan, used = [], 0
            for book in range(cb.shape[0]):
                support, words = quantize.book_support(cb[book])  # the dimensions, a slice or indices
                used += words.shape[1]
                narrow = 0 < words.shape[1] < cb.shape[2]
                plan.append((support, words[None] if narrow else None, words.shape[1]))
            sparse = used * 2 < cb.shape[0] * cb.shape[2]
            self._lut_plans = (cb, plan if sparse else None)
        return self._lut_plans[1]

    def filter_mask(self, set_idx: int, conds: Sequence[Cond]) -> np.ndarray:
        """Slots (a uint8 mask over the cache) of rows that pass the metadata conditions."""
        st = self.stores[set_idx]
        cset = self.sets[set_idx]
        mask = st.valid[: st.size].copy()
        where, params = self._where(conds)
        if not where:
            return mask
        # One string of packed (chunk, slot) keys parsed in C is far cheaper than a Python tuple
        # per matching row when a filter keeps most of a large table.
        chunk, slot = quote_ident(cset.chunk_col), quote_ident(cset.slot_col)
        packed = catalog.scalar(
            self.conn,
            f"SELECT group_concat({chunk} * 65536 + {slot}) FROM {self.rows_table} "
            f"WHERE typeof({chunk}) = 'integer' AND typeof({slot}) = 'integer' AND {slot} BETWEEN 0 AND {st.cs - 1} "
            f"AND {' AND '.join(where)}",
            tuple(params),
        )
        sel = np.zeros(st.size, dtype=np.uint8)
        if packed:
            keys = np.array(packed.split(","), dtype=np.int64)
            chunk_ids = np.asarray(st.chunk_ids, dtype=np.int64)  # ascending: chunks are numbered in order
            idx = np.searchsorted(chunk_ids, keys >> 16)
            ok = (idx < len(chunk_ids)) & (chunk_ids[np.minimum(idx, len(chunk_ids) - 1)] == keys >> 16)
            sel[(idx * st.cs + (keys & 0xFFFF))[ok]] = 1
        return mask & sel

    def _arrays(self, set_idx: int, conds: Sequence[Cond] | None):
        """(generation, codes, qcodes, rowids, valid) for the kernels. With 'bits_pq' codebooks
        the qcodes are each row's bit code followed by its quantization codes (kept in memory
        next to the cache until the next write): the LUT has a book for each."""
        self.flush()
        generation = self.fresh()
        st = self.stores[set_idx]
        n = st.size
        valid = self.filter_mask(set_idx, conds) if conds else st.valid[:n]
        qcodes = st.qcodes[:n] if self.opts.books else None
        if qcodes is not None and qcodes.dtype == np.uint8 and self.joint_books():
            key = (generation, self._flushes, n, st.codes.ctypes.data, st.qcodes.ctypes.data)
            hit = self._joint_cache.get(set_idx)
            if hit is None or hit[0] != key:
                hit = self._joint_cache[set_idx] = (key, np.ascontiguousarray(np.hstack([st.codes[:n], qcodes])))
            qcodes = hit[1]
        return generation, st.codes[:n], qcodes, st.rowids[:n], valid

    def _kernel(self, set_idx: int, conds: Sequence[Cond] | None, *, many: bool = False):
        """:func:`kernels.search` (or ``search_many``), or on an ``index='mih'`` table the same call
        through the code set's multi-index hash (:mod:`hqdb.engine.mih`: same results, 'aqd' and
        small tables still scan)."""
        st = self.stores[set_idx]
        if st.index is None:
            scan = kernels.search_many if many else kernels.search
            if conds or st.n_rows != st.size:
                return scan
            # Every slot of the cache holds a row: the scan needn't read the mask.
            return lambda codes, qcodes, rowids, _valid, *args, **kw: scan(codes, qcodes, rowids, None, *args, **kw)
        # Without conditions the mask is the cache's own, whose count the store keeps.
        run = mih.search_many if many else mih.search
        return functools.partial(run, st.index, n_valid=None if conds else st.n_rows)

    def search(self, set_idx: int, query, params: Params, conds: Sequence[Cond] | None = None, *, threads: int = 1):
        """One query (as :meth:`parse_query` takes it): (rowids, distances, hamming), best first."""
        with self._pinned():
            return self._search(set_idx, query, params, conds, threads)

    def _search(self, set_idx: int, query, params: Params, conds, threads: int):
        mode = params.run_mode
        bits, vec = self.parse_query(query, mode)
        if self.opts.rerank and mode != "hamming" and vec is not None:
            return self._reranked(set_idx, bits[None, :], vec[None, :], params, conds, threads)[0]
        _, codes, qcodes, rowids, valid = self._arrays(set_idx, conds)
        mode = _plan(mode, params.candidates, len(rowids))
        lut, offset = (None, None) if mode == "hamming" or vec is None else self.luts(vec[None, :])
        out = self._kernel(set_idx, conds)(
            codes,
            qcodes,
            rowids,
            valid,
            bits,
            None if lut is None else lut[0],
            k=params.k,
            candidates=params.candidates,
            mode=mode,
            threads=threads,
        )
        return _with_offsets(out, offset)

    def search_many(
        self,
        set_idx: int,
        queries,
        params: Params,
        conds: Sequence[Cond] | None = None,
        *,
        threads: int = 1,
        device: str | None = None,
    ):
        """Many queries in one kernel call; row j of each result array is exactly what
        :meth:`search` returns for query j."""
        with self._pinned():
            return self._search_many(set_idx, queries, params, conds, threads, device)

    def _search_many(self, set_idx: int, queries, params: Params, conds, threads: int, device: str | None):
        mode = params.run_mode
        bits, vecs = self.parse_queries(queries, mode)
        if self.opts.rerank and mode != "hamming" and vecs is not None:
            found = self._reranked(set_idx, bits, vecs, params, conds, threads)
            return tuple(_padded([f[j] for f in found], params.k) for j in range(3))
        generation, codes, qcodes, rowids, valid = self._arrays(set_idx, conds)
        mode = _plan(mode, params.candidates, len(rowids))
        luts, offsets = (None, None) if mode == "hamming" or vecs is None else self.luts(vecs)
        arrays = (codes, qcodes, rowids, valid, bits, luts)
        kw: dict[str, Any] = {"k": params.k, "candidates": params.candidates, "mode": mode}
        if device is None:
            out = self._kernel(set_idx, conds, many=True)(*arrays, threads=threads, **kw)
        else:
            from ..kernels import torch_backend

            key = (device, generation, codes.shape[0])
            hit = self._device_cache.get(set_idx)
            if hit is None or hit[0] != key:
                hit = self._device_cache[set_idx] = (key, torch_backend.DeviceCodes(codes, qcodes, rowids, device))
            out = torch_backend.search_many(*arrays, resident=hit[1], **kw)
        if offsets is None:
            return out
        r, d, h = out
        return (r, d.astype(np.float64) + offsets[:, None], h) if offsets.any() else out


def _plan(mode: str, candidates: int, n_slots: int) -> str:
    """The kernel mode to run: 'two_stage' whose shortlist would take every row is 'aqd' over
    every row, the same results (both rank by AQD, then Hamming distance, then rowid) without
    the Hamming selection's cost."""
    return "aqd" if mode == "two_stage" and candidates >= n_slots else mode


def _with_offsets(out, offset):
    if offset is None or not offset.any():
        return out
    r, d, h = out
    return r, d.astype(np.float64) + offset[0], h


def _given(puts: list, field: int, width: int, dtype: np.dtype) -> np.ndarray | None:
    """The ``field`` bytes of every put as an (n, width) array, or None if any put lacks them."""
    if any(p[field] is None for p in puts):
        return None
    count = len(puts)
    return np.frombuffer(b"".join(p[field] for p in puts), dtype=dtype).reshape(count, width)


def _padded(rows: list, k: int) -> np.ndarray:
    """Per-query result rows of up to k values as one (Q, k) array, padded as the kernels pad
    (rowid -1, distance inf, Hamming -1)."""
    first = rows[0] if rows else np.zeros(0)
    fill = -1 if first.dtype.kind == "i" else np.inf
    out = np.full((len(rows), k), fill, dtype=first.dtype)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return out
