#!/usr/bin/env python
"""Generalisation on unseen queries: HQ (supervised and label-free) over folds and seeds of Wiki.

    python bench/quality_folds.py                       # 5 folds x seeds 0 1 2 → section of bench/QUALITY.md
    python bench/quality_folds.py --folds 0 1 --seeds 0 # a quick subset
    python bench/quality_folds.py --rows hq_tfidf hq_free_clusters

Protocol: for each seed s, ``numpy.random.default_rng(s).permutation`` of the 2,173 rows of
``wiki_train.npz`` is cut into 5 folds; fold f's rows are the *unseen queries*, the other 80% the
database. Every model and reference is fitted on the database part only (hqdb.train carves its own
seeded validation split from it for early stopping); the queries are used for nothing but the
reported scores, and no default was chosen on them (docs/methods.md says how defaults were
chosen: on the inner validation split). Rankings in numpy (:mod:`hqdb.model.ranking`, the model's
own two-stage search, αN = 100; the SQL path gives the same rankings, bench/quality.py), MAP@all
from :mod:`hqdb.metrics`, relevant = same class. Each cell: mean ± sd over the folds × seeds.

Rows: ``hq_tfidf`` (labels, ``text_tfidf``), ``hq_lda`` (labels, the default ``text`` key: what
``hqdb train wiki_train.npz`` trains), ``hq_free_clusters`` / ``hq_free_pairs`` (no labels:
text-cluster pseudo-labels / contrastive pairs, tf-idf), ``cca_tfidf`` / ``cca_lda`` (the 10-d
CCA references of bench/references.py).
"""

from __future__ import annotations

import argparse
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

import references as R  # noqa: E402
from sections import replace_section  # noqa: E402

DATA = HERE.parents[1] / "shared/data/wiki/wiki_train.npz"
ROWS = {
    "hq_tfidf": ("HQ-64 two-stage, labels, tf-idf text", "text_tfidf", {}),
    "hq_lda": ("HQ-64 two-stage, labels, LDA `text` (the default command)", "text", {}),
    "hq_free_clusters": (
        "HQ-64 two-stage, **no labels** (text clusters), tf-idf",
        "text_tfidf",
        {"label_free": "clusters"},
    ),
    "hq_free_pairs": (
        "HQ-64 two-stage, **no labels** (pairs, contrastive), tf-idf",
        "text_tfidf",
        {"label_free": "pairs"},
    ),
    "cca_tfidf": ("CCA 10-d (unsupervised), tf-idf", "text_tfidf", None),
    "cca_lda": ("CCA 10-d (unsupervised), LDA `text`", "text", None),
}


def folds(n: int, seed: int, k: int = 5) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[f * n // k : (f + 1) * n // k]) for f in range(k)]


def run_one(row: str, d: dict, qi: np.ndarray, dbi: np.ndarray, seed: int) -> dict:
    from hqdb.model import ranking
    from hqdb.model.train import train

    _, text_key, opts = ROWS[row]
    q = {"image": d["image"][qi], "text": d[text_key][qi]}
    db = {"image": d["image"][dbi], "text": d[text_key][dbi]}
    t0 = time.perf_counter()
    if opts is None:  # CCA reference
        fam = R.CCAFamily({"image": db["image"], text_key: db["text"]}, text_key, [10], seed)
        res, _ = fam.cosine(
            {"image": q["image"], text_key: q["text"], "labels": d["labels"][qi]},
            {"image": db["image"], text_key: db["text"], "labels": d["labels"][dbi]},
            10,
        )
        return {"i2t": res["i2t"]["map@all"], "t2i": res["t2i"]["map@all"], "seconds": time.perf_counter() - t0}
    data = dict(db)
    if "label_free" not in opts:
        data["labels"] = d["labels"][dbi]
    model = train(data, bits=64, seed=seed, progress=False, **opts)
    secs = time.perf_counter() - t0
    res = ranking.cross_modal(model, q, db, d["labels"][qi], d["labels"][dbi], kinds=("two_stage",))
    return {
        "i2t": res["i2t"]["two_stage"]["map@all"],
        "t2i": res["t2i"]["two_stage"]["map@all"],
        "seconds": secs,
        "epochs": model.config["metrics"]["epochs_run"],
    }


def section(results: dict, args, seconds: float, argv: list[str]) -> list[str]:
    lines = [
        "## Unseen queries: folds × seeds (bench/quality_folds.py)",
        "",
        f"- Command: `python bench/quality_folds.py {' '.join(argv)}`".rstrip()
        + f"; {seconds:.0f} s {'of training and scoring, summed over the runs, ' if args.merge else ''}"
        f"on the shared 2-core machine; folds {args.folds} of 5, seeds {args.seeds}.",
        "- Each seed cuts `wiki_train.npz` into 5 folds; a fold is the unseen queries, the other 80% the database "
        "(models trained on it alone). MAP@all of the model's own search (two-stage, αN = 100), numpy rankings; "
        "mean ± sd over folds × seeds, then the worst seed's mean (targets are per seed).",
        "",
        "| row | I→T MAP@all | T→I MAP@all | worst seed I→T / T→I | runs | train s (mean) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row, runs in sorted(results.items(), key=lambda item: list(ROWS).index(item[0])):
        if not runs:
            continue
        a = np.array([[r["i2t"], r["t2i"]] for r in runs])
        by_seed = {}
        for r in runs:
            by_seed.setdefault(r["seed"], []).append([r["i2t"], r["t2i"]])
        worst = np.min([np.mean(v, axis=0) for v in by_seed.values()], axis=0)
        lines.append(
            f"| {ROWS[row][0]} | {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} | {a[:, 1].mean():.3f} ± "
            f"{a[:, 1].std():.3f} | {worst[0]:.3f} / {worst[1]:.3f} | {len(runs)} | "
            f"{np.mean([r['seconds'] for r in runs]):.0f} |"
        )
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--out", type=Path, default=HERE / "QUALITY.md")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache" / "quality_folds.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="write the section from these caches of earlier runs (e.g. one per seed, run in parallel)",
    )
    args = ap.parse_args(argv)
    if args.merge:
        results: dict = {}
        for path in args.merge:
            for row, runs in json.loads(path.read_text()).items():
                results.setdefault(row, []).extend(runs)
        args.folds = sorted({r["fold"] for runs in results.values() for r in runs})
        args.seeds = sorted({r["seed"] for runs in results.values() for r in runs})
        secs = sum(r["seconds"] for runs in results.values() for r in runs)
        groups = sorted({(r["seed"], row) for row, runs in results.items() for r in runs})
        by_seed: dict = {}
        for seed, row in groups:
            by_seed.setdefault(seed, []).append(row)
        runs_text = "`; `".join(
            f"python bench/quality_folds.py --seeds {seed} --rows {' '.join(rows)} --cache …"
            for seed, rows in by_seed.items()
        )
        shown = [f"--merge …` of the caches of `{runs_text}"]
        replace_section(args.out, "quality_folds.py", section(results, args, secs, shown))
        return
    if not DATA.exists():
        sys.exit(f"quality_folds.py: data not found at {DATA}")
    with np.load(DATA, allow_pickle=False) as z:
        d = {k: z[k] for k in ("image", "text", "text_tfidf", "labels")}
    t0 = time.perf_counter()
    results: dict = {r: [] for r in args.rows}
    for seed in args.seeds:
        parts = folds(len(d["labels"]), seed)
        for f in args.folds:
            qi = parts[f]
            dbi = np.setdiff1d(np.arange(len(d["labels"])), qi)
            for row in args.rows:
                r = run_one(row, d, qi, dbi, seed)
                r.update(seed=seed, fold=f)
                results[row].append(r)
                print(
                    f"{row} seed {seed} fold {f}: I→T {r['i2t']:.3f} T→I {r['t2i']:.3f} ({r['seconds']:.0f} s)",
                    flush=True,
                )
    args.cache.parent.mkdir(exist_ok=True)
    args.cache.write_text(json.dumps(results, indent=1))
    shown = [a for a in argv if not a.startswith("--out") and "/" not in a]
    replace_section(args.out, "quality_folds.py", section(results, args, time.perf_counter() - t0, shown))


if __name__ == "__main__":
    main()
