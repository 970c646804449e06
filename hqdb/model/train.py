"""Train a cross-modal encoder — HQ (paper §4) or another method of :mod:`hqdb.model.methods`
— on paired image/text data with labels. Needs torch.

One loop for every method. Per epoch: Adam steps on mini-batches of paired items with the
quantizer fixed (the method's loss over the batch's cross-modal pairs; HQ: Eq. 7); then, with
the towers fixed, the search vectors of every training item of both modalities are
re-quantized by alternating update_codebooks / encode ``aq_rounds`` times (§4.3; one set of
codebooks for both modalities; skipped for methods without a quantizer) and the method's
per-item state is updated (DCMH's B); then validation — MAP@50 of the method's own search
(HQ: two-stage, Hamming top-``candidates`` re-ranked by AQD), held-out validation items as
queries against the training items as the database, harmonic mean of I→T and T→I as in the
paper's tables — decides early stopping. The best epoch's towers and codebooks are kept.

Deterministic on CPU for a given seed and thread count: seeded torch RNG (forked, so the
caller's RNG state is untouched), deterministic algorithms, fixed torch threads (restored after).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Any

import numpy as np

from .. import metrics
from .. import quantize as raw_quantize
from ..errors import TrainingError
from ..kernels import MAX_BITS
from . import DEFAULT_CLUSTERS, METHODS, aq, ranking
from .featurize import FEATURIZERS, TfidfFeaturizer, make_featurizer
from .methods import method_class
from .model import FORMAT, TrainedModel

# Chosen on the validation split train() carves from the database part of Wiki (80% of
# wiki_train.npz, seed 0; queries never looked at), three seeds each. The paper's λ weight *sums*
# (Eq. 3-6 over all pairs); in hq.py's means, its λ_sim 50, λ_h 0.01, λ_b 0.01, λ_q 1e-4 become
# about 1, 0.013, 0.013, 1.3e-4 at 64 bits — which trained worse here (validation harmonic MAP@50
# 0.36 vs 0.39). λ_h 0.1-0.3 did best; λ_h >= 1 binarises too early and costs T→I; λ_b and λ_q
# in 0.01-0.1 made no measurable difference. λ_pair (the contrastive loss over the batch's own
# pairs, ours) 0.1 was chosen later on bench/quality_screen.py's inner splits (tf-idf text, MAP@all
# I→T / T→I 0.299 / 0.691 → 0.319 / 0.697; 0.3 lost: 0.285 / 0.680; docs/methods.md).
DEFAULT_LAMBDAS = {"sim": 1.0, "h": 0.3, "b": 0.01, "q": 0.01, "pair": 0.1}  # = hq.HQ.lambdas
# Generic optimiser defaults (HQ's, tuned as above); a method may override them (train_defaults).
DEFAULT_TRAIN = {"epochs": 50, "batch_size": 32, "lr": 3e-3, "aq_rounds": 2}
DEFAULT_HIDDEN = {"image": [512], "text": [512]}
# Per-epoch validation (early stopping) looks at a seeded sample of at most this many queries
# and training items, so its cost does not grow with the data (Wiki: its 348 and 1,390 are all used).
VAL_QUERIES = 500
VAL_DATABASE = 10000
# Inputs of at most LOW_DIM dimensions (a topic distribution like Wiki's 10-d LDA, a few
# attributes) train with dropout LOW_DIM_DROPOUT after the hidden layers of both towers unless
# ``dropout`` is given: on the inner validation splits of Wiki's LDA text it raised MAP@all I→T
# from 0.18 to 0.22 (docs/methods.md); on 128-d SIFT + 1000-d tf-idf it did not help.
LOW_DIM, LOW_DIM_DROPOUT = 16, 0.3
# ... and, for methods with a "pair" loss weight (hq), λ_pair = 1: the contrastive loss over the
# batch's own pairs next to the label loss (MAP@all I→T 0.22 → 0.25, T→I 0.44 → 0.48 there; on
# tf-idf λ_pair 1 cost 0.08 I→T, so it is 0.1 otherwise).
LOW_DIM_LAMBDAS = {"pair": 1.0}
# Ranking depth of the per-epoch validation MAP with labels (None: MAP@all).
VAL_R: int | None = 50
# Early stopping may end a training only from this share of the epoch budget on (epoch 38 of 50),
# so every run reaches the cosine schedule's small steps before the hold-out can stop it: a window
# that won early while one direction's validation MAP dipped in mid-training no longer ends it.
EARLY_STOP_FROM = 0.75
# ``refit``: after the hold-out has chosen the epoch, train again on every item (held-out ones
# too) for that many epochs, same seed and schedule, averaging the same window. Inner splits of
# Wiki (docs/methods.md), MAP@all I→T / T→I: tf-idf 0.319 / 0.697 → 0.334 / 0.810, 10-d LDA text
# 0.264 / 0.563 → 0.275 / 0.631, no labels 0.241 / 0.451 → 0.240 / 0.512. It costs up to twice
# the training time, so by default (None) it runs up to REFIT_MAX_ITEMS items, where a training
# takes minutes; above, a fifth of a large set held out costs less than a second training.
REFIT_MAX_ITEMS = 100_000


def _load(data) -> dict:
    if isinstance(data, dict):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise TrainingError(f"no such file {path!r}: give an .npz of image, text and labels (or a dict of arrays)")
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("a single array, not an .npz archive of named arrays")
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise TrainingError(f"cannot read {path!r} as an .npz of image, text and labels: {e}") from None
    raise TrainingError("data must be a dict of arrays or the path of an .npz file")


def _configured_text_featurizer(spec, text_weights, image_spec, weights, threads):
    """A text featurizer given as 'open_clip:NAME' (with its weights) or as an object; None for
    the named ones (tfidf, minilm), which are made and fitted from the data."""
    if isinstance(spec, str) and spec in FEATURIZERS:
        if text_weights is not None:
            raise TrainingError("text_weights goes with text_featurizer='open_clip:NAME'")
        return None
    if isinstance(spec, str) and spec.startswith(("open_clip:", "open-clip:")):
        from .images import ClipTextFeaturizer

        if text_weights is None and image_spec is not None:
            # The same CLIP model for images: one weights file serves both towers.
            if hasattr(image_spec, "state"):
                image_spec, weights = f"{image_spec.library}:{image_spec.backbone}", image_spec.weights
            if str(image_spec).replace("-", "_") == spec.replace("-", "_"):
                text_weights = weights
        try:
            return ClipTextFeaturizer.create(spec, text_weights, threads=threads)
        except ValueError as e:
            raise TrainingError(f"text featurizer: {e}") from None
    if not isinstance(spec, str) and hasattr(spec, "transform") and hasattr(spec, "state"):
        return spec
    return None


def _is_folder(data) -> bool:
    return isinstance(data, (str, os.PathLike)) and os.path.isdir(os.fspath(data))


def _image_featurizer(spec, weights, image_size, threads):
    """``image_featurizer`` as an ImageFeaturizer (None stays None)."""
    if spec is None:
        if weights is not None or image_size is not None:
            raise TrainingError("weights and image_size go with image_featurizer='timm:NAME' (a backbone)")
        return None
    from .images import ImageFeaturizer

    if isinstance(spec, ImageFeaturizer):
        return spec
    try:
        return ImageFeaturizer.create(spec, weights, image_size=image_size, threads=threads)
    except ValueError as e:
        raise TrainingError(f"image featurizer: {e}") from None


def _load_folder(folder, captions, image_fz, image_key: str, text_key: str) -> dict:
    """A folder of captioned images as training data: image paths and their captions."""
    from .images import read_folder

    if image_fz is None:
        raise TrainingError(
            f"{os.fspath(folder)!r} is a folder: training on its images needs a backbone "
            "(image_featurizer='timm:NAME', weights='FILE')"
        )
    try:
        items, _ = read_folder(folder, captions)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if not items:
        raise TrainingError(f"{os.fspath(folder)!r} has no image files")
    bare = [it["file"] for it in items if not it["caption"]]
    if bare:
        raise TrainingError(
            f"{len(bare)} image(s) of {os.fspath(folder)!r} have no caption, e.g. {bare[0]!r}: give each a "
            "caption (captions.csv 'file,caption' or a sidecar .txt) to train on the folder"
        )
    return {image_key: [it["path"] for it in items], text_key: [it["caption"] for it in items]}


def _image_features(fz, values, progress: bool) -> np.ndarray:
    """The training images through the backbone (or features of its size, used as they are)."""
    x = np.asarray(values) if isinstance(values, np.ndarray) else None
    if x is not None and x.ndim == 2 and x.dtype.kind == "f":
        if x.shape[1] != fz.dim or not np.isfinite(x).all():
            raise TrainingError(f"image features must be finite, of the backbone's size {fz.dim}; got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)
    from ..progress import progress_bar

    values = list(values)
    bar = progress_bar(len(values), "featurize images", progress and sys.stderr.isatty(), unit="image")
    try:
        return fz.transform(values, progress=bar.update)
    except ValueError as e:
        raise TrainingError(f"images: {e}") from None
    finally:
        bar.close()


def _is_text(values) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "UO"
    return isinstance(values, (list, tuple)) and len(values) > 0 and isinstance(values[0], str)


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and 1/std, std floored at the mean std so near-constant dimensions
    (rare words, empty visual words) are not blown up."""
    mean = x.mean(0, dtype=np.float64)
    std = x.std(0, dtype=np.float64)
    floor = max(float(std.mean()), 1e-12)
    return mean.astype(np.float32), (1.0 / np.maximum(std, floor)).astype(np.float32)


class _Progress:
    """A tqdm bar over the training items of all epochs (so its ETA is meaningful inside a long
    epoch; early stopping ends it sooner), the last epoch's losses and validation scores as its
    postfix; without tqdm, one stderr line rewritten per epoch."""

    def __init__(self, epochs: int, n_items: int, enabled: bool, desc: str = "train"):
        self.enabled, self.epochs, self.desc, self.bar = enabled, epochs, desc, None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=epochs * n_items, desc=desc, unit="item", unit_scale=True, file=sys.stderr, mininterval=0.5
                )
            except ImportError:
                pass

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def end_epoch(self, epoch: int, info: dict) -> None:
        if not self.enabled:
            return
        text = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in info.items()}
        if self.bar is not None:
            self.bar.set_postfix({"epoch": f"{epoch}/{self.epochs}", **text}, refresh=True)
        else:
            cells = " ".join(f"{k} {v}" for k, v in text.items())
            print(f"\r{self.desc} epoch {epoch}/{self.epochs} {cells}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def train(
    data,
    *,
    method: str = "hq",
    bits: int = 64,
    books: int | None = None,
    codewords: int = 256,
    text_key: str = "text",
    image_key: str = "image",
    val_fraction: float = 0.2,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    lambdas: dict | None = None,
    hidden=None,
    dropout: float | None = None,
    cosine: bool = True,
    patience: int = 15,
    average_epochs: int | None = None,
    refit: bool | None = None,
    aq_rounds: int | None = None,
    aq_iters: int = 3,
    candidates: int = 100,
    text_featurizer: str = "tfidf",
    vocab_size: int = 1000,
    threads: int = 1,
    progress: bool = True,
    label_free: str = "clusters",
    clusters: int = DEFAULT_CLUSTERS,
    image_featurizer=None,
    weights=None,
    image_size: int | None = None,
    captions=None,
    text_weights=None,
    distributed=None,
) -> TrainedModel:
    """Train ``method`` on ``data`` (dict or .npz path): ``image`` (N, d_i) floats, ``text_key``
    (N, d_t) floats or N raw strings, ``labels`` multi-hot (N, C) or class ids (N,). Returns a
    numpy-only :class:`TrainedModel`.

    ``method``: one of METHODS — hq (default), cq, spdq, chn, dcmh, cdq, c+d, lossless (see
    docs/methods.md). ``bits`` is the code length: the bit code of hashing methods, the search
    vector's dimension for all. ``books`` (× ``codewords``): codebooks of the quantizer; default
    4 for hq and c+d, bits/8 for the quantization-only methods (cq, spdq, cdq: ``bits`` bits of
    codes at 256 codewords), none for chn, dcmh and lossless (giving one is an error).
    Raw strings go through a text featurizer fitted on the training part and kept in the model:
    ``text_featurizer`` "tfidf" (``vocab_size`` words) or "minilm" (sentence embeddings).
    ``lambdas`` overrides entries of the method's loss weights (HQ: keys sim, h, b, q — Eq. 7 —
    and pair, a contrastive loss over the batch's own pairs added to it);
    ``hidden`` is the hidden-layer widths, a list for both towers or {"image": [...], "text":
    [...]}; ``dropout`` applies after each hidden layer while training. Defaults chosen from the
    inputs' shape: when a modality has at most LOW_DIM (16) input dimensions (e.g. a topic
    distribution), ``dropout`` None means 0.3 and HQ's λ_pair 1, otherwise 0 and 0.1. Adam (``lr``,
    ``weight_decay``) over ``epochs`` epochs of ``batch_size`` pairs (None: the method's
    defaults, DEFAULT_TRAIN otherwise), cosine-decayed unless ``cosine`` is False.
    ``val_fraction`` of the items (seeded) are held out: validation MAP@50 of the method's search
    (``candidates`` from Hamming for two-stage), averaged over windows of ``average_epochs``
    consecutive epochs (None: a tenth of ``epochs``, at least 1), picks the best window, whose
    tower weights are averaged into the model; training stops after ``patience`` epochs without
    a better window, but not before EARLY_STOP_FROM (3/4) of ``epochs``; ``val_fraction`` 0
    trains ``epochs`` epochs on everything. ``refit`` True
    then trains again on every item, held-out ones too, from the same initial weights for the
    chosen window's last epoch (same cosine schedule, the same window averaged); the stored
    validation figures stay the selection run's. None (default): refit up to REFIT_MAX_ITEMS
    (100,000) items.
    Codebooks: ``aq_rounds`` alternations per epoch (None: the method's default; 2 for hq),
    ``aq_iters`` ICM rounds per encode.
    ``threads``: torch threads (fixed so results do not depend on the machine's core count).

    Without ``labels`` the pairs are the supervision (docs/methods.md, "Training from pairs
    alone"): ``label_free`` "clusters" (default, every method) gives each item the pseudo-labels of
    its text's clusters (CLUSTER_RUNS seeded spherical k-means runs of ``clusters`` clusters,
    fitted on the training part; s_ij = 1 when most runs put i and j together, else 0; with an
    input of at most LOW_DIM dimensions s_ij = the fraction of runs that do) and trains as if
    supervised; "pairs" (hq, lossless, cq, chn, dcmh, cdq, c+d) uses only
    the pairing: s = I in each batch (HQ: a contrastive form of Eq. 3), validated by retrieving
    each validation item's own pair.

    Images (docs/python.md, "Images"): ``image_featurizer`` is a backbone, 'timm:NAME' or
    'open_clip:NAME' with a local ``weights`` file (``image_size`` pixels square), or a ready
    :class:`hqdb.model.images.ImageFeaturizer`; it is stored with the model and ``data``'s images
    (file paths, bytes, PIL images or image arrays) go through it. ``data`` may then be a folder
    of images with captions (``captions`` CSV ``file,caption,...``, default FOLDER/captions.csv,
    else sidecar ``photo.txt`` files). ``text_featurizer`` may also be 'open_clip:NAME', a CLIP
    text tower with ``text_weights`` (default ``weights`` when the image backbone is the same
    open_clip model), or a ready featurizer object.

    ``distributed``: None trains in this process; a :class:`hqdb.distributed.DDP` hook (in each
    process of a torch process group: Ray Train, torchrun) trains one model with
    DistributedDataParallel — see the "DDP hooks" note in :func:`_fit`."""
    import torch

    if method not in METHODS:
        raise TrainingError(f"unknown method {method!r} (available: {', '.join(METHODS)})")
    if method == "c+d":
        return _train_c_plus_d(
            data,
            bits=bits,
            books=books,
            codewords=codewords,
            text_key=text_key,
            image_key=image_key,
            val_fraction=val_fraction,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            lambdas=lambdas,
            hidden=hidden,
            dropout=dropout,
            cosine=cosine,
            patience=patience,
            average_epochs=average_epochs,
            refit=refit,
            aq_rounds=aq_rounds,
            aq_iters=aq_iters,
            candidates=candidates,
            text_featurizer=text_featurizer,
            vocab_size=vocab_size,
            threads=threads,
            progress=progress,
            label_free=label_free,
            clusters=clusters,
            image_featurizer=image_featurizer,
            weights=weights,
            image_size=image_size,
            captions=captions,
            text_weights=text_weights,
            distributed=distributed,
        )
    cls = method_class(method)
    if not isinstance(bits, int) or bits < 8 or bits % 8 or bits > MAX_BITS:
        raise TrainingError(f"bits must be a multiple of 8 in 8..{MAX_BITS}, got {bits!r}")
    if books is not None and cls.books(bits, None) == 0 and books != 0:
        raise TrainingError(f"method {method!r} has no quantizer (Hamming or float search): leave books unset")
    if (
        books is not None
        and (isinstance(books, bool) or not isinstance(books, int) or books < 1)
        and cls.books(bits, None)
    ):
        raise TrainingError(f"books must be an integer >= 1, got {books!r}")
    books = cls.books(bits, books)
    if not isinstance(codewords, int) or not 1 <= codewords <= 65536:
        raise TrainingError("books must be >= 1 and codewords in 1..65536")
    if not 0 <= val_fraction < 1:
        raise TrainingError("val_fraction must be in [0, 1)")
    if refit is not None and not isinstance(refit, bool):
        raise TrainingError(f"refit must be True, False or None (by data size), got {refit!r}")
    text_fz = _configured_text_featurizer(text_featurizer, text_weights, image_featurizer, weights, threads)
    if text_fz is None and text_featurizer not in FEATURIZERS:
        raise TrainingError(
            f"unknown text featurizer {text_featurizer!r} (known: {', '.join(FEATURIZERS)}, open_clip:NAME)"
        )
    lam = dict(cls.lambdas)
    if lambdas:
        unknown = set(lambdas) - set(lam)
        if unknown:
            raise TrainingError(f"unknown lambdas {sorted(unknown)} for {method} (known: {', '.join(lam)})")
        lam.update({k: float(v) for k, v in lambdas.items()})
    opt_cfg = {**DEFAULT_TRAIN, **cls.train_defaults}
    epochs = opt_cfg["epochs"] if epochs is None else epochs
    batch_size = opt_cfg["batch_size"] if batch_size is None else batch_size
    lr = opt_cfg["lr"] if lr is None else lr
    aq_rounds = opt_cfg["aq_rounds"] if aq_rounds is None else aq_rounds
    if average_epochs is None:  # a tenth of the epoch budget (5 of the default 50)
        average_epochs = max(1, epochs // 10) if isinstance(epochs, int) else 1
    if hidden is None:
        hidden = DEFAULT_HIDDEN
    if not isinstance(hidden, dict):
        hidden = {"image": list(hidden), "text": list(hidden)}
    if set(hidden) != {"image", "text"} or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for ws in hidden.values() for w in ws
    ):
        raise TrainingError(
            f"hidden must be a list of positive widths or {{'image': [...], 'text': [...]}}, got {hidden!r}"
        )
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("aq_rounds", aq_rounds),
        ("aq_iters", aq_iters),
        ("candidates", candidates),
        ("threads", threads),
        ("average_epochs", average_epochs),
    ):
        if not isinstance(value, int) or value < (0 if name in ("aq_rounds", "aq_iters") else 1):
            raise TrainingError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise TrainingError(f"lr must be positive, got {lr!r}")

    image_fz = _image_featurizer(image_featurizer, weights, image_size, threads)
    d = _load_folder(data, captions, image_fz, image_key, text_key) if _is_folder(data) else _load(data)
    for key in (image_key, text_key):
        if key not in d:
            raise TrainingError(
                f"data has no {key!r} (keys: {sorted(d)}): give image and text (or text_key=...), and labels if any"
            )
    if label_free not in ("clusters", "pairs"):
        raise TrainingError(f"label_free must be 'clusters' or 'pairs', got {label_free!r}")
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
        raise TrainingError(f"clusters must be an integer >= 2, got {clusters!r}")
    labels: np.ndarray | None = None
    supervision = "labels"
    if "labels" in d:
        try:
            labels = metrics.as_multihot(np.asarray(d["labels"]))
        except (TypeError, ValueError) as e:
            raise TrainingError(f"bad labels: {e}") from None
    elif label_free == "pairs":
        if not cls.label_free():
            raise TrainingError(
                f"method {method!r} cannot train from pairs alone (it predicts labels): give labels or "
                f"label_free='clusters'"
            )
        supervision = "pairs"
    else:
        supervision = f"text clusters ({clusters})"
    raw = {"image": d[image_key], "text": d[text_key]}
    n_items = len(labels) if labels is not None else len(raw["image"])
    for m, v in raw.items():
        if len(v) != n_items:
            what = "labels" if labels is not None else "images"
            raise TrainingError(f"{m!r} has {len(v)} items but there are {n_items} {what}")
    if n_items < 2:
        raise TrainingError("need at least 2 items to train")
    if refit is None:
        refit = n_items <= REFIT_MAX_ITEMS

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    n_val = int(round(val_fraction * n_items))
    if n_val < 1 or n_items - n_val < 1:
        n_val = 0
    val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    featurizers: dict = {"image": None, "text": None}
    X = {}
    for m, v in raw.items():
        if m == "image" and image_fz is not None:
            X[m] = _image_features(image_fz, v, progress)
            featurizers[m] = image_fz
        elif _is_text(v):
            texts = [str(t) for t in v]
            # fitted on the train part only
            fz = text_fz or make_featurizer(text_featurizer, vocab_size).fit([texts[i] for i in tr_idx])
            featurizers[m] = fz
            # strict=False: a training caption without a vocabulary word is harmless (a query or
            # an inserted item without one is refused: model.featurize uses the strict default).
            X[m] = fz.transform(texts, strict=False) if isinstance(fz, TfidfFeaturizer) else fz.transform(texts)
        else:
            x = np.asarray(v)
            if x.ndim != 2 or x.dtype.kind not in "fiu" or not np.isfinite(x).all():
                raise TrainingError(f"{m!r} must be a finite 2-D float array (or raw strings for text)")
            X[m] = np.ascontiguousarray(x, dtype=np.float32)
    low_dim = min(X[m].shape[1] for m in X) <= LOW_DIM  # defaults chosen from the inputs' shape
    if dropout is None:
        dropout = LOW_DIM_DROPOUT if low_dim else 0.0
    if low_dim:
        lam.update({k: v for k, v in LOW_DIM_LAMBDAS.items() if k in lam and k not in (lambdas or {})})
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise TrainingError(f"dropout must be a number in [0, 1), got {dropout!r}")
    label_runs = 1
    clustered = supervision.startswith("text clusters")  # pseudo-labels
    if clustered:
        runs = _text_clusters(X["text"], tr_idx, clusters, seed, runs=CLUSTER_RUNS)
        label_runs = runs.shape[1]
        # one one-hot block per clustering; s_ij = the fraction of clusterings that agree (inputs
        # wider than LOW_DIM: 1 when more than CLUSTER_AGREEMENT of them do, else 0)
        labels = np.concatenate([metrics.as_multihot(runs[:, r], clusters) for r in range(label_runs)], axis=1)

    def assemble(meth, towers, codebooks, extra) -> TrainedModel:
        """The numpy-only model of trained towers and codebooks, with this call's settings."""
        tensors = {"codebooks": codebooks} if books else {}
        tower_cfg = {}
        for m, tower in towers.items():
            tensors.update(_tower_tensors(m, tower))
            tower_cfg[m] = {
                "input_dim": int(X[m].shape[1]),
                "layers": [int(w) for w in hidden[m]] + [bits + meth.private()],
                "activation": "relu",
                "input_norm": "standardize",
                "output": meth.output,
            }
            if meth.private():
                tower_cfg[m]["private"] = meth.private()
        config = {
            "format": FORMAT,
            "method": method,
            "bits": bits,
            "books": books,
            "codewords": codewords,
            "metric": meth.metric,
            "search": meth.search,
            **{k: v for k, v in extra.items() if k == "epsilon"},
            "modalities": ["image", "text"],
            "data_keys": {"image": image_key, "text": text_key},
            "towers": tower_cfg,
            "featurizers": {m: (f.state() if f is not None else None) for m, f in featurizers.items()},
            "lambdas": lam,
            "supervision": supervision,
            "seed": seed,
            "aq_iters": aq_iters,
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "dropout": dropout,
                "cosine": cosine,
                "patience": patience,
                "average_epochs": average_epochs,
                "aq_rounds": aq_rounds,
                "val_fraction": val_fraction,
                "candidates": candidates,
                "threads": threads,
                "text_featurizer": text_featurizer,
                "vocab_size": vocab_size,
                "clusterings": label_runs if clustered else None,
                "refit": refit,
            },
        }
        return TrainedModel.from_state(config, tensors)

    t_start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fit_kw = dict(
                bits=bits,
                books=books,
                codewords=codewords,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                hidden=hidden,
                dropout=dropout,
                cosine=cosine,
                patience=patience,
                average_epochs=average_epochs,
                aq_rounds=aq_rounds,
                aq_iters=aq_iters,
                candidates=candidates,
                progress=progress,
                seed=seed,
                label_runs=label_runs,
                agreement=None if low_dim else CLUSTER_AGREEMENT,  # several clusterings: s_ij's rule
                distributed=distributed,
            )

            def method_object():
                meth = cls(bits, 0 if labels is None else labels.shape[1], lam)
                meth.sharp_pairs = low_dim and clustered
                return meth

            meth = method_object()
            towers, codebooks, history, extra = _fit(torch, meth, X, labels, tr_idx, val_idx, rng, **fit_kw)
            selection = None
            if refit and len(val_idx):
                # The hold-out chose the epoch; now every item trains, from the same initial
                # weights (same seed), for that many epochs of the same cosine schedule, and the
                # same window of epochs is averaged. Validation scores stay the selection run's.
                selection = assemble(meth, towers, codebooks, extra)
                torch.manual_seed(seed)
                meth = method_object()
                every = np.arange(n_items)
                towers, codebooks, refit_history, extra = _fit(
                    torch,
                    meth,
                    X,
                    labels,
                    every,
                    every[:0],
                    np.random.default_rng([seed, 7]),
                    **{**fit_kw, "stop_after": history["best_epoch"], "tail_window": history["window"]},
                )
                history["refit_curve"] = refit_history["curve"]
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    model = assemble(meth, towers, codebooks, extra)
    train_metrics = {
        "n_train": int(len(tr_idx)),
        "n_val": int(len(val_idx)),
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "train_seconds": round(time.perf_counter() - t_start, 3),
        **{k: round(v, 6) for k, v in extra.items() if k != "epsilon"},
    }
    if selection is not None:  # the kept model trained on every item, held-out ones too
        train_metrics["refit_items"] = int(n_items)
    if n_val:
        # Validation scores of the model as it will run (numpy inference, fresh quantization),
        # on the same bounded sample as the per-epoch validation (all of it on small data). After
        # a refit they are the selection run's: the kept model has seen the held-out items.
        judged = model if selection is None else selection
        q_rows, db_pos = _validation_sample(val_idx, len(tr_idx), labels is not None, seed)
        q = {m: X[m][q_rows] for m in X}
        if labels is not None:
            db_rows = tr_idx[db_pos]
            db = {m: X[m][db_rows] for m in X}
            train_metrics["validation"] = ranking.cross_modal(
                judged, q, db, labels[q_rows], labels[db_rows], candidates=candidates
            )
        else:  # label-free: each validation item's own pair among the validation items
            train_metrics["validation"] = ranking.cross_modal(judged, q, q, None, None, candidates=candidates)
        train_metrics["validation_sample"] = {"queries": int(len(q_rows)), "database": int(len(db_pos) or len(q_rows))}
    model.config["metrics"] = train_metrics
    model.config["history"] = history["curve"]  # per epoch: mean loss terms, validation MAP@50
    if "refit_curve" in history:  # the refit's epochs: mean loss terms (no validation)
        model.config["refit_history"] = history["refit_curve"]
    return model


# Text clusters of training without labels are fitted in the top LSA_DIM principal directions of
# a wider text (tf-idf): on inner splits of Wiki's database parts (8 clusters) MAP@all I→T / T→I
# 0.232 / 0.417 against 0.215 / 0.385 on the raw tf-idf (docs/methods.md).
LSA_DIM = 100
# Independent text clusterings behind the pseudo-labels (seeded k-means runs; each item gets one
# cluster per run, and s_ij = the fraction of runs that put i and j together). Inner splits of
# Wiki, 8 clusters, MAP@all I→T / T→I: 1 run 0.215 / 0.406, 5 runs 0.223 / 0.450, 10 0.218 /
# 0.446, 20 0.218 / 0.441 (docs/methods.md); one partition's arbitrary borders average out.
CLUSTER_RUNS = 5
# With inputs wider than LOW_DIM: s_ij = 1 when more than this share of the runs agree, else 0
# (None: the graded s above everywhere). Inputs of at most LOW_DIM dimensions always take the
# graded s. With refit, inner splits of Wiki (docs/methods.md), MAP@all I→T / T→I: tf-idf text,
# majority 0.257 / 0.526 against graded 0.240 / 0.512; 10-d LDA text 0.246 / 0.464 (one run
# stopped at epoch 7: T→I 0.381) against 0.247 / 0.501; synthetic_pairs a tie.
CLUSTER_AGREEMENT: float | None = 0.5


# Above this many values (fitted items x text dimensions) the principal directions come from a
# randomized SVD (memory ~ items x (LSA_DIM + 10)) instead of the exact one (items x dims twice).
EXACT_SVD_MAX = 20_000_000


def _top_directions(A: np.ndarray, r: int, rng: np.random.Generator, power: int = 4) -> np.ndarray:
    """The top ``r`` right singular vectors of A (r, A.shape[1]): exact SVD for a small A, else
    a seeded randomized range finder (Halko et al. 2011) with ``power`` re-orthonormalised power
    iterations and 10 extra columns."""
    r = min(r, *A.shape)
    if A.size <= EXACT_SVD_MAX:
        return np.linalg.svd(A, full_matrices=False)[2][:r]
    q = np.linalg.qr(A @ rng.standard_normal((A.shape[1], r + 10)))[0]
    for _ in range(power):
        q = np.linalg.qr(A @ np.linalg.qr(A.T @ q)[0])[0]
    return np.linalg.svd(q.T @ A, full_matrices=False)[2][:r]


def _text_clusters(
    T: np.ndarray, tr_idx: np.ndarray, k: int, seed: int, iters: int = 30, restarts: int = 4, runs: int = 1
) -> np.ndarray:
    """Pseudo-labels for training without labels: seeded spherical k-means (cosine; k-means++
    starts, the best of ``restarts`` by total cosine to the centres) on the text features of (a
    sample of at most 50,000) training items, every item assigned to its nearest centre. Text,
    not image: a caption or article says what the item is about (on Wiki, text clusters are
    65-70% pure against the real classes, SIFT image clusters ~20%). Text of more than LSA_DIM
    dimensions (tf-idf) is first centred and projected on its top LSA_DIM principal directions
    in the sample (latent semantic analysis: co-occurring words merge into one direction).
    Returns (items, runs) cluster ids: ``runs`` (at least 1) k-means runs in the same space, the
    first seeded as ever, the others apart."""
    rng = np.random.default_rng([seed, 11])
    fit = tr_idx if len(tr_idx) <= 50000 else np.sort(rng.choice(tr_idx, 50000, replace=False))
    if T.shape[1] > LSA_DIM:
        sample = T[fit].astype(np.float64)
        mean = sample.mean(0)
        sample -= mean
        vt = _top_directions(sample, LSA_DIM, rng)
        del sample
        X = np.concatenate([(T[s : s + 65536].astype(np.float64) - mean) @ vt.T for s in range(0, len(T), 65536)])
    else:
        X = T.astype(np.float64)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    Xf = X[fit]
    k = min(k, len(fit))
    rngs = [rng, *(np.random.default_rng([seed, 11, r]) for r in range(1, max(1, runs)))]
    return np.stack([_kmeans(X, Xf, k, g, iters, restarts) for g in rngs], axis=1)


def _kmeans(X: np.ndarray, Xf: np.ndarray, k: int, rng: np.random.Generator, iters: int, restarts: int) -> np.ndarray:
    """Spherical k-means of the unit rows Xf (k-means++ starts, best of ``restarts`` by total
    cosine); every row of X assigned to its nearest centre."""

    def nearest(A, C):
        sims = A @ C.T
        return sims.argmax(1), sims.max(1)

    best_C, best_obj = None, -np.inf
    for _ in range(restarts):
        C = np.empty((k, X.shape[1]))
        C[0] = Xf[rng.integers(len(Xf))]
        gap = 1.0 - Xf @ C[0]
        for j in range(1, k):  # k-means++: far points (in cosine distance) are likelier starts
            p = np.maximum(gap, 0)
            C[j] = Xf[rng.choice(len(Xf), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(Xf))]
            gap = np.minimum(gap, 1.0 - Xf @ C[j])
        for _ in range(iters):
            a, _ = nearest(Xf, C)
            for j in range(k):
                c = Xf[a == j].sum(0)
                norm = float(np.linalg.norm(c))
                if norm > 0:
                    C[j] = c / norm
        obj = float(nearest(Xf, C)[1].sum())
        if obj > best_obj:
            best_C, best_obj = C, obj
    assert best_C is not None
    return np.concatenate([nearest(X[s : s + 65536], best_C)[0] for s in range(0, len(X), 65536)])


def _tower_tensors(m: str, tower, prefix: str = "") -> dict[str, np.ndarray]:
    out = {f"{prefix}{m}.input_mean": tower.mean.numpy().copy(), f"{prefix}{m}.input_scale": tower.scale.numpy().copy()}
    for i, layer in enumerate(tower.layers):
        out[f"{prefix}{m}.layer{i}.weight"] = layer.weight.detach().numpy().copy()
        out[f"{prefix}{m}.layer{i}.bias"] = layer.bias.detach().numpy().copy()
    return out


def _train_c_plus_d(data, *, books, lambdas, **kw) -> TrainedModel:
    """The HQ paper's C+D baseline (its Figure 2): a DCMH and a CDQ trained separately on the
    same data and seed, merged into one model whose bit codes come from the DCMH towers (stored
    as ``hash.*`` towers) and whose search vectors and codebooks come from CDQ; two-stage search
    (DCMH Hamming prefilter, CDQ AQD re-rank). ``books`` defaults to 4 like HQ."""
    if lambdas:
        raise TrainingError("c+d trains dcmh and cdq with their own defaults; lambdas are not supported")
    t0 = time.perf_counter()
    dcmh = train(data, method="dcmh", **kw)
    cdq = train(data, method="cdq", books=4 if books is None else books, **kw)
    model = combine_c_plus_d(dcmh, cdq)
    model.config["metrics"]["train_seconds"] = round(time.perf_counter() - t0, 3)
    return model


def combine_c_plus_d(dcmh: TrainedModel, cdq: TrainedModel) -> TrainedModel:
    """One c+d model from a DCMH and a CDQ model of the same bits and inputs: bit codes from
    the DCMH towers (``hash.*``), search vectors and codebooks from CDQ."""
    config_h, tensors_h = dcmh.state()
    config, tensors = cdq.state()
    if config_h.get("method") != "dcmh" or config.get("method") != "cdq":
        raise TrainingError("combine_c_plus_d needs a dcmh model and a cdq model")
    if config_h["bits"] != config["bits"] or any(
        config_h["towers"][m]["input_dim"] != config["towers"][m]["input_dim"] for m in config["modalities"]
    ):
        raise TrainingError("the dcmh and cdq models must have the same bits and input dimensions")
    config = {k: v for k, v in config.items() if k not in ("metrics", "history")}
    config.update(
        method="c+d",
        search="two_stage",
        hash_towers=config_h["towers"],
        lambdas={"dcmh": config_h["lambdas"], "cdq": config["lambdas"]},
    )
    tensors = dict(tensors)
    for name, arr in tensors_h.items():
        if not name.startswith("codebooks"):
            tensors[f"hash.{name}"] = arr
    model = TrainedModel.from_state(config, tensors)
    mh, mc = config_h.get("metrics", {}), cdq.config.get("metrics", {})
    config["metrics"] = {
        "n_train": mc.get("n_train"),
        "n_val": mc.get("n_val"),
        "epochs_run": {"dcmh": mh.get("epochs_run"), "cdq": mc.get("epochs_run")},
        "best_epoch": {"dcmh": mh.get("best_epoch"), "cdq": mc.get("best_epoch")},
        "train_seconds": round(mh.get("train_seconds", 0) + mc.get("train_seconds", 0), 3),
    }
    config["history"] = {"dcmh": config_h.get("history"), "cdq": cdq.config.get("history")}
    return model


VALIDATION_KIND = {"two_stage": "two_stage", "hamming": "hamming", "aqd": "aqd", "float": "lossless"}


def _validation_sample(val_idx, n_tr, labeled, seed) -> tuple[np.ndarray, np.ndarray]:
    """(query rows of the data, database positions among the training items) for per-epoch
    validation: at most VAL_QUERIES queries and VAL_DATABASE items, seeded, so an epoch's
    validation costs the same at any data size. Label-free validation retrieves each query's own
    pair among the validation items themselves, so it needs no training-item database."""
    vrng = np.random.default_rng([seed, 7])  # its own stream: the batch order is unchanged
    q = val_idx if len(val_idx) <= VAL_QUERIES else np.sort(vrng.choice(val_idx, VAL_QUERIES, replace=False))
    if not labeled:
        return q, np.zeros(0, dtype=np.int64)
    db = np.arange(n_tr) if n_tr <= VAL_DATABASE else np.sort(vrng.choice(n_tr, VAL_DATABASE, replace=False))
    return q, db


def _fit(
    torch,
    meth,
    X,
    labels,
    tr_idx,
    val_idx,
    rng,
    *,
    bits,
    books,
    codewords,
    epochs,
    batch_size,
    lr,
    weight_decay,
    hidden,
    dropout,
    cosine,
    patience,
    average_epochs,
    aq_rounds,
    aq_iters,
    candidates,
    progress,
    seed,
    label_runs=1,
    distributed=None,
    stop_after=None,
    tail_window=1,
    agreement=None,
):
    # ``stop_after``: train only this many of the ``epochs`` (the schedule still spans all of
    # them); without validation the last ``tail_window`` epochs' tower weights are averaged.
    # ``agreement``: with several label blocks (clusterings), s_ij = 1 when more than this share
    # of them agree (None: s_ij = the share).
    # DDP hooks (``distributed``, hqdb/distributed/training.py; None: nothing changes). Every
    # rank holds the same data, split and seed, so the batches are the same everywhere; the hook
    # runs each rank's slice of a batch through the DDP-wrapped towers and all-gathers the
    # outputs, so the loss is the single process's over the whole batch. The non-gradient steps
    # (codebooks / ICM, DCMH's B, validation) run on rank 0 and are broadcast.
    from .hq import Tower, similarity

    mods = ("image", "text")
    labeled = labels is not None
    towers = {}
    for m in mods:
        mean, scale = _standardizer(X[m][tr_idx])
        towers[m] = Tower(X[m].shape[1], list(hidden[m]), bits + meth.private(), mean, scale, dropout)
    extras = meth.modules()
    params = [p for t in (*towers.values(), *extras) for p in t.parameters()]
    # foreach: one multi-tensor kernel per Adam step instead of one per parameter (1.7x faster
    # steps on the 2-core machine; the same update rule).
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    # Cosine decay over the epoch budget: big steps early, small ones to settle at the end.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)) if cosine else None
    Xt = {m: torch.from_numpy(X[m]) for m in mods}
    Lt = torch.from_numpy(labels.astype(np.float32)) if labeled else None
    tr_t = torch.from_numpy(tr_idx)
    n_tr = len(tr_idx)
    kind = VALIDATION_KIND[meth.search]
    q_rows, db_pos = _validation_sample(val_idx, n_tr, labeled, seed)
    # validation relevance: the labels, or of several text clusterings the first one's
    val_labels = labels[:, : labels.shape[1] // label_runs] if labeled else labels

    def search_vectors(idx) -> dict[str, np.ndarray]:
        """What the stored model will search with (TrainedModel.embed): the first ``bits``
        activated outputs, normalised for 'normalize' towers."""
        with torch.no_grad():
            out = {}
            for m in mods:
                parts = []
                for s in range(0, len(idx), 65536):  # bounded activations at any data size
                    v = meth.activate(towers[m](Xt[m][idx[s : s + 65536]]))[:, :bits]
                    if meth.output == "normalize":
                        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    parts.append(v.numpy())
                out[m] = np.concatenate(parts) if parts else np.zeros((0, bits), np.float32)
            return out

    def requantize(C, codes):
        f = search_vectors(tr_idx)
        if not books:
            return None, None, f
        recon = None if codes is None else aq.reconstruct(codes, C)
        t_img, t_txt = meth.quant_targets(
            f["image"], f["text"], None if recon is None else recon[:n_tr], None if recon is None else recon[n_tr:]
        )
        F = np.concatenate([t_img, t_txt])  # both modalities share the codebooks
        if C is None:
            C = raw_quantize.fit_codebooks(F, books, codewords, iters=4, seed=seed)
            codes = aq.encode(F, C, iters=aq_iters)
        for _ in range(aq_rounds):  # §4.3: alternate C (closed form) and b (exhaustive per book)
            C = meth.refine_codebooks(F, codes, aq.update_codebooks(F, codes, books, codewords, prev=C))
            codes = aq.encode(F, C, init=codes, iters=aq_iters)
        return C, codes, f

    def validate(C, codes, f_tr) -> tuple[float, float]:
        """MAP@50 of (I→T, T→I) with the method's search: validation queries against the training
        items (with labels), or against the validation items' other modality, relevant = the
        query's own pair (label-free)."""
        f_val = search_vectors(q_rows)
        maps = []
        for src, dst, off in (("image", "text", n_tr), ("text", "image", 0)):
            if labeled:
                db, db_codes = f_tr[dst][db_pos], None if codes is None else codes[off + db_pos]
            else:
                db = f_val[dst]
                db_codes = None if C is None else aq.encode(db, C, iters=aq_iters)
            R = VAL_R if labeled else 50
            top = ranking.top_rankings(
                f_val[src], db, db_codes, C, R=R or len(db), candidates=candidates, kind=kind, metric=meth.metric
            )
            if labeled:
                rel = metrics.relevance(val_labels[q_rows], val_labels[tr_idx[db_pos]], top)
            else:
                rel = top == np.arange(len(q_rows))[:, None]
            maps.append(metrics.mean_average_precision(rel, R or None))
        return maps[0], maps[1]

    if distributed is not None:  # DDP hook: wrap the towers; requantize / validate on rank 0
        distributed.wrap(towers, extras)
        requantize, validate = distributed.on_rank0(requantize), distributed.on_rank0(validate)
    C, codes, f_tr = requantize(None, None)
    meth.end_epoch(f_tr["image"], f_tr["text"])
    best: tuple[float, int, tuple | None] = (-1.0, 0, None)  # score, epoch, (tower states, C, codes)
    # Selection over a window of epochs: the mean validation score of the last ``average_epochs``
    # epochs picks the best window, whose tower weights are averaged (one noisy epoch can neither
    # win alone nor be the kept model).
    recent: collections.deque = collections.deque(maxlen=average_epochs)
    history: dict[str, Any] = {"epochs_run": 0, "best_epoch": 0, "window": 1, "curve": []}
    tail: collections.deque = collections.deque(maxlen=tail_window)  # no validation: the last epochs
    last_epoch = epochs if stop_after is None else min(epochs, stop_after)
    # the refit's own bar: "refit", over the epochs the selection run chose
    bar = _Progress(last_epoch, n_tr, progress, "train" if stop_after is None else "refit")
    stale = 0
    modules = [*towers.values(), *extras]
    eye = torch.eye(batch_size)

    def snapshot() -> dict:
        return {m: {k: v.clone() for k, v in t.state_dict().items()} for m, t in towers.items()}

    def averaged(snaps) -> dict:
        return {m: {k: torch.stack([s[m][k] for s in snaps]).mean(0) for k in snaps[0][m]} for m in snaps[0]}

    try:
        for epoch in range(1, last_epoch + 1):
            t_epoch = time.perf_counter()
            if books:
                recon = torch.from_numpy(aq.reconstruct(codes, C))
                q_img, q_txt = recon[:n_tr], recon[n_tr:]  # row r of each = training item tr_idx[r]
            perm = rng.permutation(n_tr)
            for t in modules:
                t.train()
            sums = {k: torch.zeros(()) for k in meth.terms}
            for s in range(0, n_tr, batch_size):
                pos = torch.from_numpy(perm[s : s + batch_size])
                items = tr_t[pos]
                if distributed is None:
                    f = meth.activate(towers["image"](Xt["image"][items]))
                    g = meth.activate(towers["text"](Xt["text"][items]))
                else:  # DDP hook: this rank's slice through the towers, the whole batch all-gathered
                    f, g = map(meth.activate, distributed.forward(Xt["image"][items], Xt["text"][items]))
                if Lt is not None:
                    lab = Lt[items]
                    if label_runs == 1:
                        sim = similarity(lab, lab)
                    else:  # one block per text clustering: s = the fraction of them that agree
                        sim = (lab @ lab.T) / label_runs
                        if agreement is not None:
                            sim = (sim > agreement).float()
                else:  # the pairs are the supervision: item i's image and text, nothing else
                    lab = None
                    sim = eye[: len(pos), : len(pos)]
                terms = meth.loss_terms(
                    f, g, sim, lab, q_img[pos] if books else None, q_txt[pos] if books else None, pos
                )
                loss = meth.total(terms)
                if not bool(torch.isfinite(loss)):
                    bad = [k for k in meth.terms if not bool(torch.isfinite(terms[k]))]
                    raise TrainingError(
                        f"training diverged in epoch {epoch}: loss term(s) {', '.join(bad) or 'total'} "
                        f"became NaN or infinite (lr={lr:g}); lower lr or rescale the input features"
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for k in sums:
                        sums[k] += terms[k].detach() * (len(pos) / n_tr)
                bar.advance(len(pos))
            if sched is not None:
                sched.step()
            for t in modules:
                t.eval()
            C, codes, f_tr = requantize(C, codes)
            meth.end_epoch(f_tr["image"], f_tr["text"])
            history["epochs_run"] = epoch
            info: dict[str, Any] = {k: float(v) for k, v in sums.items()}
            if len(val_idx):
                i2t, t2i = validate(C, codes, f_tr)
                score = metrics.harmonic_mean(i2t, t2i)  # the paper's balanced summary of both tasks
                info.update(val_i2t=i2t, val_t2i=t2i, val_hmean=score)
                snap = snapshot()
                recent.append((score, snap))
                window = float(np.mean([r[0] for r in recent]))
                if window > best[0]:
                    if len(recent) > 1:  # the window's weights averaged (re-quantized at the end)
                        snap = averaged([r[1] for r in recent])
                    best = (
                        window,
                        epoch,
                        (snap, None if C is None else C.copy(), None if codes is None else codes.copy()),
                    )
                    history["window"] = len(recent)
                    stale = 0
                else:
                    stale += 1
            elif tail_window > 1:
                tail.append(snapshot())
            seconds = time.perf_counter() - t_epoch
            history["curve"].append(
                {"epoch": epoch, **{k: round(v, 6) for k, v in info.items()}, "seconds": round(seconds, 3)}
            )
            bar.end_epoch(epoch, info)
            if len(val_idx) and stale >= patience and epoch >= EARLY_STOP_FROM * epochs:
                break
    finally:
        bar.close()
    if best[2] is not None:
        snap, C, codes = best[2]
        for m, t in towers.items():
            t.load_state_dict(snap[m])
        if history["window"] > 1:  # codebooks and codes for the averaged towers
            C, codes, f_tr = requantize(C, codes)
        history["best_epoch"] = best[1]
    else:
        history["best_epoch"] = history["epochs_run"]
        if len(tail) > 1:  # the last epochs' weights averaged, codebooks and codes for them
            last = averaged(tail)
            for m, t in towers.items():
                t.load_state_dict(last[m])
            C, codes, f_tr = requantize(C, codes)
    extra = meth.finish(C, codes, n_tr) if books else {}
    return towers, None if C is None else C.astype(np.float32), history, extra
