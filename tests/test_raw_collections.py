"""Collections over raw hq tables (your own codes or vectors, no model): the collections API of
tests/test_collections.py, checked against the raw-table path underneath (hqdb.insert_vectors,
hqdb.insert_codes, SQL ``hq_match``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

import hqdb
from hqdb import kernels, quantize

DIM = 64


def clustered(n, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim)) * 3
    return (centres[rng.integers(0, 8, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def vecs():
    return clustered(400)


@pytest.fixture
def items(db, vecs):
    c = db.create_collection("items", dim=DIM, books=4, codewords=16, rerank="int8",
                             columns={"title": str, "year": int, "score": float})
    c.fit(vecs)
    c.insert_all([{"vector": vecs[i], "title": f"v{i}", "year": 2000 + i % 25, "score": i / 10} for i in range(300)])
    return c


# ---------------------------------------------------------------- catalog
def test_create_list_get_drop(db, vecs):
    c = db.create_collection("items", dim=DIM, books=4, codewords=16, rerank="int8", columns={"title": str})
    assert isinstance(c, hqdb.RawCollection) and isinstance(c, hqdb.Collection)
    assert (c.dim, c.books, c.codewords, c.rerank, c.model_name, c.model) == (DIM, 4, 16, "int8", None, None)
    assert c.columns == {"title": "TEXT"}
    assert repr(c) == "RawCollection('items', dim=64, books=4, rerank='int8', columns=[title TEXT])"
    db.execute("CREATE VIRTUAL TABLE from_sql USING hq(dim=32, books=0, name TEXT)")
    assert db.collections() == ["from_sql", "items"]
    sql_made = db.collection("FROM_SQL")
    assert isinstance(sql_made, hqdb.RawCollection) and sql_made.columns == {"name": "TEXT"}
    assert db.create_collection("items", dim=DIM, exist_ok=True).name == "items"
    with pytest.raises(hqdb.CollectionError, match="items already exists with dim=64, not 32"):
        db.create_collection("items", dim=32, exist_ok=True)
    with pytest.raises(hqdb.CollectionError, match=r"a collection or hq table named 'items' already exists \(raw\)"):
        db.create_collection("items", dim=DIM)
    db.drop_collection("items")
    assert db.collections() == ["from_sql"]
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'items%'").fetchone() == (0,)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give model='<stored model>'.*or dim="),
    ({"dim": 30}, "dim=30: must be a multiple of 8"),
    ({"dim": "64"}, "dim must be an integer"),
    ({"dim": 64, "rerank": "int4"}, "rerank=.*must be 'float32', 'float16' or 'int8'"),
    ({"dim": 64, "rerank": "int8'); DROP TABLE x; --"}, "rerank must be a name"),
    ({"dim": 64, "metric": "cos"}, "metric"),
    ({"dim": 64, "columns": {"code": str}}, "reserved|code"),
    ({"dim": 64, "columns": {"title": list}}, r"c\.title: cannot store 'list'"),
    ({"dim": 64, "model": "m"}, "dim come.*from model 'm'"),
    ({"dim": 64, "rerank": "int8", "columns": {"vector": str}}, "vector"),
])
def test_create_errors_change_nothing(db, kwargs, message):
    with pytest.raises(hqdb.CollectionError, match=message):
        db.create_collection("c", **kwargs)
    assert db.collections() == []


# ---------------------------------------------------------------- writes
def test_vectors_become_the_raw_paths_codes(items, vecs):
    db = items.db
    assert len(items) == 300 and items.get(1) == {"rowid": 1, "title": "v0", "year": 2000, "score": 0.0}
    cb = db.hq.table("items").codebooks()
    stored = db.execute("SELECT code, qcode FROM items ORDER BY rowid").fetchall()
    assert [s[0] for s in stored] == [b.tobytes() for b in kernels.pack_bits(vecs[:300])]
    assert [s[1] for s in stored] == [q.astype("<u1").tobytes() for q in quantize.encode(vecs[:300], cb)]
    # the same as hqdb.insert_vectors into a twin table
    db.execute("CREATE VIRTUAL TABLE twin USING hq(dim=64, books=4, codewords=16, rerank='int8', title TEXT)")
    hqdb.set_codebooks(db, "twin", cb)
    hqdb.insert_vectors(db, "twin", vecs[:300], metadata={"title": [f"v{i}" for i in range(300)]})
    q = vecs[350]
    a = db.execute("SELECT rowid, distance FROM items WHERE hq_match(items.code, ?) AND k = 10", (q.tobytes(),))
    b = db.execute("SELECT rowid, distance FROM twin WHERE hq_match(twin.code, ?) AND k = 10", (q.tobytes(),))
    assert a.fetchall() == b.fetchall()


def test_codes_in_and_mixed_items(db, vecs):
    c = db.create_collection("codes", dim=DIM, books=2, codewords=16, columns={"title": str})
    with pytest.raises(hqdb.CollectionError, match="no codebooks yet.*fit"):
        c.insert({"vector": vecs[0], "title": "early"})
    assert len(c) == 0
    c.fit(vecs)
    packed = kernels.pack_bits(vecs[:3])
    ids = c.insert_all([
        {"code": packed[0].tobytes(), "qcode": [1, 2], "title": "a"},
        {"vector": vecs[1], "title": "b"},
        {"rowid": 40, "code": packed[2], "qcode": np.array([3, 4], np.uint8), "title": "c"},
        {"vector": vecs[3].tolist(), "title": "d"},
    ])
    assert ids == [1, 2, 40, 41] and [r["title"] for r in c] == ["a", "b", "c", "d"]
    rows = db.execute("SELECT rowid, code, qcode FROM codes ORDER BY rowid").fetchall()
    cb = db.hq.table("codes").codebooks()
    assert rows[0] == (1, packed[0].tobytes(), bytes([1, 2]))
    assert rows[1] == (2, packed[1].tobytes(), quantize.encode(vecs[1:2], cb)[0].astype("<u1").tobytes())
    assert rows[2] == (40, packed[2].tobytes(), bytes([3, 4]))


@pytest.mark.parametrize("bad, message", [
    ({"title": "x", "vector": np.zeros(5)}, r"items\.vector \(item 2\): expected 64 floats \(shape \(64,\)\), got shape \(5,\)"),
    ({"title": "x", "vector": [float("nan")] * 64}, r"items\.vector \(item 2\): contains NaN"),
    ({"title": "x", "vector": "castle"}, r"items\.vector \(item 2\): expected 64 floats.*got str"),
    ({"title": "x", "code": b"\x00" * 8}, r"items \(item 2\): the collection keeps vectors.*give vector=..., not code="),
    ({"title": 7, "vector": np.zeros(64)}, r"items\.title \(item 2\): expected str \(TEXT\), got int 7"),
    ({"colour": "red", "vector": np.zeros(64)}, r"items \(item 2\): unknown field\(s\) \['colour'\]"),
    ({"title": "no inputs"}, r"items \(item 2\): an item needs vector=... to be searchable"),
    ({"rowid": 1, "vector": np.zeros(64)}, r"items: rowid 1 already exists"),
])
def test_bad_item_inserts_nothing(items, bad, message):
    db = items.db
    before = db.execute("SELECT rowid, title, code FROM items ORDER BY rowid").fetchall()
    good = {"title": "fine", "vector": np.ones(64)}
    with pytest.raises(hqdb.CollectionError, match=message):
        items.insert_all([good, good, bad])
    assert db.execute("SELECT rowid, title, code FROM items ORDER BY rowid").fetchall() == before


@pytest.mark.parametrize("bad, message", [
    ({"code": b"\x00" * 7, "qcode": [0, 0]}, r"c\.code \(item 0\): expected 8 packed bytes \(dim=64 bits.*got 7 bytes"),
    ({"code": np.zeros(64), "qcode": [0, 0]}, r"c\.code \(item 0\): expected 8 packed bytes.*got float64 shape \(64,\)"),
    ({"code": b"\x00" * 8}, r"c\.qcode \(item 0\): the collection has books=2: give qcode"),
    ({"code": b"\x00" * 8, "qcode": [0, 16]}, r"c\.qcode \(item 0\): indices must lie in \[0, 16\)"),
    ({"code": b"\x00" * 8, "qcode": [0]}, r"c\.qcode \(item 0\): expected 2 integers"),
    ({"qcode": [0, 1]}, r"c\.qcode \(item 0\): given without code"),
    ({"code": b"\x00" * 8, "qcode": [0, 1], "vector": np.zeros(64)}, "give vector or code/qcode, not both"),
])
def test_bad_codes_are_named(db, vecs, bad, message):
    c = db.create_collection("c", dim=DIM, books=2, codewords=16)
    c.fit(vecs)
    with pytest.raises(hqdb.CollectionError, match=message):
        c.insert(bad)
    assert len(c) == 0


@dataclass
class Doc:
    title: str
    year: int
    vector: Optional[np.ndarray] = None


def test_typed_items_update_upsert_delete(db, vecs):
    c = db.create_collection("docs", dim=DIM, books=4, codewords=16, rerank="int8", columns=Doc, key="title")
    assert c.columns == {"title": "TEXT", "year": "INTEGER"}  # vector is the input, not a column
    c.fit(vecs)
    r1 = c.insert(Doc("a", 2000, vecs[0]))
    r2 = c.upsert(Doc("b", 2001, vecs[1]))
    assert c.upsert({"title": "a", "year": 1999}) == r1 and c.get(r1) == {"rowid": r1, "title": "a", "year": 1999}
    # a new vector: codes recomputed as insert_vectors would, vector re-stored for the re-rank
    c.update(r1, vector=vecs[5])
    cb = db.hq.table("docs").codebooks()
    code, qcode = db.execute("SELECT code, qcode FROM docs WHERE rowid = ?", (r1,)).fetchone()
    assert code == kernels.pack_bits(vecs[5:6])[0].tobytes()
    assert qcode == quantize.encode(vecs[5:6], cb)[0].astype("<u1").tobytes()
    assert c.search(vector=vecs[5], k=1).rowids.tolist() == [r1]
    with pytest.raises(hqdb.CollectionError, match=r"docs \(row 1\): a raw row's codes cannot be removed"):
        c.update(r1, vector=None)
    with pytest.raises(hqdb.CollectionError, match=r"docs\.vector \(row 1\): expected 64 floats"):
        c.update(r1, vector=np.zeros(3))
    with pytest.raises(hqdb.NotFoundError, match="docs has no row with rowid 999"):
        c.update(999, year=1)
    with pytest.raises(hqdb.CollectionError, match="UNIQUE constraint failed"):
        c.update(r2, title="a")
    assert c.get(r2)["title"] == "b"
    assert c.delete([r1, 999]) == 1 and len(c) == 1
    assert c.delete_where("year > ?", [2000]) == 1 and len(c) == 0


def test_update_codes_without_rerank(db, vecs):
    c = db.create_collection("c", dim=DIM, books=2, codewords=16, columns={"t": str})
    c.fit(vecs)
    r = c.insert({"vector": vecs[0], "t": "x"})
    c.update(r, code=kernels.pack_bits(vecs[9]), qcode=[5, 6], t="y")
    assert db.execute("SELECT code, qcode, t FROM c").fetchone() == (kernels.pack_bits(vecs[9]).tobytes(), bytes([5, 6]), "y")
    c.update(r, vector=vecs[7])
    cb = db.hq.table("c").codebooks()
    assert db.execute("SELECT qcode FROM c").fetchone() == (quantize.encode(vecs[7:8], cb)[0].astype("<u1").tobytes(),)


# ---------------------------------------------------------------- search
def test_search_equals_the_sql_path(items, vecs):
    db = items.db
    q = vecs[360]
    hits = items.search(vector=q, k=7, candidates=30)
    rows = db.execute("SELECT rowid, distance, hamming, title, year, score FROM items "
                      "WHERE hq_match(items.code, ?) AND k = 7 AND candidates = 30", (q.tobytes(),)).fetchall()
    assert [(h.rowid, h.distance, h.hamming, h.title, h.year, h.score) for h in hits] == rows and len(hits) == 7
    code = kernels.pack_bits(q)
    by_code = items.search(code=code, k=5)
    rows = db.execute("SELECT rowid, distance FROM items WHERE hq_match(items.code, ?) AND k = 5 AND mode = 'hamming'",
                      (code.tobytes(),)).fetchall()
    assert [(h.rowid, h.distance) for h in by_code] == rows
    assert items.search(code=code.tobytes(), k=5) == by_code
    # the exact re-rank (metric 'ip', every row a candidate): the largest inner product comes first
    assert items.search(vector=vecs[42], k=1).rowids.tolist() == [int(np.argmax(vecs[:300] @ vecs[42])) + 1]


def test_search_where_and_many(items, vecs):
    hits = items.search(vector=vecs[361], k=10, where="year > ? AND title LIKE ?", where_args=[2020, "v1%"])
    assert len(hits) == 10 and all(h.year > 2020 and h.title.startswith("v1") for h in hits)
    assert list(hits.distances) == sorted(hits.distances)
    qs = vecs[370:380]
    assert items.search_many(vector=qs, k=5) == [items.search(vector=q, k=5) for q in qs]
    assert items.search_many(vector=qs, k=5, where="year >= ?", where_args=[2005]) == [
        items.search(vector=q, k=5, where="year >= ?", where_args=[2005]) for q in qs]
    codes = kernels.pack_bits(qs)
    assert items.search_many(code=codes, k=4) == [items.search(code=c, k=4) for c in codes]


@pytest.mark.parametrize("kwargs, message", [
    ({}, r"items\.search: give exactly one of vector=... or code=..."),
    ({"vector": np.zeros(3)}, r"items\.vector: expected 64 floats \(shape \(64,\)\), got shape \(3,\)"),
    ({"code": b"\x00" * 3}, r"items\.code: expected 8 packed bytes"),
    ({"code": b"\x00" * 8, "mode": "aqd"}, r"code query can only be searched by Hamming distance"),
    ({"vector": np.zeros(64), "k": 0}, r"items\.search: k must be between 1"),
    ({"vector": np.zeros(64), "mode": "fast"}, r"unknown mode 'fast'"),
    ({"vector": np.zeros(64), "where": "colour = 1"}, r"where 'colour = 1' is not a condition on the columns"),
    ({"image": np.zeros(64)}, "unexpected keyword argument 'image'"),
])
def test_search_errors(items, kwargs, message):
    with pytest.raises((hqdb.CollectionError, TypeError), match=message):
        items.search(**kwargs)


def test_hybrid_on_a_raw_collection(items, vecs):
    items.enable_fts("title")
    hits = items.search(vector=vecs[5], keywords="v7 v77", hybrid=True, k=5)
    assert {8, 78} <= set(hits.rowids.tolist())  # rows 8 and 78 hold titles v7 and v77
    codes = set(items.search(vector=vecs[5], k=100).rowids.tolist())
    assert all(r in codes or r in (8, 78) for r in hits.rowids.tolist())


def test_cli_search_names_a_raw_collection(db_path, capsys):
    import hqdb.cli

    with hqdb.connect(db_path) as db:
        db.create_collection("raw", dim=DIM, books=0)
    assert hqdb.cli.main(["search", "--db", str(db_path), "--collection", "raw", "--text", "x"]) == 1
    assert "raw is a raw hq table (no model to encode --text or --image)" in capsys.readouterr().err


def test_update_vector_with_bits_pq_books(db, vecs):
    """A new vector on a table whose codebooks score the bit code too ('bits_pq': the bit
    code's own books in front) gets the codes an insert of that vector gets (it used to be
    encoded with every book, bit books included, and refused as the wrong size)."""
    c = db.create_collection("bp", dim=DIM, books=4, columns={"t": str})
    c.fit(vecs, quantizer="bits_pq")
    assert db.hq.table("bp").codebooks().shape == (DIM // 8 + 4, 256, DIM)
    r = c.insert({"vector": vecs[0], "t": "x"})
    fresh = c.insert({"vector": vecs[7], "t": "y"})
    c.update(r, vector=vecs[7])
    got, want = (db.execute("SELECT code, qcode FROM bp WHERE rowid = ?", (i,)).fetchone() for i in (r, fresh))
    assert got == want and len(got[1]) == 4
    with pytest.raises(hqdb.CollectionError, match="bp.fit: .*quantizer must be"):
        c.fit(vecs, quantizer="pq")
    assert c.search(vector=vecs[7], k=2).rowids.tolist() == sorted([r, fresh])
