#!/usr/bin/env python
"""Peer benchmark: hqdb raw tables against FAISS, usearch, LanceDB and sqlite-vec on the same vectors.

    python bench/peers.py                    # N = 1M, 200 queries, both data sets (~30 min)
    python bench/peers.py --quick            # N = 50k, 100 queries (report in bench/.cache/peers/)
    python bench/peers.py --n 200000 --datasets clustered --systems hqdb faiss-binary

Issue 16, part 5: a standing version of the issue's peer table, reproduced in one run. For each
data set (seeded; 128 dims, unit norm; queries are fresh draws from the same distribution):

* ``clustered``: 1,000 random unit centres, each row a centre plus Gaussian noise of norm ~0.5,
  normalised (the issue's data);
* ``anisotropic``: "real-embedding-like": a 48-dimensional latent with a power-law spectrum and
  Student-t (heavy-tailed) coordinates, mapped into 128 dims by a random orthonormal map, plus a
  common mean direction (random pairs have cosine ~0.3, as sentence embeddings do) and a little
  isotropic noise, normalised.

Ground truth is the exact inner-product top-10 (numpy, blocked matmul). Every system answers one
query at a time (1 thread wherever it is configurable: hqdb ``threads=1``, FAISS
``omp_set_num_threads(1)``, usearch ``threads=1``, LanceDB ``LANCE_CPU_THREADS=1``; builds too),
after a few warm-up queries:

* hqdb raw tables ``hq(dim=128, books=B, codewords=256)``: sign bits (``hqdb.kernels.pack_bits``)
  plus residual k-means indices (``hqdb.quantize.fit_codebooks`` / ``encode``), loaded with
  ``hqdb.set_codebooks`` / ``hqdb.insert_codes``, searched through SQL
  (``hq_match(t.code, ?) AND k = 10 AND candidates = ? AND mode = ?`` with the float32 query);
  B = 4: candidates 100 / 1000 / 10000, mode 'aqd' and 'hamming'; B = 8: candidates 100 / 1000;
* hqdb codes only at 32 B/item: ``hq(dim=128, books=16, codewords=256)`` with ``hqdb.fit_table``'s
  quantizer 'auto' ('bits_pq' scores the sign bits with the books; 'rq' residual k-means),
  candidates 100 / 1000 and mode 'aqd';
* hqdb tables that keep each row's vector and re-rank the shortlist exactly
  (``hq(..., rerank='float32'|'float16'|'int8')``, ``hqdb.fit_table`` + ``hqdb.insert_vectors``),
  when this hqdb has them (else reported as not available: a later run fills them in);
* FAISS ``IndexBinaryFlat`` top-1000 on the same sign bits + exact float re-rank;
  ``IVF1000,PQ16`` (inner product, nprobe 10) without and with a x10 exact float re-rank;
  ``PQ32`` and ``OPQ32,PQ32`` scanning every row (32 B/item, the budget of hqdb's codes-only row);
  ``SQ8`` and ``IVF1000,SQ8`` of the residual (nprobe 1000), every row scored (``faiss-sq8``: what
  one byte a dimension ranks like, next to hqdb's ``rerank='int8'``);
* usearch HNSW, f32, connectivity (M) 16, inner product, expansion_search (ef) 16 / 64 / 128;
* LanceDB IVF_PQ (1000 partitions, 16 sub-vectors, dot), nprobes 10, refine_factor 10, in a
  temporary directory;
* sqlite-vec 0.1.9 ``vec0(embedding bit[128])`` top-10 by Hamming distance.

Per row: bytes/item (on disk: files / n; in memory: the structures the search reads, incl. the
float vectors a re-rank needs; serialized: the index's serialized size), build time (fit + encode
+ load), p50 / p95 latency, recall@10, and the CPU other processes used while it was timed.

Output: a table on stdout; at the default size the "Peers on raw vectors" section of
bench/RESULTS.md (between ``<!-- peers.py begin/end -->``) and bench/peers.png (recall against
p50 latency); other sizes go to bench/.cache/peers/ unless ``--out`` is given. Every row also goes
to bench/.cache/peers/peers_<n>.json, from which ``--from-json`` rewrites the report and plot
without measuring. Times are never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# Before any of the peers is imported: one CPU thread for LanceDB's pool.
os.environ.setdefault("LANCE_CPU_THREADS", "1")

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache" / "peers"
sys.path.insert(0, str(BENCH))
import search as sb  # noqa: E402  (machine info, /proc/stat CPU snapshots, wait for a quiet machine)
from sections import replace_section  # noqa: E402

import hqdb  # noqa: E402
from hqdb import quantize  # noqa: E402
from hqdb.kernels import pack_bits  # noqa: E402

K = 10
DIM = 128
CODEWORDS = 256
WARMUP = 10
SECTION = "peers.py"
HQ_SQL = "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = ? AND mode = ?"
# (books, rerank, candidates) of the hqdb tables that keep vectors (issue 16's rerank= option).
HQ_RERANK = [(8, "float32", (100, 1000)), (8, "float16", (100, 1000)), (8, "int8", (100, 1000)),
             (4, "int8", (100, 1000))]
NOT_IN_HQDB = "not available in this hqdb"


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------
# Data and ground truth
# ------------------------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_clustered(n: int, nq: int, seed: int, centres: int = 1000, noise: float = 0.5):
    """Rows and queries around ``centres`` random unit centres, noise of norm ~``noise``, unit norm."""
    r_model, r_rows, r_q = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(3))
    c = _normalise(r_model.standard_normal((centres, DIM), dtype=np.float32))

    def draw(rng, m):
        out = np.empty((m, DIM), dtype=np.float32)
        for s in range(0, m, 1 << 17):
            e = min(m, s + (1 << 17))
            out[s:e] = c[rng.integers(0, centres, e - s)]
            out[s:e] += rng.standard_normal((e - s, DIM), dtype=np.float32) * np.float32(noise / np.sqrt(DIM))
        return _normalise(out)

    return draw(r_rows, n), draw(r_q, nq)


def make_anisotropic(n: int, nq: int, seed: int, rank: int = 48, decay: float = 0.8, df: float = 4.0,
                     mean: float = 0.55, noise: float = 0.05):
    """Embedding-like rows: a ``rank``-dim latent, spectrum (i+1)^-decay, Student-t(df) coordinates,
    a random orthonormal map into 128 dims, a common mean direction and a little noise; unit norm."""
    r_model, r_rows, r_q = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2]).spawn(3))
    basis = np.linalg.qr(r_model.standard_normal((DIM, rank)))[0].T.astype(np.float32)  # (rank, DIM)
    spectrum = (np.arange(1, rank + 1) ** -decay).astype(np.float32)
    spectrum /= np.sqrt((spectrum ** 2).sum() * df / (df - 2))  # latent part of norm ~1
    mu = _normalise(r_model.standard_normal((1, DIM)).astype(np.float32))[0] * np.float32(mean)

    def draw(rng, m):
        out = np.empty((m, DIM), dtype=np.float32)
        for s in range(0, m, 1 << 17):
            e = min(m, s + (1 << 17))
            z = rng.standard_t(df, (e - s, rank)).astype(np.float32) * spectrum
            out[s:e] = z @ basis + mu
            out[s:e] += rng.standard_normal((e - s, DIM), dtype=np.float32) * np.float32(noise / np.sqrt(DIM))
        return _normalise(out)

    return draw(r_rows, n), draw(r_q, nq)


DATASETS = {"clustered": make_clustered, "anisotropic": make_anisotropic}
DATA_NOTES = {
    "clustered": "1,000 random unit centres + Gaussian noise of norm ~0.5, normalised (the issue's data)",
    "anisotropic": "48-dim latent, spectrum (i+1)^-0.8, Student-t(4) coordinates, random orthonormal map to "
                   "128 dims, common mean direction (norm 0.55), noise 0.05, normalised",
}


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K, block: int = 1 << 17) -> np.ndarray:
    """Row indices (0-based) of the exact inner-product top-k of each query, best first."""
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for s in range(0, len(x), block):
        sc = q @ x[s:s + block].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def mean_pair_cosine(x: np.ndarray, pairs: int = 20000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(x), (2, pairs))
    return float(np.einsum("ij,ij->i", x[a], x[b]).mean())


def rerank(x: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int = K) -> np.ndarray:
    """Exact inner-product re-rank of candidate row ids (a shortlist) with the float vectors."""
    ids = ids[ids >= 0]
    s = x[ids] @ q
    if len(ids) > k:
        top = np.argpartition(-s, k - 1)[:k]
        ids, s = ids[top], s[top]
    return ids[np.argsort(-s, kind="stable")]


# ------------------------------------------------------------------------------------------
# Timing and rows
# ------------------------------------------------------------------------------------------
@dataclass
class Row:
    dataset: str
    system: str
    config: str
    bytes_item: float | None = None
    bytes_where: str = ""  # disk / mem / serialized
    build_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    recall: float | None = None
    other_cpu: float | None = None
    note: str = ""
    short: str = ""  # the point's label in the plot


def time_queries(fn: Callable[[int], object], nq: int, warmup: int = WARMUP):
    """Run fn(i) for each query after ``warmup`` warm-up calls, GC off; return (latencies s,
    results, other processes' CPU in cores meanwhile, or in the half second after when the run was
    too short to tell)."""
    sb.wait_quiet()
    for i in range(min(warmup, nq)):
        fn(i)
    lat = np.empty(nq)
    res = []
    gc.collect()
    gc.disable()
    before = sb.cpu_snapshot()
    try:
        for i in range(nq):
            t = time.perf_counter()
            r = fn(i)
            lat[i] = time.perf_counter() - t
            res.append(r)
    finally:
        gc.enable()
    other = sb.other_cpu(before, sb.cpu_snapshot())
    if other != other:  # window too short for /proc/stat's ticks: sample half a second right after
        before = sb.cpu_snapshot()
        time.sleep(0.5)
        other = sb.other_cpu(before, sb.cpu_snapshot())
    return lat, res, other


def recall_at_k(results, truth: np.ndarray) -> float:
    """Mean recall@k of 0-based row ids against the ground truth."""
    return float(np.mean([len(set(np.asarray(r).tolist()) & set(t.tolist())) for r, t in zip(results, truth)])) / K


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class Run:
    """One data set: vectors, queries, ground truth, a scratch directory and the rows measured."""

    def __init__(self, name: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, tmp: Path, seed: int):
        self.name, self.x, self.q, self.truth, self.tmp, self.seed = name, x, q, truth, tmp, seed
        self.n = len(x)
        self.rows: list[Row] = []
        self._codes = None

    @property
    def codes(self) -> np.ndarray:
        """Sign bits of the rows (``hqdb.kernels.pack_bits``: sqlite-vec's bit[128] layout)."""
        if self._codes is None:
            self._codes = np.ascontiguousarray(pack_bits(self.x))
        return self._codes

    def measure(self, system: str, config: str, fn: Callable[[int], object], *, bytes_item=None,
                where: str = "", build_s=None, note: str = "", short: str = "") -> Row:
        """Time fn(i) -> 0-based ids of query i's top-10 over every query; append the row."""
        lat, res, other = time_queries(fn, len(self.q))
        row = Row(self.name, system, config, bytes_item, where, build_s, float(np.median(lat) * 1e3),
                  float(np.percentile(lat, 95) * 1e3), recall_at_k(res, self.truth), other, note, short)
        self.rows.append(row)
        log(f"    {system:<26} {config:<34} p50 {row.p50_ms:8.3f} ms  p95 {row.p95_ms:8.3f} ms  "
            f"recall@10 {row.recall:.3f}  ({bytes_item or 0:.1f} B/item {where})")
        return row

    def missing(self, system: str, config: str, note: str) -> None:
        self.rows.append(Row(self.name, system, config, note=note))
        log(f"    {system:<26} {config:<34} {note}")


def timed(fn: Callable[[], object]):
    """(result, wall seconds) of fn()."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def sqlite_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


# ------------------------------------------------------------------------------------------
# Systems (one function each; each takes a Run and appends its rows)
# ------------------------------------------------------------------------------------------
def measure_hq(run: Run, system: str, db, path: Path, rowids, build_s: float, searches, note: str) -> None:
    """Time SQL searches ``(config, candidates, mode)`` on table t of ``db``; rowids[i] is row i's."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sqlite_bytes(path) / run.n
    rowids = np.arange(1, run.n + 1) if rowids is None else np.asarray(rowids)
    row_of = np.zeros(int(rowids.max()) + 1, dtype=np.int64)
    row_of[rowids] = np.arange(run.n)
    qblobs = [v.tobytes() for v in run.q]
    for config, short, cand, mode in searches:
        def one(i, cand=cand, mode=mode):
            return row_of[[r[0] for r in db.execute(HQ_SQL, (qblobs[i], cand, mode))]]

        run.measure(system, config, one, bytes_item=size, where="disk", build_s=build_s, note=note, short=short)


def run_hqdb(run: Run) -> None:
    """hqdb raw tables: sign bits + residual k-means indices, searched through SQL."""
    plans = {4: [(100, "two_stage"), (1000, "two_stage"), (10000, "two_stage"), (100, "aqd"), (100, "hamming")],
             8: [(100, "two_stage"), (1000, "two_stage")]}
    for books, plan in plans.items():
        path = run.tmp / f"hq_{books}.db"

        def build(books=books, path=path):
            cb = quantize.fit_codebooks(run.x, books, CODEWORDS, seed=run.seed)
            qc = quantize.encode(run.x, cb)
            db = hqdb.connect(str(path), threads=1)
            db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={DIM}, books={books}, codewords={CODEWORDS})")
            hqdb.set_codebooks(db, "t", cb)
            return db, hqdb.insert_codes(db, "t", run.codes, qc)

        (db, rowids), build_s = timed(build)
        searches = [(f"books={books}, candidates {c}", f"B{books} c{c}", c, m) if m == "two_stage"
                    else (f"books={books}, mode='{m}'", f"B{books} {m}", c, m) for c, m in plan]
        measure_hq(run, "hqdb raw table", db, path, rowids, build_s, searches, "fit_codebooks + encode + insert_codes")
        db.close()


def run_hqdb_rerank(run: Run) -> None:
    """hqdb tables that keep each row's vector and re-rank the shortlist exactly (rerank=...)."""
    have_api = all(hasattr(hqdb, f) for f in ("insert_vectors", "fit_table"))
    sample = _train_sample(run, 20000)
    for books, kind, cands in HQ_RERANK:
        searches = [(f"books={books}, rerank='{kind}', candidates {c}", f"B{books} {kind} c{c}", c, "two_stage")
                    for c in cands]
        path = run.tmp / f"hq_rerank_{books}_{kind}.db"
        db = hqdb.connect(str(path), threads=1)
        try:
            if not have_api:
                raise hqdb.OptionError("no hqdb.insert_vectors / hqdb.fit_table")
            db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={DIM}, books={books}, codewords={CODEWORDS}, "
                       f"rerank='{kind}')")

            def build(db=db):
                hqdb.fit_table(db, "t", sample)
                return hqdb.insert_vectors(db, "t", run.x)

            rowids, build_s = timed(build)
            measure_hq(run, "hqdb rerank table", db, path, rowids, build_s, searches, "fit_table + insert_vectors")
        except hqdb.OptionError as exc:
            for config, *_ in searches:
                run.missing("hqdb rerank table", config, f"{NOT_IN_HQDB} ({exc})")
        except Exception as exc:  # the option is new: one kind failing must not lose the others
            for config, *_ in searches:
                run.missing("hqdb rerank table", config, f"failed: {type(exc).__name__}: {exc}")
        finally:
            db.close()


def run_hqdb_codes(run: Run, books: int = 16) -> None:
    """hqdb codes only at 32 B/item (16 B of sign bits + 16 books), codebooks from
    ``hqdb.fit_table`` (quantizer 'auto': 'bits_pq' or 'rq', whichever ranks the sample better)."""
    if not hasattr(hqdb.quantize, "fit_best"):
        run.missing("hqdb codes (fit_table)", f"books={books}", f"{NOT_IN_HQDB} (no quantizer='auto')")
        return
    sample = _train_sample(run, 20000)
    path = run.tmp / f"hq_codes_{books}.db"
    db = hqdb.connect(str(path), threads=1)
    db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={DIM}, books={books}, codewords={CODEWORDS})")

    def build():
        cb = hqdb.fit_table(db, "t", sample, seed=run.seed)
        return cb, hqdb.insert_vectors(db, "t", run.x)

    (cb, rowids), build_s = timed(build)
    quantizer = "bits_pq" if cb.shape[0] > books else "rq"
    searches = [(f"books={books} {quantizer}, candidates {c}", f"B{books} {quantizer} c{c}", c, "two_stage")
                for c in (100, 1000)]
    searches.append((f"books={books} {quantizer}, mode='aqd'", f"B{books} {quantizer} aqd", 1, "aqd"))
    measure_hq(run, "hqdb codes (fit_table)", db, path, rowids, build_s, searches,
               f"fit_table (auto: {quantizer}) + insert_vectors; no stored floats")
    db.close()


def _faiss():
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss


def run_faiss_binary(run: Run, shortlist: int = 1000) -> None:
    """FAISS IndexBinaryFlat top-``shortlist`` on the sign bits, then exact float re-rank."""
    faiss = _faiss()

    def build():
        index = faiss.IndexBinaryFlat(DIM)
        index.add(run.codes)
        return index

    index, build_s = timed(build)
    qcodes = np.ascontiguousarray(pack_bits(run.q))

    def one(i):
        _, ids = index.search(qcodes[i:i + 1], shortlist)
        return rerank(run.x, run.q[i], ids[0])

    run.measure("FAISS IndexBinaryFlat", f"top-{shortlist} + exact float re-rank", one,
                bytes_item=DIM / 8 + 4 * DIM, where="mem", build_s=build_s,
                note="16 B of bits + the float32 vector for the re-rank", short=f"bits top-{shortlist} + re-rank")


def run_faiss_ivfpq(run: Run, nlist: int = 1000, m: int = 16, nprobe: int = 10, factor: int = 10) -> None:
    """FAISS IVF{nlist},PQ{m}, inner product, without and with an exact float re-rank of k*factor."""
    faiss = _faiss()
    train = _train_sample(run)

    def build():
        index = faiss.index_factory(DIM, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index).do_polysemous_training = False  # ~40 s, used only by polysemous search
        index.train(train)
        index.add(run.x)
        return index

    index, build_s = timed(build)
    index.nprobe = nprobe
    size = len(faiss.serialize_index(index)) / run.n

    def plain(i):
        return index.search(run.q[i:i + 1], K)[1][0]

    def refined(i):
        return rerank(run.x, run.q[i], index.search(run.q[i:i + 1], K * factor)[1][0])

    base = f"IVF{nlist},PQ{m} nprobe {nprobe}"
    run.measure("FAISS IVF-PQ", base, plain, bytes_item=size, where="serialized", build_s=build_s,
                note="trained on 100k rows, no polysemous training", short="PQ16")
    run.measure("FAISS IVF-PQ", f"{base}, x{factor} float re-rank", refined, bytes_item=size + 4 * DIM,
                where="serialized + float32", build_s=build_s, note="trained on 100k rows, no polysemous training",
                short=f"PQ16 + x{factor} re-rank")


def _train_sample(run: Run, rows: int = 100_000) -> np.ndarray:
    """A seeded sample of ``rows`` rows (all of them below that) to fit on: FAISS's trained
    indexes take 100k, hqdb's fit_table 20k."""
    return run.x[np.random.default_rng(run.seed).choice(run.n, min(run.n, rows), replace=False)]


def _faiss_scan(run: Run, system: str, specs, note: str) -> None:
    """Indexes that score every row: for each (factory spec, configuration, bytes/item, plot label),
    build (train on the sample, add every row; an IVF index probes all of its lists) and time."""
    faiss = _faiss()
    train = _train_sample(run)
    for spec, config, nbytes, short in specs:

        def build(spec=spec):
            index = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
            index.train(train)
            index.add(run.x)
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.nprobe = ivf.nlist
            return index

        index, build_s = timed(build)
        run.measure(system, config, lambda i, index=index: index.search(run.q[i:i + 1], K)[1][0],
                    bytes_item=nbytes, where="codes", build_s=build_s, note=note, short=short)


def run_faiss_pq32(run: Run) -> None:
    """FAISS's exhaustive 32-byte quantizers (PQ32, OPQ32,PQ32; inner product, every row scored):
    what 32 B per vector ranks like without floats, next to hqdb's codes-only table."""
    _faiss_scan(run, "FAISS PQ (exhaustive)", [(spec, spec, 32, spec) for spec in ("PQ32", "OPQ32,PQ32")],
                "trained on 100k rows, scans every row")


def run_faiss_sq8(run: Run, nlist: int = 1000) -> None:
    """FAISS's one byte a dimension, every row scored (no shortlist): ``SQ8`` (a range per
    dimension, trained on 100k rows) and ``IVF1000,SQ8`` of each row's residual to its nearest
    of 1,000 k-means centres with every list probed. What int8 ranks like at all, next to hqdb's
    ``rerank='int8'`` (int8 of the vector, one scale per row)."""
    specs = [("SQ8", "SQ8, every row scored", 128, "SQ8"),
             (f"IVF{nlist},SQ8", f"IVF{nlist},SQ8 of the residual, nprobe {nlist}", 128 + 8, "IVF SQ8 residual")]
    _faiss_scan(run, "FAISS scalar quantizer", specs, "trained on 100k rows")


def run_usearch(run: Run, m: int = 16, efs=(16, 64, 128)) -> None:
    """usearch HNSW, f32 vectors, inner product, connectivity m, one thread."""
    from usearch.index import Index

    def build():
        index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=m)
        index.add(np.arange(run.n, dtype=np.uint64), run.x, threads=1)
        return index

    index, build_s = timed(build)
    size = index.memory_usage / run.n
    for ef in efs:
        index.expansion_search = ef

        def one(i):
            return np.asarray(index.search(run.q[i], K, threads=1).keys, dtype=np.int64)

        run.measure("usearch HNSW", f"f32, M {m}, ef {ef}", one, bytes_item=size, where="mem", build_s=build_s,
                    note=f"expansion_add {index.expansion_add}", short=f"ef {ef}")


def run_lancedb(run: Run, partitions: int = 1000, subvectors: int = 16, nprobes: int = 10, refine: int = 10) -> None:
    """LanceDB IVF_PQ (dot) in a temporary directory, nprobes and refine_factor."""
    import lancedb
    import pyarrow as pa

    path = run.tmp / "lance"

    def build():
        db = lancedb.connect(str(path))
        vec = pa.FixedSizeListArray.from_arrays(pa.array(run.x.reshape(-1), type=pa.float32()), DIM)
        tbl = db.create_table("v", pa.table({"id": pa.array(np.arange(run.n)), "vector": vec}), mode="overwrite")
        tbl.create_index(metric="dot", num_partitions=partitions, num_sub_vectors=subvectors, index_type="IVF_PQ")
        return tbl

    tbl, build_s = timed(build)
    size = dir_bytes(path) / run.n

    def one(i):
        r = (tbl.search(run.q[i]).distance_type("dot").nprobes(nprobes).refine_factor(refine).limit(K)
             .select(["id", "_distance"]).to_arrow())
        return np.asarray(r["id"].to_numpy(), dtype=np.int64)

    run.measure("LanceDB IVF_PQ", f"{partitions}/{subvectors}, nprobes {nprobes}, refine {refine}", one,
                bytes_item=size, where="disk", build_s=build_s, note=f"lancedb {lancedb.__version__}",
                short=f"nprobes {nprobes}, refine {refine}")


def run_sqlite_vec(run: Run) -> None:
    """sqlite-vec 0.1.9 vec0 bit[128]: Hamming top-10 on the sign bits."""
    import apsw
    import sqlite_vec

    path = run.tmp / "vec_bit.db"

    def build():
        c = apsw.Connection(str(path))
        c.enable_load_extension(True)
        c.load_extension(sqlite_vec.loadable_path())
        c.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding bit[{DIM}])")
        with c:
            c.executemany("INSERT INTO v(rowid, embedding) VALUES (?, vec_bit(?))",
                          ((i + 1, run.codes[i].tobytes()) for i in range(run.n)))
        return c

    c, build_s = timed(build)
    (ver,) = c.execute("SELECT vec_version()").fetchone()
    size = sqlite_bytes(path) / run.n
    sql = f"SELECT rowid FROM v WHERE embedding MATCH vec_quantize_binary(?) AND k = {K}"

    def one(i):
        return np.array([r[0] - 1 for r in c.execute(sql, (run.q[i].tobytes(),))], dtype=np.int64)

    run.measure(f"sqlite-vec {ver.lstrip('v')}", f"bit[{DIM}] top-{K}", one, bytes_item=size, where="disk",
                build_s=build_s, note="executemany INSERT", short=f"bit[{DIM}]")
    c.close()


SYSTEMS: dict[str, Callable[[Run], None]] = {
    "hqdb": run_hqdb,
    "hqdb-rerank": run_hqdb_rerank,
    "hqdb-codes": run_hqdb_codes,
    "faiss-binary": run_faiss_binary,
    "faiss-ivfpq": run_faiss_ivfpq,
    "faiss-pq32": run_faiss_pq32,
    "faiss-sq8": run_faiss_sq8,
    "usearch": run_usearch,
    "lancedb": run_lancedb,
    "sqlite-vec": run_sqlite_vec,
}


# ------------------------------------------------------------------------------------------
# Machine, versions, report
# ------------------------------------------------------------------------------------------
def lscpu() -> dict:
    """CPU model and the SIMD flags that matter to these kernels (from lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {"model": "?", "flags": "?"}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    want = ["sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl",
            "avx512_vpopcntdq", "avx512_bitalg", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile"]
    return {"model": info.get("Model name", "?").strip(), "cpus": info.get("CPU(s)", "?").strip(),
            "flags": " ".join(f for f in want if f in flags)}


def versions() -> dict:
    import apsw
    import sqlite_vec

    v = {"numpy": np.__version__, "apsw": apsw.apswversion(), "sqlite-vec": getattr(sqlite_vec, "__version__", "?")}
    for mod in ("faiss", "usearch", "lancedb", "pyarrow"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as exc:  # informational only
            v[mod] = f"not importable ({type(exc).__name__})"
    return v


def fmt(v, nd: int = 3) -> str:
    if v is None:
        return "—"
    if nd == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def table_lines(rows: list[Row]) -> list[str]:
    out = ["| system | configuration | bytes/item | build s | p50 ms | p95 ms | recall@10 | other CPU |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.p50_ms is None:
            out.append(f"| {r.system} | {r.config} | — | — | — | — | — | {r.note} |")
            continue
        b = f"{r.bytes_item:.1f} ({r.bytes_where})" if r.bytes_item is not None else "—"
        later = " (added later)" if "added later" in r.note else ""
        out.append(f"| {r.system} | {r.config}{later} | {b} | {fmt(r.build_s, 1)} | {fmt(r.p50_ms, 2)} | "
                   f"{fmt(r.p95_ms, 2)} | {fmt(r.recall)} | {fmt(r.other_cpu, 2)} |")
    return out


def plot(rows: list[Row], datasets: list[str], n: int, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 6.5), squeeze=False)
    systems = list(dict.fromkeys(r.system for r in rows if r.p50_ms is not None))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(systems)}
    markers = dict(zip(systems, "osDv^P*Xh<>"))
    for ax, name in zip(axes[0], datasets):
        for s in systems:
            pts = [r for r in rows if r.dataset == name and r.system == s and r.p50_ms is not None]
            if not pts:
                continue
            ax.scatter([r.p50_ms for r in pts], [r.recall for r in pts], color=colours[s], marker=markers[s],
                       label=s, s=30)
            for r in pts:
                ax.annotate(f"{r.short} ({r.bytes_item:.0f} B)", (r.p50_ms, r.recall), fontsize=6, rotation=20,
                            xytext=(3, 2), textcoords="offset points", color=colours[s])
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per query, ms (1 thread, log scale)")
        ax.set_ylabel("recall@10 (exact inner product)")
        ax.set_ylim(-0.02, 1.12)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name}: N = {n:,}, {DIM} dims, top-{K}")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)


def report(rows: list[Row], meta: dict, out_md: Path, out_png: Path) -> list[str]:
    rel_png = os.path.relpath(out_png, out_md.parent)
    lines = ["## Peers on raw vectors", "",
             f"`{meta['command']}` at {meta['commit']} on {meta['date']} ({meta['elapsed_min']:.0f} min). "
             f"N = {meta['n']:,} rows x {DIM} dims, {meta['queries']} queries, exact inner-product top-{K} as "
             "ground truth; one query at a time, 1 thread wherever configurable (builds too). Bytes/item: "
             "*disk* = the files / N, *mem* = what the search reads in memory (incl. the float32 vectors a "
             "re-rank needs), *serialized* = the index's serialized size. Build = fit + encode + load. "
             "\"other CPU\" = cores other processes used while the row was timed (or in the 0.5 s after, for "
             "rows timed in under 0.3 s); the machine has 2 cores shared with other people's jobs.", ""]
    for name in meta["datasets"]:
        lines += [f"### {name}", "", f"{DATA_NOTES[name]}; mean cosine of random pairs "
                  f"{meta['pair_cosine'][name]:.2f}.", ""]
        lines += table_lines([r for r in rows if r.dataset == name]) + [""]
    hq = meta["hqdb_info"]
    lines += [f"Machine: {meta['cpu']['model']} ({meta['cpu']['cpus']} CPUs), lscpu flags: {meta['cpu']['flags']}. "
              f"Load average before / after: {meta['load_before']} / {meta['load_after']}.", "",
              f"hqdb.info(): `{json.dumps(hq)}`", "",
              *[f"Rows marked \"added later\" were measured by `{ad['command']}` at {ad['commit']} on {ad['date']} "
                f"(load {ad['load_before']} / {ad['load_after']}), same machine and data: their recall compares "
                "directly, their latency only roughly." for ad in meta.get("added", [])],
              *([""] if meta.get("added") else []),
              f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.", "",
              f"hqdb rerank tables (`rerank=` option, `hqdb.fit_table` / `hqdb.insert_vectors`): "
              f"{'measured' if meta['rerank_available'] else NOT_IN_HQDB + ' (a re-run fills them in)'}.",
              "", "Notes: a hqdb `rerank=` table re-ranks the Hamming shortlist of `candidates` rows exactly on its "
              "stored vectors (the books serve `mode = 'aqd'` only), so its recall depends on candidates and barely "
              "on books or the vector type; the raw tables without vectors rank the shortlist by AQD on the "
              "quantization indices. FAISS IVF-PQ: trained on 100k rows, no polysemous training. usearch: bytes = "
              "`memory_usage` (vectors + graph), expansion_add 128, built on 1 thread. LanceDB: `create_index(metric="
              "'dot', num_partitions, num_sub_vectors, index_type='IVF_PQ')`, its other defaults. sqlite-vec: "
              "executemany INSERT into `vec0(embedding bit[128])`, query `vec_quantize_binary`.",
              "", f"![recall against latency]({rel_png})", ""]
    return lines


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def write_report(rows: list[Row], meta: dict, out_md: Path) -> None:
    """The section of ``out_md`` and the plot next to it (bench/peers.png for bench/RESULTS.md)."""
    out_png = out_md.parent / "peers.png"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, meta["datasets"], meta["n"], out_png)
    replace_section(out_md, SECTION, report(rows, meta, out_md, out_png))
    log(f"wrote {out_md}, {out_png}")


# ------------------------------------------------------------------------------------------
def merge_rows(base: dict, new: list[Row], meta: dict) -> tuple[list[Row], dict]:
    """``base``'s rows with ``new`` put in (a row of the same data set, system and configuration
    replaced, else appended after its data set's rows); base's meta, with this run listed under
    "added" (its rows' latencies come from another run: compare them with care)."""
    rows = [Row(**r) for r in base["rows"]]
    for r in new:
        r.note = f"{r.note}; added later ({meta['date']}, {meta['commit']})".lstrip("; ")
        same = [i for i, o in enumerate(rows) if (o.dataset, o.system, o.config) == (r.dataset, r.system, r.config)]
        if same:
            rows[same[0]] = r
        else:
            last = max((i for i, o in enumerate(rows) if o.dataset == r.dataset), default=len(rows) - 1)
            rows.insert(last + 1, r)
    out = dict(base["meta"])
    out["added"] = [*out.get("added", []), {k: meta.get(k) for k in ("command", "commit", "date", "load_before",
                                                                    "load_after", "elapsed_min")}]
    return rows, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows per data set (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=200, help="queries per data set (default 200)")
    ap.add_argument("--quick", action="store_true", help="development size: --n 50000 --queries 100")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="RESULTS.md to write the section into "
                    "(default: bench/RESULTS.md at the default size and systems, else bench/.cache/peers/RESULTS.md)")
    ap.add_argument("--no-report", action="store_true", help="print only")
    ap.add_argument("--max-wait", type=float, default=10.0, help="seconds to wait for a quiet CPU before each timing")
    ap.add_argument("--add-to", type=Path, help="measure --systems on the data of a run's JSON (same n, queries, "
                    "seed, data sets) and put their rows into it (replacing rows of the same system and "
                    "configuration); the report says which rows came later")
    ap.add_argument("--from-json", type=Path, help="measure nothing: rewrite the report and plot from a run's JSON "
                    "(bench/.cache/peers/peers_<n>.json; the section goes to bench/RESULTS.md at 1M rows)")
    a = ap.parse_args(argv)
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        rows, meta = [Row(**r) for r in doc["rows"]], doc["meta"]
        full = meta["n"] == 1_000_000
        write_report(rows, meta, a.out or (BENCH / "RESULTS.md" if full else CACHE / "RESULTS.md"))
        return 0
    base = None
    if a.add_to and a.quick:
        ap.error("--add-to measures on the JSON's own data size: leave out --quick")
    if a.add_to:
        base = json.loads(a.add_to.read_text())
        a.n, a.queries, a.datasets = (base["meta"][k] for k in ("n", "queries", "datasets"))
        a.seed = base["meta"].get("seed", 0)  # runs before the seed was recorded used the default, 0
    if a.quick:
        a.n, a.queries = 50_000, 100
    sb.QUIET["max_wait"] = a.max_wait
    full = a.n == 1_000_000 and a.queries == 200 and a.systems == list(SYSTEMS) and a.datasets == list(DATASETS)
    out_md = a.out or (BENCH / "RESULTS.md" if full else CACHE / "RESULTS.md")
    command = "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])

    t0 = time.perf_counter()
    meta = {"command": command.strip(), "commit": sb.git_head(), "date": _dt.date.today().isoformat(),
            "n": a.n, "queries": a.queries, "seed": a.seed, "datasets": a.datasets, "cpu": lscpu(),
            "machine": sb.machine_info(),
            "hqdb_info": hqdb.info(), "versions": versions(), "load_before": load_avg(), "pair_cosine": {},
            "rerank_available": False}
    log(f"peers: N={a.n:,}, {a.queries} queries, {meta['cpu']['model']}, load {meta['load_before']}")
    log(f"hqdb.info(): {meta['hqdb_info']}")
    rows: list[Row] = []
    failed = False
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in a.datasets:
        log(f"\n== {name}: generating {a.n:,} x {DIM} + {a.queries} queries")
        x, q = DATASETS[name](a.n, a.queries, a.seed)
        truth, gt_s = timed(lambda x=x, q=q: exact_topk(x, q))
        meta["pair_cosine"][name] = mean_pair_cosine(x)
        log(f"   exact top-{K}: {gt_s:.1f} s; mean pair cosine {meta['pair_cosine'][name]:.2f}")
        tmp = Path(tempfile.mkdtemp(prefix=f"peers_{name}_", dir=CACHE))
        try:
            run = Run(name, x, q, truth, tmp, a.seed)
            for s in a.systems:
                log(f"  -- {s}")
                try:
                    SYSTEMS[s](run)
                except ImportError as exc:
                    run.missing(s, "—", f"not installed ({exc})")
                except Exception as exc:  # one system failing must not lose the others' rows
                    traceback.print_exc()
                    run.missing(s, "—", f"failed: {type(exc).__name__}: {exc}")
                    failed = True
                gc.collect()
            rows += run.rows
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        del x, q
    meta["rerank_available"] = any(r.system == "hqdb rerank table" and r.p50_ms is not None for r in rows)
    meta["load_after"] = load_avg()
    meta["elapsed_min"] = (time.perf_counter() - t0) / 60

    for name in a.datasets:
        log(f"\n{name}")
        log("\n".join(table_lines([r for r in rows if r.dataset == name])))
    if a.no_report:
        return 1 if failed else 0
    if base is not None:
        rows, meta = merge_rows(base, rows, meta)
        out_md = a.out or (BENCH / "RESULTS.md" if a.n == 1_000_000 else CACHE / "RESULTS.md")
    dump = a.add_to or CACHE / f"peers_{a.n}.json"
    dump.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1, default=str))
    log(f"\nrows in {dump}")
    write_report(rows, meta, out_md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
