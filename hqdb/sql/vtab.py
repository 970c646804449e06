"""The ``hq`` SQLite virtual-table module (apsw).

Columns of ``CREATE VIRTUAL TABLE t USING hq(dim=.., books=.., codewords=.., <metadata>)``:

====  ==========  ===========================================================================
 0    code        packed bit code, ``dim/8`` bytes, sqlite-vec ``bit[dim]`` layout
 1    qcode       quantization indices, ``books`` bytes (uint16 little-endian if codewords > 256)
 2..  metadata    the user's columns (TEXT / INTEGER / REAL / BLOB)
 then distance    hidden: AQD distance (negative inner product, or squared Euclidean distance
                  for metric 'l2') or Hamming distance
      hamming     hidden: Hamming distance to the query's bit code
      k           hidden: number of results (``AND k = 10``; ``LIMIT`` works too)
      candidates  hidden: size of the Hamming candidate set re-ranked by AQD
      mode        hidden: 'two_stage' (default), 'hamming' or 'aqd'
====  ==========  ===========================================================================

A search is ``WHERE hq_match(t.code, :q) AND k = 10``: ``hq_match`` is overloaded by the table
(xFindFunction) so the planner hands the query to :meth:`HqTable.BestIndexObject` as a
constraint, and the whole search is one kernel call in :meth:`HqCursor.Filter`.

Query plans are encoded in ``idxStr`` like sqlite-vec does: a header letter then one token per
argument, so BestIndex and Filter agree by construction (see :func:`_encode_plan`).

Many queries at once: :meth:`HqTable.search_many` (Python) and the SQL aggregate
``hq_search_many(table, query_id, query, k [, candidates [, mode]])`` (:class:`SearchManyAggregate`)
run a whole batch as one kernel call (:func:`hqdb.kernels.search_many`, or the torch backend when
the connection has a ``device``); each query gets exactly its ``hq_match`` result.
"""

from __future__ import annotations

import json
import math

import numpy as np

import apsw

from .. import kernels
from ..engine.catalog import quote_ident
from ..engine.options import TableOptions, parse_args
from ..engine.storage import CodeStore
from ..errors import CorruptTableError, HqError, ModelError, OptionError
from ..model.store import load_model

PENDING_BATCH = 4096  # queued inputs encoded together (and at every commit)
MAX_K = 65536
MAX_CANDIDATES = 1 << 31
MODES = ("two_stage", "hamming", "aqd")

# SQLite's constraint operators we can evaluate against the metadata table.
_FILTER_OPS = {
    apsw.SQLITE_INDEX_CONSTRAINT_EQ: "=",
    apsw.SQLITE_INDEX_CONSTRAINT_GT: ">",
    apsw.SQLITE_INDEX_CONSTRAINT_LE: "<=",
    apsw.SQLITE_INDEX_CONSTRAINT_LT: "<",
    apsw.SQLITE_INDEX_CONSTRAINT_GE: ">=",
    apsw.SQLITE_INDEX_CONSTRAINT_NE: "!=",
    apsw.SQLITE_INDEX_CONSTRAINT_IS: "IS",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNOT: "IS NOT",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNULL: "ISNULL",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNOTNULL: "NOTNULL",
    apsw.SQLITE_INDEX_CONSTRAINT_LIKE: "LIKE",
    apsw.SQLITE_INDEX_CONSTRAINT_GLOB: "GLOB",
}
_OP_CODES = {op: i for i, op in enumerate(_FILTER_OPS)}
_OP_BY_CODE = {i: sql for i, sql in enumerate(_FILTER_OPS.values())}
HQ_MATCH_OP = apsw.SQLITE_INDEX_CONSTRAINT_FUNCTION  # what FindFunction hands back for hq_match

# Plan header letters.
PLAN_SEARCH = "S"   # hq_match: two-stage / hamming / aqd search
PLAN_ROWID = "R"    # rowid = ?
PLAN_SCAN = "F"     # full scan in rowid order (metadata filters pushed into SQL)


# hq_query(modality, value) hands the table a tagged BLOB: the table's own model encodes it.
_QUERY_TAG = b"HQQ\x01"


def encode_query(modality, value) -> bytes:
    if not isinstance(modality, str) or not modality or len(modality.encode()) > 255:
        raise HqError("hq_query(modality, value): modality must be a name such as 'image' or 'text'")
    if isinstance(value, str):
        kind, payload = b"t", value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        kind, payload = b"b", bytes(value)
    else:
        raise HqError("hq_query(modality, value): value must be TEXT or a float32 feature BLOB")
    name = modality.encode("utf-8")
    return _QUERY_TAG + bytes([len(name)]) + name + kind + payload


def decode_query(blob):
    """(modality, value) of an hq_query() BLOB, or None for any other value."""
    if not isinstance(blob, bytes) or not blob.startswith(_QUERY_TAG) or len(blob) < 6:
        return None
    n = blob[4]
    name, kind, payload = blob[5:5 + n], blob[5 + n:6 + n], blob[6 + n:]
    return name.decode("utf-8"), (payload.decode("utf-8") if kind == b"t" else payload)


def _hq_match_scalar(*_args):
    raise HqError(
        "hq_match() only works as a WHERE constraint on an hq virtual table, e.g. "
        "WHERE hq_match(t.code, :query) AND k = 10"
    )


# ------------------------------------------------------------------------------------------
# Module
# ------------------------------------------------------------------------------------------
class HqModule:
    """One instance per connection; remembers that connection's open hq tables by name."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        self.tables: dict[tuple[str, str], HqTable] = {}
        self.threads = 1
        self.device: str | None = None  # torch device for batched searches; None: native kernels

    def _resolve_model(self, name: str):
        try:
            model = load_model(self.conn, name)
        except ModelError as e:
            raise OptionError(str(e)) from None
        return model.bits, model.books, model.codewords, tuple(model.modalities), model.metric

    def Create(self, conn, modulename, dbname, tablename, *args):
        try:
            opts = parse_args(args, self._resolve_model)
        except OptionError as e:
            raise HqError(str(e)) from None
        CodeStore.create_tables(conn, dbname, tablename, opts)
        conn.execute(
            f"INSERT INTO {quote_ident(dbname)}.hqdb_tables(name, dim, books, codewords, chunk_size, options) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (tablename, opts.dim, opts.books, opts.codewords, opts.chunk_size, opts.to_json()),
        )
        return self._open(conn, dbname, tablename, opts)

    def Connect(self, conn, modulename, dbname, tablename, *args):
        row = conn.execute(
            f"SELECT dim, books, codewords, chunk_size, options FROM {quote_ident(dbname)}.hqdb_tables "
            "WHERE name = ?",
            (tablename,),
        ).fetchone()
        if row is None:
            raise HqError(f"hq table {tablename!r} is missing from the hqdb catalog (hqdb_tables)")
        return self._open(conn, dbname, tablename, TableOptions.from_catalog(*row))

    def _open(self, conn, dbname, tablename, opts):
        table = HqTable(self, conn, dbname, tablename, opts)
        self.tables[(dbname, tablename.lower())] = table
        return table.declaration(), table

    def table(self, name: str, schema: str = "main") -> "HqTable":
        """The open table object for ``name`` (connecting it if this connection has not yet)."""
        key = (schema, name.lower())
        if key not in self.tables:
            exists = self.conn.execute(
                f"SELECT 1 FROM {quote_ident(schema)}.hqdb_tables WHERE name = ? COLLATE NOCASE", (name,)
            ).fetchone()
            if not exists:
                raise HqError(f"no hq table named {name!r}")
            # Any statement touching the table makes SQLite connect it.
            self.conn.execute(f"SELECT rowid FROM {quote_ident(schema)}.{quote_ident(name)} WHERE rowid = 0")
        table = self.tables.get(key)
        if table is None:  # pragma: no cover - SQLite connected no instance of it
            raise HqError(f"hq table {name!r} could not be connected")
        return table


class HqShadowModule(HqModule):
    """The module that also names its shadow tables to SQLite (xShadowName: in defensive mode
    ordinary SQL may then read but not write them). apsw has a fixed number of slots for such
    modules per process (33), so connections past that use :class:`HqModule` without it."""

    def ShadowName(self, suffix):
        return suffix in ("rows", "pending") or suffix.endswith("chunks")


# ------------------------------------------------------------------------------------------
# Plans
# ------------------------------------------------------------------------------------------
def _encode_plan(header: str, tokens: list[str]) -> str:
    """``header`` + ``;``-joined tokens, one token per argv entry in argv order.

    Tokens: ``m<col>`` hq_match on column col, ``k``, ``c`` (candidates), ``o`` (mode),
    ``l`` (LIMIT), ``r`` (rowid =), ``f<col>:<op>`` (metadata filter), ``i<col>`` (col IN (...)).
    """
    return header + ";".join(tokens)


def _decode_plan(idx_str: str) -> tuple[str, list[str]]:
    header, rest = idx_str[0], idx_str[1:]
    return header, (rest.split(";") if rest else [])


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------
class HqTable:
    def __init__(self, module: HqModule, conn: apsw.Connection, schema: str, name: str, opts: TableOptions):
        self.module = module
        self.conn = conn
        self.schema = schema
        self.opts = opts
        self.sets = opts.code_sets
        self.meta_names = [c.name for c in opts.columns]
        # Column layout: raw tables [code, qcode, meta..., hidden]; model-bound tables
        # [m, m_code, m_qcode for each modality m, meta..., hidden].
        cols: list[tuple[str, int]] = []
        for i in range(len(self.sets)):
            if opts.model:
                cols.append(("input", i))
            cols += [("code", i), ("qcode", i)]
        self.COL_META0 = len(cols)
        cols += [("meta", j) for j in range(len(opts.columns))]
        self.COL_DISTANCE = len(cols)
        self.COL_HAMMING, self.COL_K, self.COL_CANDIDATES, self.COL_MODE = range(len(cols) + 1, len(cols) + 5)
        cols += [("distance", 0), ("hamming", 0), ("k", 0), ("candidates", 0), ("mode", 0)]
        self.cols = cols
        self._codebooks: np.ndarray | None = None
        self._codebooks_version: int | None = None
        self._model = None
        self._rename(name)

    def _rename(self, name: str) -> None:
        self.name = name
        self.rows_table = f"{quote_ident(self.schema)}.{quote_ident(name + '_rows')}"
        self.pending_table = f"{quote_ident(self.schema)}.{quote_ident(name + '_pending')}"
        self.stores = [CodeStore(self.conn, self.schema, name, self.opts, c) for c in self.sets]
        locs = [col for c in self.sets for col in (c.chunk_col, c.slot_col)]
        names = ["rowid", *locs, *self.meta_names]
        self._select_rows = f"SELECT {', '.join(map(quote_ident, names))} FROM {self.rows_table}"
        self._insert_row = (
            f"INSERT INTO {self.rows_table}({', '.join(map(quote_ident, names))}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )

    @property
    def store(self) -> CodeStore:
        """The code store of a raw table (its only code set)."""
        return self.stores[0]

    def declaration(self) -> str:
        decl = []
        for kind, i in self.cols:
            c = self.sets[i] if kind in ("input", "code", "qcode") else None
            if kind == "input":
                decl.append(f"{quote_ident(c.input_col)} HIDDEN")
            elif kind in ("code", "qcode"):
                col = c.code_col if kind == "code" else c.qcode_col
                decl.append(f"{quote_ident(col)} BLOB" + (" HIDDEN" if self.opts.model else ""))
            elif kind == "meta":
                m = self.opts.columns[i]
                decl.append(f"{quote_ident(m.name)} {m.type}")
        decl += ["distance REAL HIDDEN", "hamming INTEGER HIDDEN", "k INTEGER HIDDEN",
                 "candidates INTEGER HIDDEN", "mode TEXT HIDDEN"]
        return f"CREATE TABLE x({', '.join(decl)})"

    # -------------------------------------------------------------- version and cache
    def db_version(self) -> int:
        row = self.conn.execute(
            f"SELECT version FROM {quote_ident(self.schema)}.hqdb_tables WHERE name = ?", (self.name,)
        ).fetchone()
        if row is None:
            raise CorruptTableError(f"hq table {self.name} is missing from the catalog")
        return int(row[0])

    def fresh(self) -> int:
        """Bring every code cache up to the database; return the catalog version."""
        version = self.db_version()
        for st in self.stores:
            st.ensure_fresh(version)
        return version

    def bump(self) -> None:
        """Record a write in the catalog counter; our caches saw it, so they move along."""
        self.conn.execute(
            f"UPDATE {quote_ident(self.schema)}.hqdb_tables SET version = version + 1 WHERE name = ?",
            (self.name,),
        )
        for st in self.stores:
            if st.loaded and st.version is not None:
                st.version += 1

    # -------------------------------------------------------------- codebooks and model
    def codebooks(self, version: int | None = None) -> np.ndarray | None:
        """The table's codebooks (books x codewords x dim float32), or None if not set yet."""
        if self.opts.model:
            return self.model().codebooks
        if version is None:
            version = self.db_version()
        if self._codebooks_version != version:
            (blob,) = self.conn.execute(
                f"SELECT codebooks FROM {quote_ident(self.schema)}.hqdb_tables WHERE name = ?", (self.name,)
            ).fetchone() or (None,)
            self._codebooks = None if blob is None else self._parse_codebooks(blob)
            self._codebooks_version = version
        return self._codebooks

    def _parse_codebooks(self, blob) -> np.ndarray:
        o = self.opts
        if not isinstance(blob, bytes):
            raise HqError(f"codebooks for {self.name} must be a BLOB of float32, got {type(blob).__name__}")
        expected = o.books * o.codewords * o.dim * 4
        if len(blob) != expected:
            raise HqError(
                f"codebooks for {self.name} must be {o.books}x{o.codewords}x{o.dim} float32 "
                f"({expected} bytes), got {len(blob)} bytes"
            )
        cb = np.frombuffer(blob, dtype="<f4").reshape(o.books, o.codewords, o.dim).astype(np.float32)
        if not np.isfinite(cb).all():
            raise HqError(f"codebooks for {self.name} contain NaN or infinity")
        return cb

    def set_codebooks(self, blob) -> None:
        if self.opts.model:
            raise HqError(f"hq table {self.name} takes its codebooks from model {self.opts.model!r}")
        if self.opts.books == 0:
            raise HqError(f"hq table {self.name} has books=0: it stores no quantization codes")
        self._parse_codebooks(blob)
        self.conn.execute(
            f"UPDATE {quote_ident(self.schema)}.hqdb_tables SET codebooks = ? WHERE name = ?",
            (blob, self.name),
        )
        self.bump()
        self._codebooks_version = None

    def model(self):
        """The trained model a model-bound table encodes with (loaded once per connection)."""
        if self._model is None:
            try:
                self._model = load_model(self.conn, self.opts.model)
            except ModelError as e:
                raise HqError(f"hq table {self.name}: {e}") from None
        return self._model

    def encode_inputs(self, set_idx: int, values: list) -> tuple[np.ndarray, np.ndarray]:
        """Features (float32 blobs) or raw text of one modality → (bit features, common-space
        vectors), both (N, dim): the bit code is the signs of the first (the same array unless
        the model has separate hash towers, c+d)."""
        model = self.model()
        modality = self.sets[set_idx].name
        texts = [v for v in values if isinstance(v, str)]
        if texts and len(texts) != len(values):
            raise HqError(f"{self.name}.{modality}: mix of text and feature blobs in one batch")
        try:
            if texts:
                x = model.featurize(modality, texts)
            else:
                x = np.stack([np.frombuffer(v, dtype="<f4") for v in values]).astype(np.float32)
                x = model.featurize(modality, x)
            return model.encode(modality, x)
        except (ValueError, TypeError) as e:
            raise HqError(f"{self.name}.{modality}: {e}") from None

    def check_input(self, set_idx: int, value) -> object:
        """Validate one modality input at INSERT time, so the batched encode cannot fail later."""
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
                raise HqError(f"{self.name}.{modality} must be a float32 BLOB of {d} values "
                              f"({4 * d} bytes); got {len(value)} bytes")
            if not np.isfinite(np.frombuffer(value, dtype="<f4")).all():
                raise HqError(f"{self.name}.{modality}: features contain NaN or infinity")
            return value
        raise HqError(f"{self.name}.{modality} must be a BLOB of float32 features"
                      + (" or TEXT" if model.has_featurizer(modality) else "")
                      + f", got {type(value).__name__}")

    # -------------------------------------------------------------- planning
    def _set_of_column(self, col: int) -> int | None:
        if 0 <= col < self.COL_META0:
            kind, i = self.cols[col]
            if kind in ("input", "code"):
                return i
        return None

    def BestIndexObject(self, ii: apsw.IndexInfo) -> bool:
        match = k = cand = mode = limit = rowid_eq = None
        filters: list[tuple[int, int, bool]] = []  # (constraint index, column, is_in)
        unusable_match = False
        for i in range(ii.nConstraint):
            col, op, usable = ii.get_aConstraint_iColumn(i), ii.get_aConstraint_op(i), ii.get_aConstraint_usable(i)
            if op == HQ_MATCH_OP:
                if not usable:
                    unusable_match = True
                elif match is None:
                    match = i
                continue
            if not usable:
                continue
            if op == apsw.SQLITE_INDEX_CONSTRAINT_LIMIT:
                limit = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_K:
                k = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_CANDIDATES:
                cand = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_MODE:
                mode = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == -1:
                rowid_eq = i
            elif (
                self.COL_META0 <= col < self.COL_DISTANCE
                and op in _FILTER_OPS
                and (ii.get_aConstraint_collation(i) or "BINARY").upper() == "BINARY"
            ):
                filters.append((i, col, op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and ii.get_aConstraintUsage_in(i)))

        tokens: list[str] = []

        def use(i: int, token: str, omit: bool = True) -> None:
            tokens.append(token)
            ii.set_aConstraintUsage_argvIndex(i, len(tokens))  # argvIndex is 1-based
            ii.set_aConstraintUsage_omit(i, omit)

        def use_filters() -> None:
            for i, col, is_in in filters:
                if is_in:
                    ii.set_aConstraintUsage_in(i, True)  # all IN values arrive in one Filter call
                    use(i, f"i{col}", omit=False)
                else:
                    use(i, f"f{col}:{_OP_CODES[ii.get_aConstraint_op(i)]}", omit=False)

        if match is not None:
            use(match, f"m{ii.get_aConstraint_iColumn(match)}")
            for i, tok in ((k, "k"), (cand, "c"), (mode, "o"), (limit, "l")):
                if i is not None:
                    use(i, tok)
            # The filters narrow the search itself, so k rows come back whenever k rows match.
            # SQLite still re-checks them (omit=False): our SQL evaluation is only a prefilter.
            use_filters()
            if ii.nOrderBy == 1 and ii.get_aOrderBy_iColumn(0) == self.COL_DISTANCE and not ii.get_aOrderBy_desc(0):
                ii.orderByConsumed = True
            ii.idxStr = _encode_plan(PLAN_SEARCH, tokens)
            ii.estimatedCost = 10.0
            ii.estimatedRows = 10
            return True

        if unusable_match:
            # Only reachable when the query argument comes from a table joined later: steer the
            # planner to put that table first.
            ii.idxStr = _encode_plan(PLAN_SCAN, [])
            ii.estimatedCost = 1e18
            return True

        if rowid_eq is not None:
            use(rowid_eq, "r")
            ii.idxStr = _encode_plan(PLAN_ROWID, tokens)
            ii.idxFlags = apsw.SQLITE_INDEX_SCAN_UNIQUE
            ii.estimatedCost = 1.0
            ii.estimatedRows = 1
            return True

        use_filters()
        if ii.nOrderBy == 1 and ii.get_aOrderBy_iColumn(0) == -1 and not ii.get_aOrderBy_desc(0):
            ii.orderByConsumed = True
        ii.idxStr = _encode_plan(PLAN_SCAN, tokens)
        ii.estimatedCost = 1e6 / (1 + 9 * bool(filters))
        ii.estimatedRows = 100000
        return True

    def FindFunction(self, name, nargs):
        if name == "hq_match" and nargs == 2:
            return (HQ_MATCH_OP, _hq_match_scalar)
        return None

    def Open(self):
        return HqCursor(self)

    # -------------------------------------------------------------- writes
    def _validate_code(self, cset, value) -> np.ndarray:
        o = self.opts
        label = f"{self.name}.{cset.code_col}"
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            if len(value) == o.code_bytes:
                return np.frombuffer(value, dtype=np.uint8)
            if len(value) == o.dim * 4:  # a float32 vector: store its sign bits
                vec = np.frombuffer(value, dtype="<f4")
                if not np.isfinite(vec).all():
                    raise HqError(f"{label}: float32 vector contains NaN or infinity")
                return kernels.pack_bits(vec)
            raise HqError(
                f"{label} must be a BLOB of {o.code_bytes} bytes (dim={o.dim} bits) "
                f"or a float32 vector of {o.dim} values ({o.dim * 4} bytes); got {len(value)} bytes"
            )
        if value is None:
            raise HqError(f"{label} cannot be NULL")
        raise HqError(f"{label} must be a BLOB, got {type(value).__name__}")

    def _validate_qcode(self, cset, value) -> np.ndarray | None:
        o = self.opts
        label = f"{self.name}.{cset.qcode_col}"
        if o.books == 0:
            if value is not None:
                raise HqError(f"{self.name} has books=0: {cset.qcode_col} must be NULL")
            return None
        if value is None:
            raise HqError(f"{label} cannot be NULL (table has books={o.books})")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise HqError(f"{label} must be a BLOB, got {type(value).__name__}")
        value = bytes(value)
        if len(value) != o.qcode_bytes:
            width = "uint8" if o.codewords <= 256 else "uint16 little-endian"
            raise HqError(
                f"{label} must be {o.books} {width} indices ({o.qcode_bytes} bytes); got {len(value)} bytes"
            )
        q = np.frombuffer(value, dtype=o.qcode_dtype)
        if int(q.max()) >= o.codewords:
            raise HqError(f"{label}: index {int(q.max())} out of range (codewords={o.codewords})")
        return q

    def _split_fields(self, fields):
        """Validate a row's values; return (per code set: ('codes', code, qcode) | ('input', value)
        | None, metadata values). Nothing is written before every value has passed."""
        for col, label in ((self.COL_DISTANCE, "distance"), (self.COL_HAMMING, "hamming"),
                           (self.COL_K, "k"), (self.COL_CANDIDATES, "candidates"), (self.COL_MODE, "mode")):
            if fields[col] is not None:
                raise HqError(f"{self.name}.{label} is a query column and cannot be written")
        per_set: list = [None] * len(self.sets)
        values = {(kind, i): fields[n] for n, (kind, i) in enumerate(self.cols)}
        for i, cset in enumerate(self.sets):
            raw_input = values.get(("input", i))
            code, qcode = values[("code", i)], values[("qcode", i)]
            if raw_input is not None:
                per_set[i] = ("input", self.check_input(i, raw_input))
            elif code is not None or not self.opts.model:
                per_set[i] = ("codes", self._validate_code(cset, code), self._validate_qcode(cset, qcode))
            elif qcode is not None:
                raise HqError(f"{self.name}.{cset.qcode_col} given without {cset.code_col}")
        meta = list(fields[self.COL_META0:self.COL_DISTANCE])
        for c, v in zip(self.opts.columns, meta):
            if isinstance(v, float) and math.isnan(v):
                raise HqError(f"{self.name}.{c.name}: NaN is not a value")
        return per_set, meta

    def _locate(self, rowid: int) -> list | None:
        """[(chunk, slot) or None per code set] of a row, or None if there is no such row."""
        locs = ", ".join(f"{quote_ident(c.chunk_col)}, {quote_ident(c.slot_col)}" for c in self.sets)
        row = self.conn.execute(f"SELECT {locs} FROM {self.rows_table} WHERE rowid = ?", (rowid,)).fetchone()
        if row is None:
            return None
        return [None if row[2 * i] is None else (row[2 * i], row[2 * i + 1]) for i in range(len(self.sets))]

    def _conflicts(self, rowid, meta) -> list[int]:
        """Rowids of existing rows an insert of (rowid, meta) would collide with."""
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

    def UpdateInsertRow(self, rowid, fields):
        per_set, meta = self._split_fields(fields)
        self.fresh()
        conflicts = self._conflicts(rowid, meta)
        if conflicts:
            policy = self.conn.vtab_on_conflict()
            if policy == apsw.SQLITE_REPLACE:
                for r in conflicts:
                    self._delete(r)
            elif policy == apsw.SQLITE_IGNORE:
                return conflicts[0]
            else:
                what = "rowid" if rowid in conflicts else self.opts.key_column.name
                raise apsw.ConstraintError(f"UNIQUE constraint failed: {self.name}.{what}")
        locs = []
        for st, item in zip(self.stores, per_set):
            locs += st.next_free() if item is not None and item[0] == "codes" else (None, None)
        self.conn.execute(self._insert_row, (rowid, *locs, *meta))
        if rowid is None:
            rowid = self.conn.last_insert_rowid()
        self._store_codes(rowid, per_set, locs)
        self.bump()
        return rowid

    def _store_codes(self, rowid: int, per_set: list, locs: list) -> None:
        """Put directly given codes in their (already reserved) slots; queue inputs to encode."""
        pending = []
        for i, (st, item) in enumerate(zip(self.stores, per_set)):
            if item is None:
                continue
            if item[0] == "codes":
                st.put(locs[2 * i], locs[2 * i + 1], rowid, item[1], item[2])
            else:
                pending.append((rowid, self.sets[i].name, item[1]))
        if pending:
            self.conn.executemany(
                f"INSERT INTO {self.pending_table}(rowid, codeset, value) VALUES (?, ?, ?)", pending
            )
            if self.conn.execute(f"SELECT count(*) >= ? FROM {self.pending_table}",
                                 (PENDING_BATCH,)).fetchone()[0]:
                self.flush_pending()

    def flush_pending(self) -> None:
        """Encode every queued input in one batch per modality and store the codes."""
        if not self.opts.model:
            return
        rows = self.conn.execute(
            f"SELECT rowid, codeset, value FROM {self.pending_table} ORDER BY codeset, rowid"
        ).fetchall()
        if not rows:
            return
        self.fresh()
        model = self.model()
        for i, cset in enumerate(self.sets):
            mine = [(r, v) for r, c, v in rows if c == cset.name]
            if not mine:
                continue
            rowids = np.array([r for r, _ in mine], dtype=np.int64)
            bitf, f = self.encode_inputs(i, [v for _, v in mine])
            st = self.stores[i]
            chunks, slots = st.allocate(len(mine))
            st.put_many(chunks, slots, rowids, kernels.pack_bits(bitf), model.quantize(f) if model.books else None)
            self.conn.executemany(
                f"UPDATE {self.rows_table} SET {quote_ident(cset.chunk_col)} = ?, "
                f"{quote_ident(cset.slot_col)} = ? WHERE rowid = ?",
                zip(chunks.tolist(), slots.tolist(), rowids.tolist()),
            )
        self.conn.execute(f"DELETE FROM {self.pending_table}")
        self.bump()

    def _has_pending(self) -> bool:
        return bool(self.opts.model) and self.conn.execute(
            f"SELECT 1 FROM {self.pending_table} LIMIT 1").fetchone() is not None

    def _delete(self, rowid: int) -> None:
        locs = self._locate(rowid)
        if locs is None:
            return
        self.conn.execute(f"DELETE FROM {self.rows_table} WHERE rowid = ?", (rowid,))
        if self.opts.model:
            self.conn.execute(f"DELETE FROM {self.pending_table} WHERE rowid = ?", (rowid,))
        for st, loc in zip(self.stores, locs):
            if loc is not None:
                st.clear(*loc)

    def UpdateDeleteRow(self, rowid):
        self.fresh()
        self._delete(rowid)
        self.bump()

    def UpdateChangeRow(self, rowid, newrowid, fields):
        per_set, meta = self._split_fields(fields)
        self.fresh()
        old = self._locate(rowid)
        if old is None:
            raise CorruptTableError(f"hq table {self.name}: row {rowid} vanished during UPDATE")
        if newrowid != rowid and self._locate(newrowid) is not None:
            if self.conn.vtab_on_conflict() == apsw.SQLITE_REPLACE:
                self._delete(newrowid)
            else:
                raise apsw.ConstraintError(f"UNIQUE constraint failed: {self.name}.rowid")
        if self.opts.model:
            self.conn.execute(f"DELETE FROM {self.pending_table} WHERE rowid = ?", (rowid,))
        locs = []
        for st, item, loc in zip(self.stores, per_set, old):
            if item is not None and item[0] == "codes" and loc is not None:
                st.update(*loc, newrowid, item[1], item[2])
                locs += loc
                continue
            if loc is not None:  # re-encoded from new input, or the modality was removed
                st.clear(*loc)
            locs += st.next_free() if item is not None and item[0] == "codes" else (None, None)
        names = [c for cs in self.sets for c in (cs.chunk_col, cs.slot_col)] + self.meta_names
        sets = ", ".join(f"{quote_ident(n)} = ?" for n in ["rowid", *names])
        self.conn.execute(f"UPDATE {self.rows_table} SET {sets} WHERE rowid = ?", (newrowid, *locs, *meta, rowid))
        fresh_items = [
            item if (item is not None and (item[0] == "input" or old[i] is None)) else None
            for i, item in enumerate(per_set)
        ]
        self._store_codes(newrowid, fresh_items, locs)
        self.bump()

    # -------------------------------------------------------------- transactions
    # Writes go straight to the shadow tables, so SQLite's transaction machinery is all the
    # durability we need. Queued inputs are encoded before a commit; a rollback only has to
    # drop the in-memory caches.
    def Sync(self):
        self.flush_pending()

    def Rollback(self):
        for st in self.stores:
            st.invalidate()
        self._codebooks_version = None

    def RollbackTo(self, level):
        self.Rollback()

    # -------------------------------------------------------------- lifecycle
    def _forget(self) -> None:
        # SQLite may connect a new instance of a table (after a schema reset) before it
        # disconnects the old one: only drop the entry if it is still this instance.
        key = (self.schema, self.name.lower())
        if self.module.tables.get(key) is self:
            del self.module.tables[key]

    def Disconnect(self):
        self._forget()

    def Destroy(self):
        self._forget()
        CodeStore.drop_tables(self.conn, self.schema, self.name, self.opts)
        self.conn.execute(f"DELETE FROM {quote_ident(self.schema)}.hqdb_tables WHERE name = ?", (self.name,))

    def Rename(self, newname):
        CodeStore.rename_tables(self.conn, self.schema, self.name, newname, self.opts)
        self.conn.execute(
            f"UPDATE {quote_ident(self.schema)}.hqdb_tables SET name = ? WHERE name = ?", (newname, self.name)
        )
        self._forget()
        self._rename(newname)
        self.module.tables[(self.schema, newname.lower())] = self

    def Integrity(self, schema, name, is_quick):
        # PRAGMA integrity_check: the full on-disk consistency check of hqdb.check.
        from ..engine.check import check_table

        problems = check_table(self.conn, name, schema)
        return "\n".join(problems) if problems else None

    # -------------------------------------------------------------- search
    def parse_query(self, blob, mode: str, set_idx: int):
        """Validate a query; return (bits, float vector or None).

        A query is a float32 vector of ``dim`` values in the common space, ``dim/8`` bytes of
        bit code (Hamming mode only), or — on a model-bound table — ``hq_query(modality, value)``,
        which this table's model encodes first."""
        o = self.opts
        decoded = decode_query(blob)
        if decoded is not None:
            if not o.model:
                raise HqError(f"hq_query() needs a model-bound table; {self.name} is a raw table: "
                              f"pass a float32 vector of {o.dim} values")
            modality, value = decoded
            names = [c.name for c in self.sets]
            if modality not in names:
                raise HqError(f"model {o.model!r} has no modality {modality!r} (it has: {', '.join(names)})")
            qi = names.index(modality)
            bitf, vec = self.encode_inputs(qi, [self.check_input(qi, value)])
            return kernels.pack_bits(bitf[0]), vec[0]
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise HqError(
                f"hq_match query for {self.name} must be a BLOB (float32 x {o.dim}, or {o.code_bytes} "
                f"bytes of bit code{', or hq_query(modality, value)' if o.model else ''}), "
                f"got {type(blob).__name__}"
            )
        blob = bytes(blob)
        if len(blob) == o.dim * 4:
            vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            if not np.isfinite(vec).all():
                raise HqError(f"hq_match query for {self.name} contains NaN or infinity")
            return kernels.pack_bits(vec), vec
        if len(blob) == o.code_bytes:
            if mode != "hamming":
                raise HqError(
                    f"hq_match query for {self.name} is a {o.code_bytes}-byte bit code: it can only "
                    f"be searched with mode = 'hamming' (AQD needs a float32 vector of {o.dim} values)"
                )
            return np.frombuffer(blob, dtype=np.uint8), None
        raise HqError(
            f"hq_match query for {self.name} must be a float32 vector of {o.dim} values "
            f"({o.dim * 4} bytes) or a bit code of {o.code_bytes} bytes; got {len(blob)} bytes"
        )

    def filter_mask(self, set_idx: int, conds: list[tuple[str, int, object]]) -> np.ndarray:
        """Slots (as a uint8 mask over the cache) of rows that pass the metadata conditions."""
        st = self.stores[set_idx]
        cset = self.sets[set_idx]
        where, params = [], []
        for kind, col, value in conds:
            name = quote_ident(self.meta_names[col - self.COL_META0])
            if kind == "IN":
                values = list(value)
                if any(isinstance(v, bytes) for v in values):  # JSON can't carry BLOBs: don't prefilter
                    continue
                where.append(f"{name} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(values))
            elif kind in ("ISNULL", "NOTNULL"):
                where.append(f"{name} {kind}")
            else:
                where.append(f"{name} {kind} ?")
                params.append(value)
        mask = st.valid[: st.size].copy()
        if not where:
            return mask
        # One string of packed (chunk, slot) keys parsed in C is far cheaper than a Python tuple
        # per matching row when a filter keeps most of a large table.
        chunk, slot = quote_ident(cset.chunk_col), quote_ident(cset.slot_col)
        (packed,) = self.conn.execute(
            f"SELECT group_concat({chunk} * 65536 + {slot}) FROM {self.rows_table} "
            f"WHERE {chunk} IS NOT NULL AND {' AND '.join(where)}",
            params,
        ).fetchone()
        sel = np.zeros(st.size, dtype=np.uint8)
        if packed:
            keys = np.array(packed.split(","), dtype=np.int64)
            chunk_ids = np.asarray(st.chunk_ids, dtype=np.int64)  # ascending: chunks are numbered in order
            idx = np.searchsorted(chunk_ids, keys >> 16)
            sel[idx * st.cs + (keys & 0xFFFF)] = 1
        return mask & sel

    def search(self, set_idx, query, k, candidates, mode, conds):
        o = self.opts
        if mode not in MODES:
            raise HqError(f"unknown mode {mode!r} for {self.name} (use one of: {', '.join(MODES)})")
        if o.books == 0 and mode != "hamming":
            if mode == "aqd":
                raise HqError(f"{self.name} has books=0: mode 'aqd' needs quantization codes")
            mode = "hamming"
        if self._has_pending():
            self.flush_pending()
        bits, vec = self.parse_query(query, mode, set_idx)
        version = self.fresh()
        lut, offset = self._lut(vec, version) if mode != "hamming" else (None, 0.0)
        st = self.stores[set_idx]
        n = st.size
        valid = self.filter_mask(set_idx, conds) if conds else st.valid[:n]
        rowids, dist, ham = kernels.search(
            st.codes[:n], st.qcodes[:n] if o.books else None, st.rowids[:n], valid, bits, lut,
            k=k, candidates=candidates, mode=mode, threads=self.module.threads,
        )
        if offset:
            dist = dist.astype(np.float64) + offset
        return rowids, dist, ham

    def _lut(self, vec: np.ndarray, version: int) -> tuple[np.ndarray, float]:
        """(AQD lookup table, distance offset) of a float query for this table's codebooks.

        The kernel reports distance = −Σ_l LUT[l][b_l]. Metric 'ip': LUT[l][j] = ⟨q, C^l_j⟩, so
        the distance is −⟨q, Σ_l C^l b_l⟩, offset 0. Metric 'l2': LUT[l][j] = 2⟨q, C^l_j⟩ − ‖C^l_j‖²,
        so the distance is Σ_l ‖C^l b_l‖² − 2⟨q, Σ_l C^l b_l⟩, and offset ‖q‖² + ε makes it
        ‖q − Σ_l C^l b_l‖² exactly when the cross-book products Σ_{l≠l'} ⟨C^l b_l, C^{l'} b_{l'}⟩
        equal the constant ε (CQ's constraint; ε from the model, 0 for raw tables). The offset
        does not change the order."""
        cb = self._codebooks_for_search(version)
        lut = kernels.aqd_lut(vec, cb)
        if self.opts.metric != "l2":
            return lut, 0.0
        if getattr(self, "_cb_norms_of", None) is not cb:
            self._cb_norms = (cb.astype(np.float64) ** 2).sum(2)
            self._cb_norms_of = cb
        lut = (2.0 * lut.astype(np.float64) - self._cb_norms).astype(np.float32)
        eps = float(self.model().epsilon) if self.opts.model else 0.0
        return lut, float((vec.astype(np.float64) ** 2).sum()) + eps

    def default_mode(self) -> str:
        """The search mode when a query names none: a model-bound table searches the way its
        model was trained to be searched (``aqd`` for cq / spdq / cdq, ``hamming`` for chn /
        dcmh / lossless, ``two_stage`` for hq and c+d); a raw table two-stage."""
        if not self.opts.model:
            return "two_stage"
        search = self.model().search
        return search if search in MODES else "hamming"  # 'float' (lossless): its bit codes

    def _codebooks_for_search(self, version: int) -> np.ndarray:
        cb = self.codebooks(version)
        if cb is None:
            raise HqError(
                f"hq table {self.name} has no codebooks: set them with "
                f"SELECT hq_set_codebooks('{self.name}', :blob), or search with mode = 'hamming'"
            )
        return cb

    # -------------------------------------------------------------- batched search
    def search_many(self, set_idx: int, queries, k: int, candidates: int, mode: str = "two_stage",
                    conds: list[tuple[str, int, object]] | None = None):
        """Search many queries at once: one kernel call for the whole batch.

        Parameters
        ----------
        set_idx : int
            Which code set to search (0 on a raw table; the modality's index on a model-bound one).
        queries : sequence of query values, or np.ndarray of float32 (Q, dim)
            Each value as ``hq_match`` takes it (a float32 vector BLOB, a bit-code BLOB in
            'hamming' mode, or ``hq_query(modality, value)`` on a model-bound table); or the
            common-space vectors as one array.
        k, candidates, mode
            As in an ``hq_match`` search, the same for every query.
        conds : list, optional
            Metadata conditions (as :meth:`filter_mask` takes them), the same for every query.

        Returns
        -------
        rowids, distance, hamming : np.ndarray, shape (Q, r)
            Row j is query j's result (exactly what the one-query search returns), best first.
        """
        mode = self._batch_mode(mode)
        if self._has_pending():
            self.flush_pending()
        bits, vecs = self._parse_queries(queries, mode, set_idx)
        version = self.fresh()
        luts, offsets = self._luts(vecs, version) if mode != "hamming" else (None, None)
        st = self.stores[set_idx]
        n = st.size
        valid = self.filter_mask(set_idx, conds) if conds else st.valid[:n]
        codes, qcodes, rowids = st.codes[:n], st.qcodes[:n] if self.opts.books else None, st.rowids[:n]
        if self.module.device is None:
            out = kernels.search_many(codes, qcodes, rowids, valid, bits, luts, k=k,
                                      candidates=candidates, mode=mode, threads=self.module.threads)
        else:
            from ..kernels import torch_backend

            out = torch_backend.search_many(
                codes, qcodes, rowids, valid, bits, luts, k=k, candidates=candidates, mode=mode,
                resident=self._device_codes(set_idx, version, codes, qcodes, rowids))
        if offsets is not None and offsets.any():  # metric 'l2': as search() adds it, per query
            rowids_out, dist, ham = out
            return rowids_out, dist.astype(np.float64) + offsets[:, None], ham
        return out

    def _batch_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise HqError(f"unknown mode {mode!r} for {self.name} (use one of: {', '.join(MODES)})")
        if self.opts.books == 0 and mode != "hamming":
            if mode == "aqd":
                raise HqError(f"{self.name} has books=0: mode 'aqd' needs quantization codes")
            mode = "hamming"
        return mode

    def _parse_queries(self, queries, mode: str, set_idx: int):
        """(bits (Q, code_bytes) uint8, vectors (Q, dim) float32 or None) of a batch of queries."""
        o = self.opts
        if isinstance(queries, np.ndarray):
            if queries.dtype != np.float32 or queries.ndim != 2 or queries.shape[1] != o.dim:
                raise HqError(f"search_many on {self.name}: an array of queries must be float32 of "
                              f"shape (Q, {o.dim}), got {queries.dtype} {queries.shape}")
            vecs = np.ascontiguousarray(queries)
            if not np.isfinite(vecs).all():
                raise HqError(f"search_many on {self.name}: queries contain NaN or infinity")
            return kernels.pack_bits(vecs), vecs
        if isinstance(queries, (str, bytes, bytearray, memoryview)):
            raise HqError(f"search_many on {self.name} takes a sequence of queries, not one query")
        parsed = [self.parse_query(q, mode, set_idx) for q in queries]
        bits = np.empty((len(parsed), o.code_bytes), dtype=np.uint8)
        for j, (b, _) in enumerate(parsed):
            bits[j] = b
        if mode == "hamming":
            return bits, None
        # parse_query refused bit-code queries outside 'hamming' mode: every query has a vector
        vecs = np.empty((len(parsed), o.dim), dtype=np.float32)
        for j, (_, v) in enumerate(parsed):
            vecs[j] = v
        return bits, vecs

    def _luts(self, vecs: np.ndarray, version: int) -> tuple[np.ndarray, np.ndarray]:
        """One AQD lookup table per query vector, (Q, books, codewords), and each query's
        distance offset (Q,) float64, as :meth:`_lut` makes them."""
        cb = self._codebooks_for_search(version)
        luts = np.empty((len(vecs), cb.shape[0], cb.shape[1]), dtype=np.float32)
        offsets = np.zeros(len(vecs), dtype=np.float64)
        for j, vec in enumerate(vecs):
            luts[j], offsets[j] = self._lut(vec, version)
        return luts, offsets

    def _device_codes(self, set_idx: int, version: int, codes, qcodes, rowids):
        """The code set's arrays on the module's torch device, copied once per table version."""
        from ..kernels import torch_backend

        cache = self.__dict__.setdefault("_device_cache", {})
        key = (self.module.device, version, codes.shape[0])
        hit = cache.get(set_idx)
        if hit is None or hit[0] != key:
            cache[set_idx] = hit = (key, torch_backend.DeviceCodes(codes, qcodes, rowids, self.module.device))
        return hit[1]


def resolve_target(module: HqModule, target) -> tuple[HqTable, int]:
    """An hq table and code set from ``'table'`` or ``'table.column'`` (column: a modality's
    input or code column, needed when a model-bound table has several)."""
    if not isinstance(target, str) or not target:
        raise HqError("hq_search_many: the first argument names the hq table, e.g. 'docs' or 'docs.image'")
    name, col = target, None
    if "." in target:
        try:
            return _only_set(module.table(target), target)
        except HqError:
            name, col = target.rsplit(".", 1)
    table = module.table(name)
    if col is None:
        return _only_set(table, target)
    for i, cs in enumerate(table.sets):
        if col in (cs.input_col, cs.code_col, cs.name):
            return table, i
    cols = ", ".join(f"{name}.{cs.input_col or cs.code_col}" for cs in table.sets)
    raise HqError(f"hq_search_many: {name} has no code set {col!r} (use one of: {cols})")


def _only_set(table: HqTable, target: str) -> tuple[HqTable, int]:
    if len(table.sets) != 1:
        cols = ", ".join(f"'{table.name}.{cs.input_col or cs.code_col}'" for cs in table.sets)
        raise HqError(f"hq_search_many: {table.name} has several modalities: name one ({cols})")
    return table, 0


class SearchManyAggregate:
    """The SQL aggregate ``hq_search_many(target, query_id, query, k [, candidates [, mode]])``.

    Collects every (query_id, query) of its group, then runs them as one batched search
    (:meth:`HqTable.search_many`) and returns JSON: one object per result,
    ``{"query": query_id, "rank": 1.., "rowid": .., "distance": .., "hamming": ..}``, queries
    in the order they arrived, each query's results best first. ``target``, ``k``,
    ``candidates`` and ``mode`` must be the same on every row of the group.
    """

    def __init__(self, module: HqModule):
        self.module = module
        self.ids: list = []
        self.queries: list = []
        self.params = None

    @classmethod
    def factory(cls, module: HqModule):
        def make():
            agg = cls(module)
            return agg, cls.step, cls.final

        return make

    def step(self, target, query_id, query, k, candidates=None, mode=None):
        params = (target, k, candidates, mode)
        if self.params is None:
            self.params = params
        elif params != self.params:
            raise HqError("hq_search_many: target, k, candidates and mode must be the same for every query")
        if query is None:
            raise HqError(f"hq_search_many: query {query_id!r} is NULL")
        if not isinstance(query_id, (int, float, str)) and query_id is not None:
            raise HqError("hq_search_many: query_id must be an INTEGER, REAL, TEXT or NULL (it goes into JSON)")
        self.ids.append(query_id)
        self.queries.append(query)

    def final(self):
        if self.params is None:
            return "[]"
        target, k, candidates, mode = self.params
        table, set_idx = resolve_target(self.module, target)
        k = _int_arg("k", k, 1, MAX_K)
        candidates = (max(1000, 10 * k) if candidates is None
                      else _int_arg("candidates", candidates, 1, MAX_CANDIDATES))
        if mode is None:
            mode = table.default_mode()
        elif not isinstance(mode, str) or mode not in MODES:
            raise HqError(f"unknown mode {mode!r} (use one of: {', '.join(MODES)})")
        rowids, dist, ham = table.search_many(set_idx, self.queries, k, candidates, mode)
        out = []
        for qid, rr, dd, hh in zip(self.ids, rowids.tolist(), dist.tolist(), ham.tolist()):
            out += [{"query": qid, "rank": i + 1, "rowid": r, "distance": d, "hamming": h}
                    for i, (r, d, h) in enumerate(zip(rr, dd, hh))]
        return json.dumps(out)


def _int_arg(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise HqError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise HqError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


# ------------------------------------------------------------------------------------------
# Cursor
# ------------------------------------------------------------------------------------------
class HqCursor:
    def __init__(self, table: HqTable):
        self.t = table
        self.rows: list[tuple] = []
        self.i = 0
        self.k = self.candidates = self.mode = None
        self._meta: dict[int, tuple] | None = None

    def Filter(self, idxnum, idxstr, args):
        t = self.t
        header, tokens = _decode_plan(idxstr or PLAN_SCAN)
        self.i = 0
        self._meta = None
        self.k = self.candidates = self.mode = None
        match = set_idx = None
        limit = None
        conds: list[tuple[str, int, object]] = []
        for tok, value in zip(tokens, args):
            kind = tok[0]
            if kind == "m":
                set_idx = t._set_of_column(int(tok[1:]))
                if set_idx is None:
                    cols = " or ".join(f"{t.name}.{c.input_col or c.code_col}" for c in t.sets)
                    raise HqError(f"hq_match searches the code column: write hq_match({cols}, :query)")
                match = value
            elif kind == "k":
                self.k = _int_arg("k", value, 1, MAX_K)
            elif kind == "c":
                self.candidates = _int_arg("candidates", value, 1, MAX_CANDIDATES)
            elif kind == "o":
                if not isinstance(value, str) or value not in MODES:
                    raise HqError(f"unknown mode {value!r} (use one of: {', '.join(MODES)})")
                self.mode = value
            elif kind == "l":
                limit = value
            elif kind == "r":
                pass
            elif kind == "f":
                col, op = tok[1:].split(":")
                conds.append((_OP_BY_CODE[int(op)], int(col), value))
            elif kind == "i":
                conds.append(("IN", int(tok[1:]), value))

        if header == PLAN_SEARCH:
            if self.k is None:
                if limit is None:
                    raise HqError(
                        f"hq_match on {t.name} needs the number of results: add 'AND k = 10' "
                        "(or a LIMIT when the hq table is the only table in the query)"
                    )
                self.k = _int_arg("LIMIT", limit, 1, MAX_K)
            elif limit is not None and isinstance(limit, int) and 0 < limit < self.k:
                self.k = limit
            if match is None:
                raise HqError("hq_match query is NULL")
            mode = self.mode or t.default_mode()
            cand = self.candidates if self.candidates is not None else max(1000, 10 * self.k)
            rowids, dist, ham = t.search(set_idx, match, self.k, cand, mode, conds)
            self.rows = list(zip(rowids.tolist(), dist.tolist(), ham.tolist()))
            return

        if t._has_pending():  # rows inserted earlier in this transaction: encode them first
            t.flush_pending()
        if header == PLAN_ROWID:
            (rowid,) = args[:1]
            rows = t.conn.execute(t._select_rows + " WHERE rowid = ?", (rowid,)).fetchall()
        else:
            where, params = [], []
            for kind, col, value in conds:
                name = quote_ident(t.meta_names[col - t.COL_META0])
                if kind == "IN":
                    continue  # SQLite applies IN itself (omit=False)
                if kind in ("ISNULL", "NOTNULL"):
                    where.append(f"{name} {kind}")
                else:
                    where.append(f"{name} {kind} ?")
                    params.append(value)
            sql = t._select_rows + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid"
            rows = t.conn.execute(sql, params).fetchall()
        # Scan rows: (rowid, None, None) plus their metadata/slot, materialised so writes to the
        # table during the scan (UPDATE ... WHERE) cannot disturb an open shadow-table cursor.
        self.rows = [(r[0], None, None) for r in rows]
        self._meta = {r[0]: r[1:] for r in rows}

    def Eof(self):
        return self.i >= len(self.rows)

    def Rowid(self):
        return self.rows[self.i][0]

    def _row_meta(self, rowid):
        if self._meta is None:
            t = self.t
            ids = [r[0] for r in self.rows]
            got = t.conn.execute(
                t._select_rows + " WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            ).fetchall()
            self._meta = {r[0]: r[1:] for r in got}
        return self._meta[rowid]

    def Column(self, n):
        t = self.t
        rowid, dist, ham = self.rows[self.i]
        if n == -1:
            return rowid
        if n == t.COL_DISTANCE:
            return dist
        if n == t.COL_HAMMING:
            return ham
        if n == t.COL_K:
            return self.k
        if n == t.COL_CANDIDATES:
            return self.candidates
        if n == t.COL_MODE:
            return self.mode
        meta = self._row_meta(rowid)  # (chunk, slot per code set..., metadata...)
        n_locs = 2 * len(t.sets)
        if n >= t.COL_META0:
            return meta[n_locs + n - t.COL_META0]
        kind, i = t.cols[n]
        if kind == "input" or meta[2 * i] is None:
            return None  # inputs are encoded, not kept; or the row lacks this modality
        st = t.stores[i]
        t.fresh()
        pos = st.position(meta[2 * i], meta[2 * i + 1])
        if kind == "code":
            return st.codes[pos].tobytes()
        if t.opts.books == 0:
            return None
        return st.qcodes[pos].astype(t.opts.qcode_dtype, copy=False).tobytes()

    def Next(self):
        self.i += 1

    def Close(self):
        self.rows = []
