"""hqdb's SQL functions, registered on each connection by :func:`hqdb.sql.connection.register`.

Functions that change something (``hq_set_codebooks``, ``hq_rebuild``, ``hq_threads``) are
registered *direct-only*: a view or trigger inside a database file (perhaps one a stranger
sent) cannot call them, only SQL the application itself runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import apsw
import numpy as np

from .. import kernels
from ..engine import fts
from ..engine.check import check, rebuild_table
from ..engine.query import encode_query, resolve
from ..engine.table import Table
from ..errors import HqError
from .vtab import HqModule, hq_match_scalar

DIRECT_ONLY = apsw.SQLITE_DIRECTONLY
# hq_search_many answers with one JSON object per hit (~100 bytes); a group asking for more hits
# than this (queries x k) is refused before any search runs.
MAX_BATCH_HITS = 1_000_000


def _keywords(text):
    """hq_keywords(text): the words of ``text`` as a safe FTS5 MATCH expression (each word
    quoted, joined by OR; :func:`hqdb.engine.fts.match_query`); a text without a word (or NULL)
    gives ``""``, an empty phrase that matches no row (NULL would be an FTS5 syntax error)."""
    if text is not None and not isinstance(text, str):
        raise HqError(f"hq_keywords expects TEXT, got {type(text).__name__}")
    return (fts.match_query(text) if text is not None else None) or '""'


def check_threads(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise HqError(f"hq_threads: expected an integer between 1 and 1024, got {n!r}")
    return n


def resolve_target(module: HqModule, target) -> tuple[Table, int]:
    """An hq table and code set from ``'table'`` or ``'table.column'`` (column: a modality's
    input or code column, or its name; needed when a model-bound table has several)."""
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


def _only_set(table: Table, target: str) -> tuple[Table, int]:
    if len(table.sets) != 1:
        cols = ", ".join(f"'{table.name}.{cs.input_col or cs.code_col}'" for cs in table.sets)
        raise HqError(f"hq_search_many: {table.name} has several modalities: name one ({cols})")
    return table, 0


class SearchManyAggregate:
    """The SQL aggregate ``hq_search_many(target, query_id, query, k [, candidates [, mode]])``.

    Collects every (query_id, query) of its group, then runs them as one batched search
    (:meth:`Table.search_many`) and returns JSON: one object per result,
    ``{"query": query_id, "rank": 1.., "rowid": .., "distance": .., "hamming": ..}``, queries
    in the order they arrived, each query's results best first. ``target``, ``k``,
    ``candidates`` and ``mode`` must be the same on every row of the group.
    """

    def __init__(self, module: HqModule):
        self.module = module
        self.ids: list = []
        self.queries: list = []
        self.params: tuple | None = None

    @classmethod
    def factory(cls, module: HqModule):
        def make():
            agg = cls(module)
            return agg, cls.step, cls.final

        return make

    def step(self, target, query_id, query, k, candidates=None, mode=None):
        params = (target, k, candidates, mode)
        if self.params is None:
            resolve(k, candidates)  # a bad k fails at the first row
            self.params = params
        elif params != self.params:
            raise HqError("hq_search_many: target, k, candidates and mode must be the same for every query")
        if (len(self.ids) + 1) * k > MAX_BATCH_HITS:
            raise HqError(
                f"hq_search_many: {len(self.ids) + 1} queries x k = {k} would answer with more than "
                f"{MAX_BATCH_HITS:,} hits; split the queries into smaller groups (GROUP BY) or lower k"
            )
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
        params = table.params(k, candidates, mode)
        rowids, dist, ham = table.search_many(
            set_idx, self.queries, params, threads=self.module.threads, device=self.module.device
        )
        parts = []
        for qid, rr, dd, hh in zip(self.ids, rowids.tolist(), dist.tolist(), ham.tolist()):
            q = json.dumps(qid)
            parts += [
                f'{{"query": {q}, "rank": {i + 1}, "rowid": {r}, "distance": {json.dumps(d)}, "hamming": {h}}}'
                for i, (r, d, h) in enumerate(zip(rr, dd, hh))
            ]
        return "[" + ", ".join(parts) + "]"


def register_functions(conn: apsw.Connection, module: HqModule) -> None:
    conn.overload_function("hq_match", 2)
    conn.create_scalar_function("hq_match", hq_match_scalar, 2)

    def hq_set_codebooks(name, blob, schema="main"):
        module.table(name, schema).set_codebooks(blob)
        return None

    def hq_codebooks(name, schema="main"):
        cb = module.table(name, schema).codebooks()
        return None if cb is None else cb.astype("<f4").tobytes()

    def hq_threads(*args):
        previous = module.threads
        if args:
            module.threads = check_threads(args[0])
        return previous

    def hq_bits(blob):
        """float32 vector → packed sign bits (the same bytes as vec_quantize_binary)."""
        if not isinstance(blob, bytes) or len(blob) % 32:
            raise HqError("hq_bits expects a float32 BLOB whose length is a multiple of 8 values")
        vec = np.frombuffer(blob, dtype="<f4")
        if not np.isfinite(vec).all():
            raise HqError("hq_bits: vector contains NaN or infinity")
        return kernels.pack_bits(vec).tobytes()

    def hq_check(*args):
        if len(args) > 1:
            raise HqError("hq_check takes at most one argument (a table name)")
        module.flush_all()
        report = check(conn, args[0] if args else None)
        lines = [p for ps in report["tables"].values() for p in ps]
        return "ok" if not lines else "\n".join(lines)

    def hq_rebuild(name, drop_missing=0):
        module.flush_all()
        return json.dumps(rebuild_table(conn, name, drop_missing=bool(drop_missing)))

    def scalar(name: str, fn: Callable[..., Any], n: int, **kw: Any) -> None:
        # apsw's stubs type a scalar function as taking *args; these take the fixed arities
        # registered here, which SQLite enforces.
        conn.create_scalar_function(name, fn, n, **kw)

    for n in (2, 3):
        scalar("hq_set_codebooks", hq_set_codebooks, n, flags=DIRECT_ONLY)
    for n in (1, 2):
        scalar("hq_codebooks", hq_codebooks, n)
        scalar("hq_rebuild", hq_rebuild, n, flags=DIRECT_ONLY)
    scalar("hq_threads", hq_threads, -1, flags=DIRECT_ONLY)
    scalar("hq_bits", hq_bits, 1, deterministic=True)
    scalar("hq_query", encode_query, 2, deterministic=True)
    scalar("hq_keywords", _keywords, 1, deterministic=True)
    scalar("hq_info", lambda: json.dumps(kernels.info()), 0)
    scalar("hq_check", hq_check, -1)
    for n_args in (4, 5, 6):
        conn.create_aggregate_function("hq_search_many", SearchManyAggregate.factory(module), n_args)
