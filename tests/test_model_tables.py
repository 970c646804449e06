"""Model-bound hq tables: a trained model stored in the database encodes inserts (in batches)
and queries of either modality; searches agree with the model's own numpy encoding."""

from __future__ import annotations

import numpy as np
import pytest

import apsw
import hqdb
from hqdb import datasets, kernels
import reference

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model():
    pairs = datasets.synthetic_pairs(600, seed=3)
    return hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=3)


@pytest.fixture
def docs(db, model):
    hqdb.save_model(db, "m", model)
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m', title TEXT)")
    return db


def encode(model, modality, values):
    f = model.embed(modality, model.featurize(modality, values))
    return f, kernels.pack_bits(f), model.quantize(f)


def test_model_roundtrip_through_the_database(db, model):
    hqdb.save_model(db, "m", model)
    loaded = hqdb.load_model(db, "m")
    pairs = datasets.synthetic_pairs(20, seed=9)
    for m in ("image", "text"):
        x = pairs[m] if m == "image" else [str(t) for t in pairs[m]]
        assert np.array_equal(loaded.embed(m, loaded.featurize(m, x)), model.embed(m, model.featurize(m, x)))
    assert [r["name"] for r in hqdb.list_models(db)] == ["m"]
    with pytest.raises(hqdb.ModelError, match="already exists"):
        hqdb.save_model(db, "m", model)


def test_corrupt_model_gives_clear_error(db, model):
    hqdb.save_model(db, "m", model)
    db.execute("UPDATE hqdb_model_tensors SET data = substr(data, 1, 10) "
               "WHERE rowid = (SELECT min(rowid) FROM hqdb_model_tensors)")
    with pytest.raises(hqdb.ModelError, match="truncated or corrupt"):
        hqdb.load_model(db, "m")
    with pytest.raises(apsw.SQLError, match="truncated or corrupt"):
        db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m')")
    with pytest.raises(apsw.SQLError, match="no model named 'nope'"):
        db.execute("CREATE VIRTUAL TABLE docs2 USING hq(model='nope')")


def test_sql_inserts_are_encoded_in_batches_and_searchable(docs, model):
    db = docs
    pairs = datasets.synthetic_pairs(50, seed=4)
    texts = [str(t) for t in pairs["text"]]
    with db.transaction():
        db.executemany("INSERT INTO docs(image, text, title) VALUES (?, ?, ?)",
                       [(pairs["image"][i].tobytes(), texts[i], f"t{i}") for i in range(50)])
        # Inside the transaction, queued rows are encoded before anyone reads them.
        assert db.hq.table("docs").pending == 50  # buffered, encoded in one batch per modality
        assert db.execute("SELECT count(*) FROM docs WHERE text_code IS NOT NULL").fetchone() == (50,)
    assert db.hq.table("docs").pending == 0
    f_txt, bits_txt, q_txt = encode(model, "text", texts)
    stored = db.execute("SELECT text_code, text_qcode FROM docs ORDER BY rowid").fetchall()
    assert [r[0] for r in stored] == [b.tobytes() for b in bits_txt]
    assert [r[1] for r in stored] == [q.astype("<u1").tobytes() for q in q_txt]
    # image -> text through SQL equals the reference search over the model's own codes.
    query = pairs["image"][0]
    got = db.execute("SELECT rowid, distance FROM docs WHERE hq_match(docs.text, hq_query('image', ?)) "
                     "AND k = 10 AND candidates = 20", (query.tobytes(),)).fetchall()
    fq = model.embed("image", model.featurize("image", query[None]))[0]
    want = reference.search(bits_txt, q_txt, np.arange(1, 51), fq, model.codebooks, k=10, candidates=20)
    assert [r[0] for r in got] == want[0]
    assert np.allclose([r[1] for r in got], want[1], rtol=1e-6, atol=1e-5)
    # text -> image with a raw string
    rows = db.execute("SELECT rowid FROM docs WHERE hq_match(docs.image, hq_query('text', 'a castle on a hill')) "
                      "AND k = 5").fetchall()
    assert len(rows) == 5


def test_insert_items_matches_sql_inserts(docs, model):
    db = docs
    pairs = datasets.synthetic_pairs(30, seed=5)
    texts = [str(t) for t in pairs["text"]]
    ids = hqdb.insert_items(db, "docs", image=pairs["image"], text=texts, metadata={"title": texts})
    db.executemany("INSERT INTO docs(image, text) VALUES (?, ?)",
                   [(pairs["image"][i].tobytes(), texts[i]) for i in range(30)])
    a = db.execute("SELECT image_code, image_qcode, text_code, text_qcode FROM docs WHERE rowid <= 30 ORDER BY rowid").fetchall()
    b = db.execute("SELECT image_code, image_qcode, text_code, text_qcode FROM docs WHERE rowid > 30 ORDER BY rowid").fetchall()
    assert ids.tolist() == list(range(1, 31))
    assert a == b
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_rows_may_lack_a_modality_and_updates_reencode(docs, model):
    db = docs
    pairs = datasets.synthetic_pairs(5, seed=6)
    db.execute("INSERT INTO docs(image, title) VALUES (?, 'only image')", (pairs["image"][0].tobytes(),))
    db.execute("INSERT INTO docs(text, title) VALUES ('a forest trail with deer', 'only text')")
    count = "SELECT count(*) FROM docs WHERE hq_match(docs.{}, hq_query('text', 'forest')) AND k = 10"
    assert db.execute(count.format("image")).fetchone() == (1,)
    assert db.execute(count.format("text")).fetchone() == (1,)
    db.execute("UPDATE docs SET text = 'castle knight tower' WHERE title = 'only image'")
    assert db.execute(count.format("text")).fetchone() == (2,)
    db.execute("UPDATE docs SET title = 'renamed' WHERE title = 'only text'")  # codes kept as they are
    assert db.execute(count.format("text")).fetchone() == (2,)
    db.execute("DELETE FROM docs WHERE title = 'renamed'")
    assert db.execute(count.format("text")).fetchone() == (1,)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_bad_model_inputs(docs):
    db = docs
    with pytest.raises(apsw.SQLError, match="float32 BLOB of 128 values"):
        db.execute("INSERT INTO docs(image) VALUES (x'00')")
    with pytest.raises(apsw.SQLError, match="NaN"):
        db.execute("INSERT INTO docs(image) VALUES (?)", (np.full(128, np.nan, np.float32).tobytes(),))
    with pytest.raises(apsw.SQLError, match="no text featurizer|must be a BLOB"):
        db.execute("INSERT INTO docs(image) VALUES ('a picture')")
    with pytest.raises(apsw.SQLError, match="has no modality 'audio'"):
        db.execute("SELECT rowid FROM docs WHERE hq_match(docs.text, hq_query('audio', x'00')) AND k = 1").fetchall()
    with pytest.raises(apsw.SQLError, match="come from the model"):
        db.execute("CREATE VIRTUAL TABLE d2 USING hq(model='m', dim=64)")
    with pytest.raises(apsw.SQLError, match="insert_items|insert features"):
        hqdb.insert_codes(db, "docs", np.zeros((1, 4), np.uint8), np.zeros((1, 2), np.uint8))
    assert db.execute("SELECT count(*) FROM docs").fetchone() == (0,)
    with pytest.raises(hqdb.ModelError, match="used by hq table"):
        hqdb.save_model(db, "m", hqdb.load_model(db, "m"), replace=True)
