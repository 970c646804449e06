"""INSERT / UPDATE / DELETE / REPLACE, transactions, space reuse and cache coherence."""

from __future__ import annotations

import numpy as np
import pytest

import apsw
import hqdb
from conftest import random_table

import hqdb

SQL_ALL = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 1000 AND candidates = 100000"

KNN = "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = ? AND mode = 'hamming'"


def bits(byte: int, n: int = 1) -> bytes:
    return bytes([byte]) * n


@pytest.fixture
def small(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0, chunk_size=8, name TEXT UNIQUE, n INTEGER)")
    return db


def all_rows(db):
    return db.execute("SELECT rowid, hex(code), name FROM t ORDER BY rowid").fetchall()


def found(db, query=b"\x00", k=100):
    return sorted(r[0] for r in db.execute(KNN, (query, k)))


def test_insert_update_delete_roundtrip(small):
    db = small
    db.execute("INSERT INTO t(code, name) VALUES (x'01', 'a'), (x'03', 'b')")
    db.execute("INSERT INTO t(rowid, code, name) VALUES (10, x'07', 'c')")
    assert all_rows(db) == [(1, "01", "a"), (2, "03", "b"), (10, "07", "c")]
    db.execute("UPDATE t SET code = x'ff', name = 'B' WHERE rowid = 2")
    assert db.execute("SELECT rowid, hamming FROM t WHERE hq_match(t.code, x'ff') AND k = 1 AND mode = 'hamming'").fetchall() == [(2, 0)]
    db.execute("UPDATE t SET rowid = 20 WHERE name = 'c'")
    db.execute("DELETE FROM t WHERE name = 'a'")
    assert all_rows(db) == [(2, "FF", "B"), (20, "07", "c")]
    assert found(db) == [2, 20]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_conflicts_on_rowid_and_user_key(small):
    db = small
    db.execute("INSERT INTO t(rowid, code, name) VALUES (1, x'01', 'a')")
    with pytest.raises(apsw.ConstraintError, match="rowid"):
        db.execute("INSERT INTO t(rowid, code, name) VALUES (1, x'02', 'z')")
    with pytest.raises(apsw.ConstraintError, match="name"):
        db.execute("INSERT INTO t(code, name) VALUES (x'02', 'a')")
    db.execute("INSERT OR IGNORE INTO t(code, name) VALUES (x'02', 'a')")
    assert all_rows(db) == [(1, "01", "a")]
    db.execute("INSERT OR REPLACE INTO t(code, name) VALUES (x'0f', 'a')")  # replaces by key
    db.execute("INSERT OR REPLACE INTO t(rowid, code, name) VALUES (5, x'1f', 'e')")
    db.execute("INSERT OR REPLACE INTO t(rowid, code, name) VALUES (5, x'3f', 'f')")  # by rowid
    rows = all_rows(db)
    assert [r[1:] for r in rows] == [("0F", "a"), ("3F", "f")]
    assert found(db) == [r[0] for r in rows]


def test_rolled_back_insert_leaves_no_trace(small):
    db = small
    db.execute("INSERT INTO t(code, name) VALUES (x'01', 'keep')")
    db.execute("BEGIN")
    db.execute("INSERT INTO t(code, name) VALUES (x'02', 'gone')")
    assert found(db) == [1, 2]
    db.execute("ROLLBACK")
    assert all_rows(db) == [(1, "01", "keep")]
    assert found(db) == [1]
    chunks = db.execute("SELECT hex(valid), hex(codes) FROM t_chunks").fetchall()
    assert chunks == [("01" + "00" * 7, "01" + "00" * 7)]


def test_savepoint_rollback(small):
    db = small
    db.execute("BEGIN")
    db.execute("INSERT INTO t(code, name) VALUES (x'01', 'a')")
    db.execute("SAVEPOINT s")
    db.execute("INSERT INTO t(code, name) VALUES (x'02', 'b')")
    db.execute("DELETE FROM t WHERE name = 'a'")
    db.execute("ROLLBACK TO s")
    db.execute("INSERT INTO t(code, name) VALUES (x'04', 'c')")
    db.execute("COMMIT")
    assert [r[2] for r in all_rows(db)] == ["a", "c"]
    assert found(db) == [r[0] for r in all_rows(db)]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_failed_statement_is_rolled_back_whole(small):
    db = small
    db.execute("BEGIN")
    db.execute("INSERT INTO t(code, name) VALUES (x'01', 'a')")
    with pytest.raises(apsw.SQLError, match="code must be a BLOB of 1 bytes"):
        db.execute("INSERT INTO t(code, name) SELECT column1, column2 FROM "
                   "(VALUES (x'02', 'b'), (x'03', 'c'), (x'0404', 'bad'))")
    db.execute("COMMIT")
    assert all_rows(db) == [(1, "01", "a")]
    assert found(db) == [1]
    db.execute("INSERT INTO t(code, name) VALUES (x'05', 'd')")
    assert found(db) == [1, 2]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_deleted_space_is_reused_and_empty_chunks_reclaimed(small):
    db = small
    db.executemany("INSERT INTO t(code, name) VALUES (?, ?)", [(bits(i), f"r{i}") for i in range(20)])
    assert db.execute("SELECT count(*) FROM t_chunks").fetchone() == (3,)  # 8 + 8 + 4
    db.execute("DELETE FROM t WHERE n IS NULL AND rowid BETWEEN 9 AND 16")  # the whole 2nd chunk
    assert db.execute("SELECT count(*) FROM t_chunks").fetchone() == (2,)
    db.execute("DELETE FROM t WHERE rowid IN (2, 3)")
    db.executemany("INSERT INTO t(code, name) VALUES (?, ?)", [(bits(100 + i), f"n{i}") for i in range(10)])
    # 2 slots in chunk 1 and 4 in chunk 3 were reused first, then chunk 2 was re-created.
    assert db.execute("SELECT count(*) FROM t_chunks").fetchone() == (3,)
    assert db.execute("SELECT sum(length(replace(hex(valid), '00', ''))) / 2 FROM t_chunks").fetchone() == (20,)
    assert sorted(found(db)) == [r[0] for r in all_rows(db)]
    deleted = db.execute("SELECT count(*) FROM t_chunks WHERE instr(codes, x'0a')").fetchone()
    assert deleted == (0,)  # row 11's code (0x0a) was zeroed when it was deleted


def test_other_connection_sees_commits(db_path):
    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path)
    a.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0)")
    a.execute("INSERT INTO t(code) VALUES (x'01')")
    assert found(b) == [1]
    a.execute("INSERT INTO t(code) VALUES (x'02')")
    a.execute("DELETE FROM t WHERE rowid = 1")
    assert found(b) == [2]
    b.execute("INSERT INTO t(code) VALUES (x'03')")
    assert found(a) == [2, 3]
    a.close(), b.close()


def test_bulk_insert_is_atomic(db):
    codes, qcodes, cb, rowids = random_table(db, n=100)
    with pytest.raises(apsw.ConstraintError):
        hqdb.insert_codes(db, "t", codes[:10], qcodes[:10], rowids=[1000 + i for i in range(9)] + [int(rowids[0])])
    assert db.execute("SELECT count(*) FROM t").fetchone() == (100,)
    assert db.execute("SELECT count(*) FROM t WHERE hq_match(t.code, ?) AND k = 1000 AND mode = 'hamming'",
                      (codes[0].tobytes(),)).fetchone() == (100,)
    new = hqdb.insert_codes(db, "t", codes[:3], qcodes[:3], metadata=None)
    assert new.tolist() == [101, 102, 103]


def test_bulk_insert_with_metadata_and_transactions(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=16, books=2, codewords=4, title TEXT)")
    codes = np.arange(20, dtype=np.uint8).reshape(10, 2)
    q = np.zeros((10, 2), np.uint8)
    db.execute("BEGIN")
    hqdb.insert_codes(db, "t", codes, q, metadata={"title": [f"t{i}" for i in range(10)]})
    db.execute("ROLLBACK")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM t WHERE hq_match(t.code, x'0000') AND k = 100 AND mode = 'hamming'").fetchone() == (0,)
    hqdb.insert_codes(db, "t", codes, q, metadata={"title": [f"t{i}" for i in range(10)]})
    assert db.execute("SELECT title FROM t WHERE rowid = 4").fetchone() == ("t3",)


def test_rename_and_drop(db):
    random_table(db, name="my table", n=50)
    db.execute('ALTER TABLE "my table" RENAME TO other')
    assert db.execute("SELECT count(*) FROM other").fetchone() == (50,)
    assert db.execute("SELECT name FROM hqdb_tables").fetchall() == [("other",)]
    db.execute("DROP TABLE other")
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert not any(n.startswith("other") or n.startswith("my table") for n in names)
    assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)


def test_shadow_tables_are_read_only_to_sql_in_defensive_mode(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0)")
    db.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    with pytest.raises(apsw.Error):
        db.execute("DELETE FROM t_chunks")


def test_bulk_delete_equals_sql_delete(tmp_path):
    a, b = hqdb.connect(tmp_path / "a.db"), hqdb.connect(tmp_path / "b.db")
    for db in (a, b):
        random_table(db, n=3000, chunk_size=128, extra=", tag INTEGER")
    gone = [r for r in range(1, 3001) if r % 7 != 0 or 1000 < r < 1300]  # empties some chunks
    a.execute(f"DELETE FROM t WHERE rowid IN ({','.join(map(str, gone))})")
    assert hqdb.delete_rows(b, "t", gone + [999_999]) == len(gone)  # unknown rowids are ignored
    assert hqdb.delete_rows(b, "t", []) == 0
    q = np.random.default_rng(4).standard_normal(64).astype(np.float32).tobytes()
    sql = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 500 AND candidates = 100000"
    assert a.execute(sql, (q,)).fetchall() == b.execute(sql, (q,)).fetchall()
    for db in (a, b):
        assert hqdb.check.check(db)["ok"]
        assert db.execute("SELECT count(*) FROM t").fetchone() == (3000 - len(gone),)
    assert (a.execute("SELECT chunk, valid, rowids, codes, qcodes FROM t_chunks ORDER BY chunk").fetchall()
            == b.execute("SELECT chunk, valid, rowids, codes, qcodes FROM t_chunks ORDER BY chunk").fetchall())
    # Freed slots are reused by the next inserts, in both.
    for db in (a, b):
        db.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(4))")
    where = "SELECT chunk, slot FROM t_rows WHERE rowid = last_insert_rowid()"
    assert a.execute(where).fetchone() == b.execute(where).fetchone() == (1, 0)


def test_bulk_delete_is_all_or_nothing(db):
    random_table(db, n=300, chunk_size=64)
    q = np.ones(64, np.float32).tobytes()
    before = db.execute(SQL_ALL, (q,)).fetchall()
    with pytest.raises(apsw.SQLError, match="rowids"):
        hqdb.delete_rows(db, "t", [[1, 2]])
    db.execute("BEGIN")
    hqdb.delete_rows(db, "t", list(range(1, 200)))
    assert db.execute("SELECT count(*) FROM t").fetchone() == (101,)
    db.execute("ROLLBACK")
    assert db.execute(SQL_ALL, (q,)).fetchall() == before
    assert hqdb.check.check(db)["ok"]
