"""Coverage-guided fuzzing of hqdb's entry points with atheris (libFuzzer for Python).

Not part of the test run (the hypothesis fuzzers in tests/test_fuzz.py are); run it with
``pip install atheris`` (the ``fuzz`` extra) and::

    python tests/fuzz_atheris.py -atheris_runs=20000        # a bounded run
    python tests/fuzz_atheris.py -max_total_time=600        # ten minutes

Each input picks a target from its first byte: CREATE arguments, a query value, inserted
code/qcode values, a codebook blob, or a stored model's tensor row. Every target must end in
success or a clear error (apsw.Error, hqdb.HqdbError, ValueError, KeyError, TypeError) and
leave the table consistent (hqdb.check); anything else is reported by atheris as a crash.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["hqdb"]):
    import numpy as np

    import apsw
    import hqdb
    from hqdb.engine.check import check

CLEAR = (apsw.Error, hqdb.HqdbError, ValueError, KeyError, TypeError)

TMP = tempfile.mkdtemp(prefix="hqdb-atheris-")
DB = hqdb.connect(os.path.join(TMP, "fuzz.db"))
DB.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16, title TEXT)")
_rng = np.random.default_rng(0)
hqdb.set_codebooks(DB, "t", _rng.standard_normal((4, 16, 64)).astype(np.float32))
hqdb.insert_codes(DB, "t", _rng.integers(0, 256, (200, 8), dtype=np.uint8),
                  _rng.integers(0, 16, (200, 4), dtype=np.uint8))
N_ROWS = 200


def _value(fdp: atheris.FuzzedDataProvider):
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeFloat()
    return None


def target_create(fdp):
    args = fdp.ConsumeUnicodeNoSurrogates(200).replace("\x00", "")
    try:
        DB.execute(f"CREATE VIRTUAL TABLE x USING hq({args})")
    except CLEAR:
        assert DB.execute("SELECT count(*) FROM hqdb_tables WHERE name = 'x'").fetchone() == (0,)
        return
    assert check(DB, "x")["ok"]
    DB.execute("DROP TABLE x")


def target_query(fdp):
    q, k = _value(fdp), _value(fdp)
    mode = fdp.PickValueInList([None, "hamming", "aqd", "two_stage", "bogus"])
    sql = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = ?" + (" AND mode = ?" if mode else "")
    try:
        DB.execute(sql, (q, k, mode) if mode else (q, k)).fetchall()
    except CLEAR:
        pass


def target_insert(fdp):
    code, qcode, title = _value(fdp), _value(fdp), _value(fdp)
    try:
        DB.execute("INSERT INTO t(code, qcode, title) VALUES (?, ?, ?)", (code, qcode, title))
    except CLEAR:
        assert DB.execute("SELECT count(*) FROM t").fetchone() == (N_ROWS,)
        return
    DB.execute("DELETE FROM t WHERE rowid = last_insert_rowid()")
    assert DB.execute("SELECT count(*) FROM t").fetchone() == (N_ROWS,)


def target_codebooks(fdp):
    blob = _value(fdp)
    before = DB.execute("SELECT hq_codebooks('t')").fetchone()
    try:
        DB.execute("SELECT hq_set_codebooks('t', ?)", (blob,))
    except CLEAR:
        assert DB.execute("SELECT hq_codebooks('t')").fetchone() == before
        return
    DB.execute("SELECT hq_set_codebooks('t', ?)", before)


def target_model_row(fdp):
    DB.execute("SAVEPOINT m")
    try:
        DB.execute("PRAGMA ignore_check_constraints = ON")
        DB.execute("INSERT OR REPLACE INTO hqdb_models(name, config) VALUES ('f', ?)", (_value(fdp) or "{}",))
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            DB.execute("INSERT OR REPLACE INTO hqdb_model_tensors(model, name, dtype, shape, data) VALUES ('f', ?, ?, ?, ?)",
                       (fdp.ConsumeUnicodeNoSurrogates(10), fdp.PickValueInList(["float32", "int64", "uint8", "uint16", "x"]),
                        fdp.ConsumeUnicodeNoSurrogates(30), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))))
        hqdb.list_models(DB)
        try:
            hqdb.load_model(DB, "f")
        except hqdb.ModelError:
            pass
    except CLEAR:
        pass
    finally:
        DB.execute("ROLLBACK TO m")
        DB.execute("RELEASE m")
        DB.execute("PRAGMA ignore_check_constraints = OFF")


TARGETS = [target_create, target_query, target_insert, target_codebooks, target_model_row]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
