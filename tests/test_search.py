"""Searching an hq table from SQL: every path agrees exactly with the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from conftest import random_table
import reference

SQL = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ?"


def query_vec(dim, seed=1):
    return np.random.default_rng(seed).integers(-8, 9, dim).astype(np.float32)


@pytest.mark.parametrize("candidates", [1, 10, 100, 499, 500, 10_000])
def test_two_stage_matches_reference(db, candidates):
    codes, qcodes, cb, rowids = random_table(db, n=500)
    for seed in range(5):
        q = query_vec(64, seed)
        got = db.execute(SQL + " AND candidates = ?", (q.tobytes(), 10, candidates)).fetchall()
        want = reference.search(codes, qcodes, rowids, q, cb, k=10, candidates=candidates)
        assert [r[0] for r in got] == want[0]
        assert [r[1] for r in got] == want[1]
        assert [r[2] for r in got] == want[2]


@pytest.mark.parametrize("mode", ["hamming", "aqd"])
def test_modes_match_reference(db, mode):
    codes, qcodes, cb, rowids = random_table(db, n=700, dim=128, books=8, codewords=256)
    q = query_vec(128)
    got = db.execute(SQL + " AND mode = ?", (q.tobytes(), 25, mode)).fetchall()
    want = reference.search(codes, qcodes, rowids, q, cb, k=25, mode=mode)
    assert [tuple(r) for r in got] == list(zip(*want))


def test_aqd_equals_two_stage_with_all_candidates(db):
    random_table(db, n=300)
    q = query_vec(64).tobytes()
    a = db.execute(SQL + " AND mode = 'aqd'", (q, 20)).fetchall()
    b = db.execute(SQL + " AND candidates = 300", (q, 20)).fetchall()
    assert a == b


def test_equal_aqd_scores_go_to_the_closer_bit_code(db):
    """Codebooks whose codewords are all equal give every row the same AQD score: the re-rank
    must then keep the Hamming order (issue 16), so more candidates never lose the Hamming
    stage's best rows to rows with smaller rowids."""
    codes, qcodes, cb, rowids = random_table(db, n=600, dim=64, books=2, codewords=16)
    hqdb.set_codebooks(db, "t", np.ones_like(cb))
    q = query_vec(64, 3)
    bits = hqdb.kernels.pack_bits(q)
    ham = reference.hamming(codes, bits)
    best = [int(r) for r in rowids[np.lexsort((rowids, ham))][:10]]
    for mode, cand in [("two_stage", 10), ("two_stage", 100), ("two_stage", 600), ("aqd", 1)]:
        got = db.execute(SQL + " AND candidates = ? AND mode = ?", (q.tobytes(), 10, cand, mode)).fetchall()
        assert [r[0] for r in got] == best, (mode, cand)
        assert [r[2] for r in got] == sorted(r[2] for r in got)
    from hqdb.engine.query import resolve

    rows, _, _ = db.hq.table("t").search_many(0, np.stack([q, q]), resolve(10, 50, "two_stage"))
    assert rows.tolist() == [best, best]


def test_two_stage_over_every_row_runs_as_aqd(db):
    """candidates >= the table's rows: the plan runs 'aqd' (no Hamming selection); same results."""
    codes, qcodes, cb, rowids = random_table(db, n=300)
    q = query_vec(64, 4)
    got = db.execute(SQL + " AND candidates = 300", (q.tobytes(), 20)).fetchall()
    assert got == db.execute(SQL + " AND mode = 'aqd'", (q.tobytes(), 20)).fetchall()
    want = reference.search(codes, qcodes, rowids, q, cb, k=20, candidates=300)
    assert [r[0] for r in got] == want[0]


@pytest.mark.parametrize("books", [9, 17, 24, 40])
def test_many_books_match_reference(db, books):
    """More than 8 books of 1-byte codes: the kernel's unrolled cases must not take 1 byte x 24
    books for 2 bytes x 8 (a bug fixed with issue 16's 'bits_pq' books)."""
    codes, qcodes, cb, rowids = random_table(db, n=400, dim=64, books=books, codewords=256)
    q = query_vec(64, 7)
    for mode in ("aqd", "two_stage"):
        got = db.execute(SQL + " AND mode = ? AND candidates = 50", (q.tobytes(), 15, mode)).fetchall()
        want = reference.search(codes, qcodes, rowids, q, cb, k=15, candidates=50, mode=mode)
        assert [tuple(r) for r in got] == list(zip(*want))


def test_hamming_query_given_as_bit_code(db):
    codes, qcodes, cb, rowids = random_table(db, n=200)
    q = query_vec(64)
    bits = hqdb.kernels.pack_bits(q)
    by_bits = db.execute(SQL + " AND mode = 'hamming'", (bits.tobytes(), 10)).fetchall()
    by_vec = db.execute(SQL + " AND mode = 'hamming'", (q.tobytes(), 10)).fetchall()
    assert by_bits == by_vec
    assert [r[0] for r in by_bits] == reference.search(codes, None, rowids, bits, None, k=10, mode="hamming")[0]


def test_uint16_codewords(db):
    codes, qcodes, cb, rowids = random_table(db, n=300, dim=16, books=2, codewords=1000)
    q = query_vec(16)
    got = db.execute(SQL, (q.tobytes(), 10)).fetchall()
    want = reference.search(codes, qcodes, rowids, q, cb, k=10, candidates=1000)
    assert [r[0] for r in got] == want[0]
    stored = db.execute("SELECT qcode FROM t WHERE rowid = ?", (int(rowids[3]),)).fetchone()[0]
    assert np.frombuffer(stored, "<u2").tolist() == qcodes[3].tolist()


def test_limit_and_order_by_forms_agree(db):
    random_table(db, n=400)
    q = query_vec(64).tobytes()
    with_k = db.execute(SQL, (q, 7)).fetchall()
    with_limit = db.execute(
        "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) ORDER BY distance LIMIT 7", (q,)
    ).fetchall()
    assert with_k == with_limit
    # The results come out ordered by distance, then rowid.
    assert with_k == sorted(with_k, key=lambda r: (r[1], r[0]))


def test_ties_break_by_rowid(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=1, codewords=4)")
    hqdb.set_codebooks(db, "t", np.ones((1, 4, 8), np.float32))
    # Every row has the same codes: the ranking must be by rowid alone.
    ids = [907, 3, 55, 12, 400, 1]
    for r in ids:
        db.execute("INSERT INTO t(rowid, code, qcode) VALUES (?, x'0f', x'02')", (r,))
    q = np.ones(8, np.float32).tobytes()
    for mode in ("two_stage", "hamming", "aqd"):
        got = db.execute(SQL + " AND mode = ? AND candidates = 2", (q, 4, mode)).fetchall()
        assert [r[0] for r in got] == sorted(ids)[:4]


def test_k_larger_than_table_returns_every_row(db):
    random_table(db, n=30)
    got = db.execute(SQL, (query_vec(64).tobytes(), 100)).fetchall()
    assert len(got) == 30


def test_empty_table(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16)")
    hqdb.set_codebooks(db, "t", np.zeros((4, 16, 64), np.float32))
    assert db.execute(SQL, (query_vec(64).tobytes(), 5)).fetchall() == []


def test_bit_layout_matches_sqlite_vec(db):
    codes, qcodes, cb, rowids = random_table(db, n=100)
    q = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    assert hqdb.kernels.pack_bits(q).tobytes() == db.execute(
        "SELECT vec_quantize_binary(vec_f32(?))", (q.tobytes(),)
    ).fetchone()[0]
    rows = db.execute(
        "SELECT rowid, hamming, vec_distance_hamming(vec_bit(code), vec_quantize_binary(vec_f32(?))) "
        "FROM t WHERE hq_match(t.code, ?) AND k = 100 AND mode = 'hamming'",
        (q.tobytes(), q.tobytes()),
    ).fetchall()
    assert len(rows) == 100
    assert all(h == v for _, h, v in rows)


def test_metadata_filter_applied_during_search(db):
    n = 2000
    codes, qcodes, cb, rowids = random_table(db, n=n, extra=", year INTEGER, kind TEXT")
    years = np.arange(n) % 50 + 1980
    kinds = np.where(np.arange(n) % 7 == 0, "photo", "text")
    db.executemany("UPDATE t SET year = ?, kind = ? WHERE rowid = ?",
                   zip(years.tolist(), kinds.tolist(), rowids.tolist()))
    q = query_vec(64)
    # About 2000 * 9/50 * 1/7 ≈ 51 rows match; a post-filter over top candidates would come up short.
    got = db.execute(
        "SELECT rowid, distance, year, kind FROM t WHERE hq_match(t.code, ?) AND k = 20 "
        "AND year > 2020 AND kind = 'photo' AND candidates = 100",
        (q.tobytes(),),
    ).fetchall()
    mask = (years > 2020) & (kinds == "photo")
    want = reference.search(codes, qcodes, rowids, q, cb, k=20, candidates=100, mask=mask)
    assert len(got) == 20
    assert [r[0] for r in got] == want[0]
    assert all(r[2] > 2020 and r[3] == "photo" for r in got)
    # IN lists arrive whole and filter too.
    got_in = db.execute(
        "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 10 AND year IN (1980, 1999)",
        (q.tobytes(),),
    ).fetchall()
    want_in = reference.search(codes, qcodes, rowids, q, cb, k=10, candidates=1000,
                               mask=np.isin(years, [1980, 1999]))
    assert [r[0] for r in got_in] == want_in[0]


def test_search_inside_join_and_cte(db):
    codes, qcodes, cb, rowids = random_table(db, n=300)
    db.execute("CREATE TABLE queries(id INTEGER PRIMARY KEY, vec BLOB)")
    qs = [query_vec(64, s) for s in range(3)]
    db.executemany("INSERT INTO queries(id, vec) VALUES (?, ?)", [(i, q.tobytes()) for i, q in enumerate(qs)])
    rows = db.execute(
        "SELECT q.id, t.rowid FROM queries q JOIN t ON hq_match(t.code, q.vec) AND t.k = 3 ORDER BY q.id"
    ).fetchall()
    for i, q in enumerate(qs):
        want = reference.search(codes, qcodes, rowids, q, cb, k=3, candidates=1000)[0]
        assert [r[1] for r in rows if r[0] == i] == want
    cte = db.execute(
        "WITH best AS (SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 5) "
        "SELECT count(*), min(distance) FROM best", (qs[0].tobytes(),)
    ).fetchone()
    assert cte[0] == 5


def test_threads_give_identical_results(db):
    random_table(db, n=3000, dim=128, books=4, codewords=256)
    q = query_vec(128).tobytes()
    one = db.execute(SQL + " AND candidates = 500", (q, 50)).fetchall()
    assert db.execute("SELECT hq_threads(2)").fetchone()[0] == 1
    two = db.execute(SQL + " AND candidates = 500", (q, 50)).fetchall()
    assert one == two


def test_results_survive_reopen(db_path):
    db = hqdb.connect(db_path)
    codes, qcodes, cb, rowids = random_table(db, n=2500, chunk_size=64)
    q = query_vec(64).tobytes()
    before = db.execute(SQL, (q, 10)).fetchall()
    db.close()
    db = hqdb.connect(db_path)
    assert db.execute(SQL, (q, 10)).fetchall() == before
    assert np.frombuffer(db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4").tolist() == cb.ravel().tolist()
