"""Exact k with any filter, and paging (issue 13, items 11 and 17): the search ranks only the rows
that match, so it returns the top min(k, matching) among them, whatever the condition."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from conftest import random_table

CONDITIONS = [
    "title LIKE 'photo 1%' OR year = 2001",
    "NOT (year > 2001)",
    "year % 5 = 0",
    "year IN (2003, 2004) AND title GLOB '*3'",
    "title IS NULL",
]


@pytest.fixture
def table(db):
    random_table(db, n=959, books=4, codewords=16, extra=", title TEXT, year INTEGER")
    db.execute("UPDATE t SET title = CASE WHEN rowid % 50 = 0 THEN NULL ELSE 'photo ' || rowid END, "
               "year = 2000 + rowid % 25")
    return db


def _ranking(db, q, mode):
    """The whole table's ranking (every row a candidate), the reference the filtered search must follow."""
    return [r for (r,) in db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 959 "
                                     "AND candidates = 959 AND mode = ?", (q, mode))]


@pytest.mark.parametrize("where", CONDITIONS)
@pytest.mark.parametrize("mode", ["two_stage", "hamming", "aqd"])
def test_any_condition_gives_the_top_k_of_the_matching_rows(table, where, mode):
    db = table
    q = np.random.default_rng(3).standard_normal(64).astype(np.float32).tobytes()
    matching = {r for (r,) in db.execute(f"SELECT rowid FROM t WHERE {where}")}
    assert matching
    want = [r for r in _ranking(db, q, mode) if r in matching][:5]
    got = db.execute(f"SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 AND candidates = 959 "
                     f"AND mode = ? AND rowid IN (SELECT rowid FROM t WHERE {where})", (q, mode)).fetchall()
    assert [r for (r,) in got] == want


def test_paging_with_limit_and_offset(table):
    db = table
    q = np.random.default_rng(4).standard_normal(64).astype(np.float32).tobytes()
    top = [r for (r,) in db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 30", (q,))]
    pages = []
    for page in range(3):
        pages += [r for (r,) in db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) ORDER BY distance "
                                           "LIMIT 10 OFFSET ?", (q, 10 * page))]
    assert pages == top


def test_rowid_in_list_narrows_the_search(table):
    db = table
    q = np.random.default_rng(5).standard_normal(64).astype(np.float32).tobytes()
    ids = [7, 70, 700, 77, 707, 900]
    got = [r for (r,) in db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 10 "
                                    f"AND rowid IN ({', '.join(map(str, ids))})", (q,))]
    assert sorted(got) == sorted(ids)
    assert got == [r for r in _ranking(db, q, "two_stage") if r in ids] or len(got) == len(ids)


def test_k_beyond_the_limit_is_a_clear_error(table):
    with pytest.raises(hqdb.HqError, match="k must be between 1 and 65536"):
        table.execute("SELECT rowid FROM t WHERE hq_match(t.code, zeroblob(256)) AND k = ?", (2**63 - 1,)).fetchall()


# ---------------------------------------------------------------- collections
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from hqdb import datasets

    db = hqdb.connect(tmp_path_factory.mktemp("coll") / "photos.db")
    pairs = datasets.synthetic_pairs(959, seed=0)
    model = hqdb.train(pairs, bits=32, epochs=2, seed=0)
    hqdb.save_model(db, "m", model)
    coll = db.create_collection("photos", model="m", columns={"title": str, "year": int})
    coll.insert_all({"title": f"photo {i}", "year": 2000 + i % 25, "text": str(pairs["text"][i]),
                     "image": pairs["image"][i]} for i in range(959))
    yield coll
    db.close()


@pytest.mark.parametrize("where", ["title LIKE 'photo 1%' OR year = 2001", "NOT (year > 2001)", "year % 5 = 0"])
def test_collection_search_with_any_condition_is_exact(photos, where):
    matching = {r for (r,) in photos.db.execute(f"SELECT rowid FROM photos WHERE {where}")}
    ranked = [h.rowid for h in photos.search(text="a castle on a hill", k=959, candidates=959)]
    hits = photos.search(text="a castle on a hill", k=5, candidates=959, where=where)
    assert [h.rowid for h in hits] == [r for r in ranked if r in matching][:5]
    many = photos.search_many(text=["a castle on a hill", "surf"], k=5, candidates=959, where=where)
    assert many[0] == hits


def test_a_condition_no_row_matches_gives_no_hits(photos):
    assert list(photos.search(text="a castle on a hill", k=5, where="year > 3000")) == []
    assert [list(h) for h in photos.search_many(text=["castle", "surf"], k=5, where="year > ?",
                                                where_args=[3000])] == [[], []]


def test_an_empty_in_set_with_the_null_guard(table):
    # apsw 3.54 raises SQLError('<NULL>') for an IN whose set is empty on a virtual table; the
    # documented guard (UNION ALL SELECT NULL) gives the empty result instead.
    db = table
    q = np.random.default_rng(5).standard_normal(64).astype(np.float32).tobytes()
    for sql in ["SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 "
                "AND rowid IN (SELECT rowid FROM t WHERE year > 3000 UNION ALL SELECT NULL)",
                "SELECT rowid FROM t WHERE rowid IN (SELECT rowid FROM t WHERE year > 3000 UNION ALL SELECT NULL) "
                "AND ? IS NOT NULL"]:
        assert db.execute(sql, (q,)).fetchall() == []
    got = db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 "
                     "AND rowid IN (SELECT rowid FROM t WHERE year = 2003 UNION ALL SELECT NULL)", (q,)).fetchall()
    want = db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 "
                      "AND rowid IN (SELECT rowid FROM t WHERE year = 2003)", (q,)).fetchall()
    assert got == want and len(got) == 5


@pytest.mark.parametrize("where", ["1); DROP TABLE victim; --", "year > 0; DELETE FROM photos_rows",
                                   "year > (SELECT 1); DROP TABLE victim"])
def test_where_runs_no_second_statement(photos, where):
    db = photos.db
    db.execute("CREATE TABLE IF NOT EXISTS victim(x)")
    n = len(list(photos))
    with pytest.raises(hqdb.CollectionError, match="one condition|not a condition"):
        photos.search(text="castle", k=3, where=where)
    with pytest.raises(hqdb.CollectionError, match="one condition|not a condition"):
        photos.delete_where(where)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'victim'").fetchone() == (1,)
    assert len(list(photos)) == n


def test_where_args_count_is_checked_against_the_question_marks(photos):
    with pytest.raises(hqdb.CollectionError, match=r"has 1 '\?' but 3 where_args were given"):
        photos.search(text="castle", k=3, where="year > ?", where_args=[1, 2, 3])
    with pytest.raises(hqdb.CollectionError, match="without a where"):
        photos.search(text="castle", k=3, where_args=[1])


@pytest.mark.parametrize("k", [2**63, 2**64, 0])
def test_out_of_range_k_is_a_collection_error(photos, k):
    with pytest.raises(hqdb.CollectionError, match="k must be between 1 and 65536"):
        photos.search(text="castle", k=k)
    with pytest.raises(hqdb.CollectionError, match="k must be between 1 and 65536"):
        photos.search(text="castle", k=k, where="year > ?", where_args=[2000])
