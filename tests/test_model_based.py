"""Random sequences of writes, savepoints and rollbacks against a plain Python model of the
table: after every step, the rows and every kind of search agree with the model exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import hqdb
import reference

DIM, BOOKS, CODEWORDS = 16, 2, 4
CB = np.arange(BOOKS * CODEWORDS * DIM, dtype=np.float32).reshape(BOOKS, CODEWORDS, DIM) % 7 - 3
codes_st = st.binary(min_size=DIM // 8, max_size=DIM // 8)
qcodes_st = st.lists(st.integers(0, CODEWORDS - 1), min_size=BOOKS, max_size=BOOKS).map(bytes)


class HqTableMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.db = hqdb.connect(":memory:")
        self.db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={DIM}, books={BOOKS}, codewords={CODEWORDS}, "
                        "chunk_size=8, tag TEXT)")
        hqdb.set_codebooks(self.db, "t", CB)
        self.rows: dict[int, tuple[bytes, bytes, str]] = {}
        self.stack: list[dict] = []  # model snapshots, one per open savepoint level (0 = BEGIN)

    def teardown(self):
        self.db.close()

    @rule(code=codes_st, qcode=qcodes_st, tag=st.sampled_from(["a", "b", "c"]))
    def insert(self, code, qcode, tag):
        self.db.execute("INSERT INTO t(code, qcode, tag) VALUES (?, ?, ?)", (code, qcode, tag))
        rowid = self.db.last_insert_rowid()
        self.rows[rowid] = (code, qcode, tag)

    @rule(n=st.integers(1, 40), seed=st.integers(0, 1000))
    def bulk_insert(self, n, seed):
        rng = np.random.default_rng(seed)
        codes = rng.integers(0, 256, (n, DIM // 8), dtype=np.uint8)
        qcodes = rng.integers(0, CODEWORDS, (n, BOOKS), dtype=np.uint8)
        ids = hqdb.insert_codes(self.db, "t", codes, qcodes, metadata={"tag": ["bulk"] * n})
        for r, c, q in zip(ids.tolist(), codes, qcodes):
            self.rows[r] = (c.tobytes(), q.tobytes(), "bulk")

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def delete(self, data):
        rowid = data.draw(st.sampled_from(sorted(self.rows)))
        self.db.execute("DELETE FROM t WHERE rowid = ?", (rowid,))
        del self.rows[rowid]

    @precondition(lambda self: self.rows)
    @rule(data=st.data(), code=codes_st, new_rowid=st.integers(1, 300))
    def update(self, data, code, new_rowid):
        rowid = data.draw(st.sampled_from(sorted(self.rows)))
        if new_rowid in self.rows and new_rowid != rowid:
            new_rowid = rowid
        self.db.execute("UPDATE t SET code = ?, rowid = ? WHERE rowid = ?", (code, new_rowid, rowid))
        _, q, tag = self.rows.pop(rowid)
        self.rows[new_rowid] = (code, q, tag)

    @rule()
    def begin_or_savepoint(self):
        self.db.execute("BEGIN" if not self.stack else f"SAVEPOINT s{len(self.stack)}")
        self.stack.append(dict(self.rows))

    @precondition(lambda self: self.stack)
    @rule(commit=st.booleans())
    def end(self, commit):
        level = len(self.stack) - 1
        snapshot = self.stack.pop()
        if level == 0:
            self.db.execute("COMMIT" if commit else "ROLLBACK")
        elif commit:
            self.db.execute(f"RELEASE s{level}")
        else:
            self.db.execute(f"ROLLBACK TO s{level}")
            self.db.execute(f"RELEASE s{level}")
        if not commit:
            self.rows = snapshot

    @invariant()
    def rows_agree(self):
        got = {r: (c, q, t) for r, c, q, t in self.db.execute("SELECT rowid, code, qcode, tag FROM t")}
        assert got == self.rows

    @invariant()
    def searches_agree(self):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        codes = np.array([np.frombuffer(self.rows[r][0], np.uint8) for r in ids], np.uint8).reshape(-1, DIM // 8)
        qcodes = np.array([np.frombuffer(self.rows[r][1], np.uint8) for r in ids], np.uint8).reshape(-1, BOOKS)
        q = (np.arange(DIM, dtype=np.float32) % 5) - 2
        for mode, cand in (("two_stage", 5), ("hamming", 1), ("aqd", 1)):
            got = self.db.execute(
                "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = 7 "
                "AND mode = ? AND candidates = ?", (q.tobytes(), mode, cand)).fetchall()
            want = reference.search(codes, qcodes, ids, q, CB, k=7, candidates=cand, mode=mode)
            assert [tuple(r) for r in got] == list(zip(*want))


HqTableMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHqTable = HqTableMachine.TestCase
