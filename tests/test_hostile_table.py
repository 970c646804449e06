"""A damaged file met while searching (issue 13, the fuzzer's leftovers): each case is an
hqdb error that names the problem, never a raw ValueError / IndexError / UnicodeDecodeError."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from conftest import random_table

Q = np.random.default_rng(0).standard_normal(64).astype(np.float32).tobytes()
SEARCH = "SELECT rowid, title FROM t WHERE hq_match(t.code, ?) AND k = 5 AND title IS NOT NULL"


@pytest.fixture
def damaged(db_path):
    db = hqdb.connect(db_path)
    random_table(db, n=40, extra=", title TEXT")
    db.execute("UPDATE t SET title = 'x' || rowid")
    db.close()
    return db_path


def _reopen(path):
    return hqdb.connect(path)


def test_missing_shadow_table_is_named(damaged):
    db = _reopen(damaged)
    db.execute("DROP TABLE t_chunks")
    db.close()
    db = _reopen(damaged)
    with pytest.raises(hqdb.CorruptTableError, match="t_chunks are missing"):
        db.execute(SEARCH, (Q,)).fetchall()
    db.close()


def test_metadata_that_is_not_utf8_is_corruption(damaged):
    db = _reopen(damaged)
    db.execute("UPDATE t_rows SET title = CAST(x'ff' AS TEXT) WHERE rowid = 3")
    with pytest.raises(hqdb.CorruptTableError, match="not UTF-8"):
        db.execute("SELECT rowid, title FROM t WHERE rowid > 0").fetchall()
    db.close()


def test_row_locators_that_are_not_slots_are_not_crashes(damaged):
    db = _reopen(damaged)
    db.execute("UPDATE t_rows SET chunk = 1.5 WHERE rowid = 3")
    db.execute("UPDATE t_rows SET slot = 99999 WHERE rowid = 4")
    rows = db.execute(SEARCH + " AND title != 'none'", (Q,)).fetchall()  # a metadata filter: the rows prefilter
    assert len(rows) == 5
    with pytest.raises(hqdb.CorruptTableError, match="row 3 points at a slot"):
        db.execute("SELECT code FROM t WHERE rowid = 3").fetchall()
    assert "row 3" in db.execute("SELECT hq_check('t')").fetchone()[0]
    db.close()


def test_codebooks_that_overflow_a_query_are_an_hq_error(damaged):
    db = _reopen(damaged)
    cb = np.full((4, 16, 64), 3e38, np.float32)
    hqdb.set_codebooks(db, "t", cb)
    with pytest.raises(hqdb.HqError, match="overflow float32"):
        db.execute(SEARCH, (Q,)).fetchall()
    db.close()


def test_a_model_that_no_longer_fits_its_table(db_path):
    from hqdb import datasets

    db = hqdb.connect(db_path)
    pairs = datasets.synthetic_pairs(100, seed=0)
    hqdb.save_model(db, "m16", hqdb.train(pairs, bits=16, epochs=1, seed=0))
    hqdb.save_model(db, "m32", hqdb.train(pairs, bits=32, epochs=1, seed=0))
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m16')")
    db.close()
    db = hqdb.connect(db_path)  # a stranger points the table at another model
    db.execute("UPDATE hqdb_tables SET options = replace(options, '\"m16\"', '\"m32\"')")
    db.close()
    db = hqdb.connect(db_path)
    with pytest.raises(hqdb.HqdbError, match="shape|m32"):
        db.execute("SELECT rowid FROM docs WHERE hq_match(docs.image, hq_query('text', 'castle photo')) AND k = 3").fetchall()
    db.close()
