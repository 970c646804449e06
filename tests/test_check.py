"""hqdb.check: the on-disk consistency check finds each kind of damage, and rebuild repairs
(and compacts) what can be repaired."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import apsw
import hqdb
from hqdb.engine.check import RebuildError, check, rebuild_table

from conftest import random_table

SQL = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = ? AND candidates = 1000000"


def _search(db, q, k=1000):
    return db.execute(SQL, (q.tobytes(), k)).fetchall()


def _brute(codes, qcodes, cb, rowids, q):
    """Exact AQD order over the given rows (ties by Hamming distance, then rowid)."""
    lut = np.einsum("d,lkd->lk", q.astype(np.float64), cb.astype(np.float64)).astype(np.float32)
    dist = -lut[np.arange(cb.shape[0])[None, :], qcodes.astype(np.int64)].sum(axis=1, dtype=np.float32)
    ham = np.unpackbits(codes ^ hqdb.kernels.pack_bits(q), axis=1).sum(1)
    order = np.lexsort((rowids, ham, dist))
    return [(int(rowids[i]), float(dist[i])) for i in order]


def test_fresh_and_busy_tables_are_consistent(db):
    random_table(db, n=700, chunk_size=64, extra=", year INTEGER")
    db.execute("DELETE FROM t WHERE rowid % 3 = 0")
    db.execute("UPDATE t SET year = 7 WHERE rowid % 5 = 0")
    db.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(8), zeroblob(4))")
    assert check(db) == {"ok": True, "tables": {"t": []}}
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)
    assert db.execute("SELECT hq_check('t')").fetchone() == ("ok",)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.parametrize("damage, expect", [
    ("UPDATE t_chunks SET valid = zeroblob(64) WHERE chunk = 2", "no occupied slot"),
    ("UPDATE t_rows SET slot = slot + 1 WHERE rowid = 3", "row 3 points at codes"),
    ("DELETE FROM t_rows WHERE rowid = 10", "orphan codes"),
    ("UPDATE t_rows SET chunk = 99 WHERE rowid = 11", "row 11 points at codes"),
    ("UPDATE t_chunks SET codes = x'00' WHERE chunk = 1", "wrong BLOB sizes"),
    ("UPDATE t_chunks SET qcodes = CAST(x'ff' || substr(qcodes, 2) AS BLOB) WHERE chunk = 1", ">= codewords"),
    ("UPDATE t_chunks SET valid = CAST(x'02' || substr(valid, 2) AS BLOB) WHERE chunk = 1", "other than 0 and 1"),
    ("UPDATE t_chunks SET qcodes = x'ff' || substr(qcodes, 2) WHERE chunk = 1", "non-BLOB value"),
    ("UPDATE hqdb_tables SET codebooks = x'0000'", "codebooks are 2 bytes"),
])
def test_check_names_each_kind_of_damage(db, damage, expect):
    random_table(db, n=200, chunk_size=64)
    db.execute("DELETE FROM t WHERE rowid BETWEEN 60 AND 63")  # free slots in chunk 1
    db.execute(damage)
    report = check(db, "t")
    assert not report["ok"]
    assert any(expect in p for p in report["tables"]["t"]), report
    assert expect in db.execute("SELECT hq_check('t')").fetchone()[0]
    assert expect in "\n".join(r[0] for r in db.execute("PRAGMA integrity_check"))


def test_free_slots_must_be_zeroed(db):
    random_table(db, n=100, chunk_size=64)
    db.execute("DELETE FROM t WHERE rowid = 5")
    db.execute("UPDATE t_chunks SET codes = CAST(x'ff' || substr(codes, 2) AS BLOB) WHERE chunk = 1")  # slot 0 is row 1
    assert check(db)["ok"]
    db.execute("UPDATE t_chunks SET codes = CAST(substr(codes, 1, 32) || x'ff' || substr(codes, 34) AS BLOB) "
               "WHERE chunk = 1")
    assert any("not zeroed" in p for p in check(db)["tables"]["t"])


def test_rebuild_repairs_pointer_damage_and_drops_orphans(db):
    codes, qcodes, cb, rowids = random_table(db, n=300, chunk_size=64)
    q = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    before = _search(db, q)
    db.execute("UPDATE t_rows SET chunk = 99 WHERE rowid IN (3, 70)")
    db.execute("UPDATE t_rows SET slot = 0 WHERE rowid = 100")  # points at another row's slot
    assert not check(db)["ok"]
    stats = json.loads(db.execute("SELECT hq_rebuild('t')").fetchone()[0])
    assert stats["rows"] == 300 and stats["kept"] == {"code": 300} and stats["lost"] == {"code": 0}
    assert check(db)["ok"]
    assert _search(db, q) == before == _brute(codes, qcodes, cb, rowids, q)


def test_rebuild_refuses_to_drop_rows_unless_asked(db):
    codes, qcodes, cb, rowids = random_table(db, n=150, chunk_size=64)
    # Row 5's codes are gone: its slot is freed and zeroed behind the table's back.
    chunk, slot = db.execute("SELECT chunk, slot FROM t_rows WHERE rowid = 5").fetchone()
    db.execute(f"UPDATE t_chunks SET "
               f"valid = CAST(substr(valid, 1, {slot}) || x'00' || substr(valid, {slot + 2}) AS BLOB), "
               f"rowids = CAST(substr(rowids, 1, {8 * slot}) || zeroblob(8) || substr(rowids, {8 * slot + 9}) AS BLOB), "
               f"codes = CAST(substr(codes, 1, {8 * slot}) || zeroblob(8) || substr(codes, {8 * slot + 9}) AS BLOB), "
               f"qcodes = CAST(substr(qcodes, 1, {4 * slot}) || zeroblob(4) || substr(qcodes, {4 * slot + 5}) AS BLOB) "
               f"WHERE chunk = {chunk}")
    assert any("row 5 points at codes" in p for p in check(db)["tables"]["t"])
    with pytest.raises(RebuildError, match=r"1 rows have lost their codes \(5\)"):
        rebuild_table(db, "t")
    assert db.execute("SELECT count(*) FROM t_rows").fetchone() == (150,)  # nothing changed
    stats = rebuild_table(db, "t", drop_missing=True)
    assert stats["rows_dropped"] == 1 and stats["rows"] == 149
    assert check(db)["ok"]
    keep = rowids != 5
    q = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    assert _search(db, q) == _brute(codes[keep], qcodes[keep], cb, rowids[keep], q)


def test_compaction_after_mass_delete_gives_space_back(db_path):
    db = hqdb.connect(db_path)
    codes, qcodes, cb, rowids = random_table(db, n=40_000, dim=128, chunk_size=256)
    db.execute("DELETE FROM t WHERE rowid % 10 != 0")  # 90% gone, scattered over every chunk
    chunks = db.execute("SELECT count(*) FROM t_chunks").fetchone()[0]
    assert chunks == 40_000 // 256 + 1  # no chunk emptied: the space is still held
    db.execute("VACUUM")
    size_before = os.path.getsize(db_path)
    stats = rebuild_table(db, "t")
    assert stats["chunks_before"] == {"code": chunks} and stats["chunks_after"] == {"code": 16}
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_after = os.path.getsize(db_path)
    assert size_after < 0.35 * size_before, (size_before, size_after)
    assert check(db)["ok"]
    keep = rowids % 10 == 0
    q = np.random.default_rng(3).standard_normal(128).astype(np.float32)
    assert _search(db, q, 50) == _brute(codes[keep], qcodes[keep], cb, rowids[keep], q)[:50]
    # New rows go on after compaction.
    db.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(16), zeroblob(4))")
    assert check(db)["ok"]


def test_model_bound_tables_are_checked(db):
    pytest.importorskip("torch")
    from hqdb import datasets

    pairs = datasets.synthetic_pairs(300, seed=4)
    model = hqdb.train(pairs, bits=16, books=2, codewords=8, seed=0, progress=False, epochs=2)
    hqdb.save_model(db, "m", model)
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m', chunk_size=32, title TEXT)")
    hqdb.insert_items(db, "docs", image=pairs["image"][:100], text=pairs["text"][:100])
    hqdb.insert_items(db, "docs", image=pairs["image"][100:150])  # image only
    db.execute("DELETE FROM docs WHERE rowid % 4 = 0")
    assert check(db)["ok"]
    db.execute("UPDATE docs_rows SET text_slot = text_slot + 1 WHERE rowid = 2")
    problems = check(db)["tables"]["docs"]
    assert any("row 2 points at text codes" in p for p in problems), problems
    stats = rebuild_table(db, "docs")
    # Row 2 gets its text codes back from the slot that carries its rowid.
    assert stats["lost"] == {"image": 0, "text": 0} and stats["kept"] == {"image": 113, "text": 75}
    assert check(db)["ok"]
    db.execute("UPDATE hqdb_tables SET options = json_set(options, '$.metric', 'l2') WHERE name = 'docs'")
    assert any("metric 'ip' but the table 'l2'" in p for p in check(db)["tables"]["docs"])
    db.execute("UPDATE hqdb_tables SET options = json_set(options, '$.metric', 'ip') WHERE name = 'docs'")
    assert check(db)["ok"]
    db.execute("UPDATE hqdb_model_tensors SET data = substr(data, 1, 10) WHERE rowid = "
               "(SELECT min(rowid) FROM hqdb_model_tensors)")
    assert any("model 'm'" in p for p in check(db)["tables"]["docs"])
