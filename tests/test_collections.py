"""Collections (hqdb/collections.py): model-bound hq tables used from Python, checked against the
SQL layer underneath."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import pytest

import apsw
import hqdb
from hqdb import datasets, kernels

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model():
    pairs = datasets.synthetic_pairs(600, seed=3)
    return hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=3)


@pytest.fixture(scope="module")
def pairs():
    return datasets.synthetic_pairs(300, seed=11)


@pytest.fixture
def photos(db, model, pairs):
    hqdb.save_model(db, "m", model)
    coll = db.create_collection("photos", model="m", columns={"title": str, "year": int, "score": float})
    coll.insert_all([{"title": f"p{i}", "year": 2000 + i % 25, "score": i / 10,
                      "image": pairs["image"][i], "text": str(pairs["text"][i])} for i in range(200)])
    return coll


def items_equal_sql(db, coll, sql_rows):
    return [(h.rowid, h.distance, h.hamming) for h in coll] == sql_rows


# ---------------------------------------------------------------- catalog
def test_create_list_get_drop(db, model):
    hqdb.save_model(db, "m", model)
    db.execute("CREATE VIRTUAL TABLE raw USING hq(dim=32)")
    db.execute("CREATE VIRTUAL TABLE from_sql USING hq(model='m', title TEXT)")
    c = db.create_collection("photos", model="m", columns={"title": str, "year": Optional[int], "blob": bytes})
    assert c.columns == {"title": "TEXT", "year": "INTEGER", "blob": "BLOB"}
    assert c.modalities == ("image", "text") and c.model_name == "m"
    assert db.collections() == ["from_sql", "photos", "raw"]  # raw hq tables are collections too
    assert db.collection("PHOTOS").name == "photos"
    assert db.collection("from_sql").columns == {"title": "TEXT"}
    with pytest.raises(hqdb.CollectionError, match="already exists"):
        db.create_collection("photos", model="m")
    assert db.create_collection("photos", model="m", exist_ok=True).name == "photos"
    assert isinstance(db.collection("raw"), hqdb.RawCollection)  # tests/test_raw_collections.py
    db.drop_collection("photos")
    db.drop_collection("raw")
    assert db.collections() == ["from_sql"]
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'photos%'").fetchone() == (0,)
    with pytest.raises(hqdb.NotFoundError, match="collections: from_sql"):
        db.drop_collection("photos")
    db.drop_collection("photos", missing_ok=True)
    assert [m["name"] for m in hqdb.list_models(db)] == ["m"]  # the model stays


def test_create_errors_change_nothing(db, model):
    hqdb.save_model(db, "m", model)
    with pytest.raises(hqdb.ModelError, match="no model named 'nope'"):
        db.create_collection("c", model="nope")
    with pytest.raises(hqdb.CollectionError, match=r"c\.tags: cannot store 'list'"):
        db.create_collection("c", model="m", columns={"tags": list})
    with pytest.raises(hqdb.CollectionError, match="reserved"):
        db.create_collection("c", model="m", columns={"distance": float})
    with pytest.raises(hqdb.CollectionError, match="used by the model's 'text' modality"):
        db.create_collection("c", model="m", columns={"text_code": str})
    with pytest.raises(hqdb.CollectionError, match="key 'id' is not one of the columns"):
        db.create_collection("c", model="m", columns={"title": str}, key="id")
    with pytest.raises(hqdb.CollectionError, match="model must be the name of a stored model"):
        db.create_collection("c", model=model)
    assert db.collections() == []
    assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)


@dataclass
class Photo:
    title: str
    year: int
    image: Optional[np.ndarray] = None
    text: Optional[str] = None


class Caption(NamedTuple):
    title: str
    text: str


def test_typed_classes_in(db, model, pairs):
    hqdb.save_model(db, "m", model)
    c = db.create_collection("photos", model="m", columns=Photo)
    assert c.columns == {"title": "TEXT", "year": "INTEGER"}  # image/text are the model's inputs
    r1 = c.insert(Photo("castle", 2021, image=pairs["image"][0]))
    r2 = c.insert(Caption("beach", "sand sea wave"))
    assert c.get(r1) == {"rowid": r1, "title": "castle", "year": 2021}
    assert c.get(r2) == {"rowid": r2, "title": "beach", "year": None}
    # Only the codes of the modalities an item has are stored.
    codes = db.execute("SELECT image_code IS NOT NULL, text_code IS NOT NULL FROM photos ORDER BY rowid").fetchall()
    assert codes == [(1, 0), (0, 1)]


# ---------------------------------------------------------------- writes
def test_insert_all_stores_the_models_codes(photos, model, pairs):
    db = photos.db
    assert len(photos) == 200
    assert photos.get(1) == {"rowid": 1, "title": "p0", "year": 2000, "score": 0.0}
    assert [r["rowid"] for r in photos] == list(range(1, 201))
    texts = [str(t) for t in pairs["text"][:200]]
    f = model.embed("text", model.featurize("text", texts))
    stored = [r[0] for r in db.execute("SELECT text_code FROM photos ORDER BY rowid")]
    assert stored == [b.tobytes() for b in kernels.pack_bits(f)]
    fi = model.embed("image", model.featurize("image", pairs["image"][:200]))
    stored = [r[0] for r in db.execute("SELECT image_qcode FROM photos ORDER BY rowid")]
    assert stored == [q.astype("<u1").tobytes() for q in model.quantize(fi)]


def test_insert_mixed_items_keep_their_order(db, model, pairs):
    hqdb.save_model(db, "m", model)
    c = db.create_collection("c", model="m", columns={"title": str})
    items = [{"title": "a", "text": "castle tower"}, {"title": "b", "image": pairs["image"][1].tolist()},
             {"title": "c", "text": pairs["text"][2], "image": pairs["image"][2]}, {"title": "d", "rowid": 50,
                                                                                 "text": "sea"},
             {"title": "e", "image": pairs["image"][4]}]
    ids = c.insert_all(items, batch_size=2)
    assert ids == [1, 2, 3, 50, 51]
    assert [r["title"] for r in c] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("bad, message", [
    ({"title": "x", "image": np.zeros(5)}, r"photos\.image \(item 2\): expected 128 float features \(shape \(128,\)\), got shape \(5,\)"),
    ({"title": "x", "image": [float("nan")] * 128}, r"photos\.image \(item 2\): features contain NaN"),
    ({"title": 7, "text": "x"}, r"photos\.title \(item 2\): expected str \(TEXT\), got int 7"),
    ({"year": "2020", "text": "x"}, r"photos\.year \(item 2\): expected int \(INTEGER\), got str"),
    ({"colour": "red", "text": "x"}, r"photos \(item 2\): unknown field\(s\) \['colour'\]"),
    ({"title": "no inputs"}, r"photos \(item 2\): an item needs at least one of image, text"),
    ({"rowid": 1, "text": "x"}, r"photos: rowid 1 already exists"),
    ({"rowid": "one", "text": "x"}, r"photos\.rowid \(item 2\): expected int"),
])
def test_bad_item_inserts_nothing(photos, bad, message):
    db = photos.db
    before = db.execute("SELECT rowid, title FROM photos ORDER BY rowid").fetchall()
    good = {"title": "fine", "text": "castle"}
    with pytest.raises(hqdb.CollectionError, match=message):
        photos.insert_all([good, good, bad])
    assert db.execute("SELECT rowid, title FROM photos ORDER BY rowid").fetchall() == before
    assert db.hq.table("photos").pending == 0


def test_insert_is_all_or_nothing_across_batches(photos):
    # The duplicate key only shows at the database, in the second batch: the first is rolled back.
    db = photos.db
    c = db.create_collection("keyed", model="m", columns={"path": str}, key="path")
    c.insert({"path": "/a", "text": "castle"})
    with pytest.raises(hqdb.CollectionError, match="keyed: UNIQUE constraint failed"):
        c.insert_all([{"path": f"/p{i}", "text": "sea"} for i in range(5)] + [{"path": "/a", "text": "sea"}],
                     batch_size=2)
    assert [r["path"] for r in c] == ["/a"]


def test_progress_bar_on_request(photos, capsys):
    photos.insert_all([{"title": "x", "text": "castle"}] * 3, progress=True)
    assert "insert photos" in capsys.readouterr().err
    photos.insert_all([{"title": "x", "text": "castle"}] * 3)
    assert capsys.readouterr().err == ""


def test_update_columns_and_reencode_inputs(photos, model, pairs):
    db = photos.db
    photos.update(1, title="renamed", year=1990)
    assert photos.get(1) == {"rowid": 1, "title": "renamed", "year": 1990, "score": 0.0}
    code_before = db.execute("SELECT text_code FROM photos WHERE rowid = 1").fetchone()
    photos.update(1, {"image": pairs["image"][250]})
    f = model.embed("image", model.featurize("image", pairs["image"][250:251]))
    assert db.execute("SELECT image_code FROM photos WHERE rowid = 1").fetchone() == (kernels.pack_bits(f)[0].tobytes(),)
    assert db.execute("SELECT text_code FROM photos WHERE rowid = 1").fetchone() == code_before
    photos.update(1, text=None)
    assert db.execute("SELECT text_code FROM photos WHERE rowid = 1").fetchone() == (None,)
    with pytest.raises(hqdb.NotFoundError, match="photos has no row with rowid 999"):
        photos.update(999, title="x")
    with pytest.raises(hqdb.CollectionError, match=r"photos\.text \(row 2\): expected 512 float|photos\.text \(row 2\)"):
        photos.update(2, text=np.zeros(3))
    assert photos.get(2)["title"] == "p1"


def test_upsert_by_key_and_by_rowid(db, model):
    hqdb.save_model(db, "m", model)
    c = db.create_collection("files", model="m", columns={"path": str, "title": str}, key="path")
    r = c.upsert({"path": "/x.jpg", "title": "first", "text": "castle"})
    assert c.upsert({"path": "/x.jpg", "title": "second"}) == r
    assert c.get(r) == {"rowid": r, "path": "/x.jpg", "title": "second"}
    r2 = c.upsert({"path": "/y.jpg", "text": "sea"})
    assert r2 != r and len(c) == 2
    assert c.upsert({"rowid": r2, "path": "/y.jpg", "title": "y"}, key=None) == r2
    # A typed object's None input means "not given": the codes stay.
    keyed = db.create_collection("keyed_photos", model="m", columns=Photo, key="title")
    k1 = keyed.insert(Photo("t1", 2000, text="castle tower"))
    keyed.upsert(Photo("t1", 2005))
    keyed.update(k1, Photo("t1", 2006))
    assert keyed.get(k1)["year"] == 2006
    assert db.execute("SELECT text_code IS NOT NULL FROM keyed_photos WHERE rowid = ?", (k1,)).fetchone() == (1,)
    plain = db.create_collection("plain", model="m", columns={"title": str})
    with pytest.raises(hqdb.CollectionError, match="upsert needs a key column"):
        plain.upsert({"title": "x", "text": "sea"})
    r3 = plain.upsert({"rowid": 7, "title": "x", "text": "sea"})
    assert r3 == 7 and plain.upsert({"rowid": 7, "title": "z"}) == 7 and plain.get(7)["title"] == "z"


def test_delete(photos):
    assert photos.delete(1) == 1
    assert photos.delete([2, 3, 999]) == 2
    assert 1 not in photos and 4 in photos and len(photos) == 197
    assert photos.delete_where("year < ?", [2003]) == len([i for i in range(3, 200) if i % 25 < 3])
    with pytest.raises(hqdb.NotFoundError):
        photos.get(1)


# ---------------------------------------------------------------- search
def test_search_equals_the_sql_path(photos, pairs):
    db = photos.db
    q = pairs["image"][260]
    hits = photos.search(image=q, k=7, candidates=30)
    rows = db.execute("SELECT rowid, distance, hamming, title, year, score FROM photos "
                      "WHERE hq_match(photos.text, hq_query('image', ?)) AND k = 7 AND candidates = 30",
                      (q.astype("<f4").tobytes(),)).fetchall()
    assert [(h.rowid, h.distance, h.hamming, h.title, h.year, h.score) for h in hits] == rows
    assert len(hits) == 7
    # text -> image with raw text, and target chosen explicitly
    hits = photos.search(text="a castle on a hill", k=5)
    rows = db.execute("SELECT rowid FROM photos WHERE hq_match(photos.image, hq_query('text', ?)) AND k = 5",
                      ("a castle on a hill",)).fetchall()
    assert [h.rowid for h in hits] == [r[0] for r in rows]
    same = photos.search(text="a castle on a hill", target="text", k=5, mode="hamming")
    rows = db.execute("SELECT rowid FROM photos WHERE hq_match(photos.text, hq_query('text', ?)) AND k = 5 "
                      "AND mode = 'hamming'", ("a castle on a hill",)).fetchall()
    assert [h.rowid for h in same] == [r[0] for r in rows]


def test_search_where_filters_during_the_search(photos, pairs):
    hits = photos.search(image=pairs["image"][261], k=10, where="year > ? AND title LIKE ?",
                         where_args=[2020, "p1%"])
    expected = [i for i in range(200) if 2000 + i % 25 > 2020 and str(i).startswith("1")]
    assert len(hits) == 10 <= len(expected)
    assert all(h.year > 2020 and h.title.startswith("p1") for h in hits)
    assert list(hits.distances) == sorted(hits.distances)


def test_hits_to_dicts_and_numpy(photos, pairs):
    hits = photos.search(image=pairs["image"][262], k=4)
    dicts = hits.to_dicts()
    assert list(dicts[0]) == ["rowid", "distance", "hamming", "title", "year", "score"]
    arr = hits.to_numpy()
    assert arr.dtype.names == ("rowid", "distance", "hamming", "title", "year", "score")
    assert arr["rowid"].tolist() == hits.rowids.tolist() == [d["rowid"] for d in dicts]
    assert arr["year"].dtype == np.int64 and arr["score"].dtype == np.float64 and arr["title"].dtype == object
    assert hits[0]["title"] == hits[0].title == dicts[0]["title"]
    with pytest.raises(AttributeError, match="no column 'colour'"):
        hits[0].colour


def test_search_many_equals_single_searches(photos, pairs):
    images = pairs["image"][270:280]
    many = photos.search_many(image=images, k=5, candidates=20, where="year >= ?", where_args=[2005])
    assert many == [photos.search(image=q, k=5, candidates=20, where="year >= ?", where_args=[2005]) for q in images]
    texts = [str(t) for t in pairs["text"][270:276]]
    assert photos.search_many(text=texts, k=3) == [photos.search(text=t, k=3) for t in texts]
    assert all(len(h) == 3 for h in photos.search_many(text=texts, k=3))


@pytest.mark.parametrize("mode", [None, "hamming", "aqd"])
def test_search_many_is_one_kernel_call(photos, pairs, monkeypatch, mode):
    from hqdb import kernels

    images = pairs["image"][150:190]
    single = [photos.search(image=q, k=7, candidates=30, mode=mode) for q in images]
    assert len(single) == 40 and all(len(h) == 7 for h in single)
    calls = {"search": 0, "search_many": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(kernels, name, counted)
    many = photos.search_many(image=images, k=7, candidates=30, mode=mode)
    assert calls == {"search": 0, "search_many": 1}
    assert many == single
    assert [h.to_dicts() for h in many] == [h.to_dicts() for h in single]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of image=... or text=..."),
    ({"image": np.zeros(3)}, r"photos\.image: expected 128 float features"),
    ({"text": "x", "target": "audio"}, r"target must be one of \['image', 'text'\]"),
    ({"text": "x", "k": 0}, r"photos\.search: k must be between 1"),
    ({"text": "x", "mode": "fast"}, r"unknown mode 'fast'"),
    ({"text": "x", "where": "year > ?"}, r"has 1 '\?' but 0 where_args were given"),
    ({"text": "x", "where": "colour = 1"}, r"photos\.search: where 'colour = 1' is not a condition on the columns: .*no such column: colour"),
    ({"text": "x", "where": "year > ?", "where_args": "2"}, "where_args must be a list"),
])
def test_search_errors(photos, kwargs, message):
    with pytest.raises(hqdb.CollectionError, match=message):
        photos.search(**kwargs)
