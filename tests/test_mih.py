"""index='mih' (multi-index hashing, hqdb.engine.mih): exactly the linear scan's results.

Every check runs the same search on a table with the index and on its twin without (or on
hqdb.kernels.search over the same arrays), and compares rowids, distances and Hamming distances
in order — ties (equal distances, broken by rowid) included — after writes, deletes, updates,
rollbacks, with metadata filters, for 'hamming' and two-stage, raw and model-bound tables.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import hqdb
from hqdb import kernels
from hqdb.engine import mih
from hqdb.engine.options import TableOptions, parse_args
from hqdb.errors import CorruptTableError, OptionError

SQL = "SELECT rowid, distance, hamming FROM {t} WHERE hq_match({t}.code, ?) AND k = ? AND mode = ? AND candidates = ?"


@pytest.fixture(autouse=True)
def small_tables_use_the_index(monkeypatch):
    """Tests use small tables: let the index run on them (and give up for a scan only after
    probing about 50 times as many buckets and rows as the table has)."""
    monkeypatch.setattr(mih, "MIN_ROWS", 0)
    monkeypatch.setattr(mih, "BUDGET", 50)


def clustered(rng, n, dim, clusters=20, flips=2):
    """Codes near a few centres (many equal distances: ties), as uint8 (n, dim/8)."""
    centres = rng.integers(0, 2, (clusters, dim), dtype=np.uint8)
    bits = centres[rng.integers(0, clusters, n)]
    for _ in range(flips):
        bits[np.arange(n), rng.integers(0, dim, n)] ^= 1
    return np.packbits(bits, axis=1, bitorder="little")


def twins(db, codes, *, books=0, codewords=16, extra="", idx_extra="", meta=None, seed=0):
    """Tables t (index='mih') and u (no index) holding the same rows; the codebooks (or None)."""
    rng = np.random.default_rng(seed)
    n, dim = len(codes), codes.shape[1] * 8
    cb = None
    qcodes = rng.integers(0, codewords, (n, books)).astype(np.uint8) if books else None
    for name, more in (("t", ", index='mih'" + idx_extra), ("u", "")):
        db.execute(f"CREATE VIRTUAL TABLE {name} USING hq(dim={dim}, books={books}, codewords={codewords}{extra}{more})")
        if books:
            cb = np.random.default_rng(seed + 1).integers(-8, 9, (books, codewords, dim)).astype(np.float32)
            hqdb.set_codebooks(db, name, cb)
        hqdb.insert_codes(db, name, codes, qcodes, metadata=meta)
    return cb


def index_of(db, name="t", set_idx=0):
    return db.hq.table(name).stores[set_idx].index


def same(db, query: bytes, k, mode="hamming", candidates=1000, where=""):
    """The index table's results equal the twin's (returns them)."""
    got = db.execute(SQL.format(t="t") + where, (query, k, mode, candidates)).fetchall()
    want = db.execute(SQL.format(t="u") + where, (query, k, mode, candidates)).fetchall()
    assert got == want, (k, mode, candidates, where)
    return got


def queries(rng, codes, n=6):
    """Stored codes (distance 0 present), stored codes with a flipped bit, random codes."""
    dim = codes.shape[1] * 8
    picks = codes[rng.integers(0, len(codes), n)].copy()
    flipped = codes[rng.integers(0, len(codes), n)].copy()
    flipped[np.arange(n), rng.integers(0, codes.shape[1], n)] ^= np.uint8(1 << 3)
    rand = rng.integers(0, 256, (n, dim // 8), dtype=np.uint8)
    return [q.tobytes() for q in np.concatenate([picks, flipped, rand])]


# ------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------
def test_options_parse_and_round_trip():
    o = parse_args(("dim=64", "books=0", "index='mih'"))
    assert o.index == "mih" and o.mih_m is None
    assert json.loads(o.to_json())["index"] == "mih" and "mih_m" not in json.loads(o.to_json())
    o2 = parse_args(("dim=64", "books=0", "index=mih", "mih_m=4"))
    assert o2.mih_m == 4
    for opts in (o, o2):
        back = TableOptions.from_catalog(64, 0, 256, 1024, opts.to_json())
        assert back == opts and back.to_json() == opts.to_json()


def test_tables_without_an_index_keep_their_catalog_json():
    o = parse_args(("dim=64", "books=4"))
    doc = json.loads(o.to_json())
    assert "index" not in doc and "mih_m" not in doc
    assert o.to_json() == json.dumps({"columns": [], "model": None, "modalities": [], "metric": "ip"})


@pytest.mark.parametrize(
    "args, message",
    [
        (("dim=64", "index='lsh'"), "must be 'mih'"),
        (("dim=64", "mih_m=4"), "needs index='mih'"),
        (("dim=64", "index='mih'", "mih_m=1"), "2..8 substrings"),
        (("dim=64", "index='mih'", "mih_m=9"), "2..8 substrings"),
        (("dim=64", "index='mih'", "mih_m=x"), "expected an integer"),
        (("dim=64", "index='mih'", "index='mih'"), "given twice"),
    ],
)
def test_bad_options(args, message):
    with pytest.raises(OptionError, match=message):
        parse_args(args)


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"index": "lsh"}, "index"),
        ({"index": "mih", "mih_m": 1}, "mih_m"),
        ({"index": "mih", "mih_m": "3"}, "mih_m"),
        ({"mih_m": 3}, "mih_m"),
    ],
)
def test_bad_catalog_values(doc, field):
    with pytest.raises(CorruptTableError, match=field):
        TableOptions.from_catalog(64, 0, 256, 1024, json.dumps(doc))


def test_create_and_reopen(db_path):
    db = hqdb.connect(db_path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=32, books=0, index='mih', mih_m=2)")
    hqdb.insert_codes(db, "t", np.arange(400, dtype=np.uint32).view(np.uint8).reshape(-1, 4), None)
    db.close()
    db = hqdb.connect(db_path)
    q = np.uint32(77).tobytes()
    got = db.execute(SQL.format(t="t"), (q, 3, "hamming", 1)).fetchall()
    assert got[0] == (78, 0.0, 0)  # the code 77 is row 78
    ix = index_of(db)
    assert ix.m == 2 and ix.stats["searches"] == 1
    db.close()


# ------------------------------------------------------------------------------------------
# exactness of searches
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim, m", [(64, None), (64, 2), (64, 3), (64, 8), (128, None), (128, 5), (72, 3), (8, 1)])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_hamming_equals_the_scan(db, dim, m, kind):
    rng = np.random.default_rng(dim + (m or 0))
    n = 3000
    codes = rng.integers(0, 256, (n, dim // 8), dtype=np.uint8) if kind == "random" else clustered(rng, n, dim)
    twins(db, codes, idx_extra="" if m is None else f", mih_m={m}")
    for q in queries(rng, codes):
        for k in (1, 10, 100):
            same(db, q, k)
    ix = index_of(db)
    assert ix.stats["searches"] > 0
    assert ix.m == (m or mih.choose_m(dim, n))


def test_against_the_kernel_and_all_ties(db):
    """Many duplicate codes: the ranking among equal distances is by rowid, as the kernel's."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    codes = base[rng.integers(0, 8, 2000)]  # 8 distinct codes, 250 copies each
    twins(db, codes)
    t = db.hq.table("t")
    st = t.stores[0]
    n = st.size
    for q in queries(rng, codes, 4):
        bits = np.frombuffer(q, np.uint8)
        for k in (1, 249, 250, 251, 1999, 2000, 3000):
            got = mih.search(
                st.index, st.codes[:n], None, st.rowids[:n], st.valid[:n], bits, None,
                k=k, candidates=k, mode="hamming", n_valid=st.n_rows,
            )
            want = kernels.search(st.codes[:n], None, st.rowids[:n], st.valid[:n], bits, None, k=k, candidates=k,
                                  mode="hamming")
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and np.array_equal(a, b)
            same(db, q, k)


@pytest.mark.parametrize("candidates", [1, 10, 100, 1000, 5000])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_two_stage_equals_the_kernel(db, candidates, kind):
    rng = np.random.default_rng(candidates)
    n, dim = 3000, 64
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8) if kind == "random" else clustered(rng, n, dim)
    twins(db, codes, books=4, codewords=16)
    t = db.hq.table("t")
    st = t.stores[0]
    size = st.size
    for seed in range(4):
        v = np.random.default_rng(seed).integers(-8, 9, dim).astype(np.float32)
        for k in (1, 10, 50):
            same(db, v.tobytes(), k, "two_stage", candidates)
            lut, _ = t.luts(v[None, :])
            got = mih.search(
                st.index, st.codes[:size], st.qcodes[:size], st.rowids[:size], st.valid[:size],
                kernels.pack_bits(v), lut[0], k=k, candidates=candidates, mode="two_stage", n_valid=st.n_rows,
            )
            want = kernels.search(
                st.codes[:size], st.qcodes[:size], st.rowids[:size], st.valid[:size], kernels.pack_bits(v), lut[0],
                k=k, candidates=candidates, mode="two_stage",
            )
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and np.array_equal(a, b)
        same(db, v.tobytes(), 10, "aqd")  # 'aqd' scores every row: the scan runs
    assert st.index.stats["searches"] > 0 or candidates >= n  # more candidates than rows: the scan


def test_filters(db):
    rng = np.random.default_rng(3)
    n = 4000
    codes = clustered(rng, n, 64, clusters=10)
    tags = rng.integers(0, 50, n).tolist()
    twins(db, codes, books=2, codewords=16, extra=", tag INTEGER, name TEXT",
          meta={"tag": tags, "name": [f"n{i % 7}" for i in range(n)]})
    for q in queries(rng, codes, 3):
        for where in (" AND tag = 3", " AND tag < 25", " AND tag IN (1, 2, 3)", " AND name = 'n2' AND tag > 10",
                      " AND tag = 999", " AND rowid > 3900"):
            for k in (1, 10, 200):
                same(db, q, k, where=where)
    for seed in range(3):
        v = np.random.default_rng(seed).integers(-8, 9, 64).astype(np.float32).tobytes()
        for where in (" AND tag < 5", " AND tag >= 0"):
            same(db, v, 10, "two_stage", 300, where=where)


def test_search_many(db):
    rng = np.random.default_rng(4)
    codes = clustered(rng, 3000, 64)
    twins(db, codes, books=4, codewords=16)
    vecs = np.random.default_rng(1).integers(-8, 9, (7, 64)).astype(np.float32)
    for mode, c in (("hamming", 1), ("two_stage", 50), ("two_stage", 1000), ("aqd", 1)):
        got = [db.hq.table(x).search_many(0, vecs, db.hq.table(x).params(10, c, mode)) for x in ("t", "u")]
        for a, b in zip(*got):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_fallback_to_the_scan_is_exact(db, monkeypatch):
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    twins(db, codes)
    monkeypatch.setattr(mih, "BUDGET", 0.001)  # probes "cost" more than a scan at once
    for q in queries(rng, codes, 3):
        same(db, q, 10)
    ix = index_of(db)
    assert ix.stats["scans"] > 0
    # give-ups in a row: the next searches scan without trying, then the index is tried again
    ix.misses = ix.skip = 0
    ix.stats.update(scans=0, skipped=0)
    for q in queries(rng, codes, 8)[: mih.MISSES + mih.SKIP + 1]:
        same(db, q, 10)
    assert ix.stats["scans"] == mih.MISSES + 1 and ix.stats["skipped"] == mih.SKIP
    monkeypatch.setattr(mih, "BUDGET", 50)
    ix.skip = 0
    same(db, codes[0].tobytes(), 10)
    assert ix.misses == 0 and ix.stats["searches"] > 0
    monkeypatch.setattr(mih, "MIN_ROWS", 10**9)  # small tables: the scan, never the index
    before = dict(index_of(db).stats)
    same(db, queries(rng, codes, 1)[0], 10)
    assert index_of(db).stats == before


def test_sorted_value_tables(db, monkeypatch):
    """Substrings too wide for an offset table are bisected: same results."""
    monkeypatch.setattr(mih, "DIRECT_MAX_BITS", 0)
    rng = np.random.default_rng(8)
    codes = clustered(rng, 3000, 64)
    twins(db, codes, idx_extra=", mih_m=2")  # 32-bit substrings
    for q in queries(rng, codes):
        same(db, q, 10)
    assert not index_of(db).tables.direct


# ------------------------------------------------------------------------------------------
# writes, transactions, other connections
# ------------------------------------------------------------------------------------------
def check_all(db, rng, codes_like, ks=(1, 10, 60)):
    for q in queries(rng, codes_like, 3):
        for k in ks:
            same(db, q, k)
        for where in (" AND tag = 1",):
            same(db, q, 10, where=where)


def both(db, sql, args=()):
    for name in ("t", "u"):
        db.execute(sql.format(t=name), args)


def test_writes_and_transactions(db, monkeypatch):
    rng = np.random.default_rng(9)
    n = 3000
    codes = clustered(rng, n, 64, clusters=8)
    twins(db, codes, extra=", tag INTEGER", meta={"tag": (np.arange(n) % 3).tolist()})
    check_all(db, rng, codes)
    ix = index_of(db)
    assert ix.built
    builds = ix.stats["builds"]
    # single-row writes: the index keeps them in its recent list, no rebuild
    for i in range(30):
        code = codes[rng.integers(0, n)].tobytes()
        both(db, "INSERT INTO {t}(code, tag) VALUES (?, ?)", (code, i % 3))
        both(db, "DELETE FROM {t} WHERE rowid = ?", (int(rng.integers(1, n)),))
        both(db, "UPDATE {t} SET code = ? WHERE rowid = ?", (codes[rng.integers(0, n)].tobytes(), int(rng.integers(1, n))))
        both(db, "UPDATE {t} SET tag = 7 WHERE rowid = ?", (int(rng.integers(1, n)),))
        if i % 10 == 0:
            check_all(db, rng, codes)
    check_all(db, rng, codes)
    assert ix.stats["builds"] == builds and len(ix.recent) > 0
    # a rowid change moves the row's identity, not its slot
    both(db, "UPDATE {t} SET rowid = 100000 WHERE rowid = (SELECT min(rowid) FROM {t})")
    check_all(db, rng, codes)
    # explicit transaction, rolled back: the cache reloads, the index rebuilds
    db.execute("BEGIN")
    both(db, "DELETE FROM {t} WHERE rowid % 2 = 0")
    both(db, "INSERT INTO {t}(code, tag) VALUES (?, 1)", (codes[0].tobytes(),))
    check_all(db, rng, codes)
    db.execute("ROLLBACK")
    check_all(db, rng, codes)
    # savepoints: release one, roll back another
    db.execute("BEGIN")
    db.execute("SAVEPOINT a")
    both(db, "DELETE FROM {t} WHERE tag = 0")
    check_all(db, rng, codes)
    db.execute("RELEASE a")
    db.execute("SAVEPOINT b")
    both(db, "UPDATE {t} SET code = ? WHERE tag = 1", (codes[5].tobytes(),))
    check_all(db, rng, codes)
    db.execute("ROLLBACK TO b")
    check_all(db, rng, codes)
    db.execute("COMMIT")
    check_all(db, rng, codes)
    # a bulk write larger than the recent list: the next search rebuilds
    monkeypatch.setattr(mih, "rebuild_threshold", lambda n: 50)
    more = clustered(rng, 500, 64, clusters=8)
    for name in ("t", "u"):
        hqdb.insert_codes(db, name, more, None, metadata={"tag": [1] * 500})
    b0 = ix.stats["builds"]
    check_all(db, rng, codes)
    assert ix.stats["builds"] == b0 + 1
    for name in ("t", "u"):
        hqdb.delete_rows(db, name, np.arange(1, 2000, dtype=np.int64))
    check_all(db, rng, codes)
    # a statement that fails half-way inside a transaction (SQLite undoes its rows)
    db.execute("CREATE TABLE src(code BLOB, tag INTEGER)")
    db.executemany("INSERT INTO src VALUES (?, ?)", [(codes[i].tobytes(), 1) for i in range(5)] + [(b"bad", 1)])
    db.execute("BEGIN")
    for name in ("t", "u"):
        with pytest.raises(Exception):
            db.execute(f"INSERT INTO {name}(code, tag) SELECT code, tag FROM src")
    check_all(db, rng, codes)
    db.execute("COMMIT")
    check_all(db, rng, codes)


def test_empty_and_tiny(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0, index='mih')")
    db.execute("CREATE VIRTUAL TABLE u USING hq(dim=64, books=0)")
    q = bytes(8)
    assert same(db, q, 10) == []
    both(db, "INSERT INTO {t}(code) VALUES (?)", (bytes(8),))
    assert same(db, q, 10) == [(1, 0.0, 0)]
    both(db, "DELETE FROM {t}")
    assert same(db, q, 10) == []
    for i in range(40):
        both(db, "INSERT INTO {t}(code) VALUES (?)", (np.uint64(i * 7919).tobytes(),))
        same(db, q, 5)
        same(db, q, 100)


def test_another_connection_commits(db_path):
    db = hqdb.connect(db_path)
    rng = np.random.default_rng(10)
    codes = clustered(rng, 3000, 64)
    twins(db, codes)
    check = queries(rng, codes, 3)
    for q in check:
        same(db, q, 10)
    other = hqdb.connect(db_path)
    more = clustered(rng, 300, 64)
    for name in ("t", "u"):
        hqdb.insert_codes(other, name, more, None)
        other.execute(f"DELETE FROM {name} WHERE rowid < 500")
    other.close()
    for q in check + [more[0].tobytes()]:
        same(db, q, 10)
        same(db, q, 300)
    db.close()


def test_mih_state_machine():
    """test_model_based's random writes, savepoints and rollbacks, on an index='mih' table."""
    import test_model_based as tmb

    class MihMachine(tmb.HqTableMachine):
        def __init__(self):
            self._saved = (mih.MIN_ROWS, mih.BUDGET)
            mih.MIN_ROWS, mih.BUDGET = 0, 50
            super().__init__()
            self.db.execute("DROP TABLE t")
            self.db.execute(
                f"CREATE VIRTUAL TABLE t USING hq(dim={tmb.DIM}, books={tmb.BOOKS}, codewords={tmb.CODEWORDS}, "
                "chunk_size=8, tag TEXT, index='mih', mih_m=2)"
            )
            hqdb.set_codebooks(self.db, "t", tmb.CB)

        def teardown(self):
            mih.MIN_ROWS, mih.BUDGET = self._saved
            super().teardown()

    from hypothesis import HealthCheck, settings

    MihMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    MihMachine.TestCase().runTest()


# ------------------------------------------------------------------------------------------
# model-bound tables
# ------------------------------------------------------------------------------------------
def test_model_bound_table(db):
    pytest.importorskip("torch")
    from hqdb import datasets

    pairs = datasets.synthetic_pairs(600, seed=3)
    model = hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=3)
    hqdb.save_model(db, "m", model)
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='m', title TEXT, index='mih')")
    db.execute("CREATE VIRTUAL TABLE u USING hq(model='m', title TEXT)")
    items = datasets.synthetic_pairs(2500, seed=4)
    for name in ("t", "u"):
        hqdb.insert_items(db, name, image=items["image"], text=[str(x) for x in items["text"]],
                          metadata={"title": [f"i{j % 5}" for j in range(2500)]})
        db.execute(f"INSERT INTO {name}(image, title) VALUES (?, 'only image')", (items["image"][0].tobytes(),))
    probe = datasets.synthetic_pairs(5, seed=5)
    for modality, col in (("image", "image"), ("text", "text")):
        for j in range(5):
            value = probe["image"][j].astype(np.float32).tobytes() if modality == "image" else str(probe["text"][j])
            for mode, c in (("hamming", 1), ("two_stage", 30), ("two_stage", 1000), (None, None)):
                extra = "" if mode is None else f" AND mode = '{mode}' AND candidates = {c}"
                rows = []
                for name in ("t", "u"):
                    rows.append(db.execute(
                        f"SELECT rowid, distance, hamming FROM {name} WHERE hq_match({name}.{col}, hq_query(?, ?)) "
                        f"AND k = 10{extra}", (modality, value)).fetchall())
                assert rows[0] == rows[1]
    # a write, then search again
    for name in ("t", "u"):
        db.execute(f"DELETE FROM {name} WHERE title = 'i3'")
    value = probe["image"][0].astype(np.float32).tobytes()
    rows = [db.execute(f"SELECT rowid, distance FROM {n} WHERE hq_match({n}.image, hq_query('image', ?)) "
                       "AND k = 20 AND mode = 'hamming'", (value,)).fetchall() for n in ("t", "u")]
    assert rows[0] == rows[1]
    t = db.hq.table("t")
    assert all(st.index is not None for st in t.stores)
    assert sum(st.index.stats["searches"] for st in t.stores) > 0


def test_rerank_table(db):
    """A rerank table's Hamming shortlist (ties by slot) comes from the index: same results."""
    rng = np.random.default_rng(12)
    centres = rng.standard_normal((12, 64)).astype(np.float32)
    x = (centres[rng.integers(0, 12, 3000)] + 0.3 * rng.standard_normal((3000, 64))).astype(np.float32)
    for name, more in (("t", ", index='mih'"), ("u", "")):
        db.execute(f"CREATE VIRTUAL TABLE {name} USING hq(dim=64, books=2, codewords=16, rerank='int8'{more})")
        hqdb.fit_table(db, name, x[:500])
        hqdb.insert_vectors(db, name, x)
    for j in range(4):
        v = (centres[j] + 0.3 * rng.standard_normal(64)).astype(np.float32).tobytes()
        for c in (10, 100, 1000):
            same(db, v, 10, "two_stage", c)
        same(db, v, 10, "hamming")
    assert index_of(db).stats["searches"] > 0
