"""The engine's write path and cache coherence (issue 12): regression tests for the defects an
independent tester found, and the batched SQL write path's guarantees."""

from __future__ import annotations

import numpy as np
import pytest

import apsw

import hqdb
from conftest import random_table
from hqdb.engine.storage import CodeStore


def _search(db, q, table="t", k=20):
    return db.execute(f"SELECT rowid, distance FROM {table} WHERE hq_match({table}.code, ?) AND k = ? "
                      "AND mode = 'hamming'", (q.tobytes(), k)).fetchall()


def _all_codes(db, table="t"):
    return db.execute(f"SELECT rowid, code FROM {table} ORDER BY rowid").fetchall()


# ------------------------------------------------------------------ defect 1: rollback ABA
def test_rolled_back_bulk_write_then_anothers_commit_is_not_taken_as_fresh(db_path):
    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path)
    try:
        random_table(a, n=50, books=0)
        rng = np.random.default_rng(3)
        q = rng.standard_normal(64).astype(np.float32)
        _search(a, q)  # a's cache is loaded
        a.execute("BEGIN")
        ghost = hqdb.insert_codes(a, "t", rng.integers(0, 256, (30, 8), dtype=np.uint8))
        assert len(_search(a, q, k=80)) == 80  # a sees its own uncommitted rows
        a.execute("ROLLBACK")
        # Another connection commits one write: a counter would be back at the value a's cache
        # remembers (rolled back to V, then V+1).
        hqdb.insert_codes(b, "t", rng.integers(0, 256, (1, 8), dtype=np.uint8))
        got = {r for r, _ in _search(a, q, k=100)}
        assert not got & set(ghost.tolist()) - {51}, "rows that were never committed came back"
        assert got == {r for r, _ in _search(b, q, k=100)}
        # The next insert must not reuse a slot the stale cache thought free.
        hqdb.insert_codes(a, "t", rng.integers(0, 256, (5, 8), dtype=np.uint8))
        assert b.execute("SELECT hq_check()").fetchone() == ("ok",)
        assert _all_codes(a) == _all_codes(b)
    finally:
        a.close()
        b.close()


def test_rolled_back_sql_writes_leave_the_cache_right(db_path):
    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path)
    try:
        random_table(a, n=40, books=0)
        q = np.ones(64, np.float32)
        _search(a, q)
        a.execute("BEGIN")
        a.execute("DELETE FROM t WHERE rowid <= 10")
        a.executemany("INSERT INTO t(code) VALUES (?)", [(bytes([i] * 8),) for i in range(7)])
        assert len(_search(a, q, k=100)) == 37
        a.execute("ROLLBACK")
        b.execute("INSERT INTO t(code) VALUES (?)", (bytes(8),))
        assert sorted(_search(a, q, k=100)) == sorted(_search(b, q, k=100))
        assert len(_search(a, q, k=100)) == 41
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ defect 2: drop and recreate
def test_table_dropped_and_recreated_by_another_connection(db_path):
    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path)
    try:
        random_table(a, n=20, dim=64, books=0)
        hqdb.insert_codes(a, "t", np.zeros((1, 8), np.uint8))  # a holds a table object for dim=64
        b.execute("DROP TABLE t")
        b.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=0)")
        with pytest.raises(hqdb.HqError, match=r"shape \(N, 16\)"):
            hqdb.insert_codes(a, "t", np.zeros((3, 8), np.uint8))  # the old width is refused
        hqdb.insert_codes(a, "t", np.ones((3, 16), np.uint8))
        assert b.execute("SELECT hq_check()").fetchone() == ("ok",)
        assert b.execute("SELECT count(*) FROM t").fetchone() == (3,)
        assert [len(r[1]) for r in _all_codes(b)] == [16, 16, 16]
    finally:
        a.close()
        b.close()


def test_stale_table_object_refuses_to_write(db_path):
    a = hqdb.connect(db_path)
    b = hqdb.connect(db_path)
    try:
        random_table(a, n=5, dim=64, books=0)
        stale = a.hq.table("t")
        b.execute("DROP TABLE t")
        b.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=0)")
        with pytest.raises(hqdb.StaleTableError, match="dropped and recreated"):
            stale.write_many(1, None, {}, {0: (np.zeros((1, 8), np.uint8), None)})
        assert b.execute("SELECT hq_check()").fetchone() == ("ok",)
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ defect 5: open cursor
def test_open_cursor_returns_each_rows_own_codes_while_its_connection_writes(db):
    codes, _, _, rowids = random_table(db, n=40, books=0, chunk_size=8)
    truth = {int(r): c.tobytes() for r, c in zip(rowids, codes)}
    cursor = db.cursor().execute("SELECT rowid, code FROM t ORDER BY rowid")
    seen = [next(cursor)]
    # Rows ahead of the cursor go away and new rows take their slots.
    db.execute("DELETE FROM t WHERE rowid BETWEEN 5 AND 30")
    fresh = [bytes([200 + i] * 8) for i in range(20)]
    db.executemany("INSERT INTO t(code) VALUES (?)", [(c,) for c in fresh])
    for rowid, code in cursor:
        seen.append((rowid, code))
    for rowid, code in seen:
        if code is not None:  # a row deleted after the scan started reads as NULL codes
            assert code == truth[rowid], f"row {rowid} came back with another row's codes"
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


# ------------------------------------------------------------------ the batched write path
def test_autocommit_inserts_do_not_reload_the_cache(db, monkeypatch):
    random_table(db, n=300, books=0)
    q = np.ones(64, np.float32)
    _search(db, q)
    loads = []
    real = CodeStore.load
    monkeypatch.setattr(CodeStore, "load", lambda self: loads.append(1) or real(self))
    for i in range(50):
        db.execute("INSERT INTO t(code) VALUES (?)", (bytes([i] * 8),))
        db.execute("DELETE FROM t WHERE rowid = ?", (i + 1,))
    assert len(_search(db, q, k=400)) == 300
    assert loads == []
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_sql_rows_wait_in_the_buffer_and_every_read_sees_them(db):
    random_table(db, n=10, books=0)
    table = db.hq.table("t")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t(code) VALUES (?)", [(bytes([i] * 8),) for i in range(25)])
    assert table.pending == 25
    assert db.execute("SELECT count(*) FROM t").fetchone() == (35,)  # a read flushes first
    assert table.pending == 0
    db.executemany("INSERT INTO t(code) VALUES (?)", [(bytes([i] * 8),) for i in range(5)])
    assert len(_search(db, np.ones(64, np.float32), k=100)) == 40
    db.execute("COMMIT")
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_failed_multirow_statement_in_a_transaction_leaves_no_codes(db):
    """SQLite does not tell a virtual table that a statement was rolled back (apsw skips the
    callback while the statement's exception is pending): the buffer is reconciled with the
    rows table at the flush."""
    random_table(db, n=3, books=0)
    db.execute("BEGIN")
    with pytest.raises(apsw.SQLError, match="must be a BLOB of 8 bytes"):
        db.execute("INSERT INTO t(code) SELECT column1 FROM (VALUES (x'0101010101010101'), (x'0202020202020202'), "
                   "(x'03'))")
    db.execute("INSERT INTO t(code) VALUES (x'0909090909090909')")
    db.execute("COMMIT")
    rows = _all_codes(db)
    assert [r[1] for r in rows[3:]] == [bytes([9] * 8)]
    assert len(_search(db, np.ones(64, np.float32), k=50)) == 4
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_last_insert_rowid_is_the_users_after_the_commit_flush(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, chunk_size=8)")
    for i in range(20):
        db.execute("INSERT INTO t(code) VALUES (?)", (bytes([i] * 8),))
        assert db.last_insert_rowid() == i + 1


def test_insert_or_replace_of_a_buffered_row(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, name TEXT UNIQUE)")
    db.execute("BEGIN")
    db.execute("INSERT INTO t(rowid, code, name) VALUES (1, x'0101010101010101', 'a')")
    db.execute("INSERT OR REPLACE INTO t(rowid, code, name) VALUES (1, x'0202020202020202', 'b')")
    db.execute("INSERT OR REPLACE INTO t(code, name) VALUES (x'0303030303030303', 'b')")
    db.execute("INSERT OR IGNORE INTO t(code, name) VALUES (x'0404040404040404', 'b')")
    db.execute("COMMIT")
    assert db.execute("SELECT rowid, hex(code), name FROM t").fetchall() == [(1, "03" * 8, "b")]  # max(rowid) + 1
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_side_effecting_functions_are_direct_only(db):
    random_table(db, n=5)
    cb = db.execute("SELECT hq_codebooks('t')").fetchone()[0]
    db.execute("CREATE VIEW v AS SELECT hq_set_codebooks('t', zeroblob(length(hq_codebooks('t')))) AS x")
    with pytest.raises(apsw.SQLError, match="unsafe use of hq_set_codebooks"):
        db.execute("SELECT * FROM v").fetchall()
    assert db.execute("SELECT hq_codebooks('t')").fetchone()[0] == cb


def test_freed_slots_are_reused_without_recounting_the_cache(db, monkeypatch):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, chunk_size=8)")
    db.executemany("INSERT INTO t(code) VALUES (?)", [(bytes([i] * 8),) for i in range(16)])  # two full chunks
    table = db.hq.table("t")
    store = table.stores[0]
    counted = []
    real = np.flatnonzero
    monkeypatch.setattr(np, "flatnonzero", lambda a: counted.append(len(a)) or real(a))
    for rowid in (3, 12, 5):
        db.execute("DELETE FROM t WHERE rowid = ?", (rowid,))
        db.execute("INSERT INTO t(code) VALUES (x'ffffffffffffffff')")
    assert len(store.chunk_ids) == 2  # every insert took a freed slot: no third chunk
    assert not any(n >= 16 for n in counted), "the free slots were recounted over the whole cache"
    locs = db.execute("SELECT chunk, slot FROM t_rows WHERE rowid > 16 ORDER BY rowid").fetchall()
    assert locs == [(1, 2), (2, 3), (1, 4)]
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_scan_reads_the_validity_mask_exactly_when_a_slot_is_empty(db, monkeypatch):
    """A table whose every cache slot holds a row is scanned without its mask (None to the
    kernel); once a slot is empty (a delete, a part-filled chunk) the mask goes in, and either way
    the results are numpy's brute-force ranking by (Hamming distance, rowid)."""
    from hqdb import kernels

    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, chunk_size=8)")
    rng = np.random.default_rng(7)
    codes = {i + 1: rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for i in range(16)}  # two full chunks
    db.executemany("INSERT INTO t(rowid, code) VALUES (?, ?)", list(codes.items()))
    store = db.hq.table("t").stores[0]
    masks = []
    real = kernels.search
    monkeypatch.setattr(kernels, "search", lambda *a, **kw: masks.append(a[3] is None) or real(*a, **kw))
    q = rng.integers(0, 256, 8, dtype=np.uint8)

    def check():
        got = db.execute(
            "SELECT rowid, hamming FROM t WHERE hq_match(t.code, ?) AND k = 10 AND mode = 'hamming'", (q.tobytes(),)
        ).fetchall()
        ham = {r: int(np.unpackbits(np.frombuffer(c, np.uint8) ^ q).sum()) for r, c in codes.items()}
        assert got == sorted(ham.items(), key=lambda rh: (rh[1], rh[0]))[:10]

    check()
    assert store.n_rows == store.size and masks[-1] is True
    for rowid in (2, 9, 15):
        db.execute("DELETE FROM t WHERE rowid = ?", (rowid,))
        del codes[rowid]
    check()
    assert store.n_rows < store.size and masks[-1] is False
    for rowid in (2, 9, 15):  # the freed slots are taken again: every slot holds a row once more
        codes[100 + rowid] = bytes(8)
        db.execute("INSERT INTO t(rowid, code) VALUES (?, ?)", (100 + rowid, codes[100 + rowid]))
    check()
    assert store.n_rows == store.size and masks[-1] is True
    codes[200] = bytes([255] * 8)
    db.execute("INSERT INTO t(rowid, code) VALUES (200, ?)", (codes[200],))  # a third chunk, 1 of 8 slots used
    check()
    assert masks[-1] is (store.n_rows == store.size)


def test_rows_deleted_by_another_sqlite_client_give_a_clear_error(db_path):
    import sqlite3

    db = hqdb.connect(db_path)
    try:
        random_table(db, n=30, books=0, extra=", title TEXT")
        db.execute("UPDATE t SET title = 'x' || rowid")
        q = np.ones(64, np.float32).tobytes()
        hits = db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 30", (q,)).fetchall()
        victim = hits[0][0]
        other = sqlite3.connect(db_path)  # another application, straight at the shadow table
        other.execute("DELETE FROM t_rows WHERE rowid = ?", (victim,))
        other.commit()
        other.close()
        with pytest.raises(hqdb.CorruptTableError, match=rf"row {victim} has codes but no row in t_rows.*hqdb rebuild"):
            db.execute("SELECT rowid, title FROM t WHERE hq_match(t.code, ?) AND k = 30", (q,)).fetchall()
        assert "orphan" in db.execute("SELECT hq_check('t')").fetchone()[0]
        db.execute("SELECT hq_rebuild('t')")
        rows = db.execute("SELECT rowid, title FROM t WHERE hq_match(t.code, ?) AND k = 30", (q,)).fetchall()
        assert len(rows) == 29 and victim not in [r for r, _ in rows]
    finally:
        db.close()
