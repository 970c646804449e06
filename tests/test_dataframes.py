"""pandas and Arrow (the ``pandas`` extra): ``Hits.to_pandas()`` / ``Hits.to_arrow()``,
``Collection.insert_all`` from a DataFrame or an Arrow table, and ``hqdb eval --csv``."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

import hqdb
from hqdb import datasets
from hqdb.cli import main

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def model():
    pairs = datasets.synthetic_pairs(500, seed=3)
    return hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=2)


@pytest.fixture(scope="module")
def pairs():
    return datasets.synthetic_pairs(200, seed=11)


COLUMNS = {"title": str, "year": int, "score": float, "thumb": bytes}


def items(pairs, n=60):
    """Dicts with gaps: every 7th item has no year, every 6th no image, every 6th (another one) no text."""
    out = []
    for i in range(n):
        item = {"title": f"p{i}", "score": i / 4, "thumb": bytes([i])}
        if i % 7:
            item["year"] = 2000 + i
        if i % 6 != 1:
            item["image"] = pairs["image"][i]
        if i % 6 != 4:
            item["text"] = str(pairs["text"][i])
        out.append(item)
    return out


@pytest.fixture
def photos(db, model, pairs):
    hqdb.save_model(db, "m", model)
    coll = db.create_collection("photos", model="m", columns=COLUMNS)
    coll.insert_all(items(pairs))
    return coll


def stored(coll):
    """Every row's columns and codes, in rowid order."""
    return coll.db.execute(
        f"SELECT rowid, title, year, score, thumb, image_code, image_qcode, text_code, text_qcode FROM {coll.name} "
        "ORDER BY rowid"
    ).fetchall()


def test_to_pandas_and_to_arrow(photos, pairs):
    hits = photos.search(image=pairs["image"][3], k=20)
    assert any(h.year is None for h in hits)  # a NULL among the hits
    df = hits.to_pandas()
    assert list(df.columns) == ["rowid", "distance", "hamming", "title", "year", "score", "thumb"]
    assert str(df["rowid"].dtype) == "int64" and str(df["hamming"].dtype) == "int64"
    assert str(df["distance"].dtype) == "float64" and str(df["year"].dtype) == "Int64"
    assert df["rowid"].tolist() == hits.rowids.tolist() and df["distance"].tolist() == hits.distances.tolist()
    assert [None if pd.isna(y) else int(y) for y in df["year"]] == [h.year for h in hits]
    assert df["title"].tolist() == [h.title for h in hits] and df["thumb"].tolist() == [h.thumb for h in hits]

    table = hits.to_arrow()
    assert table.schema.names == list(df.columns)
    assert [str(t) for t in table.schema.types] == ["int64", "double", "int64", "string", "int64", "double", "binary"]
    assert table.to_pylist() == hits.to_dicts()

    # No NULLs: a plain int64 column; no hits: the columns are still there.
    full = photos.search(image=pairs["image"][3], k=5, where="year IS NOT NULL")
    assert str(full.to_pandas()["year"].dtype) == "int64"
    empty = photos.db.create_collection("empty", model="m", columns=COLUMNS)
    none = empty.search(image=pairs["image"][3], k=5)
    assert len(none) == 0 and list(none.to_pandas().columns) == list(df.columns)
    assert none.to_arrow().num_rows == 0 and none.to_arrow().schema.names == list(df.columns)
    batch = photos.search_many(image=pairs["image"][:3], k=4)  # the batched kernel path too
    assert batch[1].to_arrow().to_pylist() == photos.search(image=pairs["image"][1], k=4).to_dicts()


def test_missing_library_names_the_extra(photos, pairs, monkeypatch):
    hits = photos.search(image=pairs["image"][3], k=3)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails, as when not installed
    with pytest.raises(ImportError, match=r"Hits.to_pandas needs pandas.*pip install -e '\.\[pandas\]'"):
        hits.to_pandas()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"Hits.to_arrow needs pyarrow.*the pandas extra"):
        hits.to_arrow()


def test_insert_all_from_a_dataframe_equals_dicts(db, photos, pairs):
    rows = items(pairs)
    df = pd.DataFrame(rows)  # image: arrays or NaN; text: str or NaN; year: floats with NaN
    assert df["year"].dtype == "float64" and df["image"].isna().sum() == 10
    other = db.create_collection("from_df", model="m", columns=COLUMNS)
    assert other.insert_all(df) == list(range(1, 61))
    assert stored(other) == stored(photos)
    # Lists instead of arrays, a nullable integer column and an explicit rowid column.
    df2 = pd.DataFrame({"rowid": [100, 101], "title": ["a", "b"], "year": pd.array([None, 2001], dtype="Int64"),
                        "image": [pairs["image"][0].tolist(), None], "text": [None, "castle tower"]})
    assert other.insert_all(df2) == [100, 101]
    assert other.get(100) == {"rowid": 100, "title": "a", "year": None, "score": None, "thumb": None}
    assert other.get(101)["year"] == 2001


def test_insert_all_from_arrow(db, photos, pairs):
    rows = items(pairs)
    keys = ["title", "year", "score", "thumb", "image", "text"]
    table = pa.table({k: [v.tolist() if isinstance(v := it.get(k), np.ndarray) else v for it in rows] for k in keys})
    assert str(table.schema.field("image").type) == "list<item: double>" and table["year"].null_count == 9
    other = db.create_collection("from_arrow", model="m", columns=COLUMNS)
    assert other.insert_all(table) == list(range(1, 61))
    assert stored(other) == stored(photos)
    assert other.insert_all(table.to_batches()[0].slice(0, 2)) == [61, 62]  # a RecordBatch too


def test_dataframe_mistakes_change_nothing(db, photos, pairs):
    bad = pd.DataFrame({"title": ["ok", "bad"], "year": [2000.0, 2000.5]})
    bad["image"] = [pairs["image"][0], pairs["image"][1]]
    with pytest.raises(hqdb.CollectionError, match=r"photos.year \(item 1\): expected int"):
        photos.insert_all(bad)
    with pytest.raises(hqdb.CollectionError, match="unknown field"):
        photos.insert_all(pd.DataFrame({"colour": ["red"], "text": ["castle"]}))
    with pytest.raises(hqdb.CollectionError, match="column names must be distinct strings"):
        photos.insert_all(pd.DataFrame([[1, 2]], columns=[0, 1]))
    assert len(photos) == 60


def test_eval_csv(db_path, model, capsys, tmp_path):
    data = datasets.synthetic_pairs(260, seed=7)
    fields = {k: v for k, v in data.items() if k != "label_names"}
    np.savez(tmp_path / "q.npz", **{k: v[:30] for k, v in fields.items()})
    np.savez(tmp_path / "d.npz", **{k: v[30:] for k, v in fields.items()})
    with hqdb.connect(db_path) as db:
        hqdb.save_model(db, "m", model)
    argv = ["eval", "--db", str(db_path), "--model", "m", "--queries", str(tmp_path / "q.npz"),
            "--database", str(tmp_path / "d.npz"), "-q"]
    assert main([*argv, "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main([*argv, "--csv"]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(got.columns) == ["model", "method", "bits", "books", "codewords", "bytes_per_item", "n_queries",
                                 "n_database", "candidates", "direction", "ranking", "map@all", "map@50", "p@10"]
    assert len(got) == 3 * 4  # i2t, t2i, harmonic x two_stage, hamming, aqd, lossless
    for row in got.itertuples(index=False):
        scores = want[row.direction][row.ranking]
        assert (row._11, row._12, row._13) == pytest.approx((scores["map@all"], scores["map@50"], scores["p@10"]),
                                                            abs=1e-15)
        assert (row.model, row.bits, row.n_queries, row.n_database) == ("m", 32, 30, 230)
    assert main([*argv, "--csv", "--json"]) == 1
    assert "give --json or --csv" in capsys.readouterr().err
