"""Connection lifecycle: ``with hqdb.connect(...) as db:`` closes, ``db.transaction()`` groups
writes, ``close()`` is idempotent, and connections left open are closed at interpreter exit so
the write-ahead log is checkpointed into the database file (which can then be copied alone)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import apsw
import hqdb
from hqdb.engine.check import check
from hqdb.sql import connection as connection_module

# The README quickstart's shape, on a raw table: open, write, exit without closing.
SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, hqdb
    db = hqdb.connect(sys.argv[1])
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, title TEXT)")
    rng = np.random.default_rng(0)
    hqdb.insert_codes(db, "t", rng.integers(0, 256, (3000, 8), dtype=np.uint8),
                      metadata={"title": [f"item {i}" for i in range(3000)]})
    db.execute("INSERT INTO t(code, title) VALUES (zeroblob(8), 'last')")
    """
)


def test_connections_left_open_are_closed_at_exit(tmp_path):
    # Before: the connection was never closed (the hq module registered on it holds it), so the
    # rows stayed in media.db-wal and a copy of the .db file alone was an empty database.
    path = tmp_path / "media.db"
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, timeout=120)
    wal = tmp_path / "media.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(path, copy / "media.db")  # the .db alone, no -wal / -shm
    with hqdb.connect(copy / "media.db") as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (3001,)
        assert db.execute("SELECT title FROM t WHERE rowid = 3001").fetchone() == ("last",)
        assert check(db)["ok"]


def test_with_block_closes_the_connection(db_path):
    with hqdb.connect(db_path) as db:
        assert isinstance(db, hqdb.Connection)
        db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0)")
        db.execute("INSERT INTO t(code) VALUES (x'01')")
    with pytest.raises(apsw.ConnectionClosedError):
        db.execute("SELECT 1")
    assert db not in connection_module._OPEN
    with hqdb.connect(db_path) as db2:  # what the block wrote is committed
        assert db2.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_with_block_closes_on_error_and_rolls_back_an_open_transaction(db_path):
    with pytest.raises(ZeroDivisionError):
        with hqdb.connect(db_path) as db:
            db.execute("CREATE TABLE x(a)")
            db.execute("BEGIN")
            db.execute("INSERT INTO x VALUES (1)")
            1 / 0
    with pytest.raises(apsw.ConnectionClosedError):
        db.execute("SELECT 1")
    with hqdb.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM x").fetchone() == (0,)


def test_close_is_idempotent_and_forgets_the_connection(db_path):
    db = hqdb.connect(db_path)
    assert db in connection_module._OPEN
    db.close()
    db.close()
    assert db not in connection_module._OPEN
    with pytest.raises(apsw.ConnectionClosedError):
        db.execute("SELECT 1")


def test_close_all_closes_what_is_open(db_path):
    a, b = hqdb.connect(db_path), hqdb.connect(db_path)
    b.close()
    others = [c for c in connection_module._OPEN if c is not a]
    connection_module._OPEN.difference_update(others)  # this test closes only its own
    try:
        connection_module._close_all()
    finally:
        connection_module._OPEN.update(others)
    with pytest.raises(apsw.ConnectionClosedError):
        a.execute("SELECT 1")


def test_transaction_commits_and_rolls_back(db_path):
    db = hqdb.connect(db_path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0, n INTEGER)")
    with db.transaction():
        assert not db.get_autocommit()
        db.execute("INSERT INTO t(code, n) VALUES (x'01', 1)")
        hqdb.insert_codes(db, "t", np.full((2, 1), 2, np.uint8), metadata={"n": [2, 3]})
    assert db.get_autocommit()
    assert db.execute("SELECT n FROM t ORDER BY rowid").fetchall() == [(1,), (2,), (3,)]
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.execute("INSERT INTO t(code, n) VALUES (x'04', 4)")
            raise RuntimeError("undo")
    assert db.get_autocommit()
    assert db.execute("SELECT count(*) FROM t").fetchone() == (3,)
    # Nested: the inner block is a savepoint inside the outer transaction.
    with db.transaction():
        db.execute("INSERT INTO t(code, n) VALUES (x'05', 5)")
        with pytest.raises(RuntimeError):
            with db.transaction():
                db.execute("INSERT INTO t(code, n) VALUES (x'06', 6)")
                raise RuntimeError("undo the inner block only")
    assert [n for (n,) in db.execute("SELECT n FROM t ORDER BY rowid")] == [1, 2, 3, 5]
    assert check(db)["ok"]
    db.close()


def test_transaction_takes_the_write_lock_at_once(db_path):
    a = hqdb.connect(db_path)
    a.execute("CREATE TABLE x(v)")
    b = hqdb.connect(db_path, timeout=0.1)
    with a.transaction():  # BEGIN IMMEDIATE: b cannot start writing even before a writes
        with pytest.raises(apsw.BusyError):
            b.execute("BEGIN IMMEDIATE")
    b.execute("INSERT INTO x VALUES (1)")
    a.close()
    b.close()
