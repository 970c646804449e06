"""A process killed in the middle of inserting loses nothing that was committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import hqdb

WRITER = textwrap.dedent(
    """
    import sys, numpy as np, hqdb
    db = hqdb.connect(sys.argv[1])
    rng = np.random.default_rng(0)
    batch = 0
    while True:  # committed batches of 500, then one transaction left open when we are killed
        db.execute("BEGIN")
        for i in range(500):
            db.execute("INSERT INTO t(code, batch) VALUES (?, ?)", (rng.integers(0, 256, 8, dtype=np.uint8).tobytes(), batch))
        db.execute("COMMIT")
        print(batch, flush=True)
        batch += 1
        if batch == 3:
            db.execute("BEGIN")
            for i in range(300):
                db.execute("INSERT INTO t(code, batch) VALUES (zeroblob(8), -1)")
            hqdb.insert_codes(db, "t", np.zeros((2000, 8), np.uint8), metadata={"batch": [-1] * 2000})
            print("open", flush=True)
            sys.stdin.read()  # wait to be killed mid-transaction
    """
)


def test_kill_mid_insert_keeps_committed_rows(db_path):
    db = hqdb.connect(db_path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, chunk_size=128, batch INTEGER)")
    db.close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.time() + 120
        while "open" not in lines and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert "open" in lines, lines
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    db = hqdb.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("SELECT count(*), min(batch), max(batch) FROM t").fetchone() == (1500, 0, 2)
    found = db.execute("SELECT count(*) FROM t WHERE hq_match(t.code, zeroblob(8)) AND k = 5000 "
                       "AND mode = 'hamming'").fetchone()
    assert found == (1500,)
    # The table is fully usable afterwards.
    db.execute("INSERT INTO t(code, batch) VALUES (zeroblob(8), 9)")
    assert db.execute("SELECT rowid FROM t WHERE hq_match(t.code, zeroblob(8)) AND k = 1 "
                      "AND mode = 'hamming'").fetchone() is not None
