"""Crash harness: a writer doing seeded batches of inserts, updates and deletes into a raw and a
model-bound hq table is killed with SIGKILL at random points, round after round. After every
kill the database must be exactly the state after the last committed batch (nothing committed
lost, nothing uncommitted visible), pass PRAGMA integrity_check and hqdb's own check, and
answer searches exactly like a brute-force reference over the rows present."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hqdb
from hqdb import datasets, kernels
from hqdb.engine.check import check

import crash_writer as cw

torch = pytest.importorskip("torch")  # to train the model-bound table's model

ROUNDS = int(os.environ.get("HQDB_CRASH_ROUNDS", "6"))
SEED = 7
WRITER = os.path.join(os.path.dirname(__file__), "crash_writer.py")


def _db_state(db) -> dict:
    t = {r: (bytes(c), bytes(q), b) for r, c, q, b in db.execute("SELECT rowid, code, qcode, batch FROM t")}
    docs = {r: s for r, s in db.execute("SELECT rowid, title FROM docs")}
    return {"t": t, "docs": docs}


def _expected_view(state) -> dict:
    return {"t": dict(state["t"]), "docs": {r: title for r, (_, title) in state["docs"].items()}}


def _replay(state, b):
    t_rows = sorted(state["t"])
    docs_rows = sorted(state["docs"])
    cw.apply(state, cw.batch_ops(SEED, b, t_rows, docs_rows, state["image_dim"]), b)


def _copy(state):
    return {"t": dict(state["t"]), "docs": dict(state["docs"]), "image_dim": state["image_dim"]}


def _verify_search(db, state, model, rng):
    # Raw table: exact AQD order over the rows present, ties by Hamming distance, then rowid.
    raw_cb = np.frombuffer(db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4").reshape(
        cw.BOOKS, cw.CODEWORDS, cw.DIM)
    q = rng.standard_normal(cw.DIM).astype(np.float32)
    ids = np.array(sorted(state["t"]), dtype=np.int64)
    qc = np.array([np.frombuffer(state["t"][r][1], np.uint8) for r in ids]).reshape(-1, cw.BOOKS)
    lut = kernels.aqd_lut(q, raw_cb)
    dist = -lut[np.arange(cw.BOOKS)[None, :], qc.astype(np.int64)].sum(axis=1, dtype=np.float32)
    bits = np.array([np.frombuffer(state["t"][r][0], np.uint8) for r in ids]).reshape(len(ids), -1)
    ham = np.unpackbits(bits ^ kernels.pack_bits(q), axis=1).sum(1)
    order = np.lexsort((ids, ham, dist))[:50]  # ties by Hamming distance, then rowid
    got = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 50 "
                     "AND candidates = 1000000", (q.tobytes(),)).fetchall()
    assert got == [(int(ids[i]), float(dist[i])) for i in order]
    # Model-bound table: the stored codes are the model's encoding of the inserted features.
    ids = np.array(sorted(state["docs"]), dtype=np.int64)
    if len(ids):
        x = np.stack([np.frombuffer(state["docs"][r][0], np.float32) for r in ids])
        f = model.embed("image", x)
        rows = dict((r, (bytes(c), bytes(qq))) for r, c, qq in
                    db.execute("SELECT rowid, image_code, image_qcode FROM docs"))
        want_bits, want_q = kernels.pack_bits(f), model.quantize(f)
        for i, r in enumerate(ids):
            assert rows[int(r)] == (want_bits[i].tobytes(), want_q[i].astype(np.uint8).tobytes())


def test_sigkill_rounds_lose_nothing_committed_and_leak_nothing_uncommitted(db_path):
    pairs = datasets.synthetic_pairs(300, seed=5)
    model = hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=2)
    db = hqdb.connect(db_path)
    hqdb.save_model(db, "m", model)
    db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={cw.DIM}, books={cw.BOOKS}, codewords={cw.CODEWORDS}, "
               "chunk_size=64, batch INTEGER)")
    cb = np.random.default_rng(0).integers(-8, 9, (cw.BOOKS, cw.CODEWORDS, cw.DIM)).astype(np.float32)
    hqdb.set_codebooks(db, "t", cb)
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m', chunk_size=32, title TEXT)")
    db.close()
    rng = np.random.default_rng(SEED)
    state = {"t": {}, "docs": {}, "image_dim": model.input_dim("image")}
    next_batch = 0
    kills = 0
    for _ in range(ROUNDS):
        proc = subprocess.Popen([sys.executable, WRITER, str(db_path), str(SEED), str(next_batch)],
                                stdout=subprocess.PIPE, text=True)
        done = []
        try:
            assert proc.stdout.readline().strip() == "ready"
            # Let it run for a random while (commits land, and a batch is in flight), then kill.
            time.sleep(float(rng.uniform(0.05, 1.5)))
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            proc.wait()
            done = [int(x) for x in proc.stdout.read().split()]
            proc.stdout.close()
        # Batches printed are committed; the batch after them may or may not have committed.
        assert done == list(range(next_batch, next_batch + len(done)))
        for b in done:
            _replay(state, b)
        with_next = _copy(state)
        _replay(with_next, next_batch + len(done))
        db = hqdb.connect(db_path)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check(db) == {"ok": True, "tables": {"docs": [], "t": []}}
        got = _db_state(db)
        if got == _expected_view(state):
            next_batch += len(done)
        else:
            assert got == _expected_view(with_next), "database is neither before nor after the batch in flight"
            state = with_next
            next_batch += len(done) + 1
        _verify_search(db, state, model, rng)
        db.close()
        print(f"round: {len(done)} batches committed and seen, next batch {next_batch}, "
              f"{len(state['t'])} + {len(state['docs'])} rows")
    assert kills == ROUNDS
    assert next_batch > 0  # the writer got work done between kills
