"""Concurrency: one writer process and several reader processes on a WAL database; a held write
lock gives a clear BusyError after the busy timeout; threads sharing a connection or each with
their own get the same answers as a single thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import apsw
import hqdb
from hqdb.engine.check import check

from conftest import random_table

BATCH = 200
SECONDS = float(os.environ.get("HQDB_CONCURRENCY_SECONDS", "3"))

WRITER = textwrap.dedent(
    f"""
    import sys, time, numpy as np, hqdb
    db = hqdb.connect(sys.argv[1])
    rng = np.random.default_rng(1)
    end = time.time() + float(sys.argv[2])
    b = 0
    while time.time() < end:
        with db.transaction():  # one transaction per batch: {BATCH} rows of batch b, and batch b-3 deleted
            hqdb.insert_codes(db, "t", rng.integers(0, 256, ({BATCH}, 8), dtype=np.uint8),
                              rng.integers(0, 16, ({BATCH}, 4), dtype=np.uint8), metadata={{"batch": [b] * {BATCH}}})
            db.execute("DELETE FROM t WHERE batch = ?", (b - 3,))
        b += 1
    print(b)
    """
)

READER = textwrap.dedent(
    """
    import json, sys, time, numpy as np, hqdb
    from hqdb import kernels
    db = hqdb.connect(sys.argv[1])
    cb = np.frombuffer(db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4").reshape(4, 16, 64)
    rng = np.random.default_rng(int(sys.argv[3]))
    end = time.time() + float(sys.argv[2])
    queries = snapshots = 0
    seen = set()
    while time.time() < end:
        db.execute("BEGIN")  # one read snapshot: plain SQL and the hq search must agree in it
        counts = dict(db.execute("SELECT batch, count(*) FROM t GROUP BY batch").fetchall())
        bad = {b: c for b, c in counts.items() if c != BATCH}
        assert not bad, f"half-written batches visible: {bad}"
        rows = db.execute("SELECT rowid, qcode, code FROM t ORDER BY rowid").fetchall()
        for _ in range(3):
            q = rng.standard_normal(64).astype(np.float32)
            got = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 20 "
                             "AND candidates = 100000000", (q.tobytes(),)).fetchall()
            ids = np.array([r for r, _, _ in rows], dtype=np.int64)
            qc = np.frombuffer(b"".join(c for _, c, _ in rows), np.uint8).reshape(-1, 4).astype(np.int64)
            bits = np.frombuffer(b"".join(c for _, _, c in rows), np.uint8).reshape(-1, 8)
            ham = np.unpackbits(bits ^ kernels.pack_bits(q), axis=1).sum(1)
            lut = kernels.aqd_lut(q, cb)
            dist = -lut[np.arange(4)[None, :], qc].sum(axis=1, dtype=np.float32)
            want = [(int(ids[i]), float(dist[i])) for i in np.lexsort((ids, ham, dist))[:20]]
            assert got == want, "search disagrees with the snapshot's rows (stale code cache?)"
            queries += 1
        db.execute("COMMIT")
        snapshots += 1
        seen.add(max(counts, default=-1))
    print(json.dumps({"queries": queries, "snapshots": snapshots, "distinct_states": len(seen)}))
    """
).replace("BATCH", str(BATCH))


def test_one_writer_many_readers(db_path):
    db = hqdb.connect(db_path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16, chunk_size=128, batch INTEGER)")
    hqdb.set_codebooks(db, "t", np.random.default_rng(0).integers(-8, 9, (4, 16, 64)).astype(np.float32))
    db.close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), str(SECONDS)],
                              stdout=subprocess.PIPE, text=True)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(db_path), str(SECONDS), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    out = [p.communicate(timeout=120) for p in readers]
    batches = int(writer.communicate(timeout=120)[0])
    for p, (so, se) in zip(readers, out):
        assert p.returncode == 0, se
    stats = [json.loads(so) for so, _ in out]
    print(f"writer: {batches} batches; readers: {stats}")
    assert batches > 3
    # Every reader took many snapshots and saw the table change under it (the cache refreshed).
    assert all(s["snapshots"] > 5 and s["distinct_states"] > 1 for s in stats), stats
    db = hqdb.connect(db_path)
    assert check(db)["ok"]
    assert db.execute("SELECT count(*) FROM t").fetchone() == (BATCH * min(3, batches),)


def test_busy_write_lock_gives_clear_error_after_the_timeout(db_path):
    a = hqdb.connect(db_path)
    random_table(a, n=50)
    b = hqdb.connect(db_path, timeout=0.3)
    assert b.execute("SELECT count(*) FROM t").fetchone() == (50,)
    a.execute("BEGIN IMMEDIATE")
    a.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(4))")
    start = time.perf_counter()
    with pytest.raises(apsw.BusyError):
        b.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(4))")
    waited = time.perf_counter() - start
    assert 0.25 < waited < 5
    # Readers are not blocked by the writer in WAL mode, and see the last commit.
    q = np.ones(64, np.float32).tobytes()
    assert len(b.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 100", (q,)).fetchall()) == 50
    a.execute("COMMIT")
    b.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(4))")
    assert b.execute("SELECT count(*) FROM t").fetchone() == (52,)
    assert len(b.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 100", (q,)).fetchall()) == 52
    assert check(b)["ok"]


@pytest.mark.parametrize("shared", [True, False])
def test_threads_get_single_thread_answers(db_path, shared):
    db = hqdb.connect(db_path)
    random_table(db, n=3000)
    rng = np.random.default_rng(5)
    queries = [rng.standard_normal(64).astype(np.float32).tobytes() for _ in range(40)]
    sql = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 300"
    want = [db.execute(sql, (q,)).fetchall() for q in queries]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            conn = db if shared else hqdb.connect(db_path)
            results[i] = [conn.execute(sql, (q,)).fetchall() for q in queries]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[i] == want for i in range(4))


def test_many_open_connections(tmp_path):
    # apsw allows 33 modules with xShadowName per process: connections past that still work.
    conns = [hqdb.connect(tmp_path / "many.db") for _ in range(40)]
    conns[0].execute("CREATE VIRTUAL TABLE t USING hq(dim=8, books=0)")
    for i, c in enumerate(conns):
        c.execute("INSERT INTO t(code) VALUES (?)", (bytes([i]),))
    assert all(c.execute("SELECT count(*) FROM t").fetchone() == (40,) for c in conns)
    for c in conns:
        c.close()


# ---------------------------------------------------------------- read-then-write paths wait
@pytest.fixture(scope="module")
def small_model():
    pytest.importorskip("torch")
    from hqdb import datasets

    return hqdb.train(datasets.synthetic_pairs(300, seed=3), bits=32, books=2, codewords=16, seed=0,
                      progress=False, epochs=1)


# Waits for a common start time (after the imports), then inserts through a collection in
# batches; every BusyError is counted, not raised, so the test sees how many batches were lost.
COLLECTION_WRITER = textwrap.dedent(
    """
    import json, sys, time, numpy as np, apsw, hqdb
    path, who, batches, per, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    db = hqdb.connect(path)
    coll = db.collection("c")
    rng = np.random.default_rng(len(who))
    while time.time() < start:
        time.sleep(0.001)
    ok = failed = 0
    errors = []
    for b in range(batches):
        items = [{"who": who, "i": b * per + j, "image": rng.standard_normal(128).astype(np.float32)}
                 for j in range(per)]
        try:
            coll.insert_all(items)
            ok += 1
        except apsw.BusyError as e:
            failed += 1
            errors.append(str(e))
    db.close()
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:3]}))
    """
)


def test_two_processes_inserting_through_a_collection_lose_nothing(tmp_path, small_model):
    # Before: insert_all opened a deferred transaction and read max(rowid) before writing, so a
    # process whose snapshot went stale got SQLITE_BUSY at once (no busy wait): inserts were lost.
    path = tmp_path / "coll.db"
    db = hqdb.connect(path)
    hqdb.save_model(db, "m", small_model)
    db.create_collection("c", model="m", columns={"who": str, "i": int})
    db.close()
    batches, per = 40, 5
    start = time.time() + 4.0  # both processes imported hqdb and opened the database by then
    procs = [subprocess.Popen([sys.executable, "-c", COLLECTION_WRITER, str(path), who, str(batches), str(per),
                               str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in ("a", "bb")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se
    stats = [json.loads(so) for so, _ in outs]
    assert all(s["failed"] == 0 for s in stats), stats
    db = hqdb.connect(path)
    got = db.execute("SELECT who, count(*), count(DISTINCT i) FROM c GROUP BY who ORDER BY who").fetchall()
    assert got == [("a", batches * per, batches * per), ("bb", batches * per, batches * per)]
    assert check(db)["ok"]
    db.close()


# Two `hqdb index` runs started together (after their imports) on one database.
INDEX_RUN = textwrap.dedent(
    """
    import sys, time
    from hqdb.cli import main
    start = float(sys.argv[1])
    while time.time() < start:
        time.sleep(0.001)
    sys.exit(main(sys.argv[2:]))
    """
)


def test_two_index_runs_at_once_both_succeed(tmp_path, small_model):
    # Before: `hqdb index` wrote inside apsw's deferred `with db:` after reading, so the second
    # run failed with BusyError (or found the collection created under it).
    from hqdb import datasets

    path = tmp_path / "app.db"
    db = hqdb.connect(path)
    hqdb.save_model(db, "m", small_model)
    db.close()
    pairs = datasets.synthetic_pairs(300, seed=8)
    for rounds in range(2):  # a new collection (both may try to create it), then an existing one
        files = []
        for who in ("a", "b"):
            f = tmp_path / f"items_{who}{rounds}.npz"
            np.savez(f, image=pairs["image"], who=np.array([who] * 300))
            files.append(f)
        start = time.time() + 4.0
        procs = [subprocess.Popen([sys.executable, "-c", INDEX_RUN, str(start), "index", str(f), "--db", str(path),
                                   "--collection", "photos", "--model", "m", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (so, se) in zip(procs, outs):
            assert p.returncode == 0, se
        results = [json.loads(so) for so, _ in outs]
        assert all(r["inserted"] == 300 for r in results)
        if rounds == 0:
            assert sorted(r["created"] for r in results) == [False, True]
        db = hqdb.connect(path)
        assert db.execute("SELECT who, count(*) FROM photos GROUP BY who ORDER BY who").fetchall() == \
            [("a", 300 * (rounds + 1)), ("b", 300 * (rounds + 1))]
        assert check(db)["ok"]
        db.close()


# ---------------------------------------------------------------- search_many reads one snapshot
@pytest.fixture
def searchable(tmp_path, small_model):
    from hqdb import datasets

    path = tmp_path / "search.db"
    db = hqdb.connect(path)
    hqdb.save_model(db, "m", small_model)
    coll = db.create_collection("c", model="m", columns={"title": str})
    pairs = datasets.synthetic_pairs(120, seed=4)
    coll.insert_all([{"title": f"t{i}", "image": pairs["image"][i]} for i in range(120)])
    yield path, db, coll, pairs["image"][:6]
    db.close()


def test_search_many_sees_one_snapshot_while_rows_are_deleted(searchable):
    # Before: the batched kernel search and the read of the hits' columns were two snapshots, so
    # rows deleted in between made search_many raise a bare KeyError.
    path, db, coll, queries = searchable
    want = coll.search_many(image=queries, target="image", k=10)
    assert all(len(h) == 10 for h in want)
    hit_ids = sorted({h.rowid for hits in want for h in hits})
    other = hqdb.connect(path)
    deleted = []

    def delete_before_the_columns_are_read(cursor, sql, bindings):
        # Runs just before each statement of db; the one reading the hits' columns (after the
        # kernel search) is preceded by another connection's committed delete of every hit.
        if not deleted and "json_each" in sql and "c_rows" in sql:
            deleted.extend(hit_ids)
            hqdb.delete_rows(other, "c", hit_ids)
        return True

    db.exec_trace = delete_before_the_columns_are_read
    try:
        got = coll.search_many(image=queries, target="image", k=10)
    finally:
        db.exec_trace = None
    assert deleted and other.execute("SELECT count(*) FROM c").fetchone() == (120 - len(deleted),)
    # The whole call saw the snapshot it started in: the same hits, with their columns.
    assert [h.to_dicts() for h in got] == [h.to_dicts() for h in want]
    after = coll.search_many(image=queries, target="image", k=10)
    assert all(len(h) == 10 for h in after)
    assert all(h.rowid not in deleted and h.title == coll.get(h.rowid)["title"] for hits in after for h in hits)
    other.close()


def test_search_many_never_surfaces_a_vanished_row_as_key_error(searchable, monkeypatch):
    # Should the columns of a hit ever be missing, the hit is left out: no bare KeyError.
    from hqdb import collections as collections_module

    path, db, coll, queries = searchable
    want = coll.search_many(image=queries, target="image", k=10)
    gone = want[0][0].rowid
    real = collections_module._hit_columns

    def without_one(c, rowids):
        return {r: v for r, v in real(c, rowids).items() if r != gone}

    monkeypatch.setattr(collections_module, "_hit_columns", without_one)
    got = coll.search_many(image=queries, target="image", k=10)
    assert [h.to_dicts() for h in got] == [[d for d in h.to_dicts() if d["rowid"] != gone] for h in want]
