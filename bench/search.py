#!/usr/bin/env python
"""Search benchmark: hqdb (through SQL) against sqlite-vec, FAISS and numpy on the same vectors.

    python bench/search.py                       # full run: N = 100k, 1M; 64/128 bits; 4/8 books
    python bench/search.py --quick               # N = 100k, 128 bits, 4 books, fewer queries
    python bench/search.py --sizes 1000000 --bits 128 --books 4 --queries 500
    python bench/search.py --writes              # write throughput only: 1M rows, +100k (~2 min today)
    python bench/search.py --writes --rows 20000 --add 5000 --autocommit 500   # a small check
    python bench/search.py --isa                 # each Hamming scan path this CPU has (~2 min)
    python bench/search.py --isa avx2 scalar     # only these paths
    python bench/search.py --mih                 # index='mih' vs the scan, clustered codes (bench/mih.py)
    python bench/search.py --scale 10M 30M       # RSS, file size, open, scan / MIH p50, inserts (bench/scale.py)

One run measures, on the same seeded synthetic vectors and the same queries:

* hqdb two-stage search through SQL (``hq_match(...) AND k = 10 AND candidates = c``,
  parameters bound, apsw's statement cache reusing the prepared statement), c in
  {100, 1000, 10000}, ``hq_threads`` 1 and 2, plus ``mode = 'hamming'``; and the same searches as
  bare ``hqdb.kernels`` calls (no SQL) to separate the SQL path's overhead from the kernel;
* sqlite-vec 0.1.9 ``vec0`` bit[n] and float[n] KNN, and sqlite-vec 0.1.10a4
  ``float[n] indexed by rescore(quantizer=bit)`` (downloaded to bench/.cache and run in its own
  process, so the two builds never share symbols);
* FAISS ``IndexBinaryFlat`` and a numpy brute-force Hamming scan on the same packed codes;
* the memory-bandwidth floor of the Hamming stage, cold open + first query in a fresh process,
  bulk-insert rate and bytes per row on disk.

``--writes`` runs only the write-throughput comparison instead (issue 12): a file hq table
``hq(dim=128, books=4, codewords=256, title TEXT)`` and a sqlite-vec ``vec0(e bit[128], +title
TEXT)`` table in its own file, both built to ``--rows`` rows from the same seeded codes (hq with
``hqdb.insert_codes``, sqlite-vec with executemany, whose build-from-empty rate is reported), then
on both: executemany INSERT of ``--add`` rows between BEGIN and COMMIT, one set-based
``DELETE ... WHERE rowid > ?`` of them, ``--autocommit`` single-row autocommit INSERTs and DELETEs,
and the first search after each (it pays any pending flush). rows/s, hq / sqlite-vec and the
>= 0.5x goal go to stdout and to the "Write throughput" section of ``bench/RESULTS.md`` (default
sizes; else ``bench/.cache/writes/RESULTS.md``, or ``--out``). count(*) is checked after each step.

``--isa [PATH ...]`` runs only the per-CPU-path comparison instead (issue 15): 1M uniform random
128-bit codes (``--isa-rows``), m = 4, one thread, k = 10; each Hamming scan path (scalar, avx2,
avx512, neon: those this CPU and build have, or the ones named) forced in turn with
``hqdb.kernels._tune("isa", path)``: hqdb two-stage c = 1000 and Hamming-only p50 through SQL and
as bare kernel calls, against FAISS IndexBinaryFlat (before and after the paths), sqlite-vec
bit[128] KNN and the memory floor measured in the same run. It writes a summary section and one
section per path of ``bench/RESULTS.md`` for this kind of CPU, named by the path hqdb picks on it,
so a run on another kind adds its own sections (default sizes; else ``bench/.cache/isa/RESULTS.md``,
or ``--out``), each with the lscpu model and flags and ``hqdb.info()`` while that path ran.

Results: a table on stdout, ``bench/RESULTS.md`` and ``bench/search.png`` (``--quick`` writes to
``bench/.cache/quick/`` instead unless ``--out`` is given). The exit status is non-zero if hqdb's
results disagree with the numpy / kernel reference for the same query. Times are never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
K = 10
RESCORE_VERSION = "0.1.10a4"

# The team's targets (never adjusted here: the report says met / missed with the measured number).
TARGET_P50_MS = 1.0
TARGET_VS_VEC_BIT = 10.0
TARGET_FLOOR_X = 1.5
TARGET_FAISS_X = 1.5
TARGET_COLD_S = 0.5
TARGET_INSERT_RPS = 200_000


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------
# Imports that may be missing
# ------------------------------------------------------------------------------------------
def import_hqdb():
    """(hqdb module or None, reason). Falls back to the repo checkout when not installed."""
    try:
        import hqdb  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))
        try:
            import hqdb  # noqa: F401
        except Exception as exc:  # e.g. hqdb.kernels not there yet
            return None, f"{type(exc).__name__}: {exc}"
    import hqdb

    return hqdb, None


def import_faiss():
    try:
        import faiss

        return faiss, None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------
# Data: mixture of Gaussians on the unit sphere, residual k-means codebooks, exact top-k
# ------------------------------------------------------------------------------------------
def make_vectors(n_rows: int, dim: int, n_queries: int, seed: int = 0, latent: int = 16,
                 clusters: int = 256, spread: float = 0.6, noise: float = 0.05):
    """Database and query vectors (float32, unit norm) from one seeded distribution.

    Like real embeddings, the data has a low intrinsic dimension: a mixture of ``clusters``
    Gaussians in a ``latent``-dimensional space, mapped into ``dim`` dimensions by a random
    orthonormal map, plus a little isotropic noise, then normalised. The rows for a smaller N are
    a prefix of the rows for a larger one (same seed, same dim); queries are fresh draws.
    """
    ss = np.random.SeedSequence([seed, dim])
    r_model, r_rows, r_queries = (np.random.default_rng(s) for s in ss.spawn(3))
    basis = np.linalg.qr(r_model.standard_normal((dim, latent)))[0].T.astype(np.float32)
    centers = r_model.standard_normal((clusters, latent), dtype=np.float32)

    def draw(rng, n):
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 1 << 17):
            e = min(n, s + (1 << 17))
            z = centers[rng.integers(0, clusters, e - s)]
            z += spread * rng.standard_normal((e - s, latent), dtype=np.float32)
            out[s:e] = z @ basis + noise * rng.standard_normal((e - s, dim), dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return draw(r_rows, n_rows), draw(r_queries, n_queries)


def pack(x: np.ndarray) -> np.ndarray:
    """Sign bits, LSB first: the bytes of sqlite-vec's vec_quantize_binary."""
    return np.packbits(x > 0, axis=-1, bitorder="little")


def _nearest(x: np.ndarray, cent: np.ndarray, batch: int = 1 << 16) -> np.ndarray:
    cn = (cent * cent).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), batch):
        out[s:s + batch] = (cn[None, :] - 2.0 * (x[s:s + batch] @ cent.T)).argmin(1)
    return out


def residual_kmeans(x: np.ndarray, books: int, codewords: int = 256, iters: int = 6,
                    sample: int = 20000, seed: int = 0) -> np.ndarray:
    """Residual k-means codebooks (books, codewords, dim) trained on a sample of x."""
    rng = np.random.default_rng(seed)
    res = x[rng.choice(len(x), min(sample, len(x)), replace=False)].astype(np.float32)
    cbs = np.zeros((books, codewords, x.shape[1]), dtype=np.float32)
    for b in range(books):
        cent = res[rng.choice(len(res), codewords, replace=False)].copy()
        for _ in range(iters):
            a = _nearest(res, cent)
            cnt = np.bincount(a, minlength=codewords)
            sums = np.zeros_like(cent)
            np.add.at(sums, a, res)
            ok = cnt > 0
            cent[ok] = sums[ok] / cnt[ok, None]
        cbs[b] = cent
        res = res - cent[_nearest(res, cent)]
    return cbs


def residual_encode(x: np.ndarray, cbs: np.ndarray, batch: int = 1 << 17) -> np.ndarray:
    out = np.empty((len(x), len(cbs)), dtype=np.uint8)
    for s in range(0, len(x), batch):
        res = x[s:s + batch].copy()
        for b, cent in enumerate(cbs):
            a = _nearest(res, cent)
            out[s:s + batch, b] = a
            res -= cent[a]
    return out


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K, batch: int = 1 << 17) -> np.ndarray:
    """Row indices of the k largest inner products per query (the recall ground truth)."""
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for s in range(0, len(x), batch):
        sc = q @ x[s:s + batch].T
        cand_s = np.concatenate([best_s, sc], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)], axis=1)
        sel = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, sel, 1)
        best_i = np.take_along_axis(cand_i, sel, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall(results: list, truth: np.ndarray) -> float:
    """Mean recall@k of result rowids (1-based) against ground-truth row indices (0-based)."""
    hits = [len(set(r) & set((t + 1).tolist())) for r, t in zip(results, truth)]
    return float(np.mean(hits)) / truth.shape[1]


# ------------------------------------------------------------------------------------------
# numpy references
# ------------------------------------------------------------------------------------------
def np_hamming(codes64: np.ndarray, qbits: np.ndarray) -> np.ndarray:
    """Hamming distances of one query to every row: XOR + popcount per 64-bit word, summed word
    by word (a .sum(axis=1) over 2 words is ~7x slower in numpy)."""
    q = qbits.view(np.uint64)
    d = np.bitwise_count(codes64[:, 0] ^ q[0]).astype(np.int32)
    for w in range(1, codes64.shape[1]):
        d += np.bitwise_count(codes64[:, w] ^ q[w])
    return d


def topk_by_rowid(dist: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best rows by (dist, index): exact ties broken by index, in O(N)."""
    k = min(k, len(dist))
    thr = np.partition(dist, k - 1)[k - 1]
    lt = np.flatnonzero(dist < thr)
    eq = np.flatnonzero(dist == thr)[: k - len(lt)]
    idx = np.concatenate([lt, eq])
    return idx[np.lexsort((idx, dist[idx]))]


def np_two_stage(codes64, qcodes, cbs, q, qbits, k, cand):
    """Reference two-stage search: top-cand by (Hamming, rowid), re-ranked by (AQD, rowid)."""
    ham = np_hamming(codes64, qbits)
    idx = topk_by_rowid(ham, max(cand, k))
    lut = (cbs.astype(np.float64) @ q.astype(np.float64)).astype(np.float32)
    s = np.zeros(len(idx), dtype=np.float32)
    for b in range(qcodes.shape[1]):
        s = s + lut[b][qcodes[idx, b]]
    d = -s
    order = np.lexsort((idx, d))[:k]
    return (idx[order] + 1).tolist(), d[order].tolist()


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
QUIET = {"enabled": True, "max_wait": 30.0, "waited": 0.0, "gave_up": 0}


def wait_quiet(threshold: float = 0.25, window: float = 0.3):
    """Wait (at most QUIET['max_wait'] s) until other processes use < threshold cores over a
    window: this 2-core machine is shared, and a busy core distorts the 2-thread rows most."""
    if not QUIET["enabled"]:
        return
    t0 = time.perf_counter()
    while True:
        a = cpu_snapshot()
        time.sleep(window)
        oc = other_cpu(a, cpu_snapshot())
        if not oc > threshold:  # also stops on NaN (no /proc/stat)
            break
        if time.perf_counter() - t0 > QUIET["max_wait"]:
            QUIET["gave_up"] += 1
            break
    QUIET["waited"] += time.perf_counter() - t0


def time_queries(fn, n_queries: int, warmup: int):
    """Run fn(i) for i in range(n_queries) after a warm-up; return (latencies s, results).

    ``time_queries.other`` is then the CPU other processes used meanwhile (in cores)."""
    wait_quiet()
    for i in range(min(warmup, n_queries)):
        fn(i)
    lat = np.empty(n_queries)
    res = []
    gc.collect()
    gc.disable()
    before = cpu_snapshot()
    try:
        for i in range(n_queries):
            t = time.perf_counter()
            r = fn(i)
            lat[i] = time.perf_counter() - t
            res.append(r)
    finally:
        gc.enable()
    time_queries.other = other_cpu(before, cpu_snapshot())
    return lat, res


def measure_bandwidth(nbytes: int, threads: int, repeat: int = 5) -> tuple[float, str]:
    """Best read bandwidth (bytes/s) of numpy reductions over an nbytes uint64 array.

    The best of sum, max and bitwise_or.reduce (each best of ``repeat``): whichever numpy
    reduction streams fastest on this CPU, so the floor is as strict as numpy can make it."""
    a = np.ones(max(nbytes // 8, 1024), dtype=np.uint64)
    parts = np.array_split(a, threads)
    best, how = float("inf"), ""
    reductions = {"sum": np.sum, "max": np.max, "bitwise_or.reduce": np.bitwise_or.reduce}
    with ThreadPoolExecutor(threads) as ex:
        for name, fn in reductions.items():
            for _ in range(repeat):
                t = time.perf_counter()
                if threads == 1:
                    fn(a)
                else:
                    list(ex.map(fn, parts))
                dt = time.perf_counter() - t
                if dt < best:
                    best, how = dt, name
    return a.nbytes / best, how


def cpu_snapshot() -> tuple[float, float, float]:
    """(machine busy CPU-seconds from /proc/stat, this process's CPU-seconds, wall time)."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    t = os.times()
    return busy, t.user + t.system, time.perf_counter()


def other_cpu(before, after) -> float:
    """Cores' worth of CPU used by other processes between two snapshots (NaN when the window
    is too short for /proc/stat's 10 ms ticks to say anything)."""
    wall = after[2] - before[2]
    if wall < 0.3 or before[0] != before[0]:
        return float("nan")
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


# ------------------------------------------------------------------------------------------
# sqlite-vec 0.1.10a4 (rescore) in its own process
# ------------------------------------------------------------------------------------------
def fetch_rescore_wheel() -> tuple[str | None, str]:
    """Path of sqlite-vec 0.1.10a4's vec0 (without .so) or None, and a reason/description."""
    dest = CACHE / f"sqlite_vec-{RESCORE_VERSION}"
    so = dest / "sqlite_vec" / "vec0.so"
    if not so.exists():
        wheels = glob.glob(str(CACHE / f"sqlite_vec-{RESCORE_VERSION}-*.whl"))
        if not wheels:
            log(f"  downloading sqlite-vec=={RESCORE_VERSION} (wheel only, not installed) ...")
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", f"sqlite-vec=={RESCORE_VERSION}", "--no-deps",
                 "--only-binary=:all:", "-d", str(CACHE)],
                capture_output=True, text=True,
            )
            wheels = glob.glob(str(CACHE / f"sqlite_vec-{RESCORE_VERSION}-*.whl"))
            if not wheels:
                return None, f"pip download sqlite-vec=={RESCORE_VERSION} failed: {r.stderr.strip()[-300:]}"
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(dest)
        if not so.exists():
            return None, f"no sqlite_vec/vec0.so in {Path(wheels[0]).name}"
    return str(so)[:-3], f"sqlite-vec {RESCORE_VERSION} wheel from bench/.cache"


RESCORE_WORKER = r"""
import json, os, sys, time, gc
import numpy as np, apsw
a = json.loads(sys.argv[1])
x = np.load(a["x"], mmap_mode="r")[: a["n"]]
q = np.load(a["q"])
if os.path.exists(a["db"]):
    os.remove(a["db"])
c = apsw.Connection(a["db"])
c.enable_load_extension(True)
c.load_extension(a["ext"])
(ver,) = c.execute("select vec_version()").fetchone()
c.execute(f"create virtual table v using vec0(embedding float[{x.shape[1]}] indexed by rescore(quantizer=bit))")
t = time.perf_counter()
with c:
    c.executemany("insert into v(rowid, embedding) values (?, ?)",
                  ((i + 1, x[i].tobytes()) for i in range(len(x))))
ins = time.perf_counter() - t
size = os.path.getsize(a["db"])
sql = "select rowid, distance from v where embedding match ? and k = ?"
def one(i):
    return [r[0] for r in c.execute(sql, (q[i].tobytes(), a["k"])).fetchall()]
for i in range(min(a["warmup"], len(q))):
    one(i)
lat, res = [], []
gc.collect(); gc.disable()
for i in range(len(q)):
    t = time.perf_counter(); r = one(i); lat.append(time.perf_counter() - t); res.append(r)
gc.enable()
c.close()
os.remove(a["db"])
print(json.dumps({"version": ver, "insert_s": ins, "bytes": size, "lat": lat, "res": res}))
"""


def run_rescore_peer(ext: str, x_path: Path, q_path: Path, n: int, warmup: int):
    args = {"ext": ext, "x": str(x_path), "q": str(q_path), "n": n, "k": K, "warmup": warmup,
            "db": str(CACHE / f"vec_rescore_{n}.db")}
    r = subprocess.run([sys.executable, "-c", RESCORE_WORKER, json.dumps(args)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"rescore worker failed: {r.stderr.strip()[-400:]}"
    return json.loads(r.stdout.strip().splitlines()[-1]), None


# ------------------------------------------------------------------------------------------
# Cold open + first query in a fresh process
# ------------------------------------------------------------------------------------------
COLD_WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import hqdb
t2 = time.perf_counter()
q = np.load(sys.argv[2])
sql = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 1000"
t3 = time.perf_counter()
db = hqdb.connect(sys.argv[1])
t4 = time.perf_counter()
rows = db.execute(sql, (q.tobytes(),)).fetchall()
t5 = time.perf_counter()
rows = db.execute(sql, (q.tobytes(),)).fetchall()
t6 = time.perf_counter()
print(json.dumps({"import_numpy": t1 - t0, "import_hqdb": t2 - t1, "connect": t4 - t3,
                  "first_query": t5 - t4, "second_query": t6 - t5, "n": len(rows)}))
"""


def evict_from_page_cache(path: Path) -> str:
    """Drop path's pages from the OS page cache (posix_fadvise DONTNEED, no root needed).

    Returns a note on how cold the file is afterwards (checked with fincore when present)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if shutil.which("fincore"):
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                           capture_output=True, text=True)
        try:
            return f"{int(r.stdout.split()[0])} bytes of the file still cached after eviction"
        except (ValueError, IndexError):
            return "eviction requested (fincore gave no answer)"
    return "eviction requested (not verified: no fincore)"


def cold_open(db_path: Path, q: np.ndarray, runs: int = 3):
    qp = CACHE / "cold_query.npy"
    np.save(qp, q.astype(np.float32))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = {"cold": [], "warm": [], "evict_note": None}
    for kind in ["cold", "warm"] * runs:
        if kind == "cold":
            out["evict_note"] = evict_from_page_cache(db_path)
        r = subprocess.run([sys.executable, "-c", COLD_WORKER, str(db_path), str(qp)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return None, f"cold-open worker failed: {r.stderr.strip()[-400:]}"
        out[kind].append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out, None


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []       # latency rows
        self.inserts: list[dict] = []    # insert rate / bytes per row
        self.floors: list[dict] = []     # Hamming stage vs bandwidth floor
        self.failures: list[str] = []    # correctness disagreements (exit status)
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.cold = None
        self.profile = None
        self.bw, self.bw_how = {}, {}
        self.contention = None
        self.breakdown = None
        self.hqdb, self.hqdb_reason = import_hqdb()
        self.native_at_start = native_module() if self.hqdb is not None else None
        self.git_at_start = git_head()
        self.faiss, self.faiss_reason = import_faiss()
        self.rescore_ext, self.rescore_note = None, None

    # ---------------------------------------------------------------- helpers
    def add(self, n, bits, method, lat, res=None, truth=None, books="", threads=1, note="", other=None):
        p50, p95 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 95) * 1e3
        if other is None:
            other = getattr(time_queries, "other", None)
            time_queries.other = None
        row = {"N": n, "bits": bits, "books": books, "method": method, "threads": threads,
               "p50_ms": float(p50), "p95_ms": float(p95), "mean_ms": float(lat.mean() * 1e3),
               "queries": len(lat), "recall": recall(res, truth) if res is not None else None,
               "note": note, "other_cpu": other}
        self.rows.append(row)
        r = "" if row["recall"] is None else f"  recall@10 {row['recall']:.3f}"
        o = "" if other is None or other != other else f"  other CPU {other:.1f}"
        log(f"    {method:<38} m={books!s:<2} t={threads}  p50 {p50:9.3f} ms  p95 {p95:9.3f} ms{r}{o}")
        return row

    def find(self, **kw):
        for r in self.rows:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    def fail(self, msg):
        log(f"  !! MISMATCH: {msg}")
        self.failures.append(msg)

    # ---------------------------------------------------------------- main loop
    def run(self):
        a = self.args
        CACHE.mkdir(parents=True, exist_ok=True)
        log(f"hqdb: {'OK ' + json.dumps(self.hqdb.info()) if self.hqdb else 'NOT AVAILABLE: ' + self.hqdb_reason}")
        if self.hqdb is not None and self.hqdb.kernels.BACKEND != "native":
            log(f"WARNING: hqdb runs on its {self.hqdb.kernels.BACKEND} fallback, not the native kernels")
        if self.faiss is None:
            self.skipped.append(f"FAISS: {self.faiss_reason}")
        self.rescore_ext, self.rescore_note = fetch_rescore_wheel()
        if self.rescore_ext is None:
            self.skipped.append(f"sqlite-vec {RESCORE_VERSION} rescore: {self.rescore_note}")
            log(f"  skipping the rescore peer: {self.rescore_note}")

        log("memory bandwidth (numpy reductions over a 256 MB uint64 array) ...")
        (self.bw["1"], self.bw_how["1"]), (self.bw["2"], self.bw_how["2"]) = (
            measure_bandwidth(256 << 20, 1), measure_bandwidth(256 << 20, 2))
        log(f"  1 thread {self.bw['1'] / 1e9:.1f} GB/s ({self.bw_how['1']}), "
            f"2 threads {self.bw['2'] / 1e9:.1f} GB/s ({self.bw_how['2']})")

        for bits in a.bits:
            t0 = time.perf_counter()
            n_max = max(a.sizes)
            log(f"\n== {bits} bits: generating {n_max:,} vectors + {a.queries} queries (seed 0) ...")
            x, q = make_vectors(n_max, bits, a.queries)
            cbs = residual_kmeans(x[: min(a.sizes)], max(a.books))
            qcodes_all = residual_encode(x, cbs)
            codes_all = pack(x)
            qbits = pack(q)
            if self.hqdb is not None:
                hb = self.hqdb.kernels.pack_bits(x[:1000])
                if not np.array_equal(hb, codes_all[:1000]):
                    self.fail(f"hqdb.kernels.pack_bits differs from numpy packbits ({bits} bits)")
            x_path = CACHE / f"x_{bits}.npy"
            q_path = CACHE / f"q_{bits}.npy"
            np.save(x_path, x)
            np.save(q_path, q)
            log(f"   data + codebooks + codes in {time.perf_counter() - t0:.1f} s")
            for n in sorted(a.sizes):
                log(f"\n== N = {n:,}, {bits} bits")
                self.run_config(n, bits, x[:n], q, codes_all[:n], qbits, qcodes_all[:n], cbs,
                                x_path, q_path)
                gc.collect()
            del x, qcodes_all, codes_all
            x_path.unlink(missing_ok=True)
            gc.collect()

    def run_config(self, n, bits, x, q, codes, qbits, qcodes, cbs, x_path, q_path):
        a = self.args
        nq, wu = a.queries, a.warmup
        t0 = time.perf_counter()
        truth = exact_topk(x, q)
        log(f"   exact float top-10 in {time.perf_counter() - t0:.1f} s")
        codes64 = np.ascontiguousarray(codes).view(np.uint64)
        qbits64 = np.ascontiguousarray(qbits)

        # --- numpy brute-force Hamming (also the reference for hqdb's Hamming mode)
        def np_search(i):
            d = np_hamming(codes64, qbits64[i])
            idx = topk_by_rowid(d, K)
            return (idx + 1).tolist(), d[idx].tolist()

        lat, res = time_queries(np_search, nq, wu)
        self.add(n, bits, "numpy Hamming (bitwise_count)", lat, [r[0] for r in res], truth,
                 note="per-word XOR + np.bitwise_count, partition; ties by rowid")
        np_ref = res

        # --- FAISS IndexBinaryFlat
        if self.faiss is not None:
            faiss = self.faiss
            index = faiss.IndexBinaryFlat(bits)
            index.add(codes)
            for th in (1, 2):
                faiss.omp_set_num_threads(th)

                def fs(i):
                    D, I = index.search(qbits[i:i + 1], K)
                    return (I[0] + 1).tolist(), D[0].tolist()

                lat, res = time_queries(fs, nq, wu)
                self.add(n, bits, "FAISS IndexBinaryFlat", lat, [r[0] for r in res], truth, threads=th)
                bad = sum(sorted(r[1]) != sorted(ref[1]) for r, ref in zip(res, np_ref))
                if bad:
                    self.notes.append(f"FAISS Hamming distances differ from numpy on {bad} queries (N={n}, {bits} bits)")
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            del index

        # --- sqlite-vec 0.1.9 bit[n] and float[n]
        self.run_sqlite_vec(n, bits, x, q, codes, truth, np_ref)

        # --- sqlite-vec 0.1.10a4 rescore (own process)
        if self.rescore_ext is not None:
            out, err = run_rescore_peer(self.rescore_ext, x_path, q_path, n, wu)
            if out is None:
                self.skipped.append(f"sqlite-vec {RESCORE_VERSION} rescore at N={n}, {bits} bits: {err}")
                log(f"    rescore peer skipped: {err}")
            else:
                self.add(n, bits, f"sqlite-vec {RESCORE_VERSION} rescore(bit)", np.array(out["lat"]),
                         out["res"], truth, other=float("nan"),
                         note=f"float[{bits}] indexed by rescore(quantizer=bit), {out['version']}; own process")
                self.inserts.append({"N": n, "bits": bits, "what": f"sqlite-vec {RESCORE_VERSION} float[{bits}] rescore(bit), executemany",
                                     "rows_s": n / out["insert_s"], "bytes_row": out["bytes"] / n})

        # --- hqdb
        if self.hqdb is not None:
            for m in self.args.books:
                self.run_hqdb(n, bits, m, q, codes, qbits, qcodes[:, :m], cbs[:m], truth, np_ref, codes64)
        self.floors_for(n, bits)

    def run_sqlite_vec(self, n, bits, x, q, codes, truth, np_ref):
        import apsw
        import sqlite_vec

        nq, wu = self.args.queries, self.args.warmup
        for kind in ("bit", "float"):
            path = CACHE / f"vec_{kind}_{n}_{bits}.db"
            path.unlink(missing_ok=True)
            c = apsw.Connection(str(path))
            c.enable_load_extension(True)
            c.load_extension(sqlite_vec.loadable_path())
            (ver,) = c.execute("select vec_version()").fetchone()
            c.execute(f"create virtual table v using vec0(embedding {kind}[{bits}])")
            t = time.perf_counter()
            with c:
                if kind == "bit":
                    c.executemany("insert into v(rowid, embedding) values (?, vec_bit(?))",
                                  ((i + 1, codes[i].tobytes()) for i in range(n)))
                else:
                    c.executemany("insert into v(rowid, embedding) values (?, ?)",
                                  ((i + 1, x[i].tobytes()) for i in range(n)))
            dt = time.perf_counter() - t
            self.inserts.append({"N": n, "bits": bits, "what": f"sqlite-vec {ver} {kind}[{bits}], executemany",
                                 "rows_s": n / dt, "bytes_row": path.stat().st_size / n})
            if kind == "bit":
                sql = "select rowid, distance from v where embedding match vec_quantize_binary(?) and k = ?"
                (qb,) = c.execute("select vec_quantize_binary(?)", (q[0].tobytes(),)).fetchone()
                if qb != pack(q[:1])[0].tobytes():
                    self.fail("sqlite-vec vec_quantize_binary bytes differ from numpy packbits")
            else:
                sql = "select rowid, distance from v where embedding match ? and k = ?"

            def one(i):
                rows = c.execute(sql, (q[i].tobytes(), K)).fetchall()
                return [r[0] for r in rows], [r[1] for r in rows]

            lat, res = time_queries(one, nq, wu)
            note = "L2 on unit vectors (same ranking as inner product)" if kind == "float" else "Hamming"
            self.add(n, bits, f"sqlite-vec {ver.lstrip('v')} {kind}[{bits}]", lat, [r[0] for r in res], truth, note=note)
            if kind == "bit":
                bad = sum(sorted(r[1]) != [float(v) for v in sorted(ref[1])] for r, ref in zip(res, np_ref))
                if bad:
                    self.notes.append(f"sqlite-vec bit[{bits}] distances differ from numpy on {bad} queries (N={n})")
            c.close()
            path.unlink(missing_ok=True)

    def run_hqdb(self, n, bits, m, q, codes, qbits, qcodes, cbs, truth, np_ref, codes64):
        hqdb = self.hqdb
        a = self.args
        nq, wu = a.queries, a.warmup
        path = CACHE / f"hq_{n}_{bits}_{m}.db"
        for p in (path, Path(str(path) + "-journal")):
            p.unlink(missing_ok=True)
        db = hqdb.connect(str(path), threads=1)
        db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={bits}, books={m}, codewords=256)")
        hqdb.set_codebooks(db, "t", cbs)
        qc = np.ascontiguousarray(qcodes)
        t = time.perf_counter()
        rowids = hqdb.insert_codes(db, "t", codes, qc)
        dt = time.perf_counter() - t
        self.inserts.append({"N": n, "bits": bits, "books": m, "what": f"hqdb.insert_codes, m={m}",
                             "rows_s": n / dt, "bytes_row": path.stat().st_size / n})
        log(f"    hqdb.insert_codes: {n / dt:,.0f} rows/s, {path.stat().st_size / n:.1f} bytes/row")
        if not np.array_equal(rowids, np.arange(1, n + 1)):
            self.fail(f"insert_codes returned unexpected rowids (N={n})")

        qblobs = [v.tobytes() for v in q]
        two = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND candidates = ?"
        ham_sql = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND mode = ?"
        sql_res = {}
        for th in (1, 2):
            db.execute("SELECT hq_threads(?)", (th,))
            for c in a.candidates:
                def one(i, c=c):
                    rows = db.execute(two, (qblobs[i], K, c)).fetchall()
                    return [r[0] for r in rows], [r[1] for r in rows]

                lat, res = time_queries(one, nq, wu)
                self.add(n, bits, f"hqdb two-stage c={c} (SQL)", lat, [r[0] for r in res], truth, books=m, threads=th)
                sql_res[(c, th)] = res
            if m == min(a.books):
                def oneh(i):
                    rows = db.execute(ham_sql, (qblobs[i], K, "hamming")).fetchall()
                    return [r[0] for r in rows], [r[2] for r in rows]

                lat, res = time_queries(oneh, nq, wu)
                self.add(n, bits, "hqdb hamming (SQL)", lat, [r[0] for r in res], truth, books="-", threads=th)
                bad = [i for i, (r, ref) in enumerate(zip(res, np_ref)) if r[1] != ref[1]]
                if bad:
                    self.fail(f"hqdb mode='hamming' top-10 Hamming distances differ from numpy on {len(bad)} "
                              f"of {nq} queries (N={n}, {bits} bits, threads {th}; first: query {bad[0]})")
                badr = sum(r[0] != ref[0] for r, ref in zip(res, np_ref))
                if badr:
                    self.fail(f"hqdb mode='hamming' rowids differ from the numpy (distance, rowid) order on "
                              f"{badr} queries (N={n}, {bits} bits, threads {th})")
        db.execute("SELECT hq_threads(1)")

        # --- the kernels alone (no SQL), same arrays
        kern = getattr(hqdb, "kernels", None)
        if kern is not None and hasattr(kern, "search"):
            rid = np.arange(1, n + 1, dtype=np.int64)
            cb = np.ascontiguousarray(cbs, dtype=np.float32)
            c_main = 1000 if 1000 in a.candidates else a.candidates[0]
            for th in (1, 2):
                def k2(i):
                    bq = kern.pack_bits(q[i])
                    lut = kern.aqd_lut(q[i], cb)
                    r, d, _ = kern.search(codes, qc, rid, None, bq, lut, k=K, candidates=c_main,
                                          mode="two_stage", threads=th)
                    return r.tolist(), d.tolist()

                lat, res = time_queries(k2, nq, wu)
                self.add(n, bits, f"hqdb kernel two-stage c={c_main} (no SQL)", lat, [r[0] for r in res], truth,
                         books=m, threads=th, note="pack_bits + aqd_lut + kernels.search")
                bad = sum(r != s for r, s in zip(res, sql_res[(c_main, th)]))
                if bad:
                    self.fail(f"hqdb SQL two-stage c={c_main} differs from kernels.search on {bad} of {nq} "
                              f"queries (N={n}, {bits} bits, m={m}, threads {th})")
                if m == min(a.books):
                    def kh(i):
                        r, d, _ = kern.search(codes, None, rid, None, kern.pack_bits(q[i]), None, k=K,
                                              candidates=K, mode="hamming", threads=th)
                        return r.tolist(), d.tolist()

                    lat, res = time_queries(kh, nq, wu)
                    self.add(n, bits, "hqdb kernel hamming (no SQL)", lat, [r[0] for r in res], truth,
                             books="-", threads=th, note="pack_bits + kernels.search(mode='hamming')")
            # numpy two-stage reference on a few queries (float sums in the kernels' order)
            n_chk = min(10, nq)
            for i in range(n_chk):
                ref_r, ref_d = np_two_stage(codes64, qc, cbs, q[i], qbits[i], K, c_main)
                got_r, got_d = sql_res[(c_main, 1)][i]
                if ref_r != got_r or not np.allclose(ref_d, got_d, rtol=1e-6, atol=1e-7):
                    self.fail(f"hqdb two-stage c={c_main} differs from the numpy reference on query {i} "
                              f"(N={n}, {bits} bits, m={m})")
        else:
            self.skipped.append("hqdb kernel-only timings: hqdb.kernels.search not importable")

        # --- SQL path profile at the headline configuration
        headline = (n == max(a.sizes) and bits == (128 if 128 in a.bits else max(a.bits)) and m == min(a.books))
        if headline and not a.no_profile:
            self.profile = profile_sql(db, two, qblobs, min(nq, 200))
            if kern is not None and hasattr(kern, "search"):
                self.breakdown = breakdown(db, two, ham_sql, qblobs, q, codes, qc, cbs, kern, min(nq, 200))
        if headline and not a.no_contention:
            log("    under CPU contention (busy-loop processes on every core) ...")
            self.contention = contention_experiment(db, two, qblobs, min(nq, 60))
        db.close()

        # --- row-by-row INSERT, for reference (a subset), once per bits at the first N and m
        if n == min(a.sizes) and m == min(a.books):
            self.row_by_row(bits, m, codes, qc, cbs)

        # --- cold open + first query on the headline database
        if headline:
            log("    cold open + first query (fresh process) ...")
            out, err = cold_open(path, q[0])
            if out is None:
                self.skipped.append(err)
            else:
                self.cold = {"N": n, "bits": bits, "books": m, "bytes": path.stat().st_size, **out}
                c = np.median([r["connect"] + r["first_query"] for r in out["cold"]])
                w = np.median([r["connect"] + r["first_query"] for r in out["warm"]])
                log(f"    connect + first query: evicted {c:.3f} s, warm {w:.3f} s ({out['evict_note']})")
        elif not a.keep_dbs:
            path.unlink(missing_ok=True)

    def row_by_row(self, bits, m, codes, qc, cbs):
        hqdb = self.hqdb
        n = min(self.args.row_by_row, len(codes))
        path = CACHE / f"hq_rowbyrow_{bits}_{m}.db"
        path.unlink(missing_ok=True)
        db = hqdb.connect(str(path))
        db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={bits}, books={m}, codewords=256)")
        hqdb.set_codebooks(db, "t", cbs)
        t = time.perf_counter()
        with db.transaction():
            db.executemany("INSERT INTO t(code, qcode) VALUES (?, ?)",
                           ((codes[i].tobytes(), qc[i].tobytes()) for i in range(n)))
        dt = time.perf_counter() - t
        db.close()
        self.inserts.append({"N": n, "bits": bits, "books": m,
                             "what": f"hqdb row-by-row INSERT (executemany, one transaction), m={m}",
                             "rows_s": n / dt, "bytes_row": path.stat().st_size / n})
        log(f"    hqdb row-by-row INSERT: {n / dt:,.0f} rows/s ({n:,} rows)")
        path.unlink(missing_ok=True)

    def floors_for(self, n, bits):
        nbytes = n * bits // 8
        cache_bw = measure_bandwidth(nbytes, 1)[0] if nbytes <= (64 << 20) else None
        for th in (1, 2):
            floor = nbytes / self.bw[str(th)] * 1e3
            entry = {"N": n, "bits": bits, "threads": th, "bytes": nbytes, "floor_ms": floor,
                     "cache_floor_ms": nbytes / cache_bw * 1e3 if (cache_bw and th == 1) else None}
            for key, meth in (("sql", "hqdb hamming (SQL)"), ("kernel", "hqdb kernel hamming (no SQL)"),
                              ("faiss", "FAISS IndexBinaryFlat"), ("numpy", "numpy Hamming (bitwise_count)")):
                r = self.find(N=n, bits=bits, method=meth, threads=th)
                entry[key] = r["p50_ms"] if r else None
            self.floors.append(entry)


HOG = "import time\nt = time.time()\nwhile time.time() - t < 60:\n    pass\n"


def contention_experiment(db, sql, qblobs, n):
    """hqdb two-stage c=1000 p50/p95 at 1 and 2 threads with 0, 1 and (cores) busy-loop
    processes running, each in its own session like another user's job (this function starts
    them and kills them)."""
    ncpu = os.cpu_count() or 1
    out = {"queries": n, "hogs": sorted({0, 1, ncpu}), "res": {}}
    enabled = QUIET["enabled"]
    for nh in out["hogs"]:
        hogs = []
        try:
            if nh == 0:
                wait_quiet()
            else:
                hogs = [subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True)
                        for _ in range(nh)]
                time.sleep(0.5)
            QUIET["enabled"] = False  # the busy processes are the point here: don't wait them out
            for th in (1, 2):
                db.execute("SELECT hq_threads(?)", (th,))
                lat, _ = time_queries(lambda i: db.execute(sql, (qblobs[i], K, 1000)).fetchall(), n, 5)
                r = (float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 95) * 1e3))
                out["res"][(nh, th)] = r
                log(f"      {nh} busy process(es), {th} thread(s): p50 {r[0]:.3f} ms, p95 {r[1]:.3f} ms")
        finally:
            QUIET["enabled"] = enabled
            for h in hogs:
                h.kill()
                h.wait()
    db.execute("SELECT hq_threads(1)")
    return out


def breakdown(db, two_sql, ham_sql, qblobs, q, codes, qc, cbs, kern, n):
    """p50 of each piece of one query (1 thread), public API only: the whole SQL statement, and
    pack_bits, aqd_lut and kernels.search (given precomputed bits / LUT) on the same data.
    Each is the best p50 of 3 passes over the queries."""
    db.execute("SELECT hq_threads(1)")
    rid = np.arange(1, len(codes) + 1, dtype=np.int64)
    cb = np.ascontiguousarray(cbs, dtype=np.float32)
    bits = [kern.pack_bits(v) for v in q[:n]]
    luts = [kern.aqd_lut(v, cb) for v in q[:n]]

    def p50(fn):
        best = float("inf")
        for _ in range(3):
            lat, _ = time_queries(fn, n, 10)
            best = min(best, float(np.percentile(lat, 50)) * 1e6)
        return best

    out = {
        "sql_two": p50(lambda i: db.execute(two_sql, (qblobs[i], K, 1000)).fetchall()),
        "sql_ham": p50(lambda i: db.execute(ham_sql, (qblobs[i], K, "hamming")).fetchall()),
        "pack": p50(lambda i: kern.pack_bits(q[i])),
        "lut": p50(lambda i: kern.aqd_lut(q[i], cb)),
        "k_two": p50(lambda i: kern.search(codes, qc, rid, None, bits[i], luts[i], k=K, candidates=1000,
                                           mode="two_stage", threads=1)),
        "k_ham": p50(lambda i: kern.search(codes, None, rid, None, bits[i], None, k=K, candidates=K,
                                           mode="hamming", threads=1)),
    }
    log(f"    breakdown (µs, p50): {', '.join(f'{k} {v:.0f}' for k, v in out.items())}")
    return out


def profile_sql(db, sql, qblobs, n):
    """cProfile of the SQL two-stage path (c=1000, 1 thread): where a query's time goes."""
    import cProfile
    import pstats

    db.execute("SELECT hq_threads(1)")
    for i in range(10):
        db.execute(sql, (qblobs[i % len(qblobs)], K, 1000)).fetchall()
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    for i in range(n):
        db.execute(sql, (qblobs[i], K, 1000)).fetchall()
    pr.disable()
    wall = (time.perf_counter() - t) / n
    st = pstats.Stats(pr)
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        where = f"{Path(fn).name}:{line}({name})" if fn != "~" else name
        rows.append((tt / n * 1e6, ct / n * 1e6, nc / n, where))
    rows.sort(reverse=True)
    return {"queries": n, "wall_us": wall * 1e6, "top": rows[:12]}


# ------------------------------------------------------------------------------------------
# Write throughput (--writes): SQL INSERT / DELETE on a large table, hq against sqlite-vec bit[128]
# ------------------------------------------------------------------------------------------
TARGET_WRITE_X = 0.5           # issue 12: hq's SQL write rates >= 0.5x sqlite-vec bit[128]'s, same run
WRITES_SECTION = "search.py --writes"
WRITES_BITS, WRITES_BOOKS = 128, 4
HQ_DDL = f"CREATE VIRTUAL TABLE t USING hq(dim={WRITES_BITS}, books={WRITES_BOOKS}, codewords=256, title TEXT)"
VEC_DDL = f"CREATE VIRTUAL TABLE v USING vec0(e bit[{WRITES_BITS}], +title TEXT)"
HQ_INSERT = "INSERT INTO t(rowid, code, qcode, title) VALUES (?, ?, ?, ?)"
VEC_INSERT = "INSERT INTO v(rowid, e, title) VALUES (?, vec_bit(?), ?)"
HQ_SEARCH = "SELECT rowid, hamming FROM t WHERE hq_match(t.code, ?) AND k = 10 AND mode = 'hamming'"
VEC_SEARCH = "SELECT rowid, distance FROM v WHERE e MATCH vec_bit(?) AND k = 10"


def cpu_flags_summary() -> str:
    """The SIMD flags from lscpu that matter to a Hamming scan (present ones only)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    flags = set()
    for line in out.splitlines():
        if line.startswith("Flags:"):
            flags = set(line.split(":", 1)[1].split())
    want = ["sse4_2", "popcnt", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl",
            "avx512_vpopcntdq", "avx512_bitalg", "avx512_vnni"]
    return " ".join(f for f in want if f in flags) or "none of the SIMD flags looked for"


def write_data(total: int, seed: int = 0):
    """Codes (sign bits of the bench's seeded vectors, same generator as the search bench),
    qcodes and codebooks (seeded uniform random: the write path's cost does not depend on
    their values) and titles, for ``total`` rows; row i gets rowid i + 1."""
    x, _ = make_vectors(total, WRITES_BITS, 1, seed=seed)
    codes = np.ascontiguousarray(pack(x))
    del x
    rng = np.random.default_rng([seed, 12])
    qcodes = rng.integers(0, 256, (total, WRITES_BOOKS), dtype=np.uint8)
    cbs = rng.standard_normal((WRITES_BOOKS, 256, WRITES_BITS), dtype=np.float32) * 0.1
    titles = [f"document {i + 1:07d}" for i in range(total)]
    return codes, qcodes, cbs, titles


def vec_connect(path: str):
    """An apsw connection with sqlite-vec 0.1.9 loaded, in WAL mode like hqdb.connect's files."""
    import apsw
    import sqlite_vec

    c = apsw.Connection(path)
    c.set_busy_timeout(5000)
    c.enable_load_extension(True)
    c.load_extension(sqlite_vec.loadable_path())
    c.enable_load_extension(False)
    c.execute("PRAGMA journal_mode=WAL")
    return c


def timed(fn):
    """(seconds, other processes' CPU in cores) of one call of fn, GC off, after waiting for a
    quiet machine."""
    wait_quiet()
    gc.collect()
    gc.disable()
    before = cpu_snapshot()
    t = time.perf_counter()
    try:
        fn()
    finally:
        dt = time.perf_counter() - t
        gc.enable()
    return dt, other_cpu(before, cpu_snapshot())


def in_transaction(conn, fn):
    """fn() between an explicit BEGIN and COMMIT (ROLLBACK on error)."""
    def run():
        conn.execute("BEGIN")
        try:
            fn()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return run


class WriteBench:
    """One run of the write-throughput comparison (see ``run``)."""

    def __init__(self, args):
        self.args = args
        self.ops: list[dict] = []        # {"op", "rows", "hq": (s, other), "vec": (s, other), "goal"}
        self.searches: list[dict] = []   # {"when", "hq": ms, "vec": ms}
        self.builds: dict = {}
        self.checks: list[str] = []
        self.failures: list[str] = []
        self.pragmas: dict = {}
        self.hqdb, self.hqdb_reason = import_hqdb()
        self.native_at_start = native_module() if self.hqdb is not None else None
        self.git_at_start = git_head()
        self.vec_version = None

    def fail(self, msg):
        log(f"  !! {msg}")
        self.failures.append(msg)

    def check_counts(self, db, c, expect: int, when: str):
        (h,) = db.execute("SELECT count(*) FROM t").fetchone()
        (v,) = c.execute("SELECT count(*) FROM v").fetchone()
        ok = h == expect and v == expect
        self.checks.append(f"count(*) {when}: hq {h:,}, sqlite-vec {v:,} (expected {expect:,})"
                           + ("" if ok else " — MISMATCH"))
        if not ok:
            self.fail(f"count(*) {when}: hq {h}, sqlite-vec {v}, expected {expect}")

    def search_pair(self, conns, code: bytes, rowid: int, present: bool, when: str, second: bool = True):
        """Time the first k=10 Hamming search on each table (it pays whatever the writes left
        pending), a second one, and the first one on the other (reader) connection, and check that
        ``rowid`` (whose own code is the query) is found, or not."""
        res = {}
        for name, (conn, reader), sql in (("hq", conns["hq"], HQ_SEARCH), ("vec", conns["vec"], VEC_SEARCH)):
            for key, cx in ((name, conn), (name + "2", conn if second else None), (name + "r", reader)):
                if cx is None:
                    continue
                t = time.perf_counter()
                rows = cx.execute(sql, (code,)).fetchall()
                res[key] = (time.perf_counter() - t) * 1e3
                found = any(r[0] == rowid for r in rows)
                if found != present:
                    self.fail(f"{name}: search {when} ({'reader' if key.endswith('r') else 'writer'} connection): "
                              f"rowid {rowid} {'missing' if present else 'still returned'}")
        self.searches.append({"when": when, **res})
        log(f"    first search {when}: hq {res['hq']:.2f} ms (second {fmt(res.get('hq2'))}, reader {res['hqr']:.2f}), "
            f"sqlite-vec {res['vec']:.2f} ms (second {fmt(res.get('vec2'))}, reader {res['vecr']:.2f})")

    def op(self, name, rows, hq_fn, vec_fn, goal: bool):
        hq = timed(hq_fn)
        vec = timed(vec_fn)
        self.ops.append({"op": name, "rows": rows, "hq": hq, "vec": vec, "goal": goal})
        log(f"    {name}: hq {rows / hq[0]:,.0f} rows/s ({hq[0]:.2f} s), sqlite-vec {rows / vec[0]:,.0f} rows/s "
            f"({vec[0]:.2f} s): {vec[0] / hq[0]:.2f}x")

    def op_rows(self, name, hq_conn, hq_sql, hq_params, vec_conn, vec_sql, vec_params, block: int = 100):
        """One autocommit statement per row, hq and sqlite-vec alternating in blocks of ``block``
        rows (the disk's commit latency on this shared VM varies over seconds: both sides see the
        same periods). Keeps each row's latency."""
        lat = {"hq": [], "vec": []}
        wait_quiet()
        gc.collect()
        gc.disable()
        before = cpu_snapshot()
        try:
            for s in range(0, len(hq_params), block):
                for side, conn, sql, params in (("hq", hq_conn, hq_sql, hq_params),
                                                ("vec", vec_conn, vec_sql, vec_params)):
                    out = lat[side]
                    for r in params[s:s + block]:
                        t = time.perf_counter()
                        conn.execute(sql, r)
                        out.append(time.perf_counter() - t)
        finally:
            gc.enable()
        other = other_cpu(before, cpu_snapshot())
        rows = len(hq_params)
        hq, vec = (float(np.sum(lat["hq"])), other), (float(np.sum(lat["vec"])), other)
        pct = {k: (float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 95)) * 1e3, float(np.max(v)) * 1e3)
               for k, v in lat.items()}
        self.ops.append({"op": name, "rows": rows, "hq": hq, "vec": vec, "goal": False, "lat": pct})
        log(f"    {name}: hq {rows / hq[0]:,.0f} rows/s (p50 {pct['hq'][0]:.2f} ms, p95 {pct['hq'][1]:.2f} ms), "
            f"sqlite-vec {rows / vec[0]:,.0f} rows/s (p50 {pct['vec'][0]:.2f} ms, p95 {pct['vec'][1]:.2f} ms): "
            f"{vec[0] / hq[0]:.2f}x")

    def run(self):
        a = self.args
        hqdb = self.hqdb
        n, add, ac = a.rows, a.add, a.autocommit
        total = n + max(add, ac)
        log(f"hqdb: {json.dumps(hqdb.info())}")
        log(f"\n== write throughput: {n:,}-row tables, +{add:,} rows in one transaction, {ac:,} autocommit rows")
        t0 = time.perf_counter()
        codes, qcodes, cbs, titles = write_data(total)
        log(f"   data for {total:,} rows (seed 0) in {time.perf_counter() - t0:.1f} s")
        tmp = Path(tempfile.mkdtemp(prefix="hqdb-writes-", dir=a.tmpdir))
        self.tmp = str(tmp)
        try:
            self._run(tmp, n, add, ac, codes, qcodes, cbs, titles)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, tmp, n, add, ac, codes, qcodes, cbs, titles):
        hqdb = self.hqdb
        hq_path, vec_path = str(tmp / "hq.db"), str(tmp / "vec.db")

        # --- build both tables to n rows (bulk paths), then reopen them as an application would
        db = hqdb.connect(hq_path)
        db.execute(HQ_DDL)
        hqdb.set_codebooks(db, "t", cbs)
        dt, oc = timed(lambda: hqdb.insert_codes(db, "t", codes[:n], qcodes[:n],
                                                 metadata={"title": titles[:n]}))
        self.builds["hq"] = (n / dt, oc)
        log(f"    hqdb.insert_codes from empty: {n / dt:,.0f} rows/s ({dt:.2f} s)")
        db.close()
        c = vec_connect(vec_path)
        (self.vec_version,) = c.execute("SELECT vec_version()").fetchone()
        c.execute(VEC_DDL)
        vec_rows = [(i + 1, codes[i].tobytes(), titles[i]) for i in range(n)]

        def vec_fill():
            with c:
                c.executemany(VEC_INSERT, vec_rows)
        dt, oc = timed(vec_fill)
        del vec_rows
        self.builds["vec"] = (n / dt, oc)
        log(f"    sqlite-vec {self.vec_version} executemany from empty (one transaction): {n / dt:,.0f} rows/s ({dt:.2f} s)")
        c.close()
        self.sizes = {"hq": os.path.getsize(hq_path), "vec": os.path.getsize(vec_path)}

        db = hqdb.connect(hq_path)
        c = vec_connect(vec_path)
        # a second connection to each file, as another process serving searches would hold
        conns = {"hq": (db, hqdb.connect(hq_path)), "vec": (c, vec_connect(vec_path))}
        for name, conn in (("hq", db), ("vec", c)):
            self.pragmas[name] = (conn.execute("PRAGMA journal_mode").fetchone()[0],
                                  conn.execute("PRAGMA synchronous").fetchone()[0])
        self.check_counts(db, c, n, "after the build")
        # a first search loads hq's in-memory code arrays: the writes below then run against a
        # table that is being served, as in an application
        self.search_pair(conns, codes[0].tobytes(), 1, True, "after opening (loads the caches)", second=False)

        # --- SQL executemany INSERT of `add` rows in one explicit transaction
        hq_rows = [(n + i + 1, codes[n + i].tobytes(), qcodes[n + i].tobytes(), titles[n + i]) for i in range(add)]
        vec_rows = [(n + i + 1, codes[n + i].tobytes(), titles[n + i]) for i in range(add)]
        self.op("SQL executemany INSERT, one transaction (BEGIN … COMMIT)", add,
                in_transaction(db, lambda: db.executemany(HQ_INSERT, hq_rows)),
                in_transaction(c, lambda: c.executemany(VEC_INSERT, vec_rows)), goal=True)
        del hq_rows, vec_rows
        self.check_counts(db, c, n + add, f"after INSERT of {add:,}")
        j = n + add // 2
        self.search_pair(conns, codes[j].tobytes(), j + 1, True, "after the INSERT")

        # --- one set-based DELETE of those rows in one explicit transaction
        self.op("SQL DELETE FROM … WHERE rowid > ?, one transaction", add,
                in_transaction(db, lambda: db.execute("DELETE FROM t WHERE rowid > ?", (n,))),
                in_transaction(c, lambda: c.execute("DELETE FROM v WHERE rowid > ?", (n,))), goal=True)
        self.check_counts(db, c, n, "after the DELETE")
        self.search_pair(conns, codes[j].tobytes(), j + 1, False, "after the DELETE")

        # --- autocommit single-row INSERTs, then autocommit single-row DELETEs
        hq_rows = [(n + i + 1, codes[n + i].tobytes(), qcodes[n + i].tobytes(), titles[n + i]) for i in range(ac)]
        vec_rows = [(n + i + 1, codes[n + i].tobytes(), titles[n + i]) for i in range(ac)]

        self.op_rows("autocommit INSERT, one row per statement", db, HQ_INSERT, hq_rows, c, VEC_INSERT, vec_rows)
        self.check_counts(db, c, n + ac, f"after {ac:,} autocommit INSERTs")
        j = n + ac // 2
        self.search_pair(conns, codes[j].tobytes(), j + 1, True, "after the autocommit INSERTs")
        ids = [(n + i + 1,) for i in range(ac)]
        self.op_rows("autocommit DELETE … WHERE rowid = ?, one row per statement",
                     db, "DELETE FROM t WHERE rowid = ?", ids, c, "DELETE FROM v WHERE rowid = ?", ids)
        self.check_counts(db, c, n, f"after {ac:,} autocommit DELETEs")
        self.search_pair(conns, codes[j].tobytes(), j + 1, False, "after the autocommit DELETEs")
        for pair in conns.values():
            for cx in pair:
                cx.close()

    # ---------------------------------------------------------------- report
    def table(self) -> list[str]:
        L = ["| operation | rows | hq rows/s | sqlite-vec bit[128] rows/s | hq / sqlite-vec | goal ≥ 0.5× | other CPU (hq / vec) |",
             "|---|---|---|---|---|---|---|"]
        oc = lambda v: "—" if v != v else f"{v:.1f}"  # noqa: E731
        if self.builds:
            h, v = self.builds["hq"], self.builds["vec"]
            L.append(f"| build from empty (hq: `hqdb.insert_codes`; sqlite-vec: executemany, one transaction) | "
                     f"{self.args.rows:,} | {h[0]:,.0f} | {v[0]:,.0f} | {h[0] / v[0]:.2f}× | — | {oc(h[1])} / {oc(v[1])} |")
        for o in self.ops:
            h, v = o["rows"] / o["hq"][0], o["rows"] / o["vec"][0]
            x = h / v
            goal = verdict(x >= TARGET_WRITE_X) if o["goal"] else "—"
            L.append(f"| {o['op']} | {o['rows']:,} | {h:,.0f} | {v:,.0f} | {x:.2f}× | {goal} | "
                     f"{oc(o['hq'][1])} / {oc(o['vec'][1])} |")
        return L

    def search_table(self) -> list[str]:
        L = ["| k=10 Hamming search | hq first ms | hq second ms | hq reader connection ms | "
             "sqlite-vec first ms | sqlite-vec second ms | sqlite-vec reader connection ms |",
             "|---|---|---|---|---|---|---|"]
        for s in self.searches:
            L.append(f"| {s['when']} | {fmt(s['hq'])} | {fmt(s.get('hq2'))} | {fmt(s['hqr'])} | "
                     f"{fmt(s['vec'])} | {fmt(s.get('vec2'))} | {fmt(s['vecr'])} |")
        return L

    def latency_lines(self) -> list[str]:
        return [f"- {o['op']}, per row: hq p50 {o['lat']['hq'][0]:.2f} ms, p95 {o['lat']['hq'][1]:.2f} ms, "
                f"max {o['lat']['hq'][2]:.1f} ms; sqlite-vec p50 {o['lat']['vec'][0]:.2f} ms, p95 "
                f"{o['lat']['vec'][1]:.2f} ms, max {o['lat']['vec'][2]:.1f} ms"
                for o in self.ops if "lat" in o]

    def section(self, elapsed: float, cmd: str) -> list[str]:
        a = self.args
        mi = machine_info()
        import apsw

        L = ["## Write throughput", "",
             f"Generated by `{cmd}` on {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} "
             f"({elapsed / 60:.1f} min)." + (f" {a.label}" if a.label else ""), "",
             f"- Machine: {mi['cpu']}, {mi['cores']} cores, {mi['memory']} RAM, {mi['platform']}, Python {mi['python']}; "
             f"lscpu flags: {cpu_flags_summary()}. Load average at the end: "
             f"{tuple(round(x, 2) for x in os.getloadavg())} (a shared machine: 'other CPU' = cores other "
             "processes used during each timed operation).",
             f"- Versions: apsw {apsw.apswversion()}, SQLite {apsw.sqlite_lib_version()}, sqlite-vec {self.vec_version}, "
             f"numpy {np.__version__}; git HEAD at start {self.git_at_start}"
             + ("" if git_head() == self.git_at_start else f" (at the end {git_head()})"),
             f"- `hqdb.info()`: `{json.dumps(self.hqdb.info())}`; hqdb imported from "
             f"{Path(self.hqdb.__file__).parent}; native module: {self.native_at_start}",
             f"- Tables, each in its own file in one temporary directory ({Path(self.tmp).parent}): "
             f"`{HQ_DDL}` (opened with `hqdb.connect`) and `{VEC_DDL}` (apsw + sqlite-vec); journal mode / "
             f"synchronous: hq {self.pragmas['hq'][0]} / {self.pragmas['hq'][1]}, sqlite-vec "
             f"{self.pragmas['vec'][0]} / {self.pragmas['vec'][1]} (both WAL, SQLite's default synchronous). "
             f"Sizes after the build: hq {self.sizes['hq'] / a.rows:.1f} bytes/row, sqlite-vec "
             f"{self.sizes['vec'] / a.rows:.1f} bytes/row.",
             "- Data: the same rows for both: sign bits of the search bench's seeded 128-d vectors (seed 0), "
             "a title `document 0000001`…, explicit rowids; hq also gets a 4-byte qcode (seeded uniform random "
             "codes and codebooks: the write path does not depend on their values).",
             f"- Sequence, on the same two connections: build both tables to {a.rows:,} rows (hq with "
             "`hqdb.insert_codes` + `hqdb.set_codebooks`, sqlite-vec with executemany in one transaction), "
             "close and reopen them, run one search on each (hq loads its code arrays), then: "
             f"executemany `{HQ_INSERT}` (sqlite-vec: `{VEC_INSERT}`) of {a.add:,} rows between BEGIN and COMMIT; "
             f"`DELETE FROM t WHERE rowid > {a.rows}` between BEGIN and COMMIT; {a.autocommit:,} autocommit "
             "INSERTs (one statement and one commit each), then as many autocommit `DELETE … WHERE rowid = ?`. "
             "Times include the COMMIT; the parameter tuples are built before the clock starts. "
             "hq runs each transaction first, sqlite-vec right after; the autocommit rows alternate between "
             "the two in blocks of 100 (the VM's commit latency varies over seconds). A second connection "
             "to each file (a reader, as another process serving searches) searched once at the start.",
             "", *self.table(), "", *self.latency_lines(), "",
             f"Goal (issue 12): SQL executemany INSERT and a set-based SQL DELETE on a {a.rows:,}-row table at "
             f"≥ {TARGET_WRITE_X}× sqlite-vec bit[128]'s rate in the same run. The autocommit rows have no "
             "numeric goal (they should not each pay a full cache update: compare the rates and the search "
             "after them).", "",
             "Search right after each write (the first query on the writing connection pays whatever the "
             "writes left pending; the reader connection's first query pays for noticing another connection's "
             "writes; the query is the code of one written row, which must be found after an INSERT and absent "
             "after a DELETE, on both connections):", "", *self.search_table(), ""]
        if self.failures:
            L += ["**CORRECTNESS FAILURES:**", ""] + [f"- {f}" for f in self.failures] + [""]
        L += ["Checks: " + "; ".join(self.checks) + ".", ""]
        return L


def run_writes(a, argv) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    for i, x in enumerate(args):  # the label is printed on its own
        if x == "--label" and i + 1 < len(args):
            args[i + 1] = "…"
        elif x.startswith("--label="):
            args[i] = "--label=…"
    cmd = "python bench/search.py" + "".join(f" {x}" for x in args)
    full = a.rows == 1_000_000 and a.add == 100_000 and a.autocommit == 2000
    out_md = a.out or (BENCH / "RESULTS.md" if full else CACHE / "writes" / "RESULTS.md")
    t0 = time.perf_counter()
    w = WriteBench(a)
    if w.hqdb is None:
        log(f"hqdb could not be imported: {w.hqdb_reason}")
        return 2
    CACHE.mkdir(parents=True, exist_ok=True)
    w.run()
    elapsed = time.perf_counter() - t0
    lines = w.section(elapsed, cmd)
    log("\n" + "=" * 100)
    log(f"{machine_info()['cpu']}; flags: {cpu_flags_summary()}")
    log(f"hqdb.info(): {json.dumps(w.hqdb.info())} (from {Path(w.hqdb.__file__).parent})")
    for line in w.table() + [""] + w.latency_lines() + [""] + w.search_table():
        log(line)
    if not a.no_report:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(BENCH))
        from sections import replace_section

        replace_section(out_md, WRITES_SECTION, lines)
        log(f"\nwrote the '{WRITES_SECTION}' section of {out_md}; total {elapsed / 60:.1f} min")
    if native_module() != w.native_at_start:
        log("WARNING: hqdb's native module changed on disk during the run")
    if w.failures:
        log(f"{len(w.failures)} correctness failure(s):")
        for f in w.failures:
            log(f"  - {f}")
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# --isa: the headline searches on each Hamming scan path (issue 15)
# ------------------------------------------------------------------------------------------
# One summary section and one section per path for each kind of CPU measured, named by the path
# hqdb.info() says it picks there (its fastest), so a run on another kind of machine adds its
# sections instead of mixing figures.
ISA_SECTION = "cpu-paths-{}"          # the summary table of a run on that kind of CPU
ISA_PATH_SECTION = "cpu-path-{}-{}"   # one section per path, rewritten only when that path runs there
CPU_KINDS = {"avx512": "an AVX-512 VPOPCNTDQ CPU", "avx2": "an AVX2 CPU without AVX-512 VPOPCNTDQ",
             "neon": "an ARM CPU with NEON", "scalar": "a CPU with neither AVX2 nor NEON"}


ISA_BITS, ISA_BOOKS, ISA_C = 128, 4, 1000


def isa_measure(a, paths: list[str]) -> dict:
    """One run: FAISS IndexBinaryFlat, sqlite-vec bit[128] and the memory floor, and for each path
    (forced with ``hqdb.kernels._tune("isa", path)``) hqdb two-stage c = 1000 and Hamming-only
    through SQL and as bare kernel calls, all on the same seeded uniform codes, one thread, k = 10.

    The methods take turns: ``--isa-rounds`` rounds, each running every method on its share of
    the queries (after 2 warm-up queries, so its data is back in cache), so that the load of
    other jobs on this shared machine falls on every method alike instead of on whichever ran
    during a busy minute."""
    hqdb, _ = import_hqdb()
    kern = hqdb.kernels
    faiss, faiss_reason = import_faiss()
    n, bits, m, c = a.isa_rows, ISA_BITS, ISA_BOOKS, ISA_C
    nq, nb, rounds = a.queries, ISA_BITS // 8, max(1, min(a.isa_rounds, a.queries))
    rng = np.random.default_rng([0, 15])
    log(f"data: {n:,} uniform random {bits}-bit codes, m = {m}, {nq} queries in {rounds} rounds ...")
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    qcodes = rng.integers(0, 256, (n, m), dtype=np.uint8)
    cbs = (0.1 * rng.standard_normal((m, 256, bits))).astype(np.float32)
    q = rng.standard_normal((nq, bits)).astype(np.float32)
    qbits = pack(q)
    qblobs = [v.tobytes() for v in q]
    rid = np.arange(1, n + 1, dtype=np.int64)
    ref = [np.sort(np_hamming(codes.view(np.uint64), qbits[i]))[:K].tolist() for i in range(nq)]
    out: dict = {"n": n, "bits": bits, "m": m, "c": c, "queries": nq, "rounds": rounds, "paths": {},
                 "failures": [], "skipped": [], "load_start": tuple(round(x, 2) for x in os.getloadavg())}

    def floor():
        bw, how = measure_bandwidth(256 << 20, 1)
        cache_bw, _ = measure_bandwidth(n * nb, 1)
        return bw, how, cache_bw

    log("memory bandwidth, 1 thread ...")
    bw0 = floor()

    # every method: name -> (path or None, fn(i) -> result to check)
    methods: dict[str, tuple[str | None, object]] = {}
    cleanup = []
    if faiss is not None:
        index = faiss.IndexBinaryFlat(bits)
        index.add(codes)
        faiss.omp_set_num_threads(1)
        out["faiss_version"] = faiss.__version__

        def fs(i):
            D, _ = index.search(qbits[i:i + 1], K)
            return sorted(D[0].tolist())

        methods["faiss"] = (None, fs)
    else:
        out["skipped"].append(f"FAISS: {faiss_reason}")

    vpath = CACHE / "vec_isa.db"
    for f in (vpath, Path(str(vpath) + "-wal"), Path(str(vpath) + "-shm")):
        f.unlink(missing_ok=True)
    vc = vec_connect(str(vpath))
    out["vec_version"] = vc.execute("select vec_version()").fetchone()[0].lstrip("v")
    vc.execute(f"create virtual table v using vec0(embedding bit[{bits}])")
    log(f"sqlite-vec {out['vec_version']}: loading {n:,} rows ...")
    with vc:
        vc.executemany("insert into v(rowid, embedding) values (?, vec_bit(?))",
                       ((i + 1, codes[i].tobytes()) for i in range(n)))
    vsql = "select rowid, distance from v where embedding match vec_quantize_binary(?) and k = ?"
    methods["vec"] = (None, lambda i: sorted(r[1] for r in vc.execute(vsql, (qblobs[i], K)).fetchall()))
    cleanup.append(vc.close)

    hpath = CACHE / "hq_isa.db"
    for f in (hpath, Path(str(hpath) + "-journal"), Path(str(hpath) + "-wal"), Path(str(hpath) + "-shm")):
        f.unlink(missing_ok=True)
    db = hqdb.connect(str(hpath), threads=1)
    db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={bits}, books={m}, codewords=256)")
    hqdb.set_codebooks(db, "t", cbs)
    hqdb.insert_codes(db, "t", codes, qcodes)
    cleanup.append(db.close)
    two = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND candidates = ?"
    ham = "SELECT rowid, distance, hamming FROM t WHERE hq_match(t.code, ?) AND k = ? AND mode = ?"

    def kh(i):
        return kern.search(codes, None, rid, None, kern.pack_bits(q[i]), None, k=K, candidates=K,
                           mode="hamming", threads=1)[2].tolist()

    def k2(i):
        lut = kern.aqd_lut(q[i], cbs)
        return kern.search(codes, qcodes, rid, None, kern.pack_bits(q[i]), lut, k=K, candidates=c,
                           mode="two_stage", threads=1)[0].tolist()

    for path in paths:
        methods[f"{path}:sql_two"] = (path, lambda i: db.execute(two, (qblobs[i], K, c)).fetchall())
        methods[f"{path}:sql_ham"] = (path, lambda i: db.execute(ham, (qblobs[i], K, "hamming")).fetchall())
        methods[f"{path}:kernel_ham"] = (path, kh)
        methods[f"{path}:kernel_two"] = (path, k2)
        kern._tune("isa", path)
        info = hqdb.info()
        if info.get("hamming_path") != path:
            out["failures"].append(f"isa={path}: hqdb.info() says {info.get('hamming_path')!r}")
        out["paths"][path] = {"info": info}
    kern._tune("isa", "auto")

    lat: dict[str, list[float]] = {name: [] for name in methods}
    res: dict[str, list] = {name: [None] * nq for name in methods}
    other: list[float] = []
    try:
        for r in range(rounds):
            share = range(r * nq // rounds, (r + 1) * nq // rounds)
            for name, (path, fn) in methods.items():
                kern._tune("isa", path or "auto")
                wait_quiet()
                for w in (1, 2):  # warm-up: back in cache after the other methods
                    fn((share.start + w) % nq)
                gc.collect()
                gc.disable()
                before = cpu_snapshot()
                try:
                    for i in share:
                        t = time.perf_counter()
                        res[name][i] = fn(i)
                        lat[name].append(time.perf_counter() - t)
                finally:
                    gc.enable()
                other.append(other_cpu(before, cpu_snapshot()))
            shown = ("faiss", f"{paths[0]}:sql_two")
            log(f"  round {r + 1}/{rounds}: "
                + "  ".join(f"{name} {np.median(v) * 1e3:.3f}" for name, v in lat.items() if name in shown))
    finally:
        kern._tune("isa", "auto")
        for fn in cleanup:
            fn()
        for f in (hpath, vpath, *(Path(str(x) + y) for x in (hpath, vpath) for y in ("-wal", "-shm"))):
            f.unlink(missing_ok=True)

    def pct(name):
        v = np.array(lat[name])
        return {"p50": float(np.percentile(v, 50) * 1e3), "p95": float(np.percentile(v, 95) * 1e3)}

    bw1 = floor()
    bw, how, cache_bw = max(bw0, bw1)  # the faster measurement: the stricter floor
    out["floor"] = {"bytes": n * nb, "bw": bw, "how": how, "ms": n * nb / bw * 1e3, "cache_bw": max(bw0[2], bw1[2]),
                    "cache_ms": n * nb / max(bw0[2], bw1[2]) * 1e3}
    out["other_cpu"] = float(np.nanmean(other)) if other else float("nan")
    if "faiss" in methods:
        out["faiss"] = pct("faiss")
        if res["faiss"] != ref:
            out["failures"].append("FAISS distances differ from numpy")
    out["vec"] = pct("vec")
    if res["vec"] != [[float(d) for d in r] for r in ref]:
        out["failures"].append("sqlite-vec bit distances differ from numpy")
    first = None
    for path in paths:
        r = out["paths"][path]
        for key in ("sql_two", "sql_ham", "kernel_ham", "kernel_two"):
            r[key] = pct(f"{path}:{key}")
        two_res, ham_res = res[f"{path}:sql_two"], res[f"{path}:sql_ham"]
        if [[x[2] for x in rows] for rows in ham_res] != ref or res[f"{path}:kernel_ham"] != ref:
            out["failures"].append(f"isa={path}: Hamming top-10 distances differ from numpy")
        if [[x[0] for x in rows] for rows in two_res] != res[f"{path}:kernel_two"]:
            out["failures"].append(f"isa={path}: SQL two-stage differs from kernels.search")
        if first is None:
            first = (path, two_res, ham_res)
        elif (two_res, ham_res) != first[1:]:
            out["failures"].append(f"isa={path}: SQL results differ from isa={first[0]}")
    out["load_end"] = tuple(round(x, 2) for x in os.getloadavg())
    return out


def isa_goals(res: dict, path: str) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for one path: the issue-15 goals for an AVX2 CPU."""
    r, fl = res["paths"][path], res["floor"]
    out = []
    if "faiss" in res:
        f = res["faiss"]["p50"]
        x = r["sql_two"]["p50"] / f
        out.append(("two-stage c=1000 through SQL ≤ 1.0× FAISS IndexBinaryFlat",
                    f"{x:.2f}× ({r['sql_two']['p50']:.3f} ms vs FAISS {f:.3f} ms)", verdict(x <= 1.0)))
    x = r["sql_ham"]["p50"] / fl["ms"]
    out.append(("Hamming stage ≤ 1.5× the memory floor",
                f"SQL mode='hamming' {x:.2f}× ({r['sql_ham']['p50']:.3f} ms vs DRAM floor {fl['ms']:.3f} ms); "
                f"kernel alone {r['kernel_ham']['p50'] / fl['ms']:.2f}×; against the cache floor "
                f"({fl['cache_ms']:.3f} ms: codes of {fl['bytes'] / 2**20:.1f} MiB can stay in cache) SQL "
                f"{r['sql_ham']['p50'] / fl['cache_ms']:.2f}×",
                verdict(x <= TARGET_FLOOR_X)))
    x = res["vec"]["p50"] / r["sql_two"]["p50"]
    out.append(("two-stage SQL ≥ 10× faster than sqlite-vec bit[128] KNN",
                f"{x:.1f}× ({res['vec']['p50']:.2f} ms vs {r['sql_two']['p50']:.3f} ms)",
                verdict(x >= TARGET_VS_VEC_BIT)))
    return out


def isa_report(res: dict, cmd: str, elapsed: float, kind: str) -> tuple[list[str], dict[str, list[str]]]:
    """The summary section's lines and each path's section lines, for a CPU of ``kind``."""
    mi = machine_info()
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = cpu_flags_summary()
    fl = res["floor"]
    head = [f"Generated by `{cmd}` on {when} ({elapsed / 60:.1f} min), git HEAD {git_head()}; "
            f"{mi['cpu']}, {mi['cores']} cores, {mi['memory']} RAM; lscpu flags: {flags}. "
            f"Load average at start / end: {res['load_start']} / {res['load_end']} (a shared machine). "
            f"Data: {res['n']:,} uniform random {res['bits']}-bit codes (seeded), m = {res['m']} uniform random "
            f"quantization codes, {res['queries']} queries, k = 10, one thread, p50 over the queries. Every "
            f"method in this one run, taking turns: {res['rounds']} rounds, each running every method on its "
            f"share of the queries after 2 warm-up queries, so other jobs' load falls on all of them alike "
            f"(other processes used {res['other_cpu']:.2f} cores on average while they ran). "
            f"Memory floor = {fl['bytes'] / 2**20:.1f} MiB ÷ "
            f"1-thread read bandwidth ({fl['bw'] / 1e9:.1f} GB/s, numpy {fl['how']} over 256 MB: "
            f"{fl['ms']:.3f} ms; a buffer the size of the codes: {fl['cache_bw'] / 1e9:.1f} GB/s, "
            f"{fl['cache_ms']:.3f} ms). "
            "Each path is forced with `hqdb.kernels._tune(\"isa\", path)` (the `isa` knob of `hq_knobs`, "
            "native/hq_kernels.h). Floors: the faster of two measurements, before and after."]
    fa = {"faiss": res["faiss"]["p50"]} if "faiss" in res else {}
    shared = ((f"FAISS {res.get('faiss_version', '?')} IndexBinaryFlat p50 {res['faiss']['p50']:.3f} ms; "
               if fa else "")
              + f"sqlite-vec {res['vec_version']} bit[{res['bits']}] KNN p50 {res['vec']['p50']:.2f} ms")
    summary = [f"## Search speed per Hamming scan path on {CPU_KINDS[kind]} (`bench/search.py --isa`)",
               ""] + head + ["", shared, "",
               "| path | two-stage c=1000 SQL ms | Hamming SQL ms | Hamming kernel ms | two-stage kernel ms | "
               "two-stage SQL ÷ FAISS | Hamming SQL ÷ DRAM floor | sqlite-vec bit ÷ two-stage SQL |",
               "|---|---:|---:|---:|---:|---:|---:|---:|"]
    per: dict[str, list[str]] = {}
    for path, r in res["paths"].items():
        f = min(fa.values()) if fa else float("nan")
        summary.append(f"| {path} | {r['sql_two']['p50']:.3f} | {r['sql_ham']['p50']:.3f} | "
                       f"{r['kernel_ham']['p50']:.3f} | {r['kernel_two']['p50']:.3f} | "
                       f"{r['sql_two']['p50'] / f:.2f}× | {r['sql_ham']['p50'] / fl['ms']:.2f}× | "
                       f"{res['vec']['p50'] / r['sql_two']['p50']:.1f}× |")
        L = [f"### Hamming scan path `{path}` on {CPU_KINDS[kind]}", "",
             f"Run of {when} (`{cmd}`), {mi['cpu']}; lscpu flags: {flags}. Path that ran: `{path}` — "
             f"{r['info']['hamming_impl']}.", "",
             f"`hqdb.info()` while it ran: `{json.dumps(r['info'])}`", "",
             "| measurement (1 thread, k = 10) | p50 ms | p95 ms |", "|---|---:|---:|"]
        for label, key in (("hqdb two-stage c=1000 (SQL)", "sql_two"),
                           ("hqdb Hamming only, mode='hamming' (SQL)", "sql_ham"),
                           ("hqdb Hamming only (kernels.search, no SQL)", "kernel_ham"),
                           ("hqdb two-stage c=1000 (aqd_lut + kernels.search, no SQL)", "kernel_two")):
            L.append(f"| {label} | {r[key]['p50']:.3f} | {r[key]['p95']:.3f} |")
        if "faiss" in res:
            L.append(f"| FAISS {res.get('faiss_version', '')} IndexBinaryFlat | {res['faiss']['p50']:.3f} | "
                     f"{res['faiss']['p95']:.3f} |")
        L.append(f"| sqlite-vec {res['vec_version']} bit[{res['bits']}] KNN | {res['vec']['p50']:.3f} | "
                 f"{res['vec']['p95']:.3f} |")
        L.append(f"| memory floor (DRAM / codes-sized buffer) | {fl['ms']:.3f} / {fl['cache_ms']:.3f} | |")
        L += ["", "| goal (for an AVX2 CPU) | measured | verdict |", "|---|---|---|"]
        L += [f"| {g} | {mv} | {vd} |" for g, mv, vd in isa_goals(res, path)]
        per[path] = L
    if res["failures"]:
        summary += ["", "Correctness failures: " + "; ".join(res["failures"])]
    else:
        summary += ["", "Correctness: on every path hqdb's Hamming top-10 distances equal numpy's on every query, "
                    "SQL two-stage equals kernels.search, and every path's SQL results equal the first path's."]
    if res["skipped"]:
        summary += ["", "Skipped: " + "; ".join(res["skipped"])]
    return summary, per


def run_isa(a, argv) -> int:
    hqdb, reason = import_hqdb()
    if hqdb is None or hqdb.kernels.BACKEND != "native":
        log(f"--isa needs hqdb's native kernels: {reason or hqdb.kernels.FALLBACK_REASON}")
        return 2
    kinfo = hqdb.kernels.info()
    have = kinfo["hamming_paths"]
    kind = kinfo["hamming_path"]  # the path the dispatch picks by itself: this CPU's fastest
    paths = a.isa or have
    missing = [x for x in paths if x not in have]
    if missing:
        log(f"path(s) {', '.join(missing)} not available on this CPU / build (it has {', '.join(have)})")
        return 2
    cmd = "python bench/search.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = isa_measure(a, paths)
    elapsed = time.perf_counter() - t0
    summary, per = isa_report(res, cmd, elapsed, kind)
    log("\n" + "=" * 100)
    for line in summary:
        log(line)
    for lines in per.values():
        log("")
        for line in lines:
            log(line)
    if not a.no_report:
        full = a.isa_rows == 1_000_000 and a.queries >= 200
        out_md = a.out or (BENCH / "RESULTS.md" if full else CACHE / "isa" / "RESULTS.md")
        out_md.parent.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(BENCH))
        from sections import replace_section

        replace_section(out_md, ISA_SECTION.format(kind), summary)
        for path in have:  # in path order, after the summary
            if path in per:
                replace_section(out_md, ISA_PATH_SECTION.format(kind, path), per[path])
        log(f"\nwrote the '{ISA_SECTION.format(kind)}' and per-path sections of {out_md}; "
            f"total {elapsed / 60:.1f} min")
    if res["failures"]:
        log(f"{len(res['failures'])} correctness failure(s):")
        for f in res["failures"]:
            log(f"  - {f}")
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def git_head() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "hqdb", "native"],
                               capture_output=True, text=True).stdout.strip()
        return r.stdout.strip() + (" (hqdb/ or native/ modified)" if dirty else "")
    except OSError:
        return "?"


def machine_info() -> dict:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def native_module() -> str:
    """Path, mtime, inode and sha256 prefix of hqdb's compiled kernels (they are rebuilt while
    being worked on: the bench records this at import and again at the end)."""
    try:
        import hashlib

        from hqdb.kernels import _native

        p = Path(_native.__file__)
        st = p.stat()
        h = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        mt = _dt.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        rel = p.relative_to(REPO) if p.is_relative_to(REPO) else p
        return f"{rel} (mtime {mt}, inode {st.st_ino}, sha256 {h})"
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"


def versions(b: Bench) -> dict:
    import apsw
    import sqlite_vec

    v = {"numpy": np.__version__, "apsw": apsw.apswversion(), "sqlite": apsw.sqlite_lib_version(),
         "sqlite-vec": getattr(sqlite_vec, "__version__", "?")}
    if b.faiss is not None:
        v["faiss"] = b.faiss.__version__
    if b.hqdb is not None:
        v["hqdb.info()"] = b.hqdb.info()
    return v


def fmt(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.{nd}f}"
    return str(v)


def verdict(ok):
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def targets(b: Bench):
    """[(target, measured, verdict)] at 1M x 128 bits, m = 4 (or say it was not measured)."""
    n, bits, m = 1_000_000, 128, 4
    out = []
    two = b.find(N=n, bits=bits, books=m, method="hqdb two-stage c=1000 (SQL)", threads=1)
    vb = b.find(N=n, bits=bits, method=f"sqlite-vec 0.1.9 bit[{bits}]")
    hs = b.find(N=n, bits=bits, method="hqdb hamming (SQL)", threads=1)
    hk = b.find(N=n, bits=bits, method="hqdb kernel hamming (no SQL)", threads=1)
    fa = b.find(N=n, bits=bits, method="FAISS IndexBinaryFlat", threads=1)
    fl = next((f for f in b.floors if f["N"] == n and f["bits"] == bits and f["threads"] == 1), None)
    ins = next((i for i in b.inserts if i["N"] == n and i["bits"] == bits and i.get("books") == m
                and i["what"].startswith("hqdb.insert_codes")), None)
    nm = "not measured in this run"
    out.append(("two-stage c=1000 k=10 p50 through SQL, 1 thread ≤ 1 ms",
                f"{two['p50_ms']:.3f} ms (p95 {two['p95_ms']:.3f} ms)" if two else nm,
                verdict(two["p50_ms"] <= TARGET_P50_MS) if two else "—"))
    if two and vb:
        x = vb["p50_ms"] / two["p50_ms"]
        out.append(("≥ 10× faster than sqlite-vec bit[128] KNN (p50)",
                    f"{x:.1f}× ({vb['p50_ms']:.2f} ms vs {two['p50_ms']:.3f} ms)", verdict(x >= TARGET_VS_VEC_BIT)))
    else:
        out.append(("≥ 10× faster than sqlite-vec bit[128] KNN (p50)", nm, "—"))
    if hs and fl:
        x = hs["p50_ms"] / fl["floor_ms"]
        kx = f"; kernel alone {hk['p50_ms'] / fl['floor_ms']:.2f}× ({hk['p50_ms']:.3f} ms)" if hk else ""
        if fl.get("cache_floor_ms"):
            cf = fl["cache_floor_ms"]
            kx += (f". The 15 MB of codes stay in L3 between queries: against the cache floor ({cf:.3f} ms) "
                   f"SQL is {hs['p50_ms'] / cf:.2f}×" + (f", kernel {hk['p50_ms'] / cf:.2f}×" if hk else ""))
        out.append(("Hamming stage within 1.5× of the memory floor (1 thread)",
                    f"SQL mode='hamming' {x:.2f}× ({hs['p50_ms']:.3f} ms vs DRAM floor {fl['floor_ms']:.3f} ms){kx}",
                    verdict(x <= TARGET_FLOOR_X)))
    else:
        out.append(("Hamming stage within 1.5× of the memory floor (1 thread)", nm, "—"))
    if hs and fa:
        x = hs["p50_ms"] / fa["p50_ms"]
        kx = f"; kernel alone {hk['p50_ms'] / fa['p50_ms']:.2f}×" if hk else ""
        out.append(("Hamming stage within 1.5× of FAISS IndexBinaryFlat (1 thread)",
                    f"SQL {x:.2f}× ({hs['p50_ms']:.3f} ms vs FAISS {fa['p50_ms']:.3f} ms){kx}",
                    verdict(x <= TARGET_FAISS_X)))
    else:
        out.append(("Hamming stage within 1.5× of FAISS IndexBinaryFlat (1 thread)", nm, "—"))
    if b.cold and b.cold["N"] == n and b.cold["bits"] == bits:
        c = float(np.median([r["connect"] + r["first_query"] for r in b.cold["cold"]]))
        out.append(("cold open + first query ≤ 0.5 s",
                    f"{c:.3f} s (hqdb.connect + first query, db file evicted from the page cache; "
                    f"`import hqdb` not included)", verdict(c <= TARGET_COLD_S)))
    else:
        out.append(("cold open + first query ≤ 0.5 s", nm, "—"))
    out.append(("bulk insert of precomputed codes ≥ 200k rows/s",
                f"{ins['rows_s']:,.0f} rows/s (hqdb.insert_codes, file database, incl. commit)" if ins else nm,
                verdict(ins["rows_s"] >= TARGET_INSERT_RPS) if ins else "—"))
    return out


def ratio_lines(b: Bench) -> list[str]:
    lines = []
    for n in sorted({r["N"] for r in b.rows}):
        for bits in sorted({r["bits"] for r in b.rows}):
            for m in b.args.books:
                h = b.find(N=n, bits=bits, books=m, method="hqdb two-stage c=1000 (SQL)", threads=1)
                if not h:
                    continue
                parts = []
                for meth, th in ((f"sqlite-vec 0.1.9 bit[{bits}]", 1), (f"sqlite-vec 0.1.9 float[{bits}]", 1),
                                 (f"sqlite-vec {RESCORE_VERSION} rescore(bit)", 1), ("FAISS IndexBinaryFlat", 1),
                                 ("numpy Hamming (bitwise_count)", 1)):
                    p = b.find(N=n, bits=bits, method=meth, threads=th)
                    if p:
                        x = p["p50_ms"] / h["p50_ms"]
                        parts.append(f"{meth}: {x:.1f}× faster" if x >= 1 else f"{meth}: {1 / x:.2f}× slower")
                lines.append(f"- N={n:,}, {bits} bits, m={m}: hqdb two-stage c=1000 (SQL, 1 thread, "
                             f"p50 {h['p50_ms']:.3f} ms) vs " + "; ".join(parts))
    return lines


def latency_tables(b: Bench) -> list[str]:
    out = []
    for n in sorted({r["N"] for r in b.rows}):
        for bits in sorted({r["bits"] for r in b.rows}):
            rows = [r for r in b.rows if r["N"] == n and r["bits"] == bits]
            if not rows:
                continue
            out += [f"### N = {n:,}, {bits}-bit codes", "",
                    "| method | books | threads | p50 ms | p95 ms | QPS (1/mean) | recall@10 | other CPU | note |",
                    "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                oc = r.get("other_cpu")
                oc = "—" if oc is None or oc != oc else f"{oc:.1f}"
                out.append(f"| {r['method']} | {r['books'] or '—'} | {r['threads']} | {fmt(r['p50_ms'])} | "
                           f"{fmt(r['p95_ms'])} | {1e3 / r['mean_ms']:,.0f} | "
                           f"{fmt(r['recall'])} | {oc} | {r['note']} |")
            out.append("")
    return out


def write_report(b: Bench, out_md: Path, out_png: Path, elapsed: float, cmd: str):
    a = b.args
    mi = machine_info()
    v = versions(b)
    L = [f"# hqdb search benchmark", "",
         f"Generated by `bench/search.py` on {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.", "",
         f"- Command: `{cmd}` — total run time {elapsed / 60:.1f} min",
         f"- Machine: {mi['cpu']}, {mi['cores']} cores, {mi['memory']} RAM, {mi['platform']}, Python {mi['python']}",
         f"- Load average at start / end: {b.load_start} / {tuple(round(x, 2) for x in os.getloadavg())} "
         "(other engineers share this machine; their jobs can add noise). "
         + (f"Before each timed row the bench waited for other processes to use < 0.25 core: "
            f"{QUIET['waited']:.0f} s of waiting in all, {QUIET['gave_up']} row(s) started busy after 30 s."
            if QUIET["enabled"] else "No waiting for a quiet machine (--no-wait-quiet)."),
         f"- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "hqdb.info()"),
         f"- `hqdb.info()`: `{json.dumps(v.get('hqdb.info()'))}`; native module at import: "
         f"{b.native_at_start}; git HEAD at start {b.git_at_start}"
         + ("" if git_head() == b.git_at_start else f" (at the end {git_head()}: modules were already imported)")
         if b.hqdb else f"- hqdb NOT AVAILABLE: {b.hqdb_reason}",
         f"- Data: seeded (seed 0), n-dimensional unit vectors of intrinsic dimension 16 (a mixture of 256 "
         "Gaussians in 16 dimensions, mapped into n by a random orthonormal map, plus isotropic noise 0.05); "
         f"code = sign bits (`vec_quantize_binary` layout); {len(a.books) and max(a.books)}-book residual k-means "
         f"(256 codewords, 6 iterations, 20k-row sample; m=4 uses the first 4 books); {a.queries} queries "
         f"(+{a.warmup} warm-up) drawn from the same mixture; k = {K}. Every method sees the same vectors "
         "and queries. Latency = one query through the method's API (SQL statement + fetchall for the "
         "SQL methods; parameters bound, apsw's statement cache reuses the prepared statement), one at a "
         "time, Python GC off during timing.",
         f"- recall@10 is against the exact float inner-product top-10: a sanity column, the bench "
         "measures speed. Quick residual k-means codebooks of m bytes per row are coarse (m = 4 can rank "
         "below the n-bit sign code); that says nothing about learned HQ codebooks.",
         ""]
    if b.hqdb is not None and native_module() != b.native_at_start:
        L += [f"> **hqdb's native module changed on disk during this run** (at import: {b.native_at_start}; "
              f"at the end: {native_module()}): the figures may mix two builds; run again.", ""]
    if b.hqdb is not None and b.hqdb.kernels.BACKEND != "native":
        L += [f"> **hqdb ran on its `{b.hqdb.kernels.BACKEND}` fallback, not the native kernels** "
              f"({b.hqdb.kernels.FALLBACK_REASON}): these hqdb figures are not the native engine's.", ""]
    L += ["## Targets (1M rows × 128 bits, m = 4)", "", "| target | measured | verdict |", "|---|---|---|"]
    L += [f"| {t} | {mval} | {vd} |" for t, mval, vd in targets(b)]
    L += [""]
    if b.failures:
        L += ["## CORRECTNESS FAILURES", ""] + [f"- {f}" for f in b.failures] + [""]
    else:
        L += ["Correctness: hqdb `mode='hamming'` top-10 (distances and rowids) equal the numpy reference "
              "on every query; SQL two-stage results equal `hqdb.kernels.search` on every query and the "
              "numpy two-stage reference on the first 10 queries of each configuration.", ""]
    L += ["## Ratios (p50, one thread)", ""] + ratio_lines(b) + [""]
    L += ["## Hamming stage vs the memory floor", "",
          f"Read bandwidth (numpy sum / max / bitwise_or.reduce over 256 MB of uint64, best of 5 each): "
          f"{b.bw['1'] / 1e9:.1f} GB/s on one thread ({b.bw_how['1']}), {b.bw['2'] / 1e9:.1f} GB/s on two "
          f"({b.bw_how['2']}). Floor = bytes the Hamming stage scans (N × n/8) ÷ "
          "bandwidth. The code arrays here (≤ 16 MB) fit in this CPU's 32 MB L3, so a warm scan can beat "
          "the DRAM floor; 'cache floor' uses the 1-thread bandwidth of a buffer the size of the codes instead. "
          "numpy is single-threaded (no 2-thread figure).", "",
          "| N | bits | threads | bytes scanned | floor ms | cache floor ms | hqdb SQL hamming ms (× floor) | "
          "hqdb kernel ms (× floor) | FAISS ms (× floor) | numpy ms (× floor) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for f in b.floors:
        def xf(key):
            return "—" if f[key] is None else f"{f[key]:.3f} ({f[key] / f['floor_ms']:.2f}×)"
        L.append(f"| {f['N']:,} | {f['bits']} | {f['threads']} | {f['bytes'] / 2**20:.1f} MiB | {f['floor_ms']:.3f} | "
                 f"{fmt(f['cache_floor_ms'])} | {xf('sql')} | {xf('kernel')} | {xf('faiss')} | {xf('numpy')} |")
    L += [""]
    if b.cold:
        c = b.cold
        L += ["## Cold open + first query", "",
              f"Fresh Python process per run, database of {c['N']:,} rows × {c['bits']} bits, m={c['books']} "
              f"({c['bytes'] / 2**20:.1f} MiB). Evicted = the database file dropped from the OS page cache with "
              f"`posix_fadvise(DONTNEED)` before the run ({c['evict_note']}); the Python libraries stay warm, "
              "and on this VM the host may still cache the virtual disk. Warm = the file left in the page cache. "
              "Median of 3 runs each.", "",
              "| | import hqdb s | hqdb.connect s | first query s | connect + first query s | second query ms |",
              "|---|---|---|---|---|---|"]
        for kind in ("cold", "warm"):
            rs = c[kind]
            med = lambda key: float(np.median([r[key] for r in rs]))  # noqa: E731
            tot = float(np.median([r["connect"] + r["first_query"] for r in rs]))
            L.append(f"| {'evicted' if kind == 'cold' else 'warm OS cache'} | {med('import_hqdb'):.3f} | "
                     f"{med('connect'):.3f} | {med('first_query'):.3f} | {tot:.3f} | {med('second_query') * 1e3:.3f} |")
        L += [""]
    L += ["## Bulk insert and size on disk", "",
          "File databases, default pragmas (rollback journal, synchronous=FULL); times include the commit.", "",
          "| N | bits | what | rows/s | bytes/row on disk |", "|---|---|---|---|---|"]
    for i in b.inserts:
        L.append(f"| {i['N']:,} | {i['bits']} | {i['what']} | {i['rows_s']:,.0f} | {i['bytes_row']:.1f} |")
    L += [""]
    if b.contention:
        c = b.contention
        L += ["## hq_threads under CPU contention", "",
              f"hqdb two-stage c=1000 through SQL at the headline configuration, {c['queries']} queries (+5 "
              "warm-up), with 0, 1 or one-per-core busy-loop processes running, each in its own session (as "
              "another user's job would be). A 2-thread OpenMP search cannot finish until its second thread "
              "gets a core.", "",
              "| busy processes | threads | p50 ms | p95 ms |", "|---|---|---|---|"]
        for (nh, th), (p50, p95) in sorted(c["res"].items()):
            L.append(f"| {nh} | {th} | {p50:.3f} | {p95:.3f} |")
        L += [""]
    if b.breakdown or b.profile:
        L += ["## Where the SQL path's time goes", ""]
    if b.breakdown:
        d = b.breakdown
        rest_two = d["sql_two"] - d["pack"] - d["lut"] - d["k_two"]
        rest_ham = d["sql_ham"] - d["pack"] - d["k_ham"]
        L += ["Headline configuration, 1 thread, c=1000, p50 in µs (best of 3 passes). The pieces are timed "
              "separately through the public API (`hqdb.kernels.pack_bits`, `aqd_lut`, `search` with the "
              "bits / LUT precomputed); the remainder is what the SQL path adds: apsw, the virtual table's "
              "Python (plan decoding, query parsing, the catalog version check, result rows) and the "
              "kernel wrapper's validation.", "",
              "| piece | two-stage µs | share | hamming µs | share |", "|---|---|---|---|---|",
              f"| whole query through SQL | {d['sql_two']:.0f} | 100% | {d['sql_ham']:.0f} | 100% |",
              f"| kernels.search (Hamming scan + selection, + AQD re-rank in two-stage) | {d['k_two']:.0f} | {d['k_two'] / d['sql_two']:.0%} | "
              f"{d['k_ham']:.0f} | {d['k_ham'] / d['sql_ham']:.0%} |",
              f"| aqd_lut (m × 256 dot products) | {d['lut']:.0f} | {d['lut'] / d['sql_two']:.0%} | — | — |",
              f"| pack_bits | {d['pack']:.0f} | {d['pack'] / d['sql_two']:.0%} | {d['pack']:.0f} | "
              f"{d['pack'] / d['sql_ham']:.0%} |",
              f"| SQL / apsw / vtab Python (remainder) | {rest_two:.0f} | {rest_two / d['sql_two']:.0%} | "
              f"{rest_ham:.0f} | {rest_ham / d['sql_ham']:.0%} |", ""]
    if b.profile:
        p = b.profile
        L += [
              f"cProfile over {p['queries']} queries of hqdb two-stage c=1000, 1 thread, at the headline "
              f"configuration ({p['wall_us']:.0f} µs/query under the profiler). Per query:", "",
              "| own time µs | cumulative µs | calls | function |", "|---|---|---|---|"]
        L += [f"| {tt:.1f} | {ct:.1f} | {nc:g} | `{w}` |" for tt, ct, nc, w in p["top"]]
        L += [""]
    L += ["## Latency (ms per query)", "",
          "'other CPU' = cores' worth of CPU that other processes used during that row's timed loop "
          "(/proc/stat minus this process, 10 ms resolution): above ~0.3 the row was measured on a busy "
          "machine, which hits the 2-thread rows hardest (see the contention section).", ""] + latency_tables(b)
    L += ["## Not measured / notes", ""]
    notes = list(b.skipped) + list(b.notes)
    if 10_000_000 not in a.sizes:
        notes.append("N = 10M was not run: sqlite-vec float[n] alone would take ~5 GB on disk and ~1 s per query "
                     "(≈ 4 min for 200 queries), far past the ~20 min budget; `--sizes 10000000` runs it anyway.")
    notes.append("sqlite-vec has no threads setting: its rows are single-threaded whatever the 'threads' column.")
    notes.append("FAISS IndexBinaryFlat parallelises over queries; with one query per call, 2 threads do not help it.")
    notes.append(f"sqlite-vec {RESCORE_VERSION} runs in a separate Python process (its vec0.so exports the same "
                 "symbol names as 0.1.9's), same vectors and queries, default oversample.")
    L += [f"- {x}" for x in notes] + [""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(L) + kept_sections(out_md))
    plot(b, out_png)


def kept_sections(path: Path) -> str:
    """The generated sections (``<!-- name begin -->`` … ``<!-- name end -->``, see sections.py)
    already in ``path``: other scripts' and ``--writes``' figures survive a rewrite of the report."""
    if not path.exists():
        return ""
    found = re.finditer(r"<!-- (.+?) begin -->.*?<!-- \1 end -->", path.read_text(), flags=re.S)
    return "".join("\n" + m.group(0) + "\n" for m in found)


def plot(b: Bench, out_png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(r["N"] for r in b.rows)
    bits = 128 if any(r["bits"] == 128 for r in b.rows) else max(r["bits"] for r in b.rows)
    m = min(b.args.books)
    rows = [r for r in b.rows if r["N"] == n and r["bits"] == bits and r["books"] in ("", "-", m)]
    rows.sort(key=lambda r: r["p50_ms"])
    def busy(r):
        oc = r.get("other_cpu")
        return oc is not None and oc == oc and oc > 0.3

    labels = [f"{r['method']}" + (f" ×{r['threads']}t" if r["threads"] != 1 else "")
              + (" [busy machine]" if busy(r) else "") for r in rows]
    vals = [r["p50_ms"] for r in rows]
    colors = ["tab:blue" if r["method"].startswith("hqdb") else "tab:gray" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.6))
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, ms (log scale)")
    ax.set_title(f"k=10 search, N={n:,}, {bits}-bit codes, m={m} (blue: hqdb)", fontsize=10)
    for i, v in enumerate(vals):
        ax.text(v * 1.05, i, f"{v:.3g}", va="center", fontsize=7)
    fl = next((f for f in b.floors if f["N"] == n and f["bits"] == bits and f["threads"] == 1), None)
    if fl:
        ax.axvline(fl["floor_ms"], color="tab:red", ls="--", lw=1,
                   label=f"DRAM bandwidth floor of the Hamming scan, 1 thread ({fl['floor_ms']:.3f} ms)")
        if fl.get("cache_floor_ms"):
            ax.axvline(fl["cache_floor_ms"], color="tab:orange", ls=":", lw=1,
                       label=f"same, codes in cache ({fl['cache_floor_ms']:.3f} ms)")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlim(min(vals + ([fl["cache_floor_ms"] or fl["floor_ms"]] if fl else [])) / 2, max(vals) * 4)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def print_summary(b: Bench):
    log("\n" + "=" * 100)
    for line in latency_tables(b):
        log(line)
    log("Targets (1M x 128 bits, m = 4):")
    for t, mval, vd in targets(b):
        log(f"  [{vd.strip('*'):>6}] {t}: {mval}")
    log("\nRatios:")
    for line in ratio_lines(b):
        log(line)


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if "--mih" in args:  # multi-index hashing: bench/mih.py takes its own options
        import mih

        return mih.main([x for x in args if x != "--mih"])
    if "--scale" in args:  # scale figures (10M / 30M rows): bench/scale.py takes its own options
        import scale

        return scale.main(args)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    p.add_argument("--books", type=int, nargs="+", default=[4, 8])
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--row-by-row", type=int, default=20000, help="rows for the row-by-row INSERT reference")
    p.add_argument("--quick", action="store_true", help="N=100k, 128 bits, 4 books, 100 queries")
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default bench/RESULTS.md; "
                   "bench/.cache/quick/RESULTS.md with --quick); the plot goes next to it as search.png")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-contention", action="store_true",
                   help="skip the run under CPU contention (busy-loop processes on every core)")
    p.add_argument("--keep-dbs", action="store_true", help="keep every hqdb database in bench/.cache")
    p.add_argument("--no-wait-quiet", action="store_true",
                   help="do not wait for other processes to go quiet before each timed row")
    w = p.add_argument_group("write throughput (--writes: only this part runs)")
    w.add_argument("--writes", action="store_true",
                   help="SQL INSERT / DELETE rates on a large hq table against sqlite-vec bit[128], same run "
                        "(writes the 'Write throughput' section of bench/RESULTS.md at the default sizes, "
                        "else of bench/.cache/writes/RESULTS.md, unless --out)")
    w.add_argument("--rows", type=int, default=1_000_000, help="rows in both tables before the writes")
    w.add_argument("--add", type=int, default=100_000, help="rows of the executemany INSERT and set-based DELETE")
    w.add_argument("--autocommit", type=int, default=2000, help="rows inserted (then deleted) one autocommit statement each")
    w.add_argument("--tmpdir", default=None, help="where the temporary database directory goes (default: $TMPDIR or /tmp)")
    w.add_argument("--no-report", action="store_true", help="print only; write no Markdown")
    w.add_argument("--label", default="", help="a note for the report (e.g. which snapshot of hqdb ran)")
    i = p.add_argument_group("Hamming scan paths (--isa: only this part runs)")
    i.add_argument("--isa", nargs="*", default=None, metavar="PATH",
                   help="force each Hamming scan path in turn (scalar, avx2, avx512, neon; none given: every "
                        "path this CPU has) and measure two-stage and Hamming-only p50 at 1M x 128-bit uniform "
                        "codes, one thread, with FAISS IndexBinaryFlat, sqlite-vec bit[128] and the memory floor "
                        "in the same run; writes the per-path sections of bench/RESULTS.md (default sizes; else "
                        "bench/.cache/isa/RESULTS.md, or --out)")
    i.add_argument("--isa-rows", type=int, default=1_000_000, help="rows for --isa")
    i.add_argument("--isa-rounds", type=int, default=10, help="rounds the --isa methods take turns in")
    a = p.parse_args(argv)
    if a.isa is not None:
        # the methods take turns: a short wait for a quiet machine before each one's share
        QUIET["enabled"], QUIET["max_wait"] = not a.no_wait_quiet, 3.0
        return run_isa(a, argv)
    if a.writes:
        QUIET["enabled"] = not a.no_wait_quiet
        return run_writes(a, argv)
    if a.quick:
        a.sizes, a.bits, a.books, a.queries, a.row_by_row = [100_000], [128], [4], min(a.queries, 100), 5000
    if any(b % 64 for b in a.bits):
        p.error("--bits must be multiples of 64 (the numpy reference reads codes as uint64 words)")
    QUIET["enabled"] = not a.no_wait_quiet
    out_md = a.out or (CACHE / "quick" / "RESULTS.md" if a.quick else BENCH / "RESULTS.md")
    out_png = out_md.parent / "search.png"
    cmd = "python bench/search.py" + ("".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:])))

    t0 = time.perf_counter()
    b = Bench(a)
    b.load_start = tuple(round(x, 2) for x in os.getloadavg())
    b.run()
    elapsed = time.perf_counter() - t0
    print_summary(b)
    write_report(b, out_md, out_png, elapsed, cmd)
    log(f"\nwrote {out_md} and {out_png}; total {elapsed / 60:.1f} min")
    if b.hqdb is None:
        log(f"hqdb could not be imported: {b.hqdb_reason}")
        return 2
    if native_module() != b.native_at_start:
        log(f"WARNING: hqdb's native module changed on disk during the run ({b.native_at_start} -> "
            f"{native_module()}): the figures may mix two builds")
    if b.failures:
        log(f"{len(b.failures)} correctness failure(s):")
        for f in b.failures:
            log(f"  - {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
