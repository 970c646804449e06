"""Bad input gets a clear error and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import apsw
import hqdb
from conftest import random_table

SQL = "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5"


@pytest.mark.parametrize(
    "args, message",
    [
        ("dim=12", "multiple of 8"),
        ("dim=0", "between 8"),
        ("dim=abc", "expected an integer"),
        ("books=4", "needs dim"),
        ("dim=64, colour=red", "unknown hq option 'colour'"),
        ("dim=64, dim=64", "given twice"),
        ("dim=64, codewords=1", "between 2"),
        ("dim=64, codewords=70000", "between 2 and 65536"),
        ("dim=64, title VARCHAR", "not supported"),
        ("dim=64, code TEXT", "reserved"),
        ("dim=64, distance REAL", "reserved"),
        ("dim=64, a TEXT, A INTEGER", "declared twice"),
        ("dim=64, a TEXT CHECK", "unsupported constraint"),
        ("dim=64, a TEXT UNIQUE, b TEXT UNIQUE", "only one column"),
        ("dim=64, 'x; DROP TABLE hqdb_tables' TEXT", "cannot parse"),
    ],
)
def test_bad_create_options(db, args, message):
    with pytest.raises(apsw.SQLError, match=message):
        db.execute(f"CREATE VIRTUAL TABLE t USING hq({args})")
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 't%'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)


def test_keyword_column_names_are_quoted(db):
    db.execute('CREATE VIRTUAL TABLE t USING hq(dim=8, books=0, "order" INTEGER, "select" TEXT)')
    db.execute('INSERT INTO t(code, "order", "select") VALUES (x\'01\', 3, \'x\')')
    assert db.execute('SELECT "order", "select" FROM t WHERE hq_match(t.code, x\'01\') AND k = 1 '
                      'AND "order" = 3').fetchall() == [(3, "x")]


@pytest.mark.parametrize(
    "code, qcode, message",
    [
        (b"\x00" * 7, b"\x00" * 4, "code must be a BLOB of 8 bytes"),
        (b"\x00" * 9, b"\x00" * 4, "got 9 bytes"),
        ("text", b"\x00" * 4, "code must be a BLOB"),
        (None, b"\x00" * 4, "cannot be NULL"),
        (np.full(64, np.nan, np.float32).tobytes(), b"\x00" * 4, "NaN"),
        (b"\x00" * 8, b"\x00" * 3, "qcode must be 4 uint8"),
        (b"\x00" * 8, b"\x00\x00\x00\x10", "out of range"),
        (b"\x00" * 8, None, "cannot be NULL"),
        (b"\x00" * 8, 7, "qcode must be a BLOB"),
    ],
)
def test_bad_rows_are_refused_and_change_nothing(db, code, qcode, message):
    random_table(db, n=10)
    before = db.execute("SELECT hex(codes) FROM t_chunks").fetchall()
    with pytest.raises(apsw.SQLError, match=message):
        db.execute("INSERT INTO t(code, qcode) VALUES (?, ?)", (code, qcode))
    with pytest.raises(apsw.SQLError, match=message):
        db.execute("UPDATE t SET code = ?, qcode = ? WHERE rowid = 1", (code, qcode))
    assert db.execute("SELECT hex(codes) FROM t_chunks").fetchall() == before
    assert db.execute("SELECT count(*) FROM t").fetchone() == (10,)


def test_float_vector_as_code_is_binarised(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0)")
    v = np.array([1, -1, 2, -2, 0.5, 0, -0.1, 3], np.float32)
    db.execute("INSERT INTO t(code) VALUES (?)", (v.tobytes(),))
    assert db.execute("SELECT code FROM t").fetchone()[0] == hqdb.kernels.pack_bits(v).tobytes()


def test_query_columns_cannot_be_written(db):
    random_table(db, n=1)
    with pytest.raises(apsw.SQLError, match="query column"):
        db.execute("INSERT INTO t(code, qcode, distance) VALUES (zeroblob(8), zeroblob(4), 1.0)")


@pytest.mark.parametrize(
    "sql, params, message",
    [
        (SQL, (b"\x00" * 3,), "got 3 bytes"),
        (SQL, ("text",), "must be a BLOB"),
        (SQL, (None,), "query is NULL|must be a BLOB"),
        (SQL, (np.full(64, np.nan, np.float32).tobytes(),), "NaN"),
        (SQL, (np.full(64, np.inf, np.float32).tobytes(),), "NaN or infinity"),
        (SQL, (b"\x00" * 8,), "mode = 'hamming'"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 0", (b"\x00" * 256,), "k must be between 1"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = -3", (b"\x00" * 256,), "k must be between 1"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 100000000", (b"\x00" * 256,), "k must be between"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 'ten'", (b"\x00" * 256,), "k must be an integer"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 AND candidates = 0", (b"\x00" * 256,), "candidates must be"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 AND candidates = 99999999999", (b"\x00" * 256,), "candidates must be"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 5 AND mode = 'fast'", (b"\x00" * 256,), "unknown mode"),
        ("SELECT rowid FROM t WHERE hq_match(t.code, ?)", (b"\x00" * 256,), "needs the number of results"),
        ("SELECT hq_match(code, ?) FROM t", (b"\x00" * 256,), "only works as a WHERE constraint"),
        ("SELECT rowid FROM t WHERE hq_match(t.qcode, ?) AND k = 5", (b"\x00" * 256,), "searches the code column"),
    ],
)
def test_bad_queries(db, sql, params, message):
    random_table(db, n=20)
    with pytest.raises(apsw.SQLError, match=message):
        db.execute(sql, params).fetchall()


def test_missing_codebooks(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16)")
    hqdb.insert_codes(db, "t", np.zeros((3, 8), np.uint8), np.zeros((3, 4), np.uint8))
    q = np.ones(64, np.float32).tobytes()
    with pytest.raises(apsw.SQLError, match="no codebooks"):
        db.execute(SQL, (q,)).fetchall()
    assert len(db.execute(SQL + " AND mode = 'hamming'", (q,)).fetchall()) == 3


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x00" * 12, "must be 4x16x64 float32"),
        (np.full(4 * 16 * 64, np.nan, np.float32).tobytes(), "NaN"),
        ("text", "must be a BLOB"),
    ],
)
def test_bad_codebooks(db, blob, message):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16)")
    with pytest.raises(apsw.SQLError, match=message):
        db.execute("SELECT hq_set_codebooks('t', ?)", (blob,))
    assert db.execute("SELECT hq_codebooks('t')").fetchone() == (None,)
    with pytest.raises(apsw.SQLError, match="no hq table named 'nope'"):
        db.execute("SELECT hq_set_codebooks('nope', ?)", (blob,))


def test_bad_bulk_input(db):
    random_table(db, n=5)
    z = np.zeros((2, 8), np.uint8)
    q = np.zeros((2, 4), np.uint8)
    cases = [
        (dict(codes=z.astype(np.int32), qcodes=q), "uint8 array of shape"),
        (dict(codes=z[:, :7], qcodes=q), "uint8 array of shape"),
        (dict(codes=z, qcodes=None), "qcodes are required"),
        (dict(codes=z, qcodes=q[:, :3]), "qcodes must be an integer array"),
        (dict(codes=z, qcodes=q + 16), r"qcodes must lie in \[0, 16\)"),
        (dict(codes=z, qcodes=q, rowids=[1, 1]), "unique"),
        (dict(codes=z, qcodes=q, metadata={"nope": [1, 2]}), "unknown metadata"),
    ]
    for kwargs, message in cases:
        with pytest.raises(apsw.SQLError, match=message):
            hqdb.insert_codes(db, "t", **kwargs)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (5,)


def test_threads_setting_validated(db):
    with pytest.raises(apsw.SQLError, match="hq_threads"):
        db.execute("SELECT hq_threads(0)")
    with pytest.raises(apsw.SQLError, match="hq_threads"):
        db.execute("SELECT hq_threads('many')")
    assert db.execute("SELECT hq_threads()").fetchone() == (1,)


def test_corrupt_chunk_gives_clear_error(db, db_path):
    random_table(db, n=10)
    db.execute("UPDATE t_chunks SET codes = x'00'")
    db2 = hqdb.connect(db_path)
    with pytest.raises(apsw.Error, match="wrong BLOB sizes"):
        db2.execute(SQL, (np.ones(64, np.float32).tobytes(),)).fetchall()
    assert "wrong BLOB sizes" in db2.execute("PRAGMA integrity_check").fetchone()[0]


def test_table_functions_work_after_schema_changes(db):
    # A CREATE that our module refuses resets the schema: the next statement connects a fresh
    # instance of t, and SQLite disconnects the old one afterwards. The old one's Disconnect
    # must not make the connection forget the live one (found by tests/fuzz_atheris.py).
    random_table(db, n=10)
    db.execute("SELECT count(*) FROM t").fetchall()
    with pytest.raises(apsw.SQLError, match="needs dim"):
        db.execute("CREATE VIRTUAL TABLE x USING hq()")
    db.execute("SELECT count(*) FROM t").fetchall()
    assert db.execute("SELECT length(hq_codebooks('t'))").fetchone() == (4 * 16 * 64 * 4,)
