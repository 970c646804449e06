"""Every training method (hq, cq, spdq, chn, dcmh, cdq, c+d, lossless) trains through the one
trainer, stores as a model, and searches through SQL the way it is meant to; the parts that
define a method (DCMH's B step, CQ's ε, CHN's loss, c+d's two code sources) do what they say.

Synthetic data here (seconds); quality floors on Wikipedia: tests/test_train_wiki.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from hqdb import kernels, metrics
from hqdb.evaluate import evaluate

torch = pytest.importorskip("torch")

from hqdb.model import ranking  # noqa: E402
from hqdb.model.train import METHODS, combine_c_plus_d, train  # noqa: E402


def paired(n=400, classes=6, d_img=24, d_txt=30, noise=1.0, seed=0):
    """SYNTHETIC paired data: one class per item; each modality = its class centre + noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    c_img = 1.5 * rng.standard_normal((classes, d_img))
    c_txt = 1.5 * rng.standard_normal((classes, d_txt))
    img = c_img[labels] + noise * rng.standard_normal((n, d_img))
    txt = c_txt[labels] + noise * rng.standard_normal((n, d_txt))
    return {"image": img.astype(np.float32), "text": txt.astype(np.float32), "labels": labels}


_ALL = paired(n=480)
DATA = {k: v[:400] for k, v in _ALL.items()}
QUERIES = {k: v[400:] for k, v in _ALL.items()}
KW = dict(bits=16, codewords=16, epochs=8, patience=50, progress=False, seed=0, hidden=[32])
NO_QUANTIZER = ("chn", "dcmh", "lossless")


@pytest.fixture(scope="module")
def models():
    return {m: train(DATA, method=m, **KW) for m in METHODS}


def test_registry_names_every_method():
    assert set(METHODS) == {"hq", "cq", "spdq", "chn", "dcmh", "cdq", "c+d", "lossless"}


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_stores_and_beats_random(models, method, db):
    model = models[method]
    cfg = model.config
    assert cfg["method"] == method
    assert (model.books == 0) == (method in NO_QUANTIZER)
    assert cfg["search"] == {"hq": "two_stage", "c+d": "two_stage", "chn": "hamming", "dcmh": "hamming",
                             "lossless": "float"}.get(method, "aqd")
    assert cfg["metric"] == ("l2" if method == "cq" else "ip")
    if method in ("cq", "spdq", "cdq"):
        assert model.books == 16 // 8  # bits/8 books of 256 codewords by default; here codewords=16
    hqdb.save_model(db, "m", model)
    loaded = hqdb.load_model(db, "m")
    x = QUERIES["image"][:5]
    assert np.array_equal(loaded.embed("image", x), model.embed("image", x))
    res = evaluate(db, "m", QUERIES, DATA, candidates=50)
    kind = {"two_stage": "two_stage", "hamming": "hamming", "aqd": "aqd", "float": "lossless"}[cfg["search"]]
    # 6 balanced classes: a random ranking's MAP@50 is about 1/6.
    assert res["harmonic"][kind]["map@50"] > 0.5, (method, res["harmonic"])
    assert ("aqd" in res["i2t"]) == (model.books > 0)
    assert res["bytes_per_item"] == {"two_stage": 2 + model.books, "hamming": 2, "aqd": model.books,
                                     "float": 64}[cfg["search"]]


@pytest.mark.parametrize("method", ["cq", "spdq", "cdq", "c+d"])
def test_sql_search_equals_the_numpy_ranking(models, method, db):
    """The engine's AQD (inner product or squared Euclidean + ε) ranks like the model in numpy."""
    model = models[method]
    hqdb.save_model(db, "m", model)
    res = evaluate(db, "m", QUERIES, DATA, candidates=50)
    ref = ranking.cross_modal(model, {k: QUERIES[k] for k in ("image", "text")},
                              {k: DATA[k] for k in ("image", "text")}, QUERIES["labels"], DATA["labels"],
                              candidates=50)
    for d in ("i2t", "t2i"):
        for kind in ("hamming", "lossless"):  # exact: integer distances / the same numpy scores
            assert res[d][kind]["map@50"] == pytest.approx(ref[d][kind]["map@50"], abs=1e-9), (d, kind)
        # AQD: float32 lookup tables in the engine vs float64 in numpy may swap near-ties.
        for kind in (("two_stage", "aqd") if method != "cq" else ()):
            assert res[d][kind]["map@50"] == pytest.approx(ref[d][kind]["map@50"], abs=2e-3), (d, kind)
    if method == "cq":
        # The table adds a constant ε for the cross-book products; numpy uses each item's own,
        # so the orders agree only up to that spread: close, not equal.
        for d in ("i2t", "t2i"):
            for kind in ("two_stage", "aqd"):
                assert abs(res[d][kind]["map@50"] - ref[d][kind]["map@50"]) < 0.05


def test_cq_epsilon_is_the_mean_cross_term(models):
    from hqdb.model.cq import cross_terms

    from hqdb.model.cq import CQ

    model = models["cq"]
    f = np.concatenate([model.embed("image", DATA["image"]), model.embed("text", DATA["text"])])
    codes = model.quantize(f)
    cross = cross_terms(codes, model.codebooks)
    out = CQ(16, 6, dict(CQ.lambdas)).finish(model.codebooks, codes, len(codes))
    assert out["epsilon"] == pytest.approx(cross.mean()) and out["epsilon_std"] == pytest.approx(cross.std())
    # The stored ε is that mean over the training codes (fitted to blended targets), so within
    # the spread of the cross term over fresh codes of all items.
    assert abs(model.epsilon - cross.mean()) <= cross.std()
    assert model.config["metrics"]["epsilon_std"] >= 0


def test_cq_constraint_penalty_shrinks_the_cross_term_spread():
    from hqdb.model.cq import CQ, cross_terms
    from hqdb.model import aq
    from hqdb import quantize

    rng = np.random.default_rng(0)
    F = rng.standard_normal((500, 16)).astype(np.float32) * 2
    C = quantize.fit_codebooks(F, 4, 16, seed=0)
    codes = aq.encode(F, C)
    C = aq.update_codebooks(F, codes, 4, 16, prev=C)
    before = cross_terms(codes, C).std()
    method = CQ(16, 3, dict(CQ.lambdas))
    after = cross_terms(codes, method.refine_codebooks(F, codes, C)).std()
    assert after < 0.5 * before


def test_dcmh_b_step_is_the_sign_of_f_plus_g():
    from hqdb.model.dcmh import DCMH

    m = DCMH(8, 3, dict(DCMH.lambdas))
    f = np.array([[0.5, -1, 0, 2, -0.1, 0.3, 1, -2]], dtype=np.float32)
    g = np.array([[-1, -1, 0, -3, 0.2, 0.3, -0.5, 1]], dtype=np.float32)
    m.end_epoch(f, g)
    assert m.B.numpy().tolist() == [[-1, -1, 1, -1, 1, 1, 1, -1]]


def test_chn_loss_matches_numpy():
    from hqdb.model.chn import CHN

    rng = np.random.default_rng(1)
    f = np.tanh(rng.standard_normal((5, 8))).astype(np.float32)
    g = np.tanh(rng.standard_normal((5, 8))).astype(np.float32)
    s = (rng.random((5, 5)) < 0.4).astype(np.float32)
    m = CHN(8, 3, dict(CHN.lambdas))
    got = m.loss_terms(torch.from_numpy(f), torch.from_numpy(g), torch.from_numpy(s), None, None, None, None)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    margin = (s * np.maximum(0, CHN.MARGIN - cos) + (1 - s) * np.maximum(0, cos - CHN.NEG)).mean()
    quant = sum((1 - np.abs(h).sum(1) / (np.linalg.norm(h, axis=1) * np.sqrt(8))).mean() for h in (f, g))
    assert float(got["margin"]) == pytest.approx(margin, rel=1e-5)
    assert float(got["quant"]) == pytest.approx(quant, rel=1e-5)


def test_spdq_mmd_is_zero_for_equal_samples_and_grows_with_shift():
    from hqdb.model.spdq import mmd2

    a = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    assert float(mmd2(a, a)) == pytest.approx(0, abs=1e-6)
    assert float(mmd2(a, a + 2)) > float(mmd2(a, a + 0.5)) > 0.01


def test_c_plus_d_codes_come_from_dcmh_and_vectors_from_cdq(models, db):
    cd = models["c+d"]
    assert set(cd.config["hash_towers"]) == {"image", "text"}
    dcmh = train(DATA, method="dcmh", **KW)
    cdq = train(DATA, method="cdq", books=4, **KW)
    merged = combine_c_plus_d(dcmh, cdq)
    x = QUERIES["text"][:7]
    bitf, vec = merged.encode("text", x)
    assert np.array_equal(bitf, dcmh.embed("text", x))
    assert np.array_equal(vec, cdq.embed("text", x))
    assert np.array_equal(merged.codebooks, cdq.codebooks)
    # train(method="c+d") is exactly this merge (same seed, same data).
    assert np.array_equal(cd.encode("text", x)[0], bitf) and np.array_equal(cd.encode("text", x)[1], vec)
    # Through SQL: the stored bit code of an item is DCMH's.
    hqdb.save_model(db, "cd", merged)
    db.execute("CREATE VIRTUAL TABLE t USING hq(model='cd')")
    hqdb.insert_items(db, "t", text=x)
    got = [r[0] for r in db.execute("SELECT text_code FROM t ORDER BY rowid")]
    assert got == [kernels.pack_bits(b).tobytes() for b in dcmh.embed("text", x)]
    with pytest.raises(ValueError, match="dcmh model and a cdq"):
        combine_c_plus_d(cdq, dcmh)


def test_lossless_vectors_are_unit_length_and_ranked_by_cosine(models):
    model = models["lossless"]
    f = model.embed("image", DATA["image"])
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)


def test_method_arguments_are_checked():
    with pytest.raises(ValueError, match="no quantizer"):
        train(DATA, method="chn", books=4, **KW)
    with pytest.raises(ValueError, match="unknown lambdas"):
        train(DATA, method="cq", lambdas={"h": 1.0}, **KW)
    with pytest.raises(ValueError, match="unknown method"):
        train(DATA, method="pq", **KW)


def test_training_any_method_is_deterministic():
    a = train(DATA, method="spdq", **KW)
    b = train(DATA, method="spdq", **KW)
    x = QUERIES["image"]
    assert np.array_equal(a.embed("image", x), b.embed("image", x))
    assert np.array_equal(a.codebooks, b.codebooks)
    assert metrics.harmonic_mean(0.5, 0.5) == 0.5


# ----------------------------------------------------------------------------- defaults from the input's shape
def test_low_dimensional_inputs_get_dropout_and_the_pair_loss():
    """A modality of <= LOW_DIM input dimensions (a 10-d topic distribution, like Wiki's LDA text)
    trains with dropout 0.3 and HQ's λ_pair = 1 unless told otherwise; wider inputs without
    dropout and with λ_pair 0.1."""
    from hqdb.model.train import LOW_DIM

    kw = {**KW, "epochs": 3}
    low = paired(n=200, d_txt=LOW_DIM, seed=3)
    wide = paired(n=200, d_txt=LOW_DIM + 1, seed=3)
    m = train(low, **kw)
    assert m.config["train"]["dropout"] == 0.3 and m.config["lambdas"]["pair"] == 1.0
    assert all(h["pair"] > 0 for h in m.config["history"])  # the term is really in the loss
    m = train(wide, **kw)
    assert m.config["train"]["dropout"] == 0.0 and m.config["lambdas"]["pair"] == 0.1
    assert all(h["pair"] > 0 for h in m.config["history"])
    m = train(low, dropout=0.0, lambdas={"pair": 0.0}, **kw)  # explicit values win
    assert m.config["train"]["dropout"] == 0.0 and m.config["lambdas"]["pair"] == 0.0
    m = train(low, method="dcmh", **kw)  # no pair loss: only the dropout default applies
    assert m.config["train"]["dropout"] == 0.3 and "pair" not in m.config["lambdas"]
    with pytest.raises(ValueError, match="dropout"):
        train(wide, dropout=1.0, **kw)


def test_pair_temperature():
    """HQ's pair term uses the soft pair_temperature (0.3), except with ``sharp_pairs`` (the
    trainer's flag for pseudo-labels of a low-dimensional text: HQ.temperature, 0.1)."""
    import torch

    from hqdb.model import methods
    from hqdb.model.hq import HQ

    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    labels = torch.eye(4)[torch.arange(8) % 4]
    s = (labels @ labels.T > 0).float()
    meth = HQ(16, 4, HQ.lambdas)
    soft = meth.loss_terms(f, t, s, labels, f, t, None)["pair"]
    meth.sharp_pairs = True
    sharp = meth.loss_terms(f, t, s, labels, f, t, None)["pair"]
    assert HQ.pair_temperature != HQ.temperature and not torch.isclose(soft, sharp)
    assert torch.isclose(soft, methods.pair_contrastive((f @ t.T) / (HQ.pair_temperature * 16)))
    assert torch.isclose(sharp, methods.pair_contrastive((f @ t.T) / (HQ.temperature * 16)))


def test_trainer_sets_sharp_pairs_for_pseudo_labels_of_a_low_dimensional_text(monkeypatch):
    from hqdb.model.hq import HQ
    from hqdb.model.train import LOW_DIM

    seen = []
    original = HQ.loss_terms

    def spy(self, *args):
        seen.append(self.sharp_pairs)
        return original(self, *args)

    monkeypatch.setattr(HQ, "loss_terms", spy)
    kw = {**KW, "epochs": 1}
    for d_txt, labels, expected in ((LOW_DIM, False, True), (LOW_DIM, True, False), (LOW_DIM + 1, False, False)):
        data = paired(n=200, d_txt=d_txt, seed=3)
        if not labels:
            del data["labels"]
        seen.clear()
        train(data, **kw)
        assert seen and set(seen) == {expected}, (d_txt, labels, set(seen))


def test_majority_of_clusterings_for_wide_inputs_graded_share_for_low_dimensional_ones(monkeypatch):
    """Pseudo-labels of several clusterings: s_ij = 1 when most agree (CLUSTER_AGREEMENT) for
    inputs wider than LOW_DIM, the graded share at LOW_DIM or fewer dimensions."""
    import hqdb.model.train as T
    from hqdb.model.hq import HQ

    agreement, sims = [], []
    fit, loss_terms = T._fit, HQ.loss_terms

    def spy_fit(*args, **kw):
        agreement.append(kw["agreement"])
        return fit(*args, **kw)

    def spy_loss(self, f, g, sim, *args):
        sims.append(sim.unique())
        return loss_terms(self, f, g, sim, *args)

    monkeypatch.setattr(T, "_fit", spy_fit)
    monkeypatch.setattr(HQ, "loss_terms", spy_loss)
    kw = {**KW, "epochs": 1, "refit": False}
    for d_txt, expected in ((T.LOW_DIM + 1, T.CLUSTER_AGREEMENT), (T.LOW_DIM, None)):
        data = paired(n=200, d_txt=d_txt, seed=3)
        del data["labels"]
        agreement.clear(), sims.clear()
        train(data, **kw)
        assert agreement == [expected], (d_txt, agreement)
        values = set(torch.cat(sims).tolist())
        if expected is None:
            assert values - {0.0, 1.0}, values  # graded: shares between 0 and 1 occur
        else:
            assert values <= {0.0, 1.0}, values
    assert T.CLUSTER_AGREEMENT == 0.5


def test_epoch_window_averages_the_selected_weights():
    """average_epochs: the best window of consecutive epochs (mean validation MAP) is kept, its
    towers averaged; None = a tenth of the epochs (8 epochs: 1, i.e. the single best epoch)."""
    kw = {**KW, "epochs": 8}
    one = train(DATA, method="hq", average_epochs=1, **kw)
    default = train(DATA, method="hq", **kw)
    assert default.config["train"]["average_epochs"] == 1
    x = QUERIES["image"]
    assert np.array_equal(one.embed("image", x), default.embed("image", x))
    three = train(DATA, method="hq", average_epochs=3, **kw)
    curve = [h["val_hmean"] for h in three.config["history"]]
    windows = [np.mean(curve[max(0, i - 2) : i + 1]) for i in range(len(curve))]
    assert three.config["metrics"]["best_epoch"] == int(np.argmax(windows)) + 1
    assert not np.array_equal(three.embed("image", x), one.embed("image", x))
    assert train(DATA, method="hq", **{**KW, "epochs": 50, "patience": 1}).config["train"]["average_epochs"] == 5
    with pytest.raises(ValueError, match="average_epochs"):
        train(DATA, method="hq", average_epochs=0, **kw)
