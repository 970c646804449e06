"""Scale figures (issue 15, part 3): what a table of 10M or 30M rows costs, to size a machine.

    python bench/search.py --scale 10M 30M                      # 64-bit codes (~15 min)
    python bench/search.py --scale 10M 30M --scale-bits 64 128  # and 128-bit (~35 min)
    python bench/search.py --scale 200k --queries 40 --out /tmp/r.md   # a quick check
    python bench/scale.py --render                              # rewrite the section from the saved JSON

Data: the clustered codes of bench/mih.py (its generator, same seeds: N / 2000 centres of
uniform random bits, 3 bits flipped per 64-bit row, 8 per 128-bit row; queries are fresh draws of
the same kind). Per row count and code length, two file databases under bench/.cache/scale
(``--tmpdir`` elsewhere; deleted afterwards unless ``--keep``):

* ``h.db``: ``hq(dim=bits, books=0, index='mih')``, searched with ``mode = 'hamming'``;
* ``s.db``: ``hq(dim=bits, books=4, codewords=256, index='mih')`` with uniform random
  quantization codes and codebooks (the AQD values mean nothing, the work is the same),
  searched two-stage, ``candidates = 1000``.

Both are filled with ``hqdb.insert_codes`` in batches of 1M rows (one call, so one transaction,
each), timed. Everything else runs in fresh Python processes, so no figure carries another's
memory or warm caches:

* open: ``hqdb.connect`` + the first query (the cache load, and with the index on its build),
  with the file in the OS page cache (*warm*) and after ``posix_fadvise(DONTNEED)`` on it
  (*cold*), with the index on and off; the process's resident set (``VmRSS``) after 20 more
  queries and its peak (``VmHWM``);
* search: one process per table, k = 10, one thread, through SQL (``hq_match``); the linear scan
  (the same table with the index switched off, ``hqdb.engine.mih.MIN_ROWS`` above the row count)
  and MIH take turns in ``--rounds`` rounds of ``queries / rounds`` queries each (the one that
  goes first alternates), so a burst of load on this shared machine hits both; every MIH result
  is compared with the scan's (rowids, distances, Hamming distances) — a difference is a failure.

Last, in the building process: SQL ``executemany`` INSERT of ``--sql-rows`` rows between BEGIN and
COMMIT into the full table (after a first search loaded its caches, as a serving application's
connection would have), then the first search after it, then a DELETE of those rows; three rounds.

The results go to bench/.cache/scale/results.json (merged by (rows, bits), so runs can add
configurations) and to the "Scale" section of bench/RESULTS.md (the default sizes 10M and 30M;
else bench/.cache/scale/RESULTS.md, or ``--out``), with a 100M-on-paper table extrapolated from
the two largest row counts measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search as S
from mih import CLUSTER_ROWS, clustered
from sections import replace_section

SECTION = "search.py --scale"
DEFAULT_ROWS, DEFAULT_BITS = [10_000_000, 30_000_000], [64]
BATCH = 1_000_000
BOOKS, K, C = 4, 10, 1000
PAPER_ROWS = 100_000_000
CACHE_DIR = S.CACHE / "scale"
JSON_PATH = CACHE_DIR / "results.json"

HAM_SQL = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND mode = 'hamming'"
TWO_SQL = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND candidates = ?"

# One fresh process: open the table, first query, then either 20 more queries (kind "open") or
# the rounds of scan and MIH (kind "search"). Prints one JSON line.
WORKER = r"""
import gc, json, sys, time
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
import numpy as np
import hqdb
from hqdb.engine import mih
t1 = time.perf_counter()
ON = mih.MIN_ROWS
OFF = 1 << 62
if not cfg["index"]:
    mih.MIN_ROWS = OFF
q = np.load(cfg["queries"])
extra = (10,) if cfg["mode"] == "hamming" else (10, cfg["candidates"])
sql = cfg["sql"]

def run(i):
    return db.execute(sql, (q[i].tobytes(), *extra)).fetchall()

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")

def vmrss():
    return status("VmRSS")

t2, c2 = time.perf_counter(), time.process_time()
db = hqdb.connect(cfg["path"])
t3 = time.perf_counter()
run(0)
t4, c4 = time.perf_counter(), time.process_time()
out = {"import_s": t1 - t0, "connect_s": t3 - t2, "first_s": t4 - t3, "rss_first_mib": vmrss()}
out["open_cpu_s"] = c4 - c2  # CPU time of connect + first query: what load on the machine does not inflate
ix = db.hq.table("t").stores[0].index
out["build_s"] = ix.stats["build_s"] if ix is not None and ix.stats["builds"] else 0.0
if cfg["kind"] == "open":
    t5 = time.perf_counter()
    run(1)
    out["second_ms"] = (time.perf_counter() - t5) * 1e3
    for i in range(2, 22):
        run(i)
else:
    rounds, nq, wu = cfg["rounds"], cfg["queries_n"], cfg["warmup"]
    per = max(1, nq // rounds)
    lat = {"mih": [], "scan": []}
    cpu = {"mih": [], "scan": []}
    res = {"mih": {}, "scan": {}}
    for name, val in (("mih", ON), ("scan", OFF)):
        mih.MIN_ROWS = val
        for i in range(wu):
            run(i)
    ix.stats.update(searches=0, scans=0, skipped=0)
    gc.collect()
    gc.disable()
    for r in range(rounds):
        order = ("mih", "scan") if r % 2 == 0 else ("scan", "mih")
        for name in order:
            mih.MIN_ROWS = ON if name == "mih" else OFF
            for i in range(wu + r * per, wu + (r + 1) * per):
                t, c = time.perf_counter(), time.thread_time()
                got = run(i)
                lat[name].append(time.perf_counter() - t)
                cpu[name].append(time.thread_time() - c)
                res[name][i] = got
    gc.enable()
    out["lat_ms"] = {k: [x * 1e3 for x in v] for k, v in lat.items()}
    out["cpu_ms"] = {k: [x * 1e3 for x in v] for k, v in cpu.items()}
    out["differ"] = sum(res["mih"][i] != res["scan"][i] for i in res["mih"])
    out["fell_back"] = ix.stats["scans"] + ix.stats["skipped"]
    out["m"] = ix.m
    out["widths"] = [int(w) for w in ix.tables.widths]
    out["index_bytes"] = int(ix.nbytes)
    st = db.hq.table("t").stores[0]
    out["cache_bytes"] = int(sum(a.nbytes for a in (st.codes, st.qcodes, st.rowids, st.valid) if a is not None))
out["rss_mib"] = vmrss()
# the peak: VmHWM, not ru_maxrss (Linux keeps ru_maxrss across fork + exec: it would show the
# parent's, the building process's, resident set)
out["maxrss_mib"] = status("VmHWM")
print(json.dumps(out))
"""


def parse_rows(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", s)
    if not m:
        raise argparse.ArgumentTypeError(f"not a row count: {s!r} (e.g. 10M, 300k, 5000)")
    return int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6}[m.group(2).lower()])


def human(n: int) -> str:
    return f"{n // 10**6}M" if n % 10**6 == 0 else (f"{n // 10**3}k" if n % 10**3 == 0 else str(n))


def worker(cfg: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(S.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"worker failed ({cfg['kind']} {cfg['path']}): {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def others(fn, *args):
    """(fn(*args), cores' worth of CPU that processes other than this one and its children used
    meanwhile: the contention a measurement ran under)."""
    t0, b0 = os.times(), S.cpu_snapshot()
    out = fn(*args)
    t1, b1 = os.times(), S.cpu_snapshot()
    mine = (t1.user + t1.system + t1.children_user + t1.children_system) - (
        t0.user + t0.system + t0.children_user + t0.children_system
    )
    wall = b1[2] - b0[2]
    return out, (max(0.0, (b1[0] - b0[0]) - mine) / wall if wall > 0.3 else float("nan"))


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def build(hqdb, path: Path, bits: int, codes: np.ndarray, qcodes, cbs) -> dict:
    """Create the table and fill it with insert_codes in BATCH-row calls; the rates."""
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    db = hqdb.connect(path)
    books = 0 if qcodes is None else BOOKS
    db.execute(
        f"CREATE VIRTUAL TABLE t USING hq(dim={bits}, books={books}"
        + (", codewords=256" if books else "")
        + ", index='mih')"
    )
    if books:
        hqdb.set_codebooks(db, "t", cbs)
    n = len(codes)
    batch_s = []
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, n, BATCH):
        hi = min(n, lo + BATCH)
        t = time.perf_counter()
        hqdb.insert_codes(db, "t", codes[lo:hi], None if qcodes is None else qcodes[lo:hi])
        batch_s.append((hi - lo, time.perf_counter() - t))
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    db.close()
    last_n, last_s = batch_s[-1]
    return {
        "insert_rps": n / total,
        "insert_s": total,
        "insert_cpu_rps": n / total_cpu,
        "first_batch_rps": batch_s[0][0] / batch_s[0][1],
        "last_batch_rps": last_n / last_s,
        "db_bytes": file_bytes(path),
    }


def sql_inserts(hqdb, path: Path, bits: int, n: int, extra_codes, extra_q, query: bytes, mode_args) -> dict:
    """Rounds of: BEGIN; executemany INSERT; COMMIT; first search; DELETE them (restore)."""
    db = hqdb.connect(path)
    sql = HAM_SQL if extra_q is None else TWO_SQL
    db.execute(sql, (query, *mode_args)).fetchall()  # loads the caches, builds the index
    m = len(extra_codes)
    if extra_q is None:
        ins = "INSERT INTO t(rowid, code) VALUES (?, ?)"
        rows = [(n + i + 1, extra_codes[i].tobytes()) for i in range(m)]
    else:
        ins = "INSERT INTO t(rowid, code, qcode) VALUES (?, ?, ?)"
        rows = [(n + i + 1, extra_codes[i].tobytes(), extra_q[i].tobytes()) for i in range(m)]
    out: dict = {"rows": m, "rps": [], "search_after_ms": [], "delete_rps": []}
    for _ in range(3):
        S.wait_quiet()
        t = time.perf_counter()
        db.execute("BEGIN")
        db.executemany(ins, rows)
        db.execute("COMMIT")
        out["rps"].append(m / (time.perf_counter() - t))
        t = time.perf_counter()
        db.execute(sql, (query, *mode_args)).fetchall()
        out["search_after_ms"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        with db.transaction():
            db.execute("DELETE FROM t WHERE rowid > ?", (n,))
        out["delete_rps"].append(m / (time.perf_counter() - t))
    (count,) = db.execute("SELECT count(*) FROM t").fetchone()
    db.close()
    if count != n:
        raise RuntimeError(f"{path}: {count} rows after the SQL insert rounds, expected {n}")
    return out


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run_config(a, hqdb, n: int, bits: int, tmp: Path) -> dict:
    nq, wu = a.queries, a.warmup
    rng = np.random.default_rng([0, 15, bits])  # bench/mih.py's seeds
    flips = max(1, bits // 16) - (1 if bits == 64 else 0)
    clusters = max(1, n // CLUSTER_ROWS)
    words = bits // 64
    centres = rng.integers(0, 2**63, (clusters, words), dtype=np.uint64) * 2 + rng.integers(
        0, 2, (clusters, words), dtype=np.uint64
    )
    S.log(f"\n[{human(n)} x {bits} bits] data: {clusters:,} clusters, {flips} flipped bits per row ...")
    t0 = time.perf_counter()
    codes = clustered(rng, centres, n + a.sql_rows, flips)
    qbits = clustered(rng, centres, nq + wu + 22, flips)
    qcodes = rng.integers(0, 256, (n + a.sql_rows, BOOKS), dtype=np.uint8)
    cbs = (0.1 * rng.standard_normal((BOOKS, 256, bits))).astype(np.float32)
    qvec = (np.unpackbits(qbits, axis=1, bitorder="little").astype(np.float32) * 2 - 1) * (
        0.5 + rng.random(qbits.shape[0] * bits, dtype=np.float32).reshape(-1, bits)
    )
    S.log(f"  generated in {time.perf_counter() - t0:.1f} s")
    res: dict = {"n": n, "bits": bits, "clusters": clusters, "flips": flips, "queries": nq, "rounds": a.rounds}
    res["load_start"] = [round(x, 2) for x in os.getloadavg()]
    res["when"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    qpaths = {"hamming": tmp / f"q{bits}_bits.npy", "two_stage": tmp / f"q{bits}_vec.npy"}
    np.save(qpaths["hamming"], qbits)
    np.save(qpaths["two_stage"], qvec)
    for mode in ("hamming", "two_stage"):
        path = tmp / f"{'h' if mode == 'hamming' else 's'}{bits}.db"
        qc = None if mode == "hamming" else qcodes
        S.wait_quiet()
        b = build(hqdb, path, bits, codes[:n], None if qc is None else qc[:n], cbs)
        S.log(
            f"  {mode}: insert_codes {b['insert_rps']:,.0f} rows/s overall (last 1M batch "
            f"{b['last_batch_rps']:,.0f}), file {b['db_bytes'] / 2**20:,.0f} MiB"
        )
        base = {
            "path": str(path),
            "sql": HAM_SQL if mode == "hamming" else TWO_SQL,
            "mode": mode,
            "candidates": C,
            "queries": str(qpaths[mode]),
        }
        opens: dict = {}
        for index in (False, True):
            for temp in ("warm", "cold"):
                runs = []
                for _ in range(a.open_runs):
                    if temp == "cold":
                        S.evict_from_page_cache(path)
                    else:
                        worker({**base, "kind": "open", "index": index})  # warms the page cache
                    S.wait_quiet()
                    runs.append(worker({**base, "kind": "open", "index": index}))
                key = f"{'mih' if index else 'scan'}_{temp}"
                opens[key] = {f: float(np.median([r[f] for r in runs])) for f in runs[0]}
                S.log(
                    f"  open {key}: connect + first query {opens[key]['first_s'] + opens[key]['connect_s']:.2f} s "
                    f"(index build {opens[key]['build_s']:.2f} s), RSS {opens[key]['rss_mib']:,.0f} MiB "
                    f"(peak {opens[key]['maxrss_mib']:,.0f})"
                )
        S.wait_quiet()
        job = {**base, "kind": "search", "index": True, "rounds": a.rounds, "queries_n": nq, "warmup": wu}
        sr, other = others(worker, job)
        sr["other_cores"] = other
        lat, cpu = sr.pop("lat_ms"), sr.pop("cpu_ms")
        for name in ("mih", "scan"):
            sr[name] = {"p50": pct(lat[name], 50), "p95": pct(lat[name], 95), "n": len(lat[name])}
            sr[name]["cpu_p50"] = pct(cpu[name], 50)
        S.log(
            f"  search {mode}: MIH p50 {sr['mih']['p50']:.3f} ms, scan p50 {sr['scan']['p50']:.3f} ms; "
            f"{sr['differ']} differ, {sr['fell_back']} fell back; m = {sr['m']}"
        )
        args = (K,) if mode == "hamming" else (K, C)
        sq = sql_inserts(
            hqdb,
            path,
            bits,
            n,
            codes[n : n + a.sql_rows],
            None if qc is None else qc[n : n + a.sql_rows],
            qbits[0].tobytes() if mode == "hamming" else qvec[0].tobytes(),
            args,
        )
        S.log(
            f"  SQL executemany INSERT of {a.sql_rows:,} rows: {np.median(sq['rps']):,.0f} rows/s "
            f"(first search after {np.median(sq['search_after_ms']):.1f} ms)"
        )
        res[mode] = {"build": b, "open": opens, "search": sr, "sql": sq}
        if not a.keep:
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return res


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def l3_cache() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    for line in out.splitlines():
        if line.startswith("L3 cache:"):
            return line.split(":", 1)[1].strip()
    return "?"


def fit_line(x0, y0, x1, y1, x):
    """The straight line through (x0, y0) and (x1, y1), at x."""
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def fit_power(x0, y0, x1, y1, x):
    """y = a x^e through both points, at x; and e."""
    e = math.log(y1 / y0) / math.log(x1 / x0)
    return y1 * (x / x1) ** e, e


def choose_m(bits: int, n: int) -> int:
    from hqdb.engine.mih import choose_m as cm

    return cm(bits, n)


def runs_of(data: dict) -> list[dict]:
    """The runs whose results a saved JSON holds (older files kept one, in ``meta``)."""
    if "runs" in data:
        return list(data["runs"])
    m = data.get("meta")
    keys = ("cmd", "when", "head", "load_start", "load_end", "elapsed_min")
    return [{k: m[k] for k in keys if k in m}] if m else []


def cpu_or_wall(s: dict) -> float:
    """A search's p50 in CPU time when measured (what load on the machine inflates least), else wall."""
    return s.get("cpu_p50", s["p50"])


def report(data: dict) -> list[str]:
    meta, results = data["meta"], sorted(data["results"], key=lambda r: (r["bits"], r["n"]))
    made = "; then ".join(
        f"`{r['cmd']}` on {r['when']} ({r.get('elapsed_min', 0):.0f} min, git HEAD {r['head']}, load average "
        f"{tuple(r['load_start'])} at the start, {tuple(r.get('load_end', ['?']))} at the end)"
        for r in runs_of(data)
    )
    L = [
        f"## Scale: {' and '.join(sorted({human(r['n']) for r in results}, key=parse_rows))} rows",
        "",
        f"Generated by {made}; {meta['cpu']}, {meta['cores']} cores, {meta['memory']} RAM, L3 {meta['l3']}; "
        f"lscpu flags: {meta['flags']}; `hqdb.info()`: `{json.dumps(meta['info'])}`.",
        "",
        "A machine shared with other jobs: the last column of the first table is the CPU other processes used "
        "while the rounds ran (2 cores in all). Wall-clock times are inflated by that load; each timing is "
        "therefore also given in CPU time (`time.thread_time` around each query, `time.process_time` around an "
        "open), which load inflates far less (only through the shared caches and memory bandwidth), and the "
        "100M extrapolation uses the CPU times.",
        "",
        "Data: bench/mih.py's clustered codes (N / 2000 centres, 3 of 64 or 8 of 128 bits flipped per row; queries "
        "fresh draws of the same kind). Two tables per row count, each in its own file: `books=0` (searched "
        f"`mode = 'hamming'`) and `books={BOOKS}, codewords=256` (two-stage, `candidates = {C}`), both `index='mih'`. "
        "k = 10, one thread, through SQL. Every figure below is from a fresh Python process (see bench/scale.py). "
        "*Scan* is the same table with the index switched off: the kernel's linear scan "
        f"(on this CPU the `{meta['info'].get('hamming_path', '?')}` path).",
        "",
        "### Search latency",
        "",
        "Scan and MIH take turns in rounds of queries in one process; p50 / p95 over all rounds, wall clock, and "
        "the p50 of CPU time. MIH results equal the scan's on every query "
        + (
            "(checked)."
            if not any(r[m]["search"]["differ"] for r in results for m in ("hamming", "two_stage"))
            else "— **NOT on every query: see the differ column**."
        ),
        "",
        "| rows | bits | search | scan p50 / p95 ms | scan CPU p50 ms | MIH p50 / p95 ms | MIH CPU p50 ms | "
        "MIH speed-up (CPU) | m | queries (rounds) | fell back to scan | differ | other processes' CPU, cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cpu_cell(s, nd):
        return f"{s['cpu_p50']:.{nd}f}" if "cpu_p50" in s else "?"

    for r in results:
        for mode, label in (("hamming", "Hamming"), ("two_stage", f"two-stage c={C}")):
            s = r[mode]["search"]
            sc, mi = s["scan"], s["mih"]
            L.append(
                f"| {r['n']:,} | {r['bits']} | {label} | {sc['p50']:.2f} / {sc['p95']:.2f} | {cpu_cell(sc, 2)} | "
                f"{mi['p50']:.3f} / {mi['p95']:.3f} | {cpu_cell(mi, 3)} | **{sc['p50'] / mi['p50']:.1f}×** "
                f"({cpu_or_wall(sc) / cpu_or_wall(mi):.1f}×) | "
                f"{s['m']} | {mi['n']} ({r['rounds']}) | {s['fell_back']} | {s['differ']} | "
                + (f"{s['other_cores']:.2f} |" if "other_cores" in s else "? |")
            )
    L += [
        "",
        "### Memory, disk and open time",
        "",
        "*RSS*: the process's resident set after `hqdb.connect`, the first query and 20 more (it includes Python, "
        "numpy, apsw and hqdb themselves: compare the *import only* line); *peak* is its `VmHWM` (with the index "
        "on: while the index is built). *Open*: `hqdb.connect` + the first query, which loads the table's code "
        "cache (and, index on, builds the index: its share in brackets, including numba's start-up); *warm* with "
        "the file in the OS page cache, *cold* after dropping it (`posix_fadvise(DONTNEED)`; the disk here is a "
        f"virtual one). Medians of {meta['open_runs']} processes.",
        "",
        "| rows | bits | table | file MiB (B/row) | RSS index off MiB (peak) | RSS index on MiB (peak) | "
        "open warm, off s | open warm, on s (build) | open warm, CPU s, off / on | open cold, off s | "
        "open cold, on s | index B/row | cache B/row |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for mode, label in (("hamming", "books=0"), ("two_stage", f"books={BOOKS}")):
            x = r[mode]
            o, b, s = x["open"], x["build"], x["search"]

            def op(key, o=o):
                return o[key]["connect_s"] + o[key]["first_s"]

            ocpu = o["mih_warm"].get("open_cpu_s")
            ocpu_off = o["scan_warm"].get("open_cpu_s")
            L.append(
                f"| {r['n']:,} | {r['bits']} | {label} | {b['db_bytes'] / 2**20:,.0f} ({b['db_bytes'] / r['n']:.1f}) | "
                f"{o['scan_warm']['rss_mib']:,.0f} ({o['scan_warm']['maxrss_mib']:,.0f}) | "
                f"{o['mih_warm']['rss_mib']:,.0f} ({o['mih_warm']['maxrss_mib']:,.0f}) | "
                f"{op('scan_warm'):.2f} | {op('mih_warm'):.2f} ({o['mih_warm']['build_s']:.2f}) | "
                + (f"{ocpu_off:.2f} / {ocpu:.2f} | " if ocpu is not None else "? | ")
                + f"{op('scan_cold'):.2f} | {op('mih_cold'):.2f} | "
                f"{s['index_bytes'] / r['n']:.1f} | {s['cache_bytes'] / r['n']:.1f} |"
            )
    imp = meta.get("import_rss_mib")
    if imp:
        L += ["", f"Import only (`import numpy, hqdb`, no database): RSS {imp:,.0f} MiB."]
    L += [
        "",
        "### Insert throughput",
        "",
        f"`hqdb.insert_codes` from empty in calls of {BATCH:,} rows (each one transaction): overall rate, the "
        "last call's (into a table already N − 1M rows big), and the overall rate per CPU-second of the loading "
        "process (waits for the disk not counted). SQL: "
        f"`executemany` INSERT of {data['meta']['sql_rows']:,} rows between BEGIN and COMMIT into the full table, "
        "on a connection that has searched it (its caches and index loaded), median of 3 rounds (each followed by "
        "the first search, and a `DELETE ... WHERE rowid > N` of those rows). The index scores changed rows "
        "directly until there are more than N / 256 of them (at most 65,536), then the next search rebuilds it: "
        "with 100,000 rows added, that first search is a full index rebuild.",
        "",
        "| rows | bits | table | insert_codes rows/s (last call) | insert_codes rows per CPU-second | "
        "SQL executemany rows/s | first search after, ms | SQL DELETE rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for mode, label in (("hamming", "books=0"), ("two_stage", f"books={BOOKS}")):
            b, q = r[mode]["build"], r[mode]["sql"]
            L.append(
                f"| {r['n']:,} | {r['bits']} | {label} | {b['insert_rps']:,.0f} ({b['last_batch_rps']:,.0f}) | "
                + (f"{b['insert_cpu_rps']:,.0f} | " if "insert_cpu_rps" in b else "? | ")
                + f"{np.median(q['rps']):,.0f} | {np.median(q['search_after_ms']):.1f} | "
                f"{np.median(q['delete_rps']):,.0f} |"
            )
    L += paper(results)
    fails = [
        f"{r['n']:,} x {r['bits']} {m}: {r[m]['search']['differ']} queries differ from the scan"
        for r in results
        for m in ("hamming", "two_stage")
        if r[m]["search"]["differ"]
    ]
    if fails:
        L += ["", "**Failures:**", *[f"- {f}" for f in fails]]
    return L


def paper(results: list[dict]) -> list[str]:
    """100M rows extrapolated from the two largest row counts measured per code length."""
    by_bits: dict = {}
    for r in results:
        by_bits.setdefault(r["bits"], []).append(r)
    rows, model = [], []
    for bits, rs in sorted(by_bits.items()):
        rs = sorted(rs, key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        r0, r1 = rs[-2], rs[-1]
        n0, n1, x = r0["n"], r1["n"], PAPER_ROWS
        for mode, label in (("hamming", "books=0"), ("two_stage", f"books={BOOKS}")):
            a, b = r0[mode], r1[mode]

            def slope(get, a=a, b=b, n0=n0, n1=n1):
                return (get(b) - get(a)) / (n1 - n0)

            def fixed(get, a=a, n0=n0, slope=slope):
                return get(a) - slope(get) * n0

            def lin(get, fixed=fixed, slope=slope, x=x):
                return fixed(get) + slope(get) * x

            def rss(key, field="rss_mib"):
                return lambda z: z["open"][key][field] * 2**20

            def open_cpu(z):
                o = z["open"]["mih_warm"]
                return o.get("open_cpu_s", o["connect_s"] + o["first_s"])

            def open_off(z):
                o = z["open"]["scan_warm"]
                return o.get("open_cpu_s", o["connect_s"] + o["first_s"])

            def scan_ms(z):
                return cpu_or_wall(z["search"]["scan"])

            mih_p50, e = fit_power(n0, cpu_or_wall(a["search"]["mih"]), n1, cpu_or_wall(b["search"]["mih"]), x)
            scan = lin(scan_ms)
            ins = b["build"].get("insert_cpu_rps", b["build"]["insert_rps"])
            model.append(
                f"| {bits} | {label} | {b['build']['db_bytes'] / n1:.1f} | "
                f"{fixed(rss('scan_warm')) / 2**20:,.0f} + {slope(rss('scan_warm')):.1f} | "
                f"{fixed(rss('mih_warm')) / 2**20:,.0f} + {slope(rss('mih_warm')):.1f} | "
                f"{fixed(rss('mih_warm', 'maxrss_mib')) / 2**20:,.0f} + {slope(rss('mih_warm', 'maxrss_mib')):.1f} | "
                f"{fixed(scan_ms):.2f} + {slope(scan_ms) * 1e6:.3f} | {slope(open_cpu) * 1e6 * 1e3:.0f} |"
            )
            rows.append(
                f"| {x:,} | {bits} | {label} | {b['build']['db_bytes'] / n1 * x / 2**30:.1f} | "
                f"{lin(rss('scan_warm')) / 2**30:.1f} | {lin(rss('mih_warm')) / 2**30:.1f} | "
                f"{lin(rss('mih_warm', 'maxrss_mib')) / 2**30:.1f} | {lin(open_off):.1f} | {lin(open_cpu):.1f} | "
                f"{scan:.1f} | {mih_p50:.2f} (N^{e:.2f}) | {scan / mih_p50:.0f}× | "
                f"{b['search']['m']} → {choose_m(bits, x)} | {x / ins / 60:.1f} |"
            )
    if not rows:
        return []
    return [
        "",
        f"### {human(PAPER_ROWS)} rows, on paper",
        "",
        "Not measured: extrapolated from the two largest row counts above. The model: file size in proportion "
        "to rows (the measured bytes per row); RSS, open time and the scan's p50 on the straight line through the "
        "two measured points (a fixed part plus a part per row); MIH p50 as a power of N fitted to the two points "
        "(the exponent is given: growth measured, not assumed); times in CPU time where measured (a dedicated "
        "core's figures; a cold open adds reading the file from disk). The MIH figure is the weakest: with a "
        "fixed m the buckets fill as N grows, and the automatic m (≈ bits / log2 N, column *auto m*) changes "
        "with N, which two points cannot capture; when it falls (64 bits: 3 → 2 substrings at 100M, whose "
        "32-bit substrings are kept as sorted values rather than direct tables) measure, or set `mih_m=`. "
        "Loading time at the measured insert_codes rate per CPU-second. A scan this size is bound by memory "
        "bandwidth, so it stays linear; two-stage adds the re-rank of c = 1000 rows, a fixed cost.",
        "",
        "| rows | bits | table | file GiB | RSS index off GiB | RSS index on GiB | peak while the index builds GiB | "
        "open, index off, CPU s | open + index build, CPU s | scan p50 CPU ms | MIH p50 CPU ms (fit) | "
        "MIH speed-up | auto m, measured → 100M | load with insert_codes, CPU min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The same straight lines per row: a fixed part (Python, numpy, apsw, hqdb and their buffers) plus a "
        "cost per row, from the two largest row counts.",
        "",
        "| bits | table | file B/row | RSS index off: MiB + B/row | RSS index on: MiB + B/row | "
        "peak while the index builds: MiB + B/row | scan p50 CPU: ms + ms per 1M rows | "
        "open + index build, CPU ms per 1M rows |",
        "|---|---|---|---|---|---|---|---|",
        *model,
    ]


def import_rss() -> float:
    code = "import numpy, hqdb\nprint([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1])"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(S.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=parse_rows, nargs="+", default=DEFAULT_ROWS, metavar="ROWS")
    ap.add_argument("--scale-bits", type=int, nargs="+", default=DEFAULT_BITS, choices=[64, 128])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--open-runs", type=int, default=3, help="processes per open measurement (median)")
    ap.add_argument("--sql-rows", type=int, default=100_000, help="rows of each SQL executemany round")
    ap.add_argument("--tmpdir", type=Path, default=CACHE_DIR / "db")
    ap.add_argument("--keep", action="store_true", help="keep the database files")
    ap.add_argument("--no-wait-quiet", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from the saved JSON")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="add these configurations to the saved results of the default run (replacing the same rows x bits) "
        "and rewrite bench/RESULTS.md's section: e.g. to re-measure one size on a quieter machine",
    )
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    default = sorted(a.scale) == DEFAULT_ROWS or a.merge
    out = a.out or (S.BENCH / "RESULTS.md" if default else CACHE_DIR / "RESULTS.md")
    jpath = JSON_PATH if (default or a.render) else CACHE_DIR / "results-other.json"
    if a.render:
        data = json.loads(jpath.read_text())
        replace_section(out, SECTION, report(data))
        S.log(f"wrote the '{SECTION}' section of {out}")
        return 0
    S.QUIET["enabled"], S.QUIET["max_wait"] = not a.no_wait_quiet, 5.0
    hqdb, reason = S.import_hqdb()
    if hqdb is None:
        S.log(f"hqdb could not be imported: {reason}")
        return 2
    cmd = "python bench/search.py --scale" + "".join(
        f" {x}" for x in (argv if argv is not None else sys.argv[1:]) if x != "--scale"
    )
    mi = S.machine_info()
    data = json.loads(jpath.read_text()) if jpath.exists() else {"results": []}
    runs = runs_of(data)
    data["meta"] = {
        "cmd": cmd,
        "when": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "head": S.git_head(),
        "cpu": mi["cpu"],
        "cores": mi["cores"],
        "memory": mi["memory"],
        "l3": l3_cache(),
        "flags": S.cpu_flags_summary(),
        "info": hqdb.info(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "open_runs": a.open_runs,
        "sql_rows": a.sql_rows,
        "import_rss_mib": import_rss(),
        "elapsed_min": 0.0,
    }
    S.log(f"load average at the start: {data['meta']['load_start']}")
    data["runs"] = runs + [{k: data["meta"][k] for k in ("cmd", "when", "head", "load_start")}]
    a.tmpdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failures = 0
    for bits in a.scale_bits:
        for n in sorted(a.scale):
            r = run_config(a, hqdb, n, bits, a.tmpdir)
            failures += sum(r[m]["search"]["differ"] for m in ("hamming", "two_stage"))
            data["results"] = [x for x in data["results"] if (x["n"], x["bits"]) != (n, bits)] + [r]
            data["meta"]["elapsed_min"] = (time.perf_counter() - t0) / 60
            data["meta"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
            data["runs"][-1].update(elapsed_min=data["meta"]["elapsed_min"], load_end=data["meta"]["load_end"])
            jpath.parent.mkdir(parents=True, exist_ok=True)
            jpath.write_text(json.dumps(data, indent=1))
            replace_section(out, SECTION, report(data))  # after every configuration: partial runs still report
    if not a.keep:
        shutil.rmtree(a.tmpdir, ignore_errors=True)
    lines = report(data)
    S.log("\n" + "\n".join(lines))
    S.log(f"\nwrote the '{SECTION}' section of {out}; load average at the end: {data['meta']['load_end']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
