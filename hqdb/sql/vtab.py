"""The ``hq`` SQLite virtual-table module (apsw): the SQL face of :class:`hqdb.engine.table.Table`.

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
      mode        hidden: 'two_stage', 'hamming' or 'aqd' (default: the table's own)
====  ==========  ===========================================================================

A model-bound table has, per modality ``m``, a hidden input column ``m`` then ``m_code`` and
``m_qcode`` in place of code and qcode.

A search is ``WHERE hq_match(t.code, :q) AND k = 10``: ``hq_match`` is overloaded by the table
(xFindFunction) so the planner hands the query to :meth:`VTable.BestIndexObject` as a
constraint, and the whole search is one kernel call in :meth:`Cursor.Filter`.

This module only translates: column layout, query plans (``idxStr``, below), SQLite's conflict
policy and transaction callbacks. Rows are written, buffered and flushed by the engine's
:class:`~hqdb.engine.table.Table`; writes reach it through ``Update*``, and it flushes at xSync,
xSavepoint and before every xFilter.
"""

from __future__ import annotations

import apsw

from ..engine import catalog
from ..engine.options import parse_args
from ..engine.schema import ensure
from ..engine.table import Cond, Table
from ..errors import CorruptTableError, HqError, ModelError, OptionError, StaleTableError
from ..model.store import load_model

# SQLite's constraint operators the engine can evaluate against the rows table.
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
_OP_BY_CODE = dict(enumerate(_FILTER_OPS.values()))
_RANGE_OPS = {
    apsw.SQLITE_INDEX_CONSTRAINT_GT,
    apsw.SQLITE_INDEX_CONSTRAINT_GE,
    apsw.SQLITE_INDEX_CONSTRAINT_LT,
    apsw.SQLITE_INDEX_CONSTRAINT_LE,
}
HQ_MATCH_OP = apsw.SQLITE_INDEX_CONSTRAINT_FUNCTION  # what FindFunction hands back for hq_match

_CONFLICT = {apsw.SQLITE_REPLACE: "replace", apsw.SQLITE_IGNORE: "ignore"}

# Plan header letters.
PLAN_SEARCH = "S"  # hq_match: two-stage / hamming / aqd search
PLAN_ROWID = "R"  # rowid = ?
PLAN_SCAN = "F"  # scan in rowid order (metadata and rowid-range filters pushed into SQL)


def hq_match_scalar(*_args):
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
        self.tables: dict[tuple[str, str], VTable] = {}
        self.threads = 1
        self.device: str | None = None  # torch device for batched searches; None: native kernels

    def _resolve_model(self, name: str):
        try:
            model = load_model(self.conn, name)
        except ModelError as e:
            raise OptionError(str(e)) from None
        return model.bits, model.books, model.codewords, tuple(model.modalities), model.metric

    def Create(self, conn, modulename, dbname, tablename, *args):
        opts = parse_args(args, self._resolve_model)
        if dbname == "main":  # hqdb's catalog arrives with a file's first hq table (lazily)
            ensure(conn, in_statement=True)
        return self._open(Table.create(conn, dbname, tablename, opts))

    def Connect(self, conn, modulename, dbname, tablename, *args):
        return self._open(Table.open(conn, dbname, tablename))

    def _open(self, table: Table):
        vt = VTable(self, table)
        self.tables[(table.schema, table.name.lower())] = vt
        return vt.declaration(), vt

    def table(self, name: str, schema: str = "main") -> Table:
        """The engine table ``name`` of this connection (connecting it if needed). A table that
        another connection dropped and recreated is connected anew."""
        entry = catalog.read_entry(self.conn, schema, name)
        if entry is None:
            raise HqError(f"no hq table named {name!r}")
        key = (schema, entry.name.lower())
        vt = self.tables.get(key)
        if vt is None or vt.t.opts != entry.opts:
            # Any statement on the table makes SQLite connect it (anew after a schema change).
            self.conn.execute(f"SELECT rowid FROM {catalog.qualified(schema, entry.name)} WHERE rowid = 0")
            vt = self.tables.get(key)
            if vt is None or vt.t.opts != entry.opts:
                raise StaleTableError(f"hq table {name!r} could not be connected")
        return vt.t

    def flush_all(self) -> None:
        """Write every table's buffered rows (before something reads the shadow tables)."""
        for vt in list(self.tables.values()):
            vt.t.flush()


class HqShadowModule(HqModule):
    """The module that also names its shadow tables to SQLite (xShadowName: in defensive mode
    ordinary SQL may then read but not write them). apsw has a fixed number of slots for such
    modules per process (33), so connections past that use :class:`HqModule` without it."""

    def ShadowName(self, suffix):
        return catalog.is_shadow_suffix(suffix)


# ------------------------------------------------------------------------------------------
# Plans
# ------------------------------------------------------------------------------------------
def encode_plan(header: str, tokens: list[str]) -> str:
    """``header`` + ``;``-joined tokens, one token per argv entry in argv order.

    Tokens: ``m<col>`` hq_match on column col, ``k``, ``c`` (candidates), ``o`` (mode),
    ``l`` (LIMIT), ``s`` (OFFSET), ``r`` (rowid =), ``f<col>:<op>`` (filter on metadata column col, or on the
    rowid when col is -1), ``i<col>`` (col IN (...)).
    """
    return header + ";".join(tokens)


def decode_plan(idx_str: str) -> tuple[str, list[str]]:
    header, rest = idx_str[0], idx_str[1:]
    if header not in (PLAN_SEARCH, PLAN_ROWID, PLAN_SCAN):
        raise HqError(f"invalid hq query plan {idx_str!r}")
    return header, (rest.split(";") if rest else [])


# ------------------------------------------------------------------------------------------
# Virtual table
# ------------------------------------------------------------------------------------------
class VTable:
    """Column layout and SQLite callbacks of one hq table; the work is the engine :class:`Table`'s."""

    def __init__(self, module: HqModule, table: Table):
        self.module = module
        self.t = table
        opts = table.opts
        # Raw tables [code, qcode, meta..., hidden]; model-bound tables [m, m_code, m_qcode
        # for each modality m, meta..., hidden].
        cols: list[tuple[str, int]] = []
        for i in range(len(table.sets)):
            if opts.model:
                cols.append(("input", i))
            cols += [("code", i), ("qcode", i)]
        if opts.rerank:
            cols.append(("vector", 0))  # hidden: each row's vector, kept for the exact re-rank
        self.COL_META0 = len(cols)
        cols += [("meta", j) for j in range(len(opts.columns))]
        self.COL_DISTANCE = len(cols)
        self.COL_HAMMING, self.COL_K, self.COL_CANDIDATES, self.COL_MODE = range(len(cols) + 1, len(cols) + 5)
        cols += [("distance", 0), ("hamming", 0), ("k", 0), ("candidates", 0), ("mode", 0)]
        self.cols = cols
        self._input_cols = [n for n, (kind, _) in enumerate(cols) if kind == "input"]
        self._code_cols = [n for n, (kind, _) in enumerate(cols) if kind == "code"]

    def declaration(self) -> str:
        t = self.t
        q = catalog.quote_ident
        decl = []
        for kind, i in self.cols:
            if kind == "input":
                decl.append(f"{q(t.sets[i].name)} HIDDEN")
            elif kind in ("code", "qcode"):
                c = t.sets[i]
                decl.append(
                    f"{q(c.code_col if kind == 'code' else c.qcode_col)} BLOB" + (" HIDDEN" if t.opts.model else "")
                )
            elif kind == "vector":
                decl.append("vector BLOB HIDDEN")
            elif kind == "meta":
                m = t.opts.columns[i]
                decl.append(f"{q(m.name)} {m.type}")
        decl += [
            "distance REAL HIDDEN",
            "hamming INTEGER HIDDEN",
            "k INTEGER HIDDEN",
            "candidates INTEGER HIDDEN",
            "mode TEXT HIDDEN",
        ]
        return f"CREATE TABLE x({', '.join(decl)})"

    def column_name(self, col: int) -> str:
        """The engine's name of a filterable column: a metadata column, or "rowid"."""
        return "rowid" if col == -1 else self.t.meta_names[col - self.COL_META0]

    def set_of_column(self, col: int) -> int | None:
        if 0 <= col < self.COL_META0:
            kind, i = self.cols[col]
            if kind in ("input", "code"):
                return i
        return None

    # -------------------------------------------------------------- planning
    def BestIndexObject(self, ii: apsw.IndexInfo) -> bool:
        match = k = cand = mode = limit = offset = rowid_eq = None
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
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_OFFSET:
                offset = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_K:
                k = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_CANDIDATES:
                cand = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == self.COL_MODE:
                mode = i
            elif op == apsw.SQLITE_INDEX_CONSTRAINT_EQ and col == -1 and not ii.get_aConstraintUsage_in(i):
                rowid_eq = i
            elif col == -1 and (op in _RANGE_OPS or op == apsw.SQLITE_INDEX_CONSTRAINT_EQ):
                # rowid ranges, and rowid IN (...): any filter at all, written as
                # rowid IN (SELECT rowid FROM t WHERE ...), narrows the search itself
                filters.append((i, col, op == apsw.SQLITE_INDEX_CONSTRAINT_EQ))
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
            # SQLite still re-checks them (omit=False): the engine's evaluation is a prefilter.
            for i, col, is_in in filters:
                if is_in:
                    ii.set_aConstraintUsage_in(i, True)  # all IN values arrive in one Filter call
                    use(i, f"i{col}", omit=False)
                else:
                    use(i, f"f{col}:{_OP_CODES[ii.get_aConstraint_op(i)]}", omit=False)

        if match is not None:
            use(match, f"m{ii.get_aConstraint_iColumn(match)}")
            for ci, tok in ((k, "k"), (cand, "c"), (mode, "o")):
                if ci is not None:
                    use(ci, tok)
            for ci, tok in ((limit, "l"), (offset, "s")):
                if ci is not None:  # SQLite still applies LIMIT and OFFSET to the ranked rows
                    use(ci, tok, omit=False)
            # The filters narrow the search itself, so k rows come back whenever k rows match.
            use_filters()
            if ii.nOrderBy == 1 and ii.get_aOrderBy_iColumn(0) == self.COL_DISTANCE and not ii.get_aOrderBy_desc(0):
                ii.orderByConsumed = True
            ii.idxStr = encode_plan(PLAN_SEARCH, tokens)
            ii.estimatedCost = 10.0
            ii.estimatedRows = 10
            return True

        if unusable_match:
            # Only reachable when the query argument comes from a table joined later: steer the
            # planner to put that table first.
            ii.idxStr = encode_plan(PLAN_SCAN, [])
            ii.estimatedCost = 1e18
            return True

        if rowid_eq is not None:
            use(rowid_eq, "r")
            ii.idxStr = encode_plan(PLAN_ROWID, tokens)
            ii.idxFlags = apsw.SQLITE_INDEX_SCAN_UNIQUE
            ii.estimatedCost = 1.0
            ii.estimatedRows = 1
            return True

        use_filters()
        if ii.nOrderBy == 1 and ii.get_aOrderBy_iColumn(0) == -1 and not ii.get_aOrderBy_desc(0):
            ii.orderByConsumed = True
        ii.idxStr = encode_plan(PLAN_SCAN, tokens)
        ii.estimatedCost = 1e6 / (1 + 9 * bool(filters))
        ii.estimatedRows = 100000
        return True

    def FindFunction(self, name, nargs):
        if name == "hq_match" and nargs == 2:
            return (HQ_MATCH_OP, hq_match_scalar)
        return None

    def Open(self):
        return Cursor(self)

    # -------------------------------------------------------------- writes
    def _split(self, fields) -> tuple[list, list]:
        """(per code set: validated item, metadata values) of a row's column values."""
        t = self.t
        for col in range(self.COL_DISTANCE, len(self.cols)):
            if fields[col] is not None:
                raise HqError(f"{t.name}.{self.cols[col][0]} is a query column and cannot be written")
        if t.opts.model:
            items = [
                t.check_item(i, value=fields[n_in], code=fields[n_in + 1], qcode=fields[n_in + 2])
                for i, n_in in enumerate(self._input_cols)
            ]
        else:
            items = [t.check_item(0, code=fields[0], qcode=fields[1], vector=fields[2] if t.opts.rerank else None)]
        return items, t.check_meta(fields[self.COL_META0 : self.COL_DISTANCE])

    def _policy(self) -> str:
        return _CONFLICT.get(self.t.conn.vtab_on_conflict(), "abort")

    def UpdateInsertRow(self, rowid, fields):
        items, meta = self._split(fields)
        return self.t.insert(rowid, items, meta, self._policy())

    def UpdateDeleteRow(self, rowid):
        self.t.delete(rowid)

    def UpdateChangeRow(self, rowid, newrowid, fields):
        items, meta = self._split(fields)
        self.t.update(rowid, newrowid, items, meta, self._policy())

    # -------------------------------------------------------------- transactions
    def Sync(self):
        self.t.flush()

    def Savepoint(self, level):
        self.t.savepoint(level)

    def Release(self, level):
        self.t.release(level)

    def RollbackTo(self, level):
        self.t.rollback_to(level)

    def Rollback(self):
        self.t.rollback()

    # -------------------------------------------------------------- lifecycle
    def _forget(self) -> None:
        # SQLite may connect a new instance of a table (after a schema reset) before it
        # disconnects the old one: only drop the entry if it is still this instance.
        key = (self.t.schema, self.t.name.lower())
        if self.module.tables.get(key) is self:
            del self.module.tables[key]

    def Disconnect(self):
        self._forget()

    def Destroy(self):
        self._forget()
        self.t.destroy()

    def Rename(self, newname):
        self._forget()
        self.t.rename(newname)
        self.module.tables[(self.t.schema, newname.lower())] = self

    def Integrity(self, schema, name, is_quick):
        # PRAGMA integrity_check: the full on-disk consistency check of hqdb.engine.check.
        from ..engine.check import check_table

        self.t.flush()
        problems = check_table(self.t.conn, name, schema)
        return "\n".join(problems) if problems else None


# ------------------------------------------------------------------------------------------
# Cursor
# ------------------------------------------------------------------------------------------
class Cursor:
    def __init__(self, vt: VTable):
        self.vt = vt
        self.t = vt.t
        self.rows: list[tuple] = []
        self.i = 0
        self.k: int | None = None
        self.candidates: int | None = None
        self.mode: object = None
        self._meta: dict[int, tuple] | None = None

    def Filter(self, idxnum, idxstr, args):
        vt, t = self.vt, self.t
        header, tokens = decode_plan(idxstr or PLAN_SCAN)
        self.i = 0
        self._meta = None
        self.k = self.candidates = self.mode = None
        match: object = None
        set_idx: int | None = None
        k: object = None
        cand: object = None
        mode: object = None
        limit: object = None
        offset: object = None
        conds: list[Cond] = []
        for tok, value in zip(tokens, args):
            kind = tok[0]
            if kind == "m":
                set_idx = vt.set_of_column(int(tok[1:]))
                if set_idx is None:
                    cols = " or ".join(f"{t.name}.{c.input_col or c.code_col}" for c in t.sets)
                    raise HqError(f"hq_match searches the code column: write hq_match({cols}, :query)")
                match = value
            elif kind == "k":
                k = value
            elif kind == "c":
                cand = value
            elif kind == "o":
                mode = value
            elif kind == "l":
                limit = value
            elif kind == "s":
                offset = value
            elif kind == "f":
                col, op = tok[1:].split(":")
                conds.append((_OP_BY_CODE[int(op)], vt.column_name(int(col)), value))
            elif kind == "i":
                conds.append(("IN", vt.column_name(int(tok[1:])), value))

        if header == PLAN_SEARCH:
            assert set_idx is not None
            off = offset if isinstance(offset, int) and offset > 0 else 0
            if k is None:
                if limit is None:
                    raise HqError(
                        f"hq_match on {t.name} needs the number of results: add 'AND k = 10' "
                        "(or a LIMIT when the hq table is the only table in the query)"
                    )
                k_name, k = "LIMIT", limit
                if off and isinstance(limit, int):
                    # SQLite skips the OFFSET rows of what we return: a page needs those before it
                    k_name, k = "LIMIT + OFFSET", limit + off
            else:
                k_name = "k"
                if isinstance(limit, int) and isinstance(k, int) and 0 < limit + off < k:
                    k = limit + off
            if match is None:
                raise HqError("hq_match query is NULL")
            params = t.params(k, cand, mode, k_name=k_name)
            self.k, self.candidates, self.mode = params.k, (cand if cand is None else params.candidates), mode
            rowids, dist, ham = t.search(set_idx, match, params, conds, threads=vt.module.threads)
            self.rows = list(zip(rowids.tolist(), dist.tolist(), ham.tolist()))
            return

        if header == PLAN_ROWID:
            got = t.rows_by_id([args[0]]) if isinstance(args[0], int) else {}
            rows = [(r, *v) for r, v in got.items()]
        else:
            rows = t.scan(conds)
        # Materialised so writes to the table during the scan (UPDATE ... WHERE) cannot disturb
        # an open shadow-table cursor.
        self.rows = [(r[0], None, None) for r in rows]
        self._meta = {r[0]: r[1:] for r in rows}

    def Eof(self):
        return self.i >= len(self.rows)

    def Rowid(self):
        return self.rows[self.i][0]

    def _row_meta(self, rowid):
        if self._meta is None:
            self._meta = self.t.rows_by_id([r[0] for r in self.rows])
        return self._meta.get(rowid)

    def Column(self, n):
        vt, t = self.vt, self.t
        rowid, dist, ham = self.rows[self.i]
        if n == -1:
            return rowid
        if n == vt.COL_DISTANCE:
            return dist
        if n == vt.COL_HAMMING:
            return ham
        if n == vt.COL_K:
            return self.k
        if n == vt.COL_CANDIDATES:
            return self.candidates
        if n == vt.COL_MODE:
            return self.mode
        if n >= vt.COL_META0:
            meta = self._row_meta(rowid)  # (chunk, slot per code set..., metadata...)
            if meta is None:
                if dist is None:  # a scan row deleted since the scan started
                    return None
                # The codes name a row the rows table no longer has: only a write that bypassed
                # hqdb (another SQLite client on the shadow tables) leaves that behind.
                raise CorruptTableError(
                    f"hq table {t.name}: row {rowid} has codes but no row in {t.name}_rows (the shadow "
                    f"tables were changed outside hqdb?); run `hqdb check` and `hqdb rebuild DB {t.name}` "
                    f"(SQL: SELECT hq_check('{t.name}'), hq_rebuild('{t.name}'))"
                )
            return meta[2 * len(t.sets) + n - vt.COL_META0]
        kind, i = vt.cols[n]
        if kind == "input":
            return None  # inputs are encoded, not kept
        if kind == "vector":
            return t.vector_of(0, rowid)
        # Codes are read where the row is *now*: the connection may have written since Filter.
        got = t.codes_of(i, rowid)
        if got is None:
            return None
        return got[0] if kind == "code" else got[1]

    def Next(self):
        self.i += 1

    def Close(self):
        self.rows = []
