"""Vectors in, codes computed for you: hqdb.fit_table / hqdb.insert_vectors (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hqdb
from hqdb import kernels, quantize


def _vectors(n, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_insert_vectors_stores_the_sign_bits_and_the_encoding(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16, title TEXT)")
    x = _vectors(500)
    cb = hqdb.fit_table(db, "t", x[:300])
    assert cb.shape == (4, 16, 64)
    assert np.array_equal(np.frombuffer(db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4").reshape(cb.shape), cb)
    ids = hqdb.insert_vectors(db, "t", x, metadata={"title": [f"v{i}" for i in range(500)]})
    assert list(ids) == list(range(1, 501))
    stored = db.execute("SELECT code, qcode FROM t ORDER BY rowid").fetchall()
    assert [c for c, _ in stored] == [b.tobytes() for b in kernels.pack_bits(x)]
    assert [q for _, q in stored] == [q.tobytes() for q in quantize.encode(x, cb)]
    # float64 input is converted by value, not reinterpreted
    more = hqdb.insert_vectors(db, "t", x[:3].astype(np.float64))
    again = db.execute("SELECT code FROM t WHERE rowid IN (?, ?, ?) ORDER BY rowid", tuple(map(int, more))).fetchall()
    assert [c for (c,) in again] == [c for c, _ in stored[:3]]
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_encoding_matches_a_float64_reference(db):
    x = _vectors(2000, dim=128, seed=3)
    cb = quantize.fit_codebooks(x, 4, 256, seed=1)
    codes = quantize.encode(x, cb)
    residual = x.astype(np.float64)
    for b in range(4):
        d = ((residual[:, None, :] - cb[b][None].astype(np.float64)) ** 2).sum(2)
        best = d.min(1)
        got = d[np.arange(len(x)), codes[:, b].astype(np.int64)]
        assert np.all(got <= best + 1e-5)  # float32 may pick another index only in a near-tie
        residual -= cb[b][codes[:, b]]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 32), np.float32), r"shape \(N, 64\)"),
    (np.full((2, 64), np.nan, np.float32), "NaN or infinity"),
    (np.array([["a"] * 64]), "real-valued"),
    (np.zeros(64, np.float32), r"shape \(N, 64\)"),
])
def test_bad_vectors_are_refused_and_change_nothing(db, bad, message):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16)")
    hqdb.fit_table(db, "t", _vectors(100))
    with pytest.raises(hqdb.HqError, match=message):
        hqdb.insert_vectors(db, "t", bad)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_insert_vectors_needs_codebooks_first(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16)")
    with pytest.raises(hqdb.HqError, match="fit_table"):
        hqdb.insert_vectors(db, "t", _vectors(5))
    db.execute("CREATE VIRTUAL TABLE b USING hq(dim=64, books=0)")
    hqdb.insert_vectors(db, "b", _vectors(5))  # sign bits only: nothing to fit
    with pytest.raises(hqdb.HqError, match="books=0"):
        hqdb.fit_table(db, "b", _vectors(5))


# ---------------------------------------------------------------- rerank tables
def _clustered(n, dim=64, seed=0, centres=20):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _stored(x, kind):
    if kind == "int8":
        s = np.abs(x).max(1) / 127.0
        return np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.float64) * s[:, None].astype(np.float32)
    return x.astype(kind).astype(np.float64)


def _reference(x, q, k, kind, metric="ip"):
    """Exact top-k over every row (candidates = all rows) on the vectors as stored."""
    v = _stored(x, kind)
    dist = -(v @ q.astype(np.float64)) if metric == "ip" else ((v - q.astype(np.float64)) ** 2).sum(1)
    ham = np.unpackbits(kernels.pack_bits(x) ^ kernels.pack_bits(q)[None, :], axis=1).sum(1)
    order = np.lexsort((np.arange(1, len(x) + 1), ham, dist))[:k]
    return [int(i) + 1 for i in order], dist[order]


@pytest.mark.parametrize("kind", ["float32", "float16", "int8"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_is_exact_on_the_stored_vectors(db, kind, metric):
    x = _clustered(800)
    db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16, rerank='{kind}', metric='{metric}')")
    hqdb.fit_table(db, "t", x)
    hqdb.insert_vectors(db, "t", x)
    for qi in range(5):
        q = _clustered(1, seed=100 + qi)[0]
        want_ids, want_dist = _reference(x, q, 10, kind, metric)
        got = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 800",
                         (q.tobytes(),)).fetchall()
        assert [r for r, _ in got] == want_ids
        assert np.allclose([d for _, d in got], want_dist, rtol=1e-5, atol=1e-5)
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_rerank_table_through_sql_writes_reopen_and_search_many(db_path):
    x = _clustered(600, seed=1)
    db = hqdb.connect(db_path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16, rerank='int8', title TEXT)")
    hqdb.fit_table(db, "t", x)
    with db.transaction():
        db.executemany("INSERT INTO t(vector, title) VALUES (?, ?)", [(v.tobytes(), f"v{i}") for i, v in enumerate(x)])
    db.execute("DELETE FROM t WHERE rowid % 10 = 0")
    db.execute("UPDATE t SET title = 'changed' WHERE rowid = 7")
    db.execute("BEGIN")
    db.execute("INSERT INTO t(vector, title) VALUES (?, 'ghost')", (x[0].tobytes(),))
    db.execute("ROLLBACK")
    q = _clustered(1, seed=7)[0]
    keep = np.array([i % 10 != 0 for i in range(1, 601)])
    ids = np.arange(1, 601)[keep]
    want = _reference(x[keep], q, 8, "int8")[0]
    want = [int(ids[i - 1]) for i in want]
    sql = "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 8 AND candidates = 600"
    assert [r for (r,) in db.execute(sql, (q.tobytes(),))] == want
    stored = np.frombuffer(db.execute("SELECT vector FROM t WHERE rowid = 7").fetchone()[0], "<f4")
    assert np.allclose(stored, _stored(x[6:7], "int8")[0], atol=1e-6)
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)
    db.close()
    again = hqdb.connect(db_path)  # the vectors come back from the file
    assert [r for (r,) in again.execute(sql, (q.tobytes(),))] == want
    qs = _clustered(4, seed=9)
    rowids, dist, _ = again.hq.table("t").search_many(0, qs, again.hq.table("t").params(8, 600))
    for j in range(4):
        one = again.execute("SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 8 AND candidates = 600",
                            (qs[j].tobytes(),)).fetchall()
        assert list(zip(rowids[j].tolist(), dist[j].tolist())) == one
    again.close()


def test_rerank_recall_with_a_small_shortlist(db):
    both = _clustered(3020, dim=128, seed=2, centres=60)  # queries from the same distribution
    x, queries = both[:3000], both[3000:]
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=4, codewords=256, rerank='int8')")
    hqdb.fit_table(db, "t", x[:2000])
    hqdb.insert_vectors(db, "t", x)
    hits = 0
    for q in queries:
        truth = set(np.argsort(-(x @ q))[:10] + 1)
        got = {r for (r,) in db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 300",
                                        (q.tobytes(),))}
        hits += len(truth & got)
    assert hits / 200 >= 0.95


def test_rerank_tables_refuse_rows_without_vectors(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16, rerank='int8')")
    x = _vectors(50)
    with pytest.raises(hqdb.HqError, match="no codebooks"):
        db.execute("INSERT INTO t(vector) VALUES (?)", (x[0].tobytes(),))
    hqdb.fit_table(db, "t", x)
    with pytest.raises(hqdb.HqError, match="give vector"):
        db.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(2))")
    with pytest.raises(hqdb.HqError, match="256 bytes"):
        db.execute("INSERT INTO t(vector) VALUES (zeroblob(10))")
    with pytest.raises(hqdb.HqError, match="insert_vectors"):
        hqdb.insert_codes(db, "t", np.zeros((2, 8), np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(hqdb.OptionError, match="rerank"):
        db.execute("CREATE VIRTUAL TABLE bad USING hq(dim=64, rerank='int4')")
    with pytest.raises(hqdb.OptionError, match="vector"):
        db.execute("CREATE VIRTUAL TABLE bad USING hq(dim=64, rerank='int8', vector TEXT)")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_check_and_rebuild_keep_a_rerank_tables_vectors(db):
    x = _clustered(300, seed=4)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16, rerank='float16', chunk_size=64)")
    hqdb.fit_table(db, "t", x)
    hqdb.insert_vectors(db, "t", x)
    db.execute("DELETE FROM t WHERE rowid % 3 = 0")
    q = _clustered(1, seed=8)[0].tobytes()
    sql = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 300"
    before = db.execute(sql, (q,)).fetchall()
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)
    stats = json.loads(db.execute("SELECT hq_rebuild('t')").fetchone()[0])
    assert stats["chunks_after"]["code"] == 4  # 200 rows packed 64 to a chunk
    assert db.execute(sql, (q,)).fetchall() == before
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)
    db.execute("DELETE FROM t_vectors WHERE chunk = 2")  # damage: codes whose vectors are gone
    assert "no stored vectors" in db.execute("SELECT hq_check()").fetchone()[0]
