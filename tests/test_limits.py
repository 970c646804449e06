"""Bounded answers: requests that would build huge results are refused up front (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hqdb
from conftest import random_table


def test_search_many_refuses_an_answer_beyond_the_hit_budget(db):
    random_table(db, n=50, books=0)
    db.execute("CREATE TABLE q(id INTEGER PRIMARY KEY, v BLOB)")
    rng = np.random.default_rng(0)
    db.executemany("INSERT INTO q(v) VALUES (?)", [(rng.standard_normal(64).astype(np.float32).tobytes(),) for _ in range(20)])
    with pytest.raises(hqdb.HqError, match="more than 1,000,000 hits"):
        db.execute("SELECT hq_search_many('t', id, v, 65536) FROM q").fetchone()
    # A batch within the budget answers as before: one object per hit.
    (answer,) = db.execute("SELECT hq_search_many('t', id, v, 7, NULL, 'hamming') FROM q").fetchone()
    hits = json.loads(answer)
    assert len(hits) == 20 * 7
    assert set(hits[0]) == {"query", "rank", "rowid", "distance", "hamming"}
    first = db.execute("SELECT v FROM q WHERE id = 1").fetchone()[0]
    want = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 7 AND mode = 'hamming'",
                      (first,)).fetchall()
    assert [(h["rowid"], h["distance"]) for h in hits if h["query"] == 1] == want


def test_search_many_refuses_a_bad_k_at_the_first_row(db):
    random_table(db, n=5, books=0)
    with pytest.raises(hqdb.HqError, match="k must be between 1 and 65536"):
        db.execute("SELECT hq_search_many('t', 1, zeroblob(256), 2 * 65536)").fetchone()


def test_evaluate_never_drops_a_users_table(db, tmp_path):
    from hqdb import datasets
    from hqdb.evaluate import evaluate

    pairs = datasets.synthetic_pairs(120, seed=1)
    hqdb.save_model(db, "m", hqdb.train(pairs, bits=16, epochs=1, seed=0))
    data = {k: pairs[k] for k in ("image", "text", "labels")}
    db.execute("CREATE TABLE hqdb_eval_m(precious TEXT)")
    db.execute("INSERT INTO hqdb_eval_m VALUES ('keep me')")
    with pytest.raises(hqdb.HqdbError, match="already exists"):
        evaluate(db, "m", data, data)
    assert db.execute("SELECT precious FROM hqdb_eval_m").fetchall() == [("keep me",)]
    result = evaluate(db, "m", data, data, table="scratch")
    assert 0 <= result["i2t"]["two_stage"]["map@50"] <= 1
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'scratch'").fetchone() == (0,)


def test_a_writer_that_cannot_get_the_lock_gets_an_hqdb_error(db_path):
    import apsw

    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path, timeout=0.1)
    try:
        a.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0)")
        a.execute("BEGIN IMMEDIATE")
        with pytest.raises(hqdb.DatabaseBusyError, match="is locked") as info:
            hqdb.insert_codes(b, "t", np.zeros((3, 8), np.uint8))
        assert isinstance(info.value, apsw.BusyError)  # code written for apsw keeps working
        a.execute("COMMIT")
        hqdb.insert_codes(b, "t", np.zeros((3, 8), np.uint8))
        assert b.execute("SELECT count(*) FROM t").fetchone() == (3,)
    finally:
        a.close()
        b.close()
