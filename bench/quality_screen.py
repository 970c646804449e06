#!/usr/bin/env python
"""Screen training settings on inner splits of the database part only (never the outer queries).

    python bench/quality_screen.py --configs base ema99 --folds 0 1 --seeds 0 1

For outer seed s and fold f (bench/quality_folds.py's cut), the database part (80% of
wiki_train.npz) is cut again, seeded by (s, f): 20% inner queries, 80% inner database. The model
is trained on the inner database alone (hqdb.train carves its own early-stopping split from it)
and scored by MAP@all of its two-stage search, inner queries against the inner database.
Prints one line per run and mean ± sd per config; appends JSON lines to bench/.cache/screen.jsonl.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from quality_folds import DATA, folds  # noqa: E402

# name: (text key, input transforms {modality: fn name}, train kwargs)
CONFIGS: dict[str, tuple[str, dict, dict]] = {}
for key, tag in (("text_tfidf", ""), ("text", "lda_")):
    CONFIGS.update(
        {
            f"{tag}base": (key, {}, {}),
            f"{tag}ema99": (key, {}, {"ema": 0.99}),
            f"{tag}ema995": (key, {}, {"ema": 0.995}),
            f"{tag}sqrt_img": (key, {"image": "sqrt"}, {}),
            f"{tag}sqrt_both": (key, {"image": "sqrt", "text": "sqrt"}, {}),
            f"{tag}drop3": (key, {}, {"dropout": 0.3}),
            f"{tag}wd1e3": (key, {}, {"weight_decay": 1e-3}),
            f"{tag}log_text": (key, {"text": "log"}, {}),
        }
    )


def lsa(x: np.ndarray, dim: int, fit: np.ndarray | None = None) -> np.ndarray:
    """x centred and projected on the top ``dim`` principal directions of its rows ``fit`` (all by
    default), by an exact SVD."""
    f = x if fit is None else x[fit]
    mean = f.mean(0)
    return (x - mean) @ np.linalg.svd(f - mean, full_matrices=False)[2][:dim].T


def transform(x: np.ndarray, kind: str | None, fit: np.ndarray | None = None) -> np.ndarray:
    """An input transform; 'lsaD' projects on the top D principal directions of the rows ``fit``
    (the inner database: never the queries)."""
    if kind is None:
        return x
    if kind.startswith("lsa") and fit is not None:
        return lsa(x, int(kind[3:]), fit).astype(np.float32)
    if kind == "sqrt":
        return np.sqrt(np.maximum(x, 0)).astype(np.float32)
    if kind == "log":
        return np.log(np.maximum(x, 0) + 1e-3).astype(np.float32)
    raise ValueError(kind)


def parse(name: str) -> tuple[str, dict, dict]:
    """A config name from CONFIGS, or base+key=value,... (e.g. 'lda_base+ema=0.99,tx=sqrt';
    'base+free=1,clusters=10' trains without labels, lsa=D clusters its text in D directions,
    ti= / tt= transform the image / text input (sqrt, log, lsaD), hi= / ht= set a tower's hidden
    widths (e.g. 1024, 512x512, lin), tau= sets HQ.temperature, ltau= HQ.pair_temperature
    (λ_pair's), agree=t sets CLUSTER_AGREEMENT, esf=x EARLY_STOP_FROM, runs=R trains on R
    text clusterings at once)."""
    if name in CONFIGS:
        return CONFIGS[name]
    base, _, extra = name.partition("+")
    key, tf, kw = CONFIGS[base]
    tf, kw = dict(tf), dict(kw)
    for item in filter(None, extra.split(",")):
        k, v = item.split("=")
        if k in ("ti", "tt"):
            tf["image" if k == "ti" else "text"] = v
        elif k in ("hi", "ht"):
            h = dict(kw.get("hidden", {"image": [512], "text": [512]}))
            h["image" if k == "hi" else "text"] = [int(w) for w in v.split("x")] if v != "lin" else []
            kw["hidden"] = h
        elif k == "smooth":
            kw["_smooth"] = json.loads(v)
        elif k == "pair":
            kw["lambdas"] = {**kw.get("lambdas", {}), "pair": json.loads(v)}
        elif k == "sel":
            kw["_sel"] = v
        elif k == "val_r":
            kw["_val_r"] = json.loads(v)
        elif k == "free":
            kw["_free"] = json.loads(v)
        elif k in ("tau", "ltau", "lsa", "runs", "agree", "esf"):
            kw["_" + k] = json.loads(v)
        elif k == "hidden":
            kw["hidden"] = [int(w) for w in v.split("x")]
        else:
            kw[k] = json.loads(v)
    return key, tf, kw


def inner_split(n: int, seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner queries, inner database): the database part of outer fold ``fold`` of seed ``seed``
    (quality_folds.folds) cut again, seeded by (seed, fold): 20% and 80%, sorted."""
    qi = folds(n, seed)[fold]
    perm = np.random.default_rng([seed, fold, 99]).permutation(np.setdiff1d(np.arange(n), qi))
    n_q = len(perm) // 5
    return np.sort(perm[:n_q]), np.sort(perm[n_q:])


@functools.cache
def library_defaults() -> dict:
    """The trainer's settings a config may override, as the library has them (read before the
    first run changes any)."""
    import hqdb.model.train as T
    from hqdb.model import hq

    return {
        "val_r": T.VAL_R,
        "tau": hq.HQ.temperature,
        "ltau": hq.HQ.pair_temperature,
        "lsa": T.LSA_DIM,
        "runs": T.CLUSTER_RUNS,
        "agree": T.CLUSTER_AGREEMENT,
        "esf": T.EARLY_STOP_FROM,
    }


def run(name, d, seed, fold):
    import hqdb.model.train as T
    from hqdb.model import ranking
    from hqdb.model.train import train

    key, tf, kw = parse(name)
    kw = dict(kw)
    default = library_defaults()
    T.VAL_R = kw.pop("_val_r", default["val_r"])
    from hqdb import metrics
    from hqdb.model import hq

    sel = kw.pop("_sel", "hmean")
    metrics.harmonic_mean = {
        "hmean": lambda a, b: 2 * a * b / (a + b) if a + b > 0 else 0.0,
        "mean": lambda a, b: (a + b) / 2,
        "i2t": lambda a, b: a,
    }[sel]
    eps = kw.pop("_smooth", 0.0)
    hq.similarity = lambda a, b: ((a.float() @ b.float().T) > 0).float() * (1 - 2 * eps) + eps
    iq, idb = inner_split(len(d["labels"]), seed, fold)
    X = {"image": transform(d["image"], tf.get("image"), idb), "text": transform(d[key], tf.get("text"), idb)}
    q = {m: X[m][iq] for m in X}
    db = {m: X[m][idb] for m in X}
    t0 = time.perf_counter()
    hq.HQ.temperature = kw.pop("_tau", default["tau"])  # label-free: of L_sim; of λ_pair when sharp_pairs
    hq.HQ.pair_temperature = kw.pop("_ltau", default["ltau"])  # of λ_pair otherwise
    T.LSA_DIM = kw.pop("_lsa", default["lsa"])  # text clusters (no labels) in this many principal directions
    T.CLUSTER_RUNS = kw.pop("_runs", default["runs"])  # independent text clusterings behind the pseudo-labels
    T.CLUSTER_AGREEMENT = kw.pop("_agree", default["agree"])  # s_ij = 1 above this share of agreeing runs
    T.EARLY_STOP_FROM = kw.pop("_esf", default["esf"])  # no early stop before this share of the epochs
    free = kw.pop("_free", False)  # label-free: train on the pairs alone (scored with the labels)
    model = train(db if free else {**db, "labels": d["labels"][idb]}, bits=64, seed=seed, progress=False, **kw)
    secs = time.perf_counter() - t0
    res = ranking.cross_modal(model, q, db, d["labels"][iq], d["labels"][idb], kinds=("two_stage",))
    return {
        "config": name,
        "seed": seed,
        "fold": fold,
        "i2t": res["i2t"]["two_stage"]["map@all"],
        "t2i": res["t2i"]["two_stage"]["map@all"],
        "best_epoch": model.config["metrics"]["best_epoch"],
        "seconds": round(secs, 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args(argv)
    with np.load(DATA, allow_pickle=False) as z:
        d = {k: z[k] for k in ("image", "text", "text_tfidf", "labels")}
    log = HERE / ".cache" / "screen.jsonl"
    log.parent.mkdir(exist_ok=True)
    for name in args.configs:
        rs = []
        for seed in args.seeds:
            for fold in args.folds:
                r = run(name, d, seed, fold)
                rs.append(r)
                with log.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)
        a = np.array([[r["i2t"], r["t2i"]] for r in rs])
        print(
            f"== {name}: I→T {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f}  T→I {a[:, 1].mean():.3f} ± "
            f"{a[:, 1].std():.3f}  min {a.min(0).round(3).tolist()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
