#!/usr/bin/env python
"""Batched search benchmark: queries/second of hqdb's batched search against one-by-one
searches, the torch backend and FAISS, on the same codes and queries in one run.

    python bench/batch.py                  # N = 1M and 10M rows, batches of 1, 10, 100, 1000
    python bench/batch.py --quick          # N = 1M only, fewer repeats
    python bench/batch.py --sizes 1000000 --batches 1 100 --modes hamming

For each N, mode and batch size B (k = 10; 128-bit codes, 4 books of 256 codewords):

* ``single x B``: B calls of ``hqdb.kernels.search``, one query each (what a loop of hq_match
  statements costs in the kernel, SQL overhead excluded), 1 thread and all threads;
* ``batched``: one ``hqdb.kernels.search_many`` call for the B queries, 1 thread and all;
* ``torch cpu``: ``hqdb.kernels.torch_backend.search_many`` on the torch CPU device (codes resident,
  torch's default thread count), and ``torch cuda`` when a GPU is present;
* ``FAISS``: ``IndexBinaryFlat.search`` of the same B queries in one call (Hamming top-k, so
  only in the 'hamming' rows), 1 thread and all;
* the memory-traffic floor of the batch: the bytes the batch must read at least once (the
  codes; plus the quantization codes in 'aqd' mode), divided by the best read bandwidth numpy
  reaches on this machine (``measure_bandwidth`` of bench/search.py, all threads), reported as
  the queries/second that floor allows.

Every batched result (native, torch) is checked equal to the one-by-one results (rowids,
distances, Hamming distances); the exit status is non-zero otherwise. Times are best-of-r
wall-clock; the load average is recorded (the machine is shared). Results: a table on stdout,
a section of ``bench/RESULTS.md`` between ``<!-- batch.py -->`` markers, and bench/batch.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import search as sb  # noqa: E402  (the single-query bench: data, bandwidth, machine info)
from sections import replace_section  # noqa: E402

K = 10
BITS, BOOKS, CODEWORDS = 128, 4, 256


def make_data(n_rows: int, n_queries: int, seed: int = 0):
    """Codes, qcodes, rowids, query bits and LUTs. The first 1M rows are bench/search.py's
    vectors (make_vectors) as sign codes; larger N repeats them with 5% of the bits flipped
    per copy (generating 10M float vectors would need 5 GB), so the codes keep their clusters."""
    base_n = min(n_rows, 1_000_000)
    x, q = sb.make_vectors(base_n, BITS, n_queries, seed=seed)
    base = sb.pack(x)
    del x
    rng = np.random.default_rng([seed, n_rows])
    codes = np.empty((n_rows, BITS // 8), dtype=np.uint8)
    for lo in range(0, n_rows, base_n):
        hi = min(n_rows, lo + base_n)
        block = base[: hi - lo]
        if lo:
            flips = np.packbits(rng.random((hi - lo, BITS), dtype=np.float32) < 0.05, axis=1,
                                bitorder="little")
            block = block ^ flips
        codes[lo:hi] = block
    qcodes = rng.integers(0, CODEWORDS, (n_rows, BOOKS), dtype=np.uint8)
    rowids = np.arange(1, n_rows + 1, dtype=np.int64)
    codebooks = (rng.standard_normal((BOOKS, CODEWORDS, BITS)) / np.sqrt(BITS)).astype(np.float32)
    return codes, qcodes, rowids, sb.pack(q), q, codebooks


CPU_TIMES: dict = {}  # (row id, method) -> best CPU time of the calling thread


def best_time(fn, repeat: int, budget: float, cpu_key=None):
    """Best wall time of fn() over at most `repeat` runs (fewer if a run exceeds `budget` s).

    With cpu_key, also the best CPU time of this thread (into CPU_TIMES): for one-thread runs,
    which execute on the calling thread, it leaves out the time other jobs on this shared
    machine held the core."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c = time.thread_time()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best_cpu = min(best_cpu, time.thread_time() - c)
        best = min(best, dt)
        if dt > budget:
            break
    if cpu_key is not None:
        CPU_TIMES[cpu_key] = best_cpu
    return best, out


def same(a, b) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def run(args):
    hqdb, reason = sb.import_hqdb()
    if hqdb is None:
        sys.exit(f"hqdb not importable: {reason}")
    from hqdb import kernels

    faiss, faiss_reason = sb.import_faiss()
    try:
        import torch

        from hqdb.kernels import torch_backend
        torch_reason = None
    except ImportError as e:
        torch = torch_backend = None
        torch_reason = str(e)
    threads = os.cpu_count() or 1
    load_start = os.getloadavg()
    n_max_q = max(args.batches)
    bw, bw_how = sb.measure_bandwidth(256 << 20, threads)
    rows, failures = [], []
    cuda = torch is not None and torch.cuda.is_available()
    for n in args.sizes:
        sb.log(f"N = {n:,}: making data")
        codes, qcodes, rowids, qbits, qvecs, cbs = make_data(n, n_max_q)
        luts = np.stack([kernels.aqd_lut(v, cbs) for v in qvecs])
        index = None
        if faiss is not None:
            index = faiss.IndexBinaryFlat(BITS)
            index.add(codes)
        resident = {}
        if torch_backend is not None:
            resident["cpu"] = torch_backend.DeviceCodes(codes, qcodes, rowids, "cpu")
            if cuda:
                resident["cuda"] = torch_backend.DeviceCodes(codes, qcodes, rowids, "cuda")
        for mode, cand in args.modes:
            for b in args.batches:
                qb, lt = qbits[:b], luts[:b]
                repeat = args.repeat if b < 1000 else max(1, args.repeat // 2)
                r = {"n": n, "mode": mode, "candidates": cand, "batch": b,
                     "load": os.getloadavg()[0]}
                kw = dict(k=K, candidates=cand, mode=mode)

                def singles(th):
                    return [kernels.search(codes, qcodes, rowids, None, qb[j], lt[j], threads=th, **kw)
                            for j in range(b)]

                for th, name in ((1, "single_1t"), (threads, "single_all")):
                    r[name], ref = best_time(lambda: singles(th), repeat, args.budget,
                                             cpu_key=(len(rows), name) if th == 1 else None)
                ref = tuple(np.stack([s[i] for s in ref]) for i in range(3))
                for th, name in ((1, "batched_1t"), (threads, "batched_all")):
                    r[name], got = best_time(
                        lambda: kernels.search_many(codes, qcodes, rowids, None, qb, lt, threads=th, **kw),
                        repeat, args.budget, cpu_key=(len(rows), name) if th == 1 else None)
                    if not same(got, ref):
                        failures.append(f"{name} N={n} {mode} B={b}")
                for dev, dc in resident.items():
                    if dev == "cpu" and n * b > args.torch_cpu_max:
                        r["torch_" + dev] = None  # too slow to time here; see the notes
                        continue
                    r["torch_" + dev], got = best_time(
                        lambda: torch_backend.search_many(codes, qcodes, rowids, None, qb, lt,
                                                          resident=dc, **kw),
                        max(1, repeat // 2), args.budget)
                    if not same(got, ref):
                        failures.append(f"torch {dev} N={n} {mode} B={b}")
                if index is not None and mode == "hamming":
                    for th, name in ((1, "faiss_1t"), (threads, "faiss_all")):
                        faiss.omp_set_num_threads(th)
                        r[name], _ = best_time(lambda: index.search(qb, K), repeat, args.budget,
                                               cpu_key=(len(rows), name) if th == 1 else None)
                for name in ("single_1t", "batched_1t", "faiss_1t"):
                    if (len(rows), name) in CPU_TIMES:
                        r["cpu_" + name] = CPU_TIMES[(len(rows), name)]
                traffic = codes.nbytes + (qcodes.nbytes if mode == "aqd" else 0)
                r["floor"] = traffic / bw
                rows.append(r)
                sb.log("  " + line(r))
        del codes, qcodes, index, resident
    return dict(rows=rows, failures=failures, bw=bw, bw_how=bw_how, threads=threads,
                load_start=load_start, load_end=os.getloadavg(), cuda=cuda,
                torch_reason=torch_reason, faiss_reason=faiss_reason,
                torch_threads=torch.get_num_threads() if torch is not None else None,
                info=kernels.info(), versions={"numpy": np.__version__,
                                               "torch": getattr(torch, "__version__", None),
                                               "faiss": getattr(faiss, "__version__", None)})


METHODS = [("single_1t", "single x B, 1 thread"), ("single_all", "single x B, all threads"),
           ("batched_1t", "batched, 1 thread"), ("batched_all", "batched, all threads"),
           ("torch_cpu", "torch cpu"), ("torch_cuda", "torch cuda"),
           ("faiss_1t", "FAISS, 1 thread"), ("faiss_all", "FAISS, all threads"),
           ("floor", "memory floor")]


def qps(r, key):
    t = r.get(key)
    return None if t is None else r["batch"] / t


def fmt(v):
    return "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:,.1f}")


def fmt2(v):
    return "—" if v is None else f"{v:.2f}"


def line(r):
    return (f"{r['mode']:<9} c={r['candidates']:<5} B={r['batch']:<5} " +
            " ".join(f"{k}={fmt(qps(r, k))}" for k, _ in METHODS if k in r) + " | cpu: " +
            " ".join(f"{k[4:]}={fmt(qps(r, k))}" for k in r if k.startswith("cpu_")))


def ratio(a, b):
    return None if a is None or b is None else a / b


def write_report(res, args, out_md: Path, out_png: Path, cmd: str, elapsed: float):
    mi = sb.machine_info()
    rows = res["rows"]
    L = ["## Batched search (`bench/batch.py`)", "",
         f"Generated on {res.get('date') or _now()} by `{cmd}` "
         f"({elapsed / 60:.1f} min). Machine: {mi['cpu']}, {mi['cores']} cores, {mi['memory']}; "
         f"load average at start {tuple(round(x, 2) for x in res['load_start'])}, at the end "
         f"{tuple(round(x, 2) for x in res['load_end'])} (the machine is shared with other jobs: "
         "all-thread rows are the noisiest). "
         f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items() if v)}; "
         f"hamming_impl: {res['info']['hamming_impl']}; torch CPU threads {res['torch_threads']}.",
         "",
         f"128-bit codes, {BOOKS} books x {CODEWORDS} codewords, k = {K}; queries/second (higher is "
         "better) for a batch of B queries. `single x B` runs the B queries one `kernels.search` "
         "call each; `batched` is one `kernels.search_many` call; `memory floor` is the batch's "
         f"unavoidable traffic (codes read once, plus qcodes in 'aqd' mode) at {res['bw'] / 1e9:.1f} "
         f"GB/s (best numpy read, all threads, `{res['bw_how']}`). "
         + ("A CUDA GPU was present: `torch cuda` rows ran on it." if res["cuda"] else
            "**No GPU was present on this machine**: the `torch cuda` column is empty; the torch "
            "backend ran on the CPU device only (its CUDA path is the same code)."),
         ""]
    for n in sorted({r["n"] for r in rows}):
        L += [f"### N = {n:,}", "",
              "| mode | B | " + " | ".join(lbl for _, lbl in METHODS) + " |",
              "|---|---:|" + "---:|" * len(METHODS)]
        for r in (r for r in rows if r["n"] == n):
            mode = r["mode"] + (f" c={r['candidates']}" if r["mode"] == "two_stage" else "")
            L.append(f"| {mode} | {r['batch']} | " + " | ".join(fmt(qps(r, k)) for k, _ in METHODS) + " |")
        L.append("")
    L += ["### One thread, by CPU time", "",
          "The same one-thread runs, as queries per second of the calling thread's CPU time "
          "(`time.thread_time`): one-thread runs execute on that thread, so this leaves out the "
          "time other jobs held the core and is the steadier measure on this shared machine.", "",
          "| N | mode | B | single x B | batched | FAISS | batched / single | batched / FAISS |",
          "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mode = r["mode"] + (f" c={r['candidates']}" if r["mode"] == "two_stage" else "")
        s1, b1, f1 = (qps(r, "cpu_" + k) for k in ("single_1t", "batched_1t", "faiss_1t"))
        L.append(f"| {r['n']:,} | {mode} | {r['batch']} | {fmt(s1)} | {fmt(b1)} | {fmt(f1)} | "
                 f"{fmt2(ratio(b1, s1))} | {fmt2(ratio(b1, f1))} |")
    L += ["", "### Targets", ""]
    for r in rows:
        if r["n"] == 1_000_000 and r["batch"] == 1000:
            L.append(target_line(r, f"1M rows, {r['mode']} (c={r['candidates']}), B = 1000, batched vs "
                                    "1000 single searches", "single", 3))
            if "faiss_all" in r:
                L.append(target_line(r, "1M rows, hamming, B = 1000, batched vs FAISS IndexBinaryFlat "
                                        "batched", "faiss", 1))
    L += ["", "Correctness: " + ("every batched result (native and torch) equal to the one-by-one "
                                 "results (rowids, distances, Hamming distances)."
                                 if not res["failures"] else "MISMATCHES: " + ", ".join(res["failures"])),
          "",
          "Notes: all-thread rows (`threads` = all cores for the kernels, FAISS's OpenMP threads) "
          "are at the mercy of the other jobs on this 2-core machine: an OpenMP team waits for "
          "its slowest thread, so one-query searches with 2 threads ran at ~100-300 queries/s while "
          "a core was busy elsewhere (see \"hq_threads under CPU contention\" above); ratios "
          "against those rows are not meaningful in this run, hence the targets by one-thread CPU "
          "time. The memory floor assumes the codes come from DRAM once per batch; at 1M rows "
          "(16 MB) they stay in the 32 MB L3 between queries, so one-query searches can beat it. "
          "The batched kernel reads each block of codes once per thread (query group), not once "
          "per query. "
          "The 10M-row table repeats the 1M clustered rows with 5% of bits flipped per copy. "
          f"torch cpu is timed only where N x B <= {args.torch_cpu_max:,} (it scans with a float32 "
          "GEMM over +-1 bit vectors: a portable reference path, far slower than the native "
          "popcount on a CPU; the GEMM is what a GPU is fast at). "
          + (f"torch unavailable: {res['torch_reason']}. " if res["torch_reason"] else "")
          + (f"FAISS unavailable: {res['faiss_reason']}. " if res["faiss_reason"] else ""),
          "", f"![batched search]({out_png.name})", ""]
    replace_section(out_md, "batch.py", L)


def _now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def target_line(r: dict, what: str, peer: str, goal: float) -> str:
    """One target of the report: batched against ``peer`` (single or faiss) in row r, judged by
    one-thread CPU time, with the wall-clock ratios beside it."""
    xc = ratio(qps(r, "cpu_batched_1t"), qps(r, f"cpu_{peer}_1t"))
    x1 = ratio(qps(r, "batched_1t"), qps(r, f"{peer}_1t"))
    xa = ratio(qps(r, "batched_all"), qps(r, f"{peer}_all"))
    return (f"- {what}: **{fmt2(xc)}x** at 1 thread by CPU time; wall clock {fmt2(x1)}x at 1 thread, "
            f"{fmt2(xa)}x at all threads. Target >= {goal}x: "
            f"{'met' if xc is not None and xc >= goal else 'NOT met'} (by CPU time, 1 thread).")


def plot(res, out_png: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = res["rows"]
    sizes = sorted({r["n"] for r in rows})
    modes = list(dict.fromkeys((r["mode"], r["candidates"]) for r in rows))
    fig, axes = plt.subplots(len(sizes), len(modes), figsize=(4.4 * len(modes), 3.6 * len(sizes)),
                             squeeze=False)
    for ax, (n, (mode, cand)) in zip(axes.flat, [(n, mc) for n in sizes for mc in modes]):
        sel = [r for r in rows if (r["n"], r["mode"], r["candidates"]) == (n, mode, cand)]
        bs = [r["batch"] for r in sel]
        for i, (key, lbl) in enumerate(METHODS):  # one colour per method in every panel
            ys = [qps(r, key) for r in sel]
            if any(y is not None for y in ys):
                ax.plot([b for b, y in zip(bs, ys) if y], [y for y in ys if y], marker="o", label=lbl,
                        color=f"C{i}", linestyle="--" if key == "floor" else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("queries / s")
        ax.set_title(f"N={n:,} {mode}" + (f" c={cand}" if mode == "two_stage" else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def parse_modes(values):
    out = []
    for v in values:
        mode, _, cand = v.partition(":")
        out.append((mode, int(cand) if cand else K))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1M only, fewer repeats")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--modes", nargs="+", default=["hamming", "two_stage:100", "two_stage:1000"],
                   help="mode[:candidates]")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--budget", type=float, default=3.0, help="stop repeating once a run takes this long (s)")
    p.add_argument("--torch-cpu-max", type=int, default=100_000_000,
                   help="time torch on the CPU only where rows x batch <= this")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report and plot from the last run's bench/.cache/batch.json")
    a = p.parse_args(argv)
    a.sizes = a.sizes or ([1_000_000] if a.quick else [1_000_000, 10_000_000])
    a.repeat = a.repeat or (2 if a.quick else 3)
    a.modes = parse_modes(a.modes)
    t0 = time.perf_counter()
    png = a.out.parent / "batch.png"
    raw = sb.CACHE / "batch.json"
    if a.report_only:
        res = json.loads(raw.read_text())
        cmd, elapsed = res["cmd"], res["elapsed"]
    else:
        res = run(a)
        cmd = ("python bench/batch.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        elapsed = time.perf_counter() - t0
        res.update(cmd=cmd, elapsed=elapsed, date=_now())
        sb.CACHE.mkdir(exist_ok=True)
        raw.write_text(json.dumps(res, default=str, indent=1))  # raw figures
    plot(res, png)
    write_report(res, a, a.out, png, cmd, elapsed)
    sb.log(f"wrote {a.out} and {png}; {len(res['failures'])} mismatches")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
