"""Batched search (issue 7): kernels.search_many equals the one-query search for every query
(native and numba, every route and thread count); Table.search_many and the SQL aggregate
hq_search_many equal hq_match searches; bad batches are refused whole; device= falls back to
the native kernels with one notice when CUDA is missing."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hqdb
from conftest import random_table
from hqdb import kernels as K
from hqdb.engine.query import resolve
from hqdb.errors import HqError
from test_kernels import ISAS, PROPS, assert_same, knobs, make_table, ref_search

NATIVE = K.BACKEND == "native"
needs_native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable: {K.FALLBACK_REASON}")


def make_batch(rng, n_queries, nb, m, kw, int_lut):
    queries = rng.integers(0, 256, (n_queries, nb), dtype=np.uint8)
    if int_lut:  # few distinct values: many equal distances
        luts = rng.integers(-4, 5, (n_queries, m, kw)).astype(np.float32)
    else:
        luts = rng.standard_normal((n_queries, m, kw)).astype(np.float32)
    return queries, luts


@st.composite
def batches(draw):
    n = draw(st.integers(0, 3000))
    nb = draw(st.one_of(st.sampled_from([1, 5, 8, 16, 24, 32, 64, 128]), st.integers(1, 128)))
    m = draw(st.integers(1, 6))
    kw = draw(st.one_of(st.sampled_from([2, 256, 300]), st.integers(2, 300)))
    pool = draw(st.sampled_from([0, 0, 1, 3, 40]))
    valid_p = draw(st.sampled_from([None, 1.0, 0.7, 0.1, 0.0]))
    int_lut = draw(st.booleans())
    n_queries = draw(st.sampled_from([0, 1, 2, 3, 9, 70]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes, qcodes, rowids, valid, _, _ = make_table(rng, n, nb, m, kw, pool=pool, valid_p=valid_p)
    queries, luts = make_batch(rng, n_queries, nb, m, kw, int_lut)
    if pool and n_queries and n:  # queries equal to stored codes: distance 0 and long ties
        queries[0] = codes[0]
    return codes, qcodes, rowids, valid, queries, luts


def one_by_one(search, codes, qcodes, rowids, valid, queries, luts, **kw):
    return [search(codes, qcodes, rowids, valid, queries[j], luts[j], **kw) for j in range(len(queries))]


def assert_batch_equals(got, singles, n_queries):
    assert all(g.shape[0] == n_queries for g in got)
    for j, want in enumerate(singles):
        assert_same(tuple(g[j] for g in got), want)


@PROPS
@given(
    batch=batches(),
    mode=st.sampled_from(K.MODES),
    k=st.integers(1, 40),
    # <= 32 Hamming candidates: per-query heaps; above: the kept-buffer route
    candidates=st.one_of(st.integers(1, 40), st.integers(1, 1200)),
    threads=st.sampled_from([1, 2, 3]),
    isa=st.sampled_from(ISAS),  # every Hamming scan path this CPU has
    # first bounds: sampled (0), none (1), too small so queries fall back to one by one (2)
    path=st.sampled_from([0, 1, 2]),
)
def test_search_many_equals_search_per_query(batch, mode, k, candidates, threads, isa, path):
    codes, qcodes, rowids, valid, queries, luts = batch
    args = dict(k=k, candidates=candidates, mode=mode)
    with knobs(isa=isa, path=path):
        got = K.search_many(codes, qcodes, rowids, valid, queries, luts, threads=threads, **args)
    singles = [ref_search(codes, qcodes, rowids, valid, queries[j], luts[j], **args)
               for j in range(len(queries))]
    assert_batch_equals(got, singles, len(queries))
    nvalid = len(codes) if valid is None else int(valid.sum())
    assert got[0].shape == (len(queries), min(k, nvalid))


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(21)
    codes, qcodes, rowids, valid, _, _ = make_table(rng, 120_000, 16, 4, 256, valid_p=0.9, int_lut=False)
    queries, luts = make_batch(rng, 40, 16, 4, 256, int_lut=False)
    return codes, qcodes, rowids, valid, queries, luts


@pytest.mark.parametrize("mode", K.MODES)
@pytest.mark.parametrize("candidates", [10, 300, 3000])
def test_large_batch_equals_search_for_any_thread_count(big, mode, candidates):
    # 120k rows: several L2 blocks per query; 40 queries: several query groups per thread
    codes, qcodes, rowids, valid, queries, luts = big
    singles = one_by_one(K.search, codes, qcodes, rowids, valid, queries, luts, k=10,
                         candidates=candidates, mode=mode)
    for threads in (1, 2, 7, 64):
        for path in (0, 2):
            with knobs(path=path):
                got = K.search_many(codes, qcodes, rowids, valid, queries, luts, k=10,
                                    candidates=candidates, mode=mode, threads=threads)
            assert_batch_equals(got, singles, len(queries))


@needs_native
@pytest.mark.parametrize("mode", K.MODES)
def test_numba_batch_equals_native(big, mode):
    numba = K._backend_api("numba")
    codes, qcodes, rowids, valid, queries, luts = big
    for candidates in (50, 2000):
        b = numba.search_many(codes, qcodes, rowids, valid, queries[:7], luts[:7], k=15,
                              candidates=candidates, mode=mode)
        for isa in ISAS:  # every Hamming scan path equals numba
            with knobs(isa=isa):
                a = K.search_many(codes, qcodes, rowids, valid, queries[:7], luts[:7], k=15,
                                  candidates=candidates, mode=mode, threads=2)
            for x, y in zip(a, b):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y, err_msg=isa)


@pytest.mark.parametrize("mode", K.MODES)
def test_all_codes_equal_ties_break_by_rowid(mode):
    n = 5000
    codes = np.zeros((n, 16), dtype=np.uint8)
    qcodes = np.zeros((n, 2), dtype=np.uint8)
    rowids = np.arange(n, dtype=np.int64)[::-1].copy()
    queries = np.zeros((5, 16), dtype=np.uint8)
    luts = np.ones((5, 2, 4), dtype=np.float32)
    for candidates in (20, 1000):
        got = K.search_many(codes, qcodes, rowids, None, queries, luts, k=12, candidates=candidates,
                            mode=mode, threads=2)
        for j in range(5):
            np.testing.assert_array_equal(got[0][j], np.arange(12))


def test_empty_batch_and_empty_table():
    rng = np.random.default_rng(0)
    codes, qcodes, rowids, valid, _, _ = make_table(rng, 100, 8, 2, 16)
    none = np.empty((0, 8), dtype=np.uint8)
    got = K.search_many(codes, qcodes, rowids, None, none, np.empty((0, 2, 16), np.float32), k=5,
                        candidates=10)
    assert [g.shape for g in got] == [(0, 5)] * 3
    empty = np.empty((0, 8), dtype=np.uint8)
    got = K.search_many(empty, np.empty((0, 2), np.uint8), np.empty(0, np.int64), None,
                        codes[:3].copy(), np.zeros((3, 2, 16), np.float32), k=5, candidates=10)
    assert [g.shape for g in got] == [(3, 0)] * 3


def good_batch():
    rng = np.random.default_rng(5)
    codes, qcodes, rowids, valid, _, _ = make_table(rng, 200, 8, 3, 16, valid_p=0.8)
    queries, luts = make_batch(rng, 4, 8, 3, 16, int_lut=False)
    return dict(codes=codes, qcodes=qcodes, rowids=rowids, valid=valid, queries_bits=queries, luts=luts)


@pytest.mark.parametrize(
    "field, value, exc, match",
    [
        ("queries_bits", np.zeros(8, np.uint8), ValueError, "2-dimensional"),
        ("queries_bits", np.zeros((4, 9), np.uint8), ValueError, "bytes"),
        ("queries_bits", np.zeros((4, 8), np.int8), TypeError, "uint8"),
        ("queries_bits", np.zeros((8, 4), np.uint8).T, ValueError, "C-contiguous"),
        ("luts", np.zeros((3, 3, 16), np.float32), ValueError, "4 queries"),
        ("luts", np.zeros((4, 2, 16), np.float32), ValueError, "codebooks"),
        ("luts", np.zeros((4, 3, 16), np.float64), TypeError, "float32"),
        ("luts", np.full((4, 3, 16), np.nan, np.float32), ValueError, "NaN"),
        ("luts", None, ValueError, "needs qcodes and luts"),
        ("rowids", np.zeros(5, np.int64), ValueError, "rowids"),
        ("valid", np.zeros(5, np.uint8), ValueError, "valid"),
    ],
)
def test_bad_batch_input(field, value, exc, match):
    args = good_batch()
    args[field] = value
    with pytest.raises(exc, match=match):
        K.search_many(*args.values(), k=5, candidates=20, mode="two_stage")


def test_qcode_out_of_range_in_any_query_fails_the_batch():
    args = good_batch()
    qcodes = args["qcodes"].copy()
    valid_row = int(np.flatnonzero(args["valid"])[0])
    qcodes[valid_row, 1] = 16
    args["qcodes"] = qcodes
    before = {k: v.copy() for k, v in args.items() if v is not None}
    for mode in ("aqd", "two_stage"):
        with pytest.raises(ValueError, match="qcode out of range"):
            K.search_many(*args.values(), k=5, candidates=200, mode=mode, threads=2)
    for k, v in before.items():
        np.testing.assert_array_equal(args[k], v)


def test_bad_scalars():
    args = good_batch()
    with pytest.raises(ValueError, match="unknown mode"):
        K.search_many(*args.values(), k=5, candidates=20, mode="fast")
    with pytest.raises(ValueError, match="k must be"):
        K.search_many(*args.values(), k=0, candidates=20)
    with pytest.raises(TypeError, match="threads"):
        K.search_many(*args.values(), k=5, candidates=20, threads=1.5)


# ------------------------------------------------------------------------------------------
# The table and SQL
# ------------------------------------------------------------------------------------------
def sql_search(db, table, query, k, mode, where="", candidates=1000):
    return db.execute(
        f"SELECT rowid, distance, hamming FROM {table} WHERE hq_match({table}.code, ?) AND k = ? "
        f"AND mode = ? AND candidates = ? {where}",
        (query, k, mode, candidates),
    ).fetchall()


@pytest.mark.parametrize("mode", ["two_stage", "aqd", "hamming"])
def test_table_search_many_equals_hq_match(db, mode):
    random_table(db, "docs", n=3000, extra=", year INTEGER")
    db.execute("UPDATE docs SET year = rowid % 5")
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((12, 64)).astype(np.float32)
    table = db.hq.table("docs")
    params = resolve(7, 50, mode)
    for conds, where in [(None, ""), ([(">", "year", 2)], "AND year > 2")]:
        rowids, dist, ham = table.search_many(0, [v.tobytes() for v in vecs], params, conds)
        for j, v in enumerate(vecs):
            want = sql_search(db, "docs", v.tobytes(), 7, mode, where, candidates=50)
            assert list(zip(rowids[j].tolist(), dist[j].tolist(), ham[j].tolist())) == want
        # an array of vectors gives the same
        again = table.search_many(0, vecs, params, conds)
        for a, b in zip(again, (rowids, dist, ham)):
            np.testing.assert_array_equal(a, b)


def test_table_search_many_bit_code_queries_in_hamming_mode(db):
    codes, *_ = random_table(db, "docs", n=400)
    table = db.hq.table("docs")
    rowids, dist, ham = table.search_many(0, [codes[3].tobytes(), codes[9].tobytes()], resolve(5, 5, "hamming"))
    for j, c in enumerate((codes[3], codes[9])):
        assert rowids[j].tolist() == [r for r, _, _ in sql_search(db, "docs", c.tobytes(), 5, "hamming")]
    with pytest.raises(HqError, match="mode = 'hamming'"):
        table.search_many(0, [codes[3].tobytes()], resolve(5, 5, "two_stage"))


def test_sql_aggregate_equals_hq_match(db):
    random_table(db, "docs", n=2000)
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((9, 64)).astype(np.float32)
    db.execute("CREATE TABLE queries(id INTEGER PRIMARY KEY, vec BLOB)")
    db.executemany("INSERT INTO queries VALUES (?, ?)", [(100 + j, v.tobytes()) for j, v in enumerate(vecs)])
    rows = db.execute(
        "SELECT r.value ->> 'query', r.value ->> 'rank', r.value ->> 'rowid', r.value ->> 'distance', "
        "r.value ->> 'hamming' "
        "FROM json_each((SELECT hq_search_many('docs', q.id, q.vec, 6, 80) FROM queries AS q)) AS r"
    ).fetchall()
    assert len(rows) == 9 * 6
    for j, v in enumerate(vecs):
        want = db.execute(
            "SELECT rowid, distance, hamming FROM docs WHERE hq_match(docs.code, ?) AND k = 6 "
            "AND candidates = 80", (v.tobytes(),)
        ).fetchall()
        got = [(r[2], r[3], r[4]) for r in rows if r[0] == 100 + j]
        assert got == want
        assert [r[1] for r in rows if r[0] == 100 + j] == list(range(1, 7))


def test_sql_aggregate_runs_one_batched_kernel_call(db, monkeypatch):
    random_table(db, "docs", n=500)
    calls = {"many": 0, "one": 0}
    real_many, real_one = K.search_many, K.search

    def count_many(*a, **kw):
        calls["many"] += 1
        return real_many(*a, **kw)

    def count_one(*a, **kw):
        calls["one"] += 1
        return real_one(*a, **kw)

    monkeypatch.setattr(K, "search_many", count_many)
    monkeypatch.setattr(K, "search", count_one)
    rng = np.random.default_rng(3)
    db.execute("CREATE TABLE queries(id INTEGER PRIMARY KEY, vec BLOB)")
    db.executemany("INSERT INTO queries VALUES (?, ?)",
                   [(j, rng.standard_normal(64).astype(np.float32).tobytes()) for j in range(25)])
    (out,) = db.execute("SELECT hq_search_many('docs', id, vec, 3) FROM queries").fetchone()
    assert len(json.loads(out)) == 75
    assert calls == {"many": 1, "one": 0}


def test_sql_aggregate_errors(db):
    random_table(db, "docs", n=100)
    v = np.zeros(64, np.float32).tobytes()
    assert db.execute("SELECT hq_search_many('docs', 1, ?, 3) WHERE 0", (v,)).fetchone() == ("[]",)
    with pytest.raises(HqError, match="no hq table"):
        db.execute("SELECT hq_search_many('nope', 1, ?, 3)", (v,)).fetchone()
    with pytest.raises(HqError, match="same for every query"):
        db.execute("SELECT hq_search_many('docs', x, ?, x) FROM (SELECT 1 AS x UNION ALL SELECT 2)",
                   (v,)).fetchall()
    with pytest.raises(HqError, match="NULL"):
        db.execute("SELECT hq_search_many('docs', 1, NULL, 3)").fetchone()
    with pytest.raises(HqError, match="k must be"):
        db.execute("SELECT hq_search_many('docs', 1, ?, 0)", (v,)).fetchone()
    with pytest.raises(HqError, match="unknown mode"):
        db.execute("SELECT hq_search_many('docs', 1, ?, 3, 10, 'fast')", (v,)).fetchone()
    with pytest.raises(HqError, match="float32 vector of 64"):
        db.execute("SELECT hq_search_many('docs', 1, x'0102', 3)").fetchone()


def test_cuda_device_without_cuda_falls_back_with_one_notice(db_path):
    from hqdb.kernels import torch_backend

    if torch_backend.cuda_available():
        pytest.skip("CUDA is available here: no fallback to test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = hqdb.connect(db_path, device="cuda")
    notices = [w for w in caught if "CUDA is not available" in str(w.message)]
    assert len(notices) == 1 and "\n" not in str(notices[0].message)
    try:
        assert conn.hq.device is None  # the native kernels
        random_table(conn, "docs", n=300)
        vec = np.ones(64, np.float32).tobytes()
        rowids, _, _ = conn.hq.table("docs").search_many(0, [vec], resolve(4, 20, "two_stage"))
        want = sql_search(conn, "docs", vec, 4, "two_stage", candidates=20)
        assert rowids[0].tolist() == [r for r, _, _ in want]
    finally:
        conn.close()


def test_bad_device_name(db_path):
    pytest.importorskip("torch")
    with pytest.raises(HqError, match="not a torch device"):
        hqdb.connect(db_path, device="warp-drive")
    with pytest.raises(HqError, match="device must be"):
        hqdb.connect(db_path, device=3)
