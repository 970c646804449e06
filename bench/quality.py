#!/usr/bin/env python
"""Cross-modal retrieval quality of HQ and the other methods on Wikipedia, through hqdb's SQL path,
against references.

    python bench/quality.py                      # bits 16 32 64 128, all methods → bench/QUALITY.md,
                                                 #   bench/quality_alpha.png, bench/quality_bytes.png
    python bench/quality.py --methods hq cq      # a subset of the methods (hq always runs)
    python bench/quality.py --quick              # 64 bits, one timing pass → bench/.cache/quick/
    python bench/quality.py --bits 32 64 --seed 0 --out /tmp/q
    python bench/quality.py --folds              # skip the folds × seeds protocol (keep its section)

It then runs bench/quality_folds.py (5 folds × seeds 0 1 2: HQ supervised and label-free, the
default LDA command, CCA; mean ± sd on unseen queries) into its section of the same report, and
keeps the sections other scripts own (bench/train_scale.py's training time vs data size and its
plot, and any section after them).

Protocol
--------
``../shared/data/wiki/wiki_train.npz`` (2,173 image/text pairs, 10 classes; the official training
split of the Wikipedia benchmark). A seeded permutation (``--seed``, default 0) puts 20% of the rows
(435) aside as queries and 80% (1,738) as the retrieval database. Every model and reference is
fitted on the database part only; queries are never seen. I→T: image queries against the text of
the database items; T→I: text queries against their images. An item is relevant when it shares the
query's class. MAP@all, MAP@50 and P@10 come from :mod:`hqdb.metrics` (the project's one
implementation); ties are broken by database index ascending everywhere.

HQ rows: ``hqdb.train(database, bits=b, books=4, codewords=256, text_key="text_tfidf", seed)``,
stored with ``hqdb.save_model`` and scored by ``hqdb.evaluate.evaluate`` (every query runs as SQL on
a model-bound table; ``candidates`` = αN = 100 as in the paper). References: ``bench/references.py``.

Figure 4 (64 bits): MAP@50 and per-query time through SQL (k = 50) against α = candidates / N,
α = 0 being ``mode = 'hamming'`` and α = 1 ``mode = 'aqd'``.

Method comparison (the HQ paper's Table 2, plus CQ, SPDQ, CHN): every method of
``hqdb.model.train.METHODS`` at every code length, trained on the database part with its
defaults (``hqdb.train(database, method=m, bits=b, text_key="text_tfidf", seed)``; c+d merges the
dcmh row's model with a CDQ of 4 books, ``combine_c_plus_d``), stored and scored through SQL by
``hqdb.evaluate.evaluate`` with the method's own search (two-stage, Hamming, AQD; lossless: float
cosine in numpy). Bytes per item = what that search reads per item; ms/query = median SQL time of
one k = 50 query of that search.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Single-threaded BLAS unless the caller says otherwise: the references' small dense problems gain
# nothing from threads, and on a shared 2-core machine oversubscribed BLAS threads are 10x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import hqdb  # noqa: E402
from hqdb import metrics  # noqa: E402

import references as R  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/wiki/wiki_train.npz"
KEYS = ("image", "text", "text_tfidf", "labels")
TEXT_KEY = "text_tfidf"
BOOKS, CODEWORDS = 4, 256
CANDIDATES = 100                       # αN = 100, the paper's setting
ALPHAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ALPHA_BITS = 64
K = 50
CCA_DIM = 10                           # = number of classes; the classic Wiki CCA dimension
DIRS = (("i2t", "image", "text"), ("t2i", "text", "image"))  # (name, query modality, item modality)
METHOD_ORDER = ("hq", "cq", "spdq", "chn", "dcmh", "cdq", "c+d", "lossless")
OWN_KIND = {"two_stage": "two_stage", "hamming": "hamming", "aqd": "aqd", "float": "lossless"}
METHOD_LABEL = {"hq": "HQ", "cq": "CQ", "spdq": "SPDQ", "chn": "CHN", "dcmh": "DCMH", "cdq": "CDQ",
                "c+d": "C+D", "lossless": "Lossless"}


def git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hqdb", "native"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes under hqdb/ or native/" if dirty else "")
    except Exception:
        return "unknown"


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def load_split(seed: int):
    if not DATA.exists():
        sys.exit(f"quality.py: data file not found: {DATA}\n"
                 "(expects the shared Wikipedia set at ../shared/data/wiki/wiki_train.npz next to the repo)")
    with np.load(DATA, allow_pickle=False) as f:
        data = {k: f[k] for k in KEYS}
    q_idx, db_idx = R.split(len(data["labels"]), seed=seed)
    return ({k: v[q_idx] for k, v in data.items()}, {k: v[db_idx] for k, v in data.items()})


# --------------------------------------------------------------------------------------------
# references


def run_references(q, db, bits_list, seed):
    t0 = time.perf_counter()
    out = {"random": R.random_reference(q, db, seed)}
    fam = R.CCAFamily(db, TEXT_KEY, [CCA_DIM, *bits_list], seed)
    out["cca"], cca_info = fam.cosine(q, db, CCA_DIM)
    out["cca_lda"], cca_lda_info = R.CCAFamily(db, "text", [CCA_DIM], seed).cosine(q, db, CCA_DIM)
    out["label"], label_info = R.label_space_reference(q, db, TEXT_KEY, seed)
    sign, sign_info = {}, {}
    for b in bits_list:
        sign[b], sign_info[b] = fam.sign(q, db, b)
    info = {"cca": cca_info, "cca_lda": cca_lda_info, "label": label_info, "sign_cca": sign_info,
            "seconds": time.perf_counter() - t0}
    return out, sign, info


# --------------------------------------------------------------------------------------------
# HQ through SQL


def hq_importable() -> str | None:
    try:
        import hqdb.evaluate  # noqa: F401
        import hqdb.model.train  # noqa: F401
    except Exception as e:  # report, don't crash: the references still get written
        return f"{type(e).__name__}: {e}"
    return None


def run_hq(conn, q, db, bits, seed, epochs=None):
    from hqdb.evaluate import evaluate

    kw = {} if epochs is None else {"epochs": epochs}
    t0 = time.perf_counter()
    model = hqdb.train(db, bits=bits, books=BOOKS, codewords=CODEWORDS, text_key=TEXT_KEY, seed=seed,
                       progress=False, **kw)
    train_s = time.perf_counter() - t0
    name = f"hq{bits}"
    hqdb.save_model(conn, name, model, replace=True)
    t0 = time.perf_counter()
    res = evaluate(conn, name, q, db, candidates=CANDIDATES)
    res["eval_seconds"] = time.perf_counter() - t0
    res["train_seconds"] = train_s
    res["train_metrics"] = {k: v for k, v in model.config.get("metrics", {}).items() if k != "validation"}
    return name, res


def alpha_sweep(conn, name, q, db, passes: int):
    """MAP@50 and per-query SQL time (k = 50) for each α, both directions, on a model-bound table."""
    n = len(db["labels"])
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute(f"CREATE VIRTUAL TABLE t USING hq(model='{name}')")
    hqdb.insert_items(conn, "t", rowids=np.arange(1, n + 1), image=db["image"], text=db[TEXT_KEY])
    qblobs = {"image": [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in q["image"]],
              "text": [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in q[TEXT_KEY]]}
    base = "SELECT rowid FROM t WHERE hq_match(t.{dst}, hq_query('{src}', ?)) AND k = 50"
    rows = []
    for alpha in ALPHAS:
        c = int(round(alpha * n))
        if alpha == 0:
            extra, params, mode = " AND mode = 'hamming'", (), "hamming"
        elif alpha == 1:
            extra, params, mode = " AND mode = 'aqd'", (), "aqd"
        else:
            extra, params, mode = " AND candidates = ?", (c,), "two_stage"
        row = {"alpha": alpha, "candidates": c if 0 < alpha < 1 else (0 if alpha == 0 else n), "mode": mode}
        for d, src, dst in DIRS:
            sql = base.format(src=src, dst=dst) + extra
            for v in qblobs[src][:5]:  # warm the statement cache and the model's query path
                conn.execute(sql, (v, *params)).fetchall()
            times, ranks = [], None
            for _ in range(passes):
                got = []
                for v in qblobs[src]:
                    t0 = time.perf_counter()
                    r = conn.execute(sql, (v, *params)).fetchall()
                    times.append(time.perf_counter() - t0)
                    got.append([x[0] - 1 for x in r])
                ranks = got if ranks is None else ranks
                if got != ranks:
                    raise RuntimeError(f"{d} α={alpha}: SQL results differ between passes")
            ranks = np.asarray(ranks, dtype=np.int64)
            rel = metrics.relevance(q["labels"], db["labels"], ranks)
            row[d] = {"map@50": metrics.mean_average_precision(rel, K), "p@10": metrics.precision_at(rel, 10),
                      "ms_median": 1e3 * float(np.median(times)), "ms_mean": 1e3 * float(np.mean(times))}
        row["harmonic_map@50"] = metrics.harmonic_mean(row["i2t"]["map@50"], row["t2i"]["map@50"])
        rows.append(row)
    conn.execute("DROP TABLE t")
    return rows


def run_method(conn, q, db, method, bits, seed, trained):
    """Train (or merge, for c+d) one method at one code length, store it, score it through SQL;
    a summary row of its own search. ``trained`` keeps models for c+d to reuse."""
    from hqdb.evaluate import evaluate
    from hqdb.model.train import combine_c_plus_d

    t0 = time.perf_counter()
    if method == "c+d":
        dcmh = trained.get(("dcmh", bits)) or hqdb.train(db, method="dcmh", bits=bits, text_key=TEXT_KEY,
                                                         seed=seed, progress=False)
        cdq4 = hqdb.train(db, method="cdq", bits=bits, books=BOOKS, text_key=TEXT_KEY, seed=seed, progress=False)
        model = combine_c_plus_d(dcmh, cdq4)
        train_s = time.perf_counter() - t0 + dcmh.config["metrics"]["train_seconds"]
    else:
        model = hqdb.train(db, method=method, bits=bits, text_key=TEXT_KEY, seed=seed, progress=False)
        train_s = time.perf_counter() - t0
    trained[(method, bits)] = model
    name = f"{method.replace('+', '_')}{bits}"
    hqdb.save_model(conn, name, model, replace=True)
    t0 = time.perf_counter()
    res = evaluate(conn, name, q, db, candidates=CANDIDATES)
    return summarize(res, train_s, time.perf_counter() - t0, model)


def summarize(res, train_s, eval_s, model) -> dict:
    kind = OWN_KIND[res["search"]]
    out = {"kind": kind, "search": res["search"], "metric": res["metric"], "books": res["books"],
           "bytes": res["bytes_per_item"], "stored_bytes": res["stored_bytes_per_item"],
           "train_seconds": train_s, "eval_seconds": eval_s,
           "ms": float(np.mean([res["ms_per_query"][d] for d in ("i2t", "t2i")])),
           "epsilon_std": model.config.get("metrics", {}).get("epsilon_std")}
    for d in ("i2t", "t2i"):
        out[d] = {k: res[d][kind][k] for k in ("map@50", "map@all")}
    out["harmonic"] = {k: metrics.harmonic_mean(out["i2t"][k], out["t2i"][k]) for k in ("map@50", "map@all")}
    return out


def plot_bytes(methods, refs, bits_list, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    markers = dict(zip(METHOD_ORDER, "o s D ^ v P X *".split()))
    for m in METHOD_ORDER:
        rows = methods.get(m, {})
        bs = [b for b in bits_list if b in rows]
        if not bs:
            continue
        x = [rows[b]["bytes"] for b in bs]
        y = [rows[b]["harmonic"]["map@50"] for b in bs]
        ax.plot(x, y, marker=markers[m], label=f"{METHOD_LABEL[m]} ({rows[bs[0]]['search']})")
        for b, xi, yi in zip(bs, x, y):
            ax.annotate(str(b), (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for key, label, ls in (("cca", f"CCA {CCA_DIM}-d float (40 B)", ":"), ("label", "label-space float", "--")):
        h = metrics.harmonic_mean(refs[key]["i2t"]["map@50"], refs[key]["t2i"]["map@50"])
        ax.axhline(h, color="gray", ls=ls, lw=1, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per item read by the method's search (log scale; labels = bits)")
    ax.set_ylabel("harmonic mean of I→T and T→I MAP@50")
    ax.set_title("Wikipedia, 435 queries vs 1,738 items, through SQL", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def methods_section(ctx) -> list[str]:
    methods, bits_list, refs = ctx["methods"], ctx["bits"], ctx["refs"]
    L = ["## Method comparison (cf. the HQ paper's Table 2)\n"]
    L.append("Every method trained with its defaults on the database part (`hqdb.train(database, method=m, "
             f"bits=b, text_key='{TEXT_KEY}', seed={ctx['seed']})`), stored, and scored through SQL with its "
             "own search: HQ and C+D two-stage (αN = 100), CHN and DCMH Hamming, CQ / SPDQ / CDQ AQD over "
             "all items (CQ: squared Euclidean; the others inner product), Lossless float cosine (numpy — "
             "hq tables store codes, not floats). Quantization-only methods use bits/8 codebooks of 256 "
             f"codewords (bits of code); HQ and C+D use {BOOKS} × 256 on top of the bit code. C+D = the "
             "DCMH row's model (bit codes) merged with a CDQ of 4 books (vectors + codebooks). Formulations "
             "and deviations: docs/methods.md.\n")
    L.append("### Harmonic mean of I→T and T→I MAP@50 (bytes per item)\n")
    L.append("| method | search | " + " | ".join(f"{b} bits" for b in bits_list) + " |")
    L.append("|---|---|" + "---:|" * len(bits_list))
    for m in METHOD_ORDER:
        rows = methods.get(m)
        if not rows:
            continue
        search = next(iter(rows.values()))["search"]
        L.append(f"| {METHOD_LABEL[m]} | {search} | " + " | ".join(
            f"**{f3(rows[b]['harmonic']['map@50'])}** ({rows[b]['bytes']} B)" if b in rows else "–"
            for b in bits_list) + " |")
    for key, label in (("cca", f"CCA {CCA_DIM}-d (float, 40 B)"), ("label", "label-space (float)"),
                       ("random", "random")):
        h = metrics.harmonic_mean(refs[key]["i2t"]["map@50"], refs[key]["t2i"]["map@50"])
        L.append(f"| {label} | float | " + " | ".join(f3(h) for _ in bits_list) + " |")
    L.append("")
    for b in bits_list:
        L.append(f"### {b} bits\n")
        L.append("| method | search | bytes/item (stored) | I→T MAP@50 | T→I MAP@50 | harmonic MAP@50 | "
                 "I→T MAP@all | T→I MAP@all | harmonic MAP@all | train s | ms/query (SQL, k=50) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in METHOD_ORDER:
            r = methods.get(m, {}).get(b)
            if r is None:
                continue
            ms = "numpy" if r["search"] == "float" else f"{r['ms']:.2f}"
            L.append(f"| {METHOD_LABEL[m]} | {r['search']}{' (l2)' if r['metric'] == 'l2' else ''} | "
                     f"{r['bytes']} ({r['stored_bytes']}) | {f3(r['i2t']['map@50'])} | {f3(r['t2i']['map@50'])} | "
                     f"**{f3(r['harmonic']['map@50'])}** | {f3(r['i2t']['map@all'])} | {f3(r['t2i']['map@all'])} | "
                     f"{f3(r['harmonic']['map@all'])} | {r['train_seconds']:.0f} | {ms} |")
        L.append("")
    eps = {b: methods.get("cq", {}).get(b, {}).get("epsilon_std") for b in bits_list}
    if any(v is not None for v in eps.values()):
        L.append("CQ's cross-book product spread (std of Σ_{l≠l'}⟨C^l b^l, C^{l'} b^{l'}⟩ over the training "
                 "codes; the table uses its mean ε): " + ", ".join(f"{b} bits {v:.2f}" for b, v in eps.items()
                                                                   if v is not None) + ".\n")
    L.append("Bytes per item: what the method's search reads per item and modality (two-stage: bit code + "
             "quantization codes; Hamming: bit code; AQD: quantization codes; float: float32 vector). In "
             "brackets what an hq table stores (it always keeps the bit code, also for AQD-only methods).\n")
    L.append(f"![MAP against bytes per item]({ctx['bytes_png']})\n")
    return L


def plot_alpha(rows, lossless, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    labels = [f"{r['alpha']:g}" for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for d, name, color in (("i2t", "I→T", "C0"), ("t2i", "T→I", "C1")):
        a1.plot(x, [r[d]["map@50"] for r in rows], "o-", color=color, label=name)
        if lossless:
            a1.axhline(lossless[d], color=color, ls="--", lw=1, label=f"{name} lossless")
        a2.plot(x, [r[d]["ms_median"] for r in rows], "o-", color=color, label=name)
    for a, title in ((a1, "MAP@50"), (a2, "median time per query through SQL, k=50 (ms)")):
        a.set_xticks(x, labels)
        a.set_xlabel("α = candidates / N   (0: Hamming only, 1: AQD only)")
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    a2.set_ylim(bottom=0)
    fig.suptitle(f"HQ {ALPHA_BITS} bits, m={BOOKS}, k={CODEWORDS} on Wikipedia (N = {rows[-1]['candidates']} "
                 "database items), cf. the paper's Figure 4", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# report


def f3(x) -> str:
    return f"{x:.3f}"


def table_row(name, s) -> str:
    i, t = s["i2t"], s["t2i"]
    h = metrics.harmonic_mean(i["map@50"], t["map@50"])
    return (f"| {name} | {f3(i['map@all'])} | {f3(i['map@50'])} | {f3(i['p@10'])} | "
            f"{f3(t['map@all'])} | {f3(t['map@50'])} | {f3(t['p@10'])} | {f3(h)} |")


HEADER = ("| ranking | I→T MAP@all | I→T MAP@50 | I→T P@10 | T→I MAP@all | T→I MAP@50 | T→I P@10 | harmonic MAP@50 |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def targets(hq, refs, sign, dims):
    """[(target, detail, verdict)]; a target without its HQ numbers is 'not run'."""
    out = []
    b = ALPHA_BITS
    if b in hq:
        r = hq[b]
        worst = []
        for d in ("i2t", "t2i"):
            for m in ("map@50", "map@all"):
                ts, ll = r[d]["two_stage"][m], r[d]["lossless"][m]
                worst.append((ts / ll - 1, f"{d} {m} {f3(ts)} vs {f3(ll)} ({100 * (ts / ll - 1):+.1f}%)"))
        ok_q = all(x >= -0.03 for x, _ in worst)
        bpi = r["bytes_per_item"]
        common, img_in, txt_in = 4 * b, 4 * dims["image"], 4 * dims[TEXT_KEY]
        ok_b = common / bpi >= 8
        out.append((f"HQ two-stage at {b} bits within 3% (relative) of its own lossless MAP@50 and MAP@all, "
                    "both directions", "; ".join(s for _, s in worst), "met" if ok_q else "missed"))
        out.append((f"≥ 8× fewer bytes per item than float32 features",
                    f"{bpi} B/item ({b // 8} B bits + {BOOKS} B codes) vs float32 common space {common} B "
                    f"({common / bpi:.1f}×); vs input features: image {img_in} B ({img_in / bpi:.0f}×), "
                    f"{TEXT_KEY} {txt_in} B ({txt_in / bpi:.0f}×)", "met" if ok_b else "missed"))
    for b in sorted(hq):
        r = hq[b]
        cmp = [(d, r[d]["two_stage"]["map@50"], r[d]["hamming"]["map@50"]) for d in ("i2t", "t2i")]
        out.append((f"{b} bits: two-stage ≥ Hamming-only (MAP@50, both directions)",
                    "; ".join(f"{d} {f3(a)} vs {f3(h)}" for d, a, h in cmp),
                    "met" if all(a >= h for _, a, h in cmp) else "missed"))
    for b in sorted(hq):
        r = hq[b]
        cmp = [(d, r[d]["two_stage"]["map@50"], refs["label"][d]["map@50"]) for d in ("i2t", "t2i")]
        out.append((f"{b} bits: HQ two-stage ≥ label-space reference (MAP@50, both directions)",
                    "; ".join(f"{d} {f3(a)} vs {f3(h)}" for d, a, h in cmp),
                    "met" if all(a >= h for _, a, h in cmp) else "missed"))
    return out


def write_report(path: Path, ctx: dict):
    q_n, db_n, bits_list = ctx["n_queries"], ctx["n_database"], ctx["bits"]
    refs, sign, rinfo, hq, alpha = ctx["refs"], ctx["sign"], ctx["ref_info"], ctx["hq"], ctx["alpha"]
    L = []
    L.append("# Retrieval quality on Wikipedia (bench/quality.py)\n")
    L.append(f"- Date: {ctx['date']}; git HEAD at start: `{ctx['git']}`; machine: {ctx['machine']}")
    L.append(f"- Command: `{ctx['command']}`")
    L.append(f"- Total run time: {ctx['seconds']:.0f} s (references {rinfo['seconds']:.0f} s"
             + (", HQ train + eval " + ", ".join(f"{b} bits {hq[b]['train_seconds']:.0f}+{hq[b]['eval_seconds']:.0f} s"
                                                 for b in sorted(hq)) if hq else "")
             + (f", α sweep {ctx['alpha_seconds']:.0f} s" if alpha else "") + ")")
    L.append(f"- hqdb kernels: {ctx['backend']}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; "
             f"load average at start / end: {ctx['load_start']} / {ctx['load_end']}\n")

    L.append("## Protocol\n")
    L.append(f"`../shared/data/wiki/wiki_train.npz`: the official training split of the Wikipedia "
             f"image–text benchmark (2,173 pairs, 10 classes, one label each). A seeded permutation "
             f"(`numpy.random.default_rng({ctx['seed']}).permutation`) puts its first 20% aside as "
             f"**queries ({q_n})** and the other 80% form the **retrieval database ({db_n})**. Every model "
             "and reference is fitted on the database part only (queries are never seen; hyper-parameters "
             "of the references are picked on a held-out fifth of the database, and hqdb.train holds out "
             "its own 20% of the database for early stopping). **I→T**: each image query ranks the text "
             "side of all database items; **T→I**: each text query ranks their images. Relevant = same "
             "class. MAP@all, MAP@50 (AP@R normalised by the relevant items within the first R), P@10 "
             "from `hqdb.metrics`; ties broken by database index ascending (`argsort(-score, "
             "kind='stable')`, rowid order inside hqdb). Harmonic = harmonic mean of I→T and T→I MAP@50.\n")
    L.append("This page's tables come from **one** split and one seed. The seed-to-seed spread is as large "
             "as many differences here, so the protocol that decides defaults and targets is the one of "
             "**Unseen queries: folds × seeds** below (bench/quality_folds.py, run by this script: 5 folds × "
             "3 seeds, mean ± sd, supervised and label-free rows side by side); training time against data "
             "size, with its plot, is the section of bench/train_scale.py.\n")
    L.append("Inputs: image = 128-d SIFT bag of visual words; text = 1000-d tf-idf (`text_tfidf`) for HQ "
             "and every reference (except the one sanity row on the 10-d LDA `text`).\n")
    L.append("Rows:\n")
    L.append(f"- **HQ two-stage / hamming / aqd / lossless**: `hqdb.train(database, bits=b, books={BOOKS}, "
             f"codewords={CODEWORDS}, text_key='{TEXT_KEY}', seed={ctx['seed']})`, stored with "
             "`hqdb.save_model`, scored by `hqdb.evaluate.evaluate` through SQL on a model-bound table: "
             f"two-stage = Hamming prefilter to αN = **{CANDIDATES}** candidates (the paper's setting; "
             f"α = {CANDIDATES / db_n:.3f}) re-ranked by AQD, then the rest in Hamming order (so MAP@all "
             "is defined); hamming = Hamming only (α = 0); aqd = AQD over all items (α = 1); lossless = "
             "inner product of the same model's float features (numpy).")
    L.append("- **random**: a seeded random permutation of the database per query.")
    ci = rinfo["cca"]
    L.append(f"- **CCA {CCA_DIM}-d**: regularised CCA (numpy) between image and `{TEXT_KEY}` fitted on the "
             f"database, both sides projected to the top {CCA_DIM} canonical directions (10 = number of "
             f"classes, the classic Wikipedia CCA setting), ranked by cosine. Ridge (× mean variance, both "
             f"sides) = {ci['ridge']:g}, picked from {list(R.CCA_RIDGES)} by the held-out sum of the top-"
             f"{CCA_DIM} canonical correlations on a fifth of the database (unsupervised; {ci['ridge']:g} is "
             "not small: with 1000-d tf-idf and ~1.4k fitting rows a small ridge overfits). Top canonical "
             f"correlations (database): {', '.join(f'{c:.2f}' for c in ci['top_corr'][:5])}, …")
    li = rinfo["cca_lda"]
    L.append(f"- **CCA {CCA_DIM}-d (LDA text)**: the same on the 10-d LDA `text` (ridge {li['ridge']:g}); a "
             "sanity row against the data README's reference point (10-d CCA, official test split as "
             "queries: MAP@all ≈ 0.24 I→T, 0.22 T→I).")
    si = rinfo["sign_cca"]
    L.append(f"- **sign(CCA)**: the `{TEXT_KEY}` CCA projected to `bits` dimensions (the top-`bits` "
             f"canonical directions; the CCA rank is min(128, 1000) = 128 so no bit length here exceeds it — "
             "above the rank the script would map all directions through a seeded random matrix with "
             "orthonormal rows), centred with the database means, sign → bits, ranked by Hamming distance, "
             "ties by index. Ridge chosen as above for `bits` directions: "
             + ", ".join(f"{b} bits {si[b]['ridge']:g}" for b in bits_list) + ".")
    lab = rinfo["label"]
    L.append(f"- **label-space** (supervised): per modality a multinomial logistic regression (torch L-BFGS, "
             f"float64, standardised inputs, L2 on weights; L2 picked from {list(R.LOGREG_L2)} by held-out "
             f"log-loss on a fifth of the database: image {lab['image']['l2']:g}, text {lab['text']['l2']:g}) "
             "fitted on the database; queries and items are their predicted class-probability vectors, "
             f"ranked by cosine. Query classification accuracy: image {lab['image']['query_accuracy']:.3f}, "
             f"text {lab['text']['query_accuracy']:.3f}.\n")

    if ctx.get("hq_error"):
        L.append(f"**HQ rows not run**: `hqdb.train` / `hqdb.evaluate` not importable ({ctx['hq_error']}).\n")

    if hq:
        L.append("## Overview: MAP@50 (I→T / T→I / harmonic) by code length\n")
        L.append("| ranking | " + " | ".join(f"{b} bits" for b in bits_list) + " |")
        L.append("|---|" + "---:|" * len(bits_list))

        def cell(s):
            i, t = s["i2t"]["map@50"], s["t2i"]["map@50"]
            return f"{f3(i)} / {f3(t)} / **{f3(metrics.harmonic_mean(i, t))}**"

        for kind, label in (("two_stage", f"HQ two-stage (αN = {CANDIDATES})"), ("hamming", "HQ hamming"),
                            ("aqd", "HQ aqd"), ("lossless", "HQ lossless (float)")):
            L.append(f"| {label} | " + " | ".join(cell({d: hq[b][d][kind] for d in ("i2t", "t2i")})
                                                  if b in hq else "–" for b in bits_list) + " |")
        L.append("| sign(CCA) (Hamming) | " + " | ".join(cell(sign[b]) for b in bits_list) + " |")
        for key, label in (("cca", f"CCA {CCA_DIM}-d (float, any length)"), ("label", "label-space (float)"),
                           ("random", "random")):
            L.append(f"| {label} | " + " | ".join(cell(refs[key]) for _ in bits_list) + " |")
        L.append("")

    for b in bits_list:
        L.append(f"## {b} bits\n")
        if b in hq:
            r = hq[b]
            tm = r.get("train_metrics", {})
            L.append(f"HQ: {r['bytes_per_item']} bytes per item per modality ({b // 8} B bit code + {BOOKS} B "
                     f"quantization codes); trained in {r['train_seconds']:.1f} s"
                     + (f" ({tm.get('epochs_run')} epochs, best {tm.get('best_epoch')})" if tm else "")
                     + f"; evaluated through SQL in {r['eval_seconds']:.1f} s.\n")
        L.append(HEADER)
        if b in hq:
            for kind, label in (("two_stage", f"HQ two-stage (αN = {CANDIDATES})"), ("hamming", "HQ hamming"),
                                ("aqd", "HQ aqd"), ("lossless", "HQ lossless (float)")):
                L.append(table_row(label, {d: hq[b][d][kind] for d in ("i2t", "t2i")}))
        L.append(table_row("random", refs["random"]))
        L.append(table_row(f"CCA {CCA_DIM}-d (cosine)", refs["cca"]))
        L.append(table_row(f"CCA {CCA_DIM}-d, LDA text (sanity)", refs["cca_lda"]))
        L.append(table_row(f"sign(CCA) {b} bits (Hamming)", sign[b]))
        L.append(table_row("label-space (logistic regression)", refs["label"]))
        L.append("")

    if alpha:
        L.append(f"## α sweep at {ALPHA_BITS} bits (cf. the paper's Figure 4)\n")
        L.append(f"Each query runs as `SELECT rowid FROM t WHERE hq_match(t.text, hq_query('image', ?)) AND "
                 f"k = 50 AND candidates = ?` (T→I: `hq_match(t.image, hq_query('text', ?))`) on a model-bound "
                 f"table (`CREATE VIRTUAL TABLE t USING hq(model='hq{ALPHA_BITS}')` + `hqdb.insert_items`), "
                 "with `AND mode = 'hamming'` for α = 0 and `AND mode = 'aqd'` for α = 1; candidates = "
                 f"round(α·N), N = {db_n}. MAP@50 is computed from the 50 rows SQL returned. The time is per "
                 "query, wall clock around execute + fetch, including encoding the query with the stored "
                 f"model; median over {ctx['passes']} pass(es) over all {q_n} queries (mean in brackets), "
                 "1 thread, on a 2-core machine shared with other jobs.\n")
        L.append("Note: hqdb's two-stage keeps max(candidates, k) Hamming candidates, so with k = 50 the "
                 f"α = 0.01 and 0.02 rows (17 and 35 candidates) actually re-rank 50 candidates.\n")
        L.append("| α | candidates | mode | I→T MAP@50 | T→I MAP@50 | harmonic | I→T ms/query | T→I ms/query |")
        L.append("|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in alpha:
            L.append(f"| {r['alpha']:g} | {r['candidates']} | {r['mode']} | {f3(r['i2t']['map@50'])} | "
                     f"{f3(r['t2i']['map@50'])} | {f3(r['harmonic_map@50'])} | "
                     f"{r['i2t']['ms_median']:.3f} ({r['i2t']['ms_mean']:.3f}) | "
                     f"{r['t2i']['ms_median']:.3f} ({r['t2i']['ms_mean']:.3f}) |")
        L.append(f"\nAt N = {db_n} the per-query time is dominated by fixed costs (the SQL round trip, encoding "
                 "the query with the model, the AQD lookup table) rather than by the scan, so the time grows "
                 "only a little with α here; the paper's time ∝ α needs a large N (see bench/RESULTS.md for "
                 "100k–1M rows).")
        if ctx.get("alpha_check"):
            L.append("\n" + ctx["alpha_check"])
        L.append(f"\n![α sweep]({ctx['png_name']})\n")

    if ctx.get("methods"):
        L.extend(methods_section(ctx))

    L.append("## Targets\n")
    tg = targets(hq, refs, sign, ctx["dims"])
    if not tg:
        L.append("Not evaluated: no HQ rows in this run.\n")
    else:
        L.append("| target | numbers | verdict |\n|---|---|---|")
        for name, detail, verdict in tg:
            L.append(f"| {name} | {detail} | **{verdict}** |")
        L.append("")
        if ALPHA_BITS in hq:
            r = hq[ALPHA_BITS]
            L.append(f"How to read the MAP@all part of the first target: `evaluate()`'s two-stage ranking "
                     f"re-ranks only the first αN = {CANDIDATES} of {db_n} items by AQD and leaves the rest in "
                     "Hamming order, so its MAP@all is mostly that of the Hamming ranking (at "
                     f"{ALPHA_BITS} bits, MAP@all I→T / T→I: hamming {f3(r['i2t']['hamming']['map@all'])} / "
                     f"{f3(r['t2i']['hamming']['map@all'])}, aqd {f3(r['i2t']['aqd']['map@all'])} / "
                     f"{f3(r['t2i']['aqd']['map@all'])}, lossless {f3(r['i2t']['lossless']['map@all'])} / "
                     f"{f3(r['t2i']['lossless']['map@all'])}). The verdict stands as defined.\n")
    # Sections other scripts own (bench/quality_folds.py, bench/train_scale.py, ... between their
    # <!-- name begin/end --> markers, and anything after them) are kept as they are.
    old = path.read_text() if path.exists() else ""
    at = old.find("<!-- ")
    path.write_text("\n".join(L) + "\n" + ("\n" + old[at:] if at >= 0 else ""))
    return tg


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=None, help="code lengths (default 16 32 64 128)")
    ap.add_argument("--seed", type=int, default=0, help="split / model / reference seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="64 bits only, one timing pass, output to bench/.cache/quick/")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default bench/, or bench/.cache/quick/)")
    ap.add_argument("--passes", type=int, default=None, help="timing passes of the α sweep (default 3; quick 1)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHOD_ORDER,
                    help="methods to compare (default all; hq always runs)")
    ap.add_argument("--folds", type=int, nargs="*", default=None,
                    help="folds of the folds × seeds protocol (bench/quality_folds.py; default all 5, "
                         "quick: fold 0; none: skip it and keep the section already in the report)")
    ap.add_argument("--fold-seeds", type=int, nargs="+", default=None,
                    help="seeds of the folds × seeds protocol (default 0 1 2, quick: 0)")
    args = ap.parse_args(argv)
    bits_list = args.bits or ([ALPHA_BITS] if args.quick else [16, 32, 64, 128])
    out = args.out or (HERE / ".cache" / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    passes = args.passes or (1 if args.quick else 3)

    t_start = time.perf_counter()
    q, db = load_split(args.seed)
    n_db = len(db["labels"])
    print(f"split: {len(q['labels'])} queries, {n_db} database items (seed {args.seed})", flush=True)
    ctx = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "git": git_head(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "command": "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "seed": args.seed, "bits": bits_list, "n_queries": len(q["labels"]), "n_database": n_db,
           "dims": {k: db[k].shape[1] for k in ("image", TEXT_KEY)}, "passes": passes,
           "png_name": "quality_alpha.png", "bytes_png": "quality_bytes.png", "load_start": load()}
    ctx["command"] = ctx["command"].strip()
    try:
        kinfo = hqdb.kernels.info()
        ctx["backend"] = f"{kinfo.get('backend', '?')}, {kinfo.get('hamming_impl', '')}".strip(", ")
    except Exception as e:
        ctx["backend"] = f"unknown ({e})"

    refs, sign, rinfo = run_references(q, db, bits_list, args.seed)
    print(f"references done in {rinfo['seconds']:.1f} s", flush=True)
    ctx.update(refs=refs, sign=sign, ref_info=rinfo, hq={}, alpha=None, methods={})
    wanted = [m for m in METHOD_ORDER if m != "hq" and (args.methods is None or m in args.methods)]

    err = hq_importable()
    if err:
        ctx["hq_error"] = err
        print(f"HQ rows skipped: {err}", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory(prefix="hqdb-quality-") as tmp:
            conn = hqdb.connect(os.path.join(tmp, "quality.db"))
            for b in bits_list:
                name, res = run_hq(conn, q, db, b, args.seed)
                ctx["hq"][b] = res
                ctx["methods"].setdefault("hq", {})[b] = summarize(
                    res, res["train_seconds"], res["eval_seconds"], hqdb.load_model(conn, name))
                h = res["harmonic"]
                print(f"{b:4d} bits: train {res['train_seconds']:.1f} s, eval {res['eval_seconds']:.1f} s; harmonic "
                      f"MAP@50 two-stage {h['two_stage']['map@50']:.3f} hamming {h['hamming']['map@50']:.3f} "
                      f"aqd {h['aqd']['map@50']:.3f} lossless {h['lossless']['map@50']:.3f}", flush=True)
                if b == ALPHA_BITS:
                    t0 = time.perf_counter()
                    ctx["alpha"] = alpha_sweep(conn, name, q, db, passes)
                    ctx["alpha_seconds"] = time.perf_counter() - t0
                    # Cross-check: the α = 0 / 1 rows must reproduce evaluate()'s hamming / aqd MAP@50.
                    diffs = [abs(ctx["alpha"][i][d]["map@50"] - res[d][kind]["map@50"])
                             for i, kind in ((0, "hamming"), (-1, "aqd")) for d in ("i2t", "t2i")]
                    ctx["alpha_check"] = (f"Cross-check: the α = 0 and α = 1 rows reproduce `evaluate()`'s "
                                          f"hamming and aqd MAP@50 (largest difference {max(diffs):.1e}).")
                    if max(diffs) > 1e-9:
                        print(f"WARNING: α sweep disagrees with evaluate(): {diffs}", file=sys.stderr)
                    for r in ctx["alpha"]:
                        print(f"  α={r['alpha']:<5g} c={r['candidates']:<5d} MAP@50 i2t {r['i2t']['map@50']:.3f} "
                              f"t2i {r['t2i']['map@50']:.3f}  ms i2t {r['i2t']['ms_median']:.3f} "
                              f"t2i {r['t2i']['ms_median']:.3f}", flush=True)
            trained: dict = {}
            for m in wanted:
                for b in bits_list:
                    r = run_method(conn, q, db, m, b, args.seed, trained)
                    ctx["methods"].setdefault(m, {})[b] = r
                    print(f"{m:>8} {b:4d} bits: train {r['train_seconds']:.1f} s; {r['search']} harmonic MAP@50 "
                          f"{r['harmonic']['map@50']:.3f} (I→T {r['i2t']['map@50']:.3f}, T→I {r['t2i']['map@50']:.3f}), "
                          f"{r['bytes']} B/item, {r['ms']:.2f} ms/query", flush=True)
            conn.close()
        if ctx["methods"]:
            plot_bytes(ctx["methods"], refs, bits_list, out / ctx["bytes_png"])
        if ctx["alpha"]:
            lossless = {d: ctx["hq"][ALPHA_BITS][d]["lossless"]["map@50"] for d in ("i2t", "t2i")}
            plot_alpha(ctx["alpha"], lossless, out / ctx["png_name"])

    ctx["seconds"] = time.perf_counter() - t_start
    ctx["load_end"] = load()
    report = out / ("QUALITY.md")
    tg = write_report(report, ctx)
    raw = HERE / ".cache" / ("quality-quick.json" if args.quick else "quality.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({k: v for k, v in ctx.items()}, indent=1, default=str))
    folds = args.folds if args.folds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    if folds and not ctx.get("hq_error"):
        import quality_folds

        seeds = args.fold_seeds or ([0] if args.quick else [0, 1, 2])
        quality_folds.main(["--folds", *map(str, folds), "--seeds", *map(str, seeds), "--out", str(report)])
    for name, detail, verdict in tg:
        print(f"[{verdict}] {name}: {detail}")
    print(f"wrote {report} in {ctx['seconds']:.0f} s")


if __name__ == "__main__":
    main()
