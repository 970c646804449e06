#!/usr/bin/env python
"""Hybrid search on Wiki: codes vs keywords (FTS5 bm25) vs their reciprocal-rank fusion, on unseen queries.

    python bench/hybrid.py                          # folds 0 1 x seeds 0 1 → section of bench/QUALITY.md
    python bench/hybrid.py --folds 0 --seeds 0      # one run

What the keyword side is. ``wiki_train.npz`` has no raw text: only tf-idf vectors over a
1,000-word vocabulary that is not shipped. Each item's *pseudo-document* is therefore its
``--words`` (20) highest-weighted word ids written as tokens (``w17 w503 ...``; every item has at
least 20 non-zero words), stored in a TEXT column with a keyword index (``fts='words'``); a
query's keywords are its own pseudo-document. So the keyword search is bm25 over bags of word
ids — a stand-in for real text search that keeps only the query's strongest words, not a
measurement of keyword search on real captions.

Protocol (as bench/quality_folds.py): for each seed, ``default_rng(seed).permutation`` of the
2,173 rows cut into 5 folds; fold f's rows are the unseen text queries, the other 80% the
database. HQ-64 (labels, tf-idf text, default epochs) is trained on the database part alone; the
queries serve for nothing but these scores. Every ranking comes from the real path: a collection
in an SQLite file (``create_collection(..., fts='words')``, ``insert_all``), searched with
``search_many(text=..., k=N)`` (codes), ``search_many(keywords=..., k=N)`` and
``search_many(text=..., keywords=..., hybrid=True, k=N, depth=N)``. Relevant = same class;
MAP@all over the whole database and MAP@50; a keyword ranking holds only the items sharing a word
with the query, and the rest follow in rowid order (stated in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quality_folds import folds  # noqa: E402
from sections import replace_section  # noqa: E402

DATA = HERE.parents[1] / "shared/data/wiki/wiki_train.npz"
ROWS = {
    "codes_t2i": "codes: text → image (the default target)",
    "codes_t2t": "codes: text → text",
    "keywords": "keywords: FTS5 bm25 over pseudo-documents (unmatched items after, rowid order)",
    "hybrid_t2i": "hybrid: RRF(codes text → image, keywords), k0 = 60",
    "hybrid_t2t": "hybrid: RRF(codes text → text, keywords), k0 = 60",
    "hybrid_t2i_k50": "hybrid as a user runs it: text → image, k = 50, default depth 500 (MAP@50 only)",
}


def pseudo_docs(tfidf: np.ndarray, m: int) -> list[str]:
    """Each row's ``m`` highest-weighted word ids as tokens, strongest first (ties: lower id)."""
    order = np.argsort(-tfidf, axis=1, kind="stable")[:, :m]
    return [" ".join(f"w{j}" for j in row if tfidf[i, j] > 0) for i, row in enumerate(order)]


def ranking(hits_list, n: int) -> np.ndarray:
    """(Q, n) database indices: each query's hits (rowid - 1), then the items not hit in rowid order."""
    out = np.empty((len(hits_list), n), dtype=np.int64)
    for q, hits in enumerate(hits_list):
        got = [h.rowid - 1 for h in hits]
        seen = np.zeros(n, bool)
        seen[got] = True
        out[q] = np.concatenate([np.array(got, dtype=np.int64), np.flatnonzero(~seen)])
    return out


def run_one(d: dict, docs: list[str], qi: np.ndarray, dbi: np.ndarray, seed: int, k0: float) -> dict:
    import hqdb
    from hqdb import metrics
    from hqdb.model.train import train

    t0 = time.perf_counter()
    model = train(
        {"image": d["image"][dbi], "text": d["text_tfidf"][dbi], "labels": d["labels"][dbi]},
        bits=64,
        seed=seed,
        progress=False,
    )
    train_s = time.perf_counter() - t0
    n = len(dbi)
    with tempfile.TemporaryDirectory() as tmp, hqdb.connect(os.path.join(tmp, "wiki.db")) as db:
        hqdb.save_model(db, "hq64", model)
        coll = db.create_collection("wiki", model="hq64", columns={"words": str, "label": int}, fts="words")
        coll.insert_all(
            {
                "rowid": j + 1,
                "image": d["image"][i],
                "text": d["text_tfidf"][i],
                "words": docs[i],
                "label": int(d["labels"][i].argmax()),
            }
            for j, i in enumerate(dbi)
        )
        qtext = d["text_tfidf"][qi]
        qwords = [docs[i] for i in qi]
        lists = {
            "codes_t2i": coll.search_many(text=qtext, k=n),
            "codes_t2t": coll.search_many(text=qtext, target="text", k=n),
            "keywords": coll.search_many(keywords=qwords, k=n),
            "hybrid_t2i": coll.search_many(text=qtext, keywords=qwords, hybrid=True, k=n, depth=n, k0=k0),
            "hybrid_t2t": coll.search_many(
                text=qtext, target="text", keywords=qwords, hybrid=True, k=n, depth=n, k0=k0
            ),
            "hybrid_t2i_k50": coll.search_many(text=qtext, keywords=qwords, hybrid=True, k=50, k0=k0),
        }
        # Latency as a user runs it: one query at a time, k = 10, default depth and candidates.
        ms = {}
        sample = range(min(100, len(qi)))
        for name, call in (
            ("codes_t2i", lambda j: coll.search(text=qtext[j], k=10)),
            ("keywords", lambda j: coll.search(keywords=qwords[j], k=10)),
            ("hybrid_t2i", lambda j: coll.search(text=qtext[j], keywords=qwords[j], hybrid=True, k=10)),
        ):
            t1 = time.perf_counter()
            for j in sample:
                call(j)
            ms[name] = (time.perf_counter() - t1) * 1000 / len(sample)
    out: dict = {"train_s": train_s, "ms": ms}
    for name, hits in lists.items():
        rel = metrics.relevance(d["labels"][qi], d["labels"][dbi], ranking(hits, n))
        full = name != "hybrid_t2i_k50"  # a k = 50 list has no MAP@all
        out[name] = {
            "map_all": metrics.mean_average_precision(rel) if full else float("nan"),
            "map50": metrics.mean_average_precision(rel, 50),
        }
    out["keyword_coverage"] = float(np.mean([len(h) for h in lists["keywords"]]) / n)
    return out


def section(results: list[dict], args, seconds: float) -> list[str]:
    def cell(name, key):
        a = np.array([r[name][key] for r in results])
        return "—" if np.isnan(a).any() else f"{a.mean():.3f} ± {a.std():.3f}"

    cov = np.mean([r["keyword_coverage"] for r in results])
    lines = [
        "## Hybrid search (bench/hybrid.py)",
        "",
        f"- Command: `{args.command}`; {seconds:.0f} s on the shared "
        f"2-core machine; folds {args.folds} of 5 × seeds {args.seeds} ({len(results)} runs), mean ± sd.",
        "- Unseen text queries (a fold), the other 80% the database; HQ-64 (labels, tf-idf text, default epochs) "
        "trained on the database part only. Rankings through a real collection in an SQLite file "
        "(`search_many`, k = all, hybrid `depth` = all). Relevant = same class.",
        f"- **The keyword side is a stand-in**: Wiki ships tf-idf vectors without their vocabulary or text, so each "
        f"item's text column holds its {args.words} highest tf-idf word ids as tokens (`w17 w503 ...`) and a query's "
        f"keywords are its own {args.words} (FTS5 `unicode61`, bm25, any word matches). A keyword ranking reaches "
        f"{cov:.0%} of the database on average; the items it misses follow in rowid order for MAP@all.",
        "",
        "| ranking | MAP@all | MAP@50 |",
        "|---|---:|---:|",
    ]
    for name, label in ROWS.items():
        lines.append(f"| {label} | {cell(name, 'map_all')} | {cell(name, 'map50')} |")
    ms = {k: np.mean([r["ms"][k] for r in results]) for k in results[0]["ms"]}

    def delta(a, b, key):
        x = np.array([r[a][key] - r[b][key] for r in results])
        return f"{x.mean():+.3f} ± {x.std():.3f}"

    lines += [
        "",
        "- Paired differences per run, hybrid − codes (text → image): MAP@all "
        f"{delta('hybrid_t2i', 'codes_t2i', 'map_all')}, MAP@50 {delta('hybrid_t2i', 'codes_t2i', 'map50')}; "
        "(text → text): MAP@all "
        f"{delta('hybrid_t2t', 'codes_t2t', 'map_all')}, MAP@50 {delta('hybrid_t2t', 'codes_t2t', 'map50')}; "
        f"at the default depth (k = 50): MAP@50 {delta('hybrid_t2i_k50', 'codes_t2i', 'map50')}. "
        "RRF gives the keyword list the same weight as the code list; where the keywords alone are this much weaker "
        "than the codes (as with these pseudo-documents), fusion is no better than the codes and pulls MAP@all "
        "down. What it adds with real text (names and rare words a code does not keep) this data cannot show.",
        f"- One query at a time, k = 10 (default depth max(100, 10·k), default candidates), {len(results[0]['ms'])} "
        f"kinds × 100 queries: codes {ms['codes_t2i']:.2f} ms, keywords {ms['keywords']:.2f} ms, hybrid "
        f"{ms['hybrid_t2i']:.2f} ms per query (mean over runs). Training: "
        f"{np.mean([r['train_s'] for r in results]):.0f} s per run.",
    ]
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--words", type=int, default=20, help="word ids per pseudo-document")
    ap.add_argument("--k0", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=HERE / "QUALITY.md")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache" / "hybrid.json")
    ap.add_argument(
        "--render",
        type=float,
        metavar="SECONDS",
        help="rewrite the section from --cache (no runs), given the runs' time",
    )
    args = ap.parse_args(argv)
    args.command = " ".join(["python bench/hybrid.py", *(argv if argv is not None else sys.argv[1:])])
    if args.render is not None:  # the cache holds the runs and the command that made them
        cached = json.loads(args.cache.read_text())
        results = cached["runs"] if isinstance(cached, dict) else cached
        args.command = (
            cached.get("command", "python bench/hybrid.py") if isinstance(cached, dict) else ("python bench/hybrid.py")
        )
        args.folds = sorted({r["fold"] for r in results})
        args.seeds = sorted({r["seed"] for r in results})
        replace_section(args.out, "hybrid.py", section(results, args, args.render))
        return
    if not DATA.exists():
        sys.exit(f"hybrid.py: data not found at {DATA}")
    with np.load(DATA, allow_pickle=False) as z:
        d = {k: z[k] for k in ("image", "text_tfidf", "labels")}
    docs = pseudo_docs(d["text_tfidf"], args.words)
    t0 = time.perf_counter()
    results = []
    for seed in args.seeds:
        parts = folds(len(d["labels"]), seed)
        for f in args.folds:
            qi = parts[f]
            dbi = np.setdiff1d(np.arange(len(d["labels"])), qi)
            r = run_one(d, docs, qi, dbi, seed, args.k0)
            r.update(seed=seed, fold=f)
            results.append(r)
            print(
                f"seed {seed} fold {f}: "
                + " ".join(f"{k} {r[k]['map_all']:.3f}/{r[k]['map50']:.3f}" for k in ROWS)
                + f" ({r['train_s']:.0f} s train)",
                flush=True,
            )
    args.cache.parent.mkdir(exist_ok=True)
    args.cache.write_text(json.dumps({"command": args.command, "runs": results}, indent=1))
    replace_section(args.out, "hybrid.py", section(results, args, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
