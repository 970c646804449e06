"""The squared-Euclidean AQD (metric 'l2', Collaborative Quantization's search) next to the inner
product AQD: the table option, its persistence, the distances it reports, model-bound tables
whose model decides the metric, and model-bound tables of models without a quantizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

import apsw
import hqdb
from hqdb.engine.query import resolve
from hqdb.model.model import FORMAT, TrainedModel
from conftest import random_table

SQL = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = ? AND mode = ?"


def reported_l2(q, qcodes, cb, eps=0.0):
    """What the engine reports for metric 'l2': ‖q‖² + Σ_l ‖C^l b_l‖² − 2⟨q, Σ_l C^l b_l⟩ + ε
    (= ‖q − Σ C b‖² when the cross-book products equal ε)."""
    q = q.astype(np.float64)
    words = np.stack([cb[l].astype(np.float64)[qcodes[:, l]] for l in range(cb.shape[0])], 1)
    recon = words.sum(1)
    return (q @ q) + (words ** 2).sum((1, 2)) - 2 * recon @ q + eps


def test_l2_distances_and_order_match_the_formula(db):
    codes, qcodes, cb, rowids = random_table(db, n=400, extra=", metric='l2'")
    rng = np.random.default_rng(5)
    for _ in range(3):
        q = rng.integers(-8, 9, 64).astype(np.float32)
        got = db.execute(SQL, (q.tobytes(), 400, "aqd")).fetchall()
        want = reported_l2(q, qcodes, cb)
        ham = np.unpackbits(codes ^ hqdb.kernels.pack_bits(q), axis=1).sum(1)
        order = np.lexsort((rowids, ham, want))  # distance ascending, ties by Hamming, then rowid
        assert [r[0] for r in got] == rowids[order].tolist()
        assert np.allclose([r[1] for r in got], want[order], rtol=0, atol=1e-6)


def test_l2_is_the_exact_euclidean_distance_when_books_are_orthogonal(db):
    """Books in disjoint coordinates (product quantization, composite quantization with ε = 0):
    the reported distance is exactly ‖q − Σ C b‖²; inner product ranks differently."""
    rng = np.random.default_rng(2)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16, metric='l2')")
    db.execute("CREATE VIRTUAL TABLE u USING hq(dim=64, books=4, codewords=16)")
    cb = np.zeros((4, 16, 64), dtype=np.float32)
    for l in range(4):
        cb[l, :, 16 * l:16 * (l + 1)] = rng.integers(-8, 9, (16, 16))
    qcodes = rng.integers(0, 16, (300, 4)).astype(np.uint8)
    codes = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    for name in ("t", "u"):
        hqdb.set_codebooks(db, name, cb)
        rowids = hqdb.insert_codes(db, name, codes, qcodes)
    q = rng.integers(-8, 9, 64).astype(np.float32)
    recon = sum(cb[l][qcodes[:, l]] for l in range(4)).astype(np.float64)
    exact = ((recon - q) ** 2).sum(1)
    got = db.execute(SQL, (q.tobytes(), 300, "aqd")).fetchall()
    assert [r[1] for r in got] == sorted(exact.tolist())
    ham = np.unpackbits(codes ^ hqdb.kernels.pack_bits(q), axis=1).sum(1)  # equal distances: by Hamming
    assert [r[0] for r in got] == rowids[np.lexsort((rowids, ham, exact))].tolist()
    ip = db.execute(SQL.replace("FROM t WHERE hq_match(t.", "FROM u WHERE hq_match(u."),
                    (q.tobytes(), 300, "aqd")).fetchall()
    assert [r[0] for r in ip] == rowids[np.lexsort((rowids, ham, -(recon @ q)))].tolist()
    assert [r[0] for r in ip] != [r[0] for r in got]


def test_two_stage_reranks_hamming_candidates_by_l2(db):
    codes, qcodes, cb, rowids = random_table(db, n=300, extra=", metric='l2'")
    q = np.random.default_rng(9).integers(-8, 9, 64).astype(np.float32)
    ham = db.execute(SQL, (q.tobytes(), 40, "hamming")).fetchall()
    got = db.execute(SQL + " AND candidates = 40", (q.tobytes(), 40, "two_stage")).fetchall()
    cand = np.array([r[0] for r in ham])
    want = reported_l2(q, qcodes, cb)[cand - 1]
    ham = np.unpackbits(codes[cand - 1] ^ hqdb.kernels.pack_bits(q), axis=1).sum(1)
    assert [r[0] for r in got] == cand[np.lexsort((cand, ham, want))].tolist()


def test_metric_option_is_validated_and_persisted(db, db_path):
    for bad in ("metric='cosine'", "metric=1", "metric='l2', metric='ip'"):
        with pytest.raises(apsw.SQLError, match="metric"):
            db.execute(f"CREATE VIRTUAL TABLE bad USING hq(dim=64, {bad})")
    assert db.execute("SELECT count(*) FROM hqdb_tables WHERE name = 'bad'").fetchone()[0] == 0
    codes, qcodes, cb, rowids = random_table(db, n=200, extra=", metric=l2")
    q = np.random.default_rng(1).integers(-8, 9, 64).astype(np.float32)
    before = db.execute(SQL, (q.tobytes(), 50, "aqd")).fetchall()
    db.close()
    conn = hqdb.connect(db_path)
    try:
        after = conn.execute(SQL, (q.tobytes(), 50, "aqd")).fetchall()
    finally:
        conn.close()
    assert after == before
    assert np.allclose([r[1] for r in after], np.sort(reported_l2(q, qcodes, cb))[:50])


def test_ip_is_the_default(db):
    random_table(db, name="t", n=200, seed=4)
    random_table(db, name="u", n=200, seed=4, extra=", metric='ip'")
    q = np.random.default_rng(3).integers(-8, 9, 64).astype(np.float32).tobytes()
    a = db.execute(SQL, (q, 30, "aqd")).fetchall()
    b = db.execute(SQL.replace("FROM t WHERE hq_match(t.", "FROM u WHERE hq_match(u."), (q, 30, "aqd")).fetchall()
    assert a == b


# ----------------------------------------------------------------------------- model-bound


def hand_state(bits=16, books=2, codewords=8, metric="ip", epsilon=0.0, seed=0):
    rng = np.random.default_rng(seed)
    towers, tensors = {}, {}
    if books:
        tensors["codebooks"] = rng.standard_normal((books, codewords, bits)).astype(np.float32)
    for m, d in (("image", 6), ("text", 5)):
        towers[m] = {"input_dim": d, "layers": [7, bits], "activation": "relu", "input_norm": "standardize"}
        tensors[f"{m}.input_mean"] = np.zeros(d, dtype=np.float32)
        tensors[f"{m}.input_scale"] = np.ones(d, dtype=np.float32)
        prev = d
        for i, w in enumerate((7, bits)):
            tensors[f"{m}.layer{i}.weight"] = rng.standard_normal((w, prev)).astype(np.float32)
            tensors[f"{m}.layer{i}.bias"] = rng.standard_normal(w).astype(np.float32)
            prev = w
    config = {"format": FORMAT, "method": "test", "bits": bits, "books": books, "codewords": codewords,
              "metric": metric, "epsilon": epsilon, "modalities": ["image", "text"], "towers": towers,
              "featurizers": {"image": None, "text": None}, "aq_iters": 3}
    return config, tensors


def test_model_decides_the_metric_and_epsilon_is_added(db):
    config, tensors = hand_state(metric="l2", epsilon=2.5)
    model = TrainedModel.from_state(config, tensors)
    hqdb.save_model(db, "cq", model)
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='cq')")
    with pytest.raises(apsw.SQLError, match="come from the model"):
        db.execute("CREATE VIRTUAL TABLE u USING hq(model='cq', metric='ip')")
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    hqdb.insert_items(db, "t", image=img)
    f_img = model.embed("image", img)
    qc = model.quantize(f_img)
    for x in txt:
        fq = model.embed("text", x[None])[0]
        got = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.image, hq_query('text', ?)) "
                         "AND k = 50 AND mode = 'aqd'", (x.tobytes(),)).fetchall()
        want = reported_l2(fq, qc, model.codebooks, eps=2.5)
        ham = np.unpackbits(hqdb.kernels.pack_bits(f_img) ^ hqdb.kernels.pack_bits(fq), axis=1).sum(1)
        assert [r[0] for r in got] == (np.lexsort((np.arange(50), ham, want)) + 1).tolist()
        assert np.allclose([r[1] for r in got], np.sort(want), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [{"metric": "cosine"}, {"epsilon": "x"}, {"search": "fast"}])
def test_model_config_metric_is_checked(bad):
    config, tensors = hand_state()
    config.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainedModel.from_state(config, tensors)


def test_model_without_quantizer_is_searched_by_hamming(db):
    """books=0 models (chn, dcmh, lossless): two_stage falls back to Hamming like a raw books=0
    table; mode 'aqd' is an error naming the reason."""
    config, tensors = hand_state(books=0)
    model = TrainedModel.from_state(config, tensors)
    assert model.codebooks is None and model.quantize(np.zeros((2, 16))).shape == (2, 0)
    hqdb.save_model(db, "hash", model)
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='hash')")
    rng = np.random.default_rng(1)
    img = rng.standard_normal((40, 6)).astype(np.float32)
    hqdb.insert_items(db, "t", image=img)
    db.execute("INSERT INTO t(image) VALUES (?)", (rng.standard_normal(6).astype(np.float32).tobytes(),))
    q = rng.standard_normal(5).astype(np.float32).tobytes()
    base = "SELECT rowid, hamming FROM t WHERE hq_match(t.image, hq_query('text', ?)) AND k = 41"
    two = db.execute(base, (q,)).fetchall()
    ham = db.execute(base + " AND mode = 'hamming'", (q,)).fetchall()
    assert two == ham and len(ham) == 41
    assert [r[1] for r in ham] == sorted(r[1] for r in ham)
    with pytest.raises(apsw.SQLError, match="books=0"):
        db.execute(base + " AND mode = 'aqd'", (q,)).fetchall()
    assert db.execute("SELECT image_qcode FROM t WHERE rowid = 1").fetchone()[0] is None


@pytest.mark.parametrize("search, books", [("aqd", 2), ("hamming", 0), ("float", 0), ("two_stage", 2)])
def test_a_model_bound_table_searches_the_models_way_by_default(db, search, books):
    """No mode given: SQL, the batched aggregate and a collection all use the model's search
    (cq/spdq/cdq 'aqd', chn/dcmh 'hamming', lossless 'float' → its bit codes, hq 'two_stage')."""
    config, tensors = hand_state(books=books)
    config["search"] = search
    hqdb.save_model(db, "m", TrainedModel.from_state(config, tensors))
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='m')")
    rng = np.random.default_rng(8)
    hqdb.insert_items(db, "t", image=rng.standard_normal((200, 6)).astype(np.float32))
    q = rng.standard_normal(5).astype(np.float32)
    base = ("SELECT rowid, distance FROM t WHERE hq_match(t.image, hq_query('text', ?)) "
            "AND k = 5 AND candidates = 5")
    expect = {"float": "hamming"}.get(search, search)
    assert db.hq.table("t").default_mode() == expect
    default = db.execute(base, (q.tobytes(),)).fetchall()
    assert default == db.execute(base + f" AND mode = '{expect}'", (q.tobytes(),)).fetchall()
    if books:  # the modes rank differently here, so the default is not a coincidence
        others = {"aqd", "two_stage"} - {expect}
        assert all(default != db.execute(base + f" AND mode = '{o}'", (q.tobytes(),)).fetchall() for o in others)
    (out,) = db.execute("SELECT hq_search_many('t.image', 1, hq_query('text', ?), 5, 5)", (q.tobytes(),)).fetchone()
    assert [(r["rowid"], r["distance"]) for r in json.loads(out)] == default
    coll = db.collection("t")
    for hits in (coll.search(text=q, k=5, candidates=5), coll.search_many(text=[q, q], k=5, candidates=5)[1]):
        assert [(h.rowid, h.distance) for h in hits] == default


# ----------------------------------------------------------------------------- batched search


@pytest.mark.parametrize("mode", ["aqd", "two_stage"])
def test_search_many_reports_the_same_l2_distances_as_hq_match(db, mode):
    """The batched search adds each query's own offset ‖q‖² (+ ε), exactly as one search does."""
    random_table(db, n=300, extra=", metric='l2'")
    rng = np.random.default_rng(11)
    vecs = rng.integers(-8, 9, (5, 64)).astype(np.float32)
    table = db.hq.table("t")
    rowids, dist, _ = table.search_many(0, vecs, resolve(20, 60, mode))
    for j, q in enumerate(vecs):
        want = db.execute(SQL + " AND candidates = 60", (q.tobytes(), 20, mode)).fetchall()
        assert list(zip(rowids[j].tolist(), dist[j].tolist())) == want


def test_search_many_on_a_model_bound_l2_table_adds_epsilon(db):
    config, tensors = hand_state(metric="l2", epsilon=2.5)
    hqdb.save_model(db, "cq", TrainedModel.from_state(config, tensors))
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='cq')")
    rng = np.random.default_rng(3)
    hqdb.insert_items(db, "t", image=rng.standard_normal((40, 6)).astype(np.float32))
    txt = rng.standard_normal((4, 5)).astype(np.float32)
    db.execute("CREATE TABLE queries(id INTEGER PRIMARY KEY, vec BLOB)")
    db.executemany("INSERT INTO queries VALUES (?, ?)", [(j, x.tobytes()) for j, x in enumerate(txt)])
    rows = db.execute(
        "SELECT r.value ->> 'query', r.value ->> 'rowid', r.value ->> 'distance' FROM json_each(("
        "SELECT hq_search_many('t.image', q.id, hq_query('text', q.vec), 40, 40, 'aqd') "
        "FROM queries AS q)) AS r").fetchall()
    for j, x in enumerate(txt):
        want = db.execute("SELECT rowid, distance FROM t WHERE hq_match(t.image, hq_query('text', ?)) "
                          "AND k = 40 AND mode = 'aqd'", (x.tobytes(),)).fetchall()
        assert [(r[1], r[2]) for r in rows if r[0] == j] == want
