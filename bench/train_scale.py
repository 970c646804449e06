#!/usr/bin/env python
"""Training throughput against data size: HQ 64 bits on ``hqdb.datasets.synthetic_pairs``.

    python bench/train_scale.py                       # 5k, 20k, 100k pairs → section of bench/QUALITY.md
    python bench/train_scale.py --sizes 5000 20000 --epochs 3
    python bench/train_scale.py --million             # also the 1M-pair run (3 epochs, ~25 min on 2 cores)

Each size trains in its own subprocess (``--one N``) so peak memory (``resource.getrusage``
ru_maxrss of that process) belongs to that size alone. Items/s per epoch = training items /
median wall time of an epoch (Adam steps + re-quantization of every training item + validation
on its bounded sample), from the model's ``history``; setup (featurizing, standardising, the
first codebooks) and the final validation are reported separately. Encoding for insertion =
``TrainedModel.encode`` + ``quantize`` of 100,000 unseen items per modality (text already
featurized; featurizing raw strings is reported on its own).

Writes the section between ``<!-- train_scale.py begin/end -->`` in bench/QUALITY.md, the raw
numbers to bench/.cache/train_scale.json and the plot bench/train_scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

SIZES = (5000, 20000, 100000)
MILLION = 1_000_000


def one(n: int, epochs: int, batch_size: int | None, progress: bool) -> dict:
    """Train on n synthetic pairs and measure; runs in a fresh process."""
    import numpy as np

    import hqdb
    from hqdb.datasets import synthetic_pairs

    t0 = time.perf_counter()
    data = synthetic_pairs(n, seed=0)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # refit=False: the selection run alone, so wall = setup + epochs + final validation (the default
    # refit up to 100,000 items trains the chosen epochs again on every item, at the same rate).
    model = hqdb.train(
        data, bits=64, epochs=epochs, patience=epochs, batch_size=batch_size, progress=progress, seed=0, refit=False
    )
    wall = time.perf_counter() - t0
    cfg = model.config
    mt, hist = cfg["metrics"], cfg["history"]
    ep_s = [h["seconds"] for h in hist]
    n_tr = mt["n_train"]
    # Encoding for insertion: unseen items (another seed), both modalities.
    fresh = synthetic_pairs(100_000, seed=1)
    enc = {}
    for m in ("image", "text"):
        x = fresh[m]
        t = time.perf_counter()
        x = model.featurize(m, x) if m == "text" else x
        feat_s = time.perf_counter() - t
        t = time.perf_counter()
        _, f = model.encode(m, x)
        enc_s = time.perf_counter() - t
        t = time.perf_counter()
        model.quantize(f)
        q_s = time.perf_counter() - t
        enc[m] = {
            "featurize_per_s": round(len(x) / feat_s) if m == "text" else None,
            "encode_per_s": round(len(x) / enc_s),
            "quantize_per_s": round(len(x) / q_s),
            "encode_quantize_per_s": round(len(x) / (enc_s + q_s)),
        }
    val = mt.get("validation", {})
    return {
        "n": n,
        "n_train": n_tr,
        "epochs": len(hist),
        "batch_size": cfg["train"]["batch_size"],
        "epoch_seconds": ep_s,
        "items_per_s": round(n_tr / float(np.median(ep_s))),
        "train_wall_s": round(wall, 1),
        "setup_and_final_s": round(wall - sum(ep_s), 1),
        "generate_s": round(gen_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "val_hmean_last": hist[-1].get("val_hmean"),
        "val_map50": {d: val.get(d, {}).get("two_stage", {}).get("map@50") for d in ("i2t", "t2i")},
        "encode": enc,
    }


def run_size(n: int, epochs: int, batch_size: int | None, progress: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n), "--epochs", str(epochs)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if progress:
        cmd += ["--progress"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ns = [r["n"] for r in rows]
    ax.plot(ns, [r["items_per_s"] for r in rows], "o-", label="training items/s per epoch")
    ax.plot(
        ns, [r["encode"]["image"]["encode_quantize_per_s"] for r in rows], "s--", label="encode+quantize (image) /s"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("synthetic pairs")
    ax.set_ylabel("items per second")
    ax.axhline(5000, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("HQ 64 bits: throughput vs data size (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(rows: list[dict], command: str, seconds: float, loadavg: list[float] | None) -> list[str]:
    """The QUALITY.md section; ``loadavg``: the run's load average at its end (None: a cache
    written before it was recorded)."""
    load = "not recorded" if loadavg is None else " ".join(f"{x:.1f}" for x in loadavg)
    lines = [
        "## Training time vs data size (bench/train_scale.py)",
        "",
        f"- Command: `{command}`; {seconds:.0f} s; "
        f"{platform.machine()}, {os.cpu_count()} cores, load average at the end {load} (the machine is shared).",
        "- HQ, 64 bits, 4 × 256 codebooks, `hqdb.datasets.synthetic_pairs(n)` (128-d image vectors, raw captions "
        "→ tf-idf), 20% held out for validation, fixed epochs (no early stop). Items/s = training items / median "
        "epoch wall time (Adam steps + re-quantizing every training item twice + validation on ≤ 500 queries × "
        "≤ 10,000 items). Peak RSS = `resource.getrusage` of the training process. Encode = "
        "`TrainedModel.encode` + `quantize` of 100,000 unseen items.",
        "",
        "| pairs | train items | epochs | batch | items/s per epoch | median epoch s "
        "| train wall s (setup + final val) "
        "| peak RSS MB | encode+quantize image /s | encode+quantize text /s (featurize /s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e = r["encode"]
        med = statistics.median(r["epoch_seconds"])
        lines.append(
            f"| {r['n']:,} | {r['n_train']:,} | {r['epochs']} | {r['batch_size']} | **{r['items_per_s']:,}** | "
            f"{med:.1f} | {r['train_wall_s']:.0f} ({r['setup_and_final_s']:.0f}) | {r['peak_rss_mb']:,} | "
            f"{e['image']['encode_quantize_per_s']:,} | {e['text']['encode_quantize_per_s']:,} "
            f"({e['text']['featurize_per_s']:,}) |"
        )
    by = {r["n"]: r for r in rows}
    if 5000 in by and 20000 in by:
        ratio = by[20000]["items_per_s"] / by[5000]["items_per_s"]
        lines += ["", f"Items/s at 20k / at 5k: **{ratio:.2f}** (linear cost: ≥ 0.8)."]
    if MILLION in by:
        r = by[MILLION]
        lines += [
            "",
            f"1,000,000 pairs (run by `--million`, or kept from an earlier run by `--keep-million`): epochs of "
            f"{', '.join(f'{x:.0f}' for x in r['epoch_seconds'])} s (the load of other jobs varies; "
            f"{r['n_train'] / min(r['epoch_seconds']):,.0f} items/s in the fastest epoch); setup + final validation "
            f"{r['setup_and_final_s']:.0f} s (featurizing 1M captions, standardising, first codebooks, the "
            f"bounded final validation); generating the data {r['generate_s']:.0f} s (not included); peak RSS "
            f"{r['peak_rss_mb']:,} MB.",
        ]
    lines += ["", "![throughput vs data size](train_scale.png)"]
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--epochs", type=int, default=3, help="epochs per size (default 3)")
    ap.add_argument("--million", action="store_true", help="add the 1,000,000-pair run (3 epochs: the median resists one slowed by other jobs)")
    ap.add_argument("--keep-million", action="store_true", help="keep the cached 1M row (measured earlier)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: train()'s")
    ap.add_argument("--progress", action="store_true", help="show the training progress bar (stderr)")
    ap.add_argument("--out", type=Path, default=HERE / "QUALITY.md")
    ap.add_argument(
        "--render", action="store_true", help="rewrite the section and plot from bench/.cache/train_scale.json"
    )
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.epochs, args.batch_size, args.progress)))
        return
    from sections import replace_section

    if args.render:
        cached = json.loads((HERE / ".cache" / "train_scale.json").read_text())
        plot(cached["rows"], HERE / "train_scale.png")
        replace_section(
            args.out,
            "train_scale.py",
            section(cached["rows"], cached["command"], cached["seconds"], cached.get("loadavg")),
        )
        return
    t0 = time.perf_counter()
    rows = []
    for n in args.sizes:
        rows.append(run_size(n, args.epochs, args.batch_size, args.progress))
        print(json.dumps(rows[-1]), flush=True)
    if args.million:
        rows.append(run_size(MILLION, 3, args.batch_size, True))
        print(json.dumps(rows[-1]), flush=True)
    elif args.keep_million:  # re-measure the small sizes, keep the cached 1M row
        old = json.loads((HERE / ".cache" / "train_scale.json").read_text())
        rows += [r for r in old["rows"] if r["n"] == MILLION]
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    command = " ".join(["python bench/train_scale.py", *sys.argv[1:]])
    seconds = time.perf_counter() - t0
    loadavg = list(os.getloadavg())
    (cache / "train_scale.json").write_text(
        json.dumps({"command": command, "seconds": seconds, "loadavg": loadavg, "rows": rows}, indent=1)
    )
    plot(rows, HERE / "train_scale.png")
    replace_section(args.out, "train_scale.py", section(rows, command, seconds, loadavg))


if __name__ == "__main__":
    main()
