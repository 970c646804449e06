"""Multi-index hashing (``index='mih'``) against the linear scan, on clustered codes (issue 15).

    python bench/search.py --mih                          # 1M rows, 64 and 128 bits (~3 min)
    python bench/search.py --mih --mih-rows 1000000 10000000 --mih-bits 64 128 --out bench/RESULTS.md
    python bench/mih.py --mih-rows 100000 --queries 50 --out /tmp/r.md   # a quick check

Data: seeded clustered codes — ``N / 2000`` cluster centres (uniform random bits), each row a
centre with ``bits / 16`` random bits flipped (3-bit flips for 64 bits ...); queries are fresh
draws of the same kind (a random centre, the same number of flips), not stored rows. Per
code length, one hqdb file database with two tables (both ``index='mih'``, loaded with
``hqdb.insert_codes``): ``books=0`` for the Hamming searches and ``books=4`` (uniform random
quantization codes and codebooks; the AQD values mean nothing, the work is the same) for
two-stage c = 1000. Every search goes through SQL (``hq_match``, k = 10, one thread); the
linear scan is the *same table* with the index switched off (``hqdb.engine.mih.MIN_ROWS``
above the row count: the same SQL path, the kernel scan instead of the probes). Every MIH
result is compared with the scan's (rowids, distances, Hamming distances): a difference is a
failure (exit status 1).

Also measured: the index build (:meth:`MIHIndex.build`), a cold open (new connection, first
query: cache load + build + search; and the same with the index off), the index's memory per
row, and FAISS ``IndexBinaryMultiHash`` (nhash = hqdb's m, b = bits // m, nflip 0..2; not exact:
it only looks within nflip bits per substring, so its recall against the exact top-10
distances is reported) and ``IndexBinaryFlat`` in the same run, one thread.

Writes the ``search.py --mih`` section of bench/RESULTS.md (default sizes; else
bench/.cache/mih/RESULTS.md, or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search as S
from sections import replace_section

SECTION = "search.py --mih"
DEFAULT_ROWS, DEFAULT_BITS = [1_000_000], [64, 128]
CLUSTER_ROWS = 2000  # rows per cluster on average
K, C = 10, 1000


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, flips: int) -> np.ndarray:
    """n codes: a random centre each, ``flips`` random bits flipped (two may coincide)."""
    words = centres.shape[1]
    out = np.empty((n, words), dtype=np.uint64)
    step = 1_000_000
    for lo in range(0, n, step):
        c = min(step, n - lo)
        x = centres[rng.integers(0, len(centres), c)]
        ar = np.arange(c)
        for _ in range(flips):
            w = rng.integers(0, words, c)
            b = rng.integers(0, 64, c).astype(np.uint64)
            x[ar, w] ^= np.uint64(1) << b
        out[lo : lo + c] = x
    return out.view(np.uint8).reshape(n, words * 8)


def p(lat: np.ndarray) -> dict:
    return {"p50": float(np.percentile(lat, 50) * 1e3), "p95": float(np.percentile(lat, 95) * 1e3)}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


COLD = """
import sys, time, json
t0 = time.perf_counter()
import hqdb
from hqdb.engine import mih
t1 = time.perf_counter()
if sys.argv[3] == "off":
    mih.MIN_ROWS = 1 << 62
db = hqdb.connect(sys.argv[1])
db.execute(sys.argv[2], (bytes.fromhex(sys.argv[4]), 10)).fetchall()
t2 = time.perf_counter()
db.execute(sys.argv[2], (bytes.fromhex(sys.argv[4]), 10)).fetchall()
t3 = time.perf_counter()
ix = db.hq.table("h").stores[0].index
print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "second_ms": (t3 - t2) * 1e3,
                  "build_s": ix.stats["build_s"] if ix.stats["builds"] else 0.0}))
"""


def cold_open(path: Path, sql: str, query: bytes, off: bool) -> dict:
    """Median of 3 fresh processes: import hqdb, then connect + first query, and a second query."""
    import subprocess

    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", COLD, str(path), sql, "off" if off else "on", query.hex()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


def run_bits(a, hqdb, faiss, bits: int, n: int, path: Path) -> dict:
    from hqdb.engine import mih

    nq, wu = a.queries, a.warmup
    rng = np.random.default_rng([0, 15, bits])
    flips = max(1, bits // 16) - (1 if bits == 64 else 0)  # 3 for 64 bits, 8 for 128
    clusters = max(1, n // CLUSTER_ROWS)
    centres = rng.integers(0, 2**63, (clusters, bits // 64), dtype=np.uint64) * 2 + rng.integers(
        0, 2, (clusters, bits // 64), dtype=np.uint64
    )
    S.log(f"\n[{bits} bits] data: {n:,} rows, {clusters:,} clusters, {flips} flipped bits per row ...")
    codes = clustered(rng, centres, n, flips)
    qcodes_q = clustered(rng, centres, nq + wu, flips)
    res: dict = {"bits": bits, "n": n, "clusters": clusters, "flips": flips}

    if path.exists():
        path.unlink()
    db = hqdb.connect(path)
    db.execute(f"CREATE VIRTUAL TABLE h USING hq(dim={bits}, books=0, index='mih')")
    t0 = time.perf_counter()
    hqdb.insert_codes(db, "h", codes, None)
    res["insert_rps"] = n / (time.perf_counter() - t0)
    books = 4
    qc = rng.integers(0, 256, (n, books), dtype=np.uint8)
    cb = (0.1 * rng.standard_normal((books, 256, bits))).astype(np.float32)
    db.execute(f"CREATE VIRTUAL TABLE s USING hq(dim={bits}, books={books}, codewords=256, index='mih')")
    hqdb.set_codebooks(db, "s", cb)
    hqdb.insert_codes(db, "s", codes, qc)
    del qc
    qvec = (np.unpackbits(qcodes_q, axis=1, bitorder="little").astype(np.float32) * 2 - 1) * (
        0.5 + rng.random((nq + wu, bits), dtype=np.float32)
    )
    ham_sql = "SELECT rowid, distance, hamming FROM h WHERE hq_match(h.code, ?) AND k = ? AND mode = 'hamming'"
    two_sql = "SELECT rowid, distance, hamming FROM s WHERE hq_match(s.code, ?) AND k = ? AND candidates = ?"
    qb = [q.tobytes() for q in qcodes_q]
    qv = [v.tobytes() for v in qvec]

    # build: first search builds; then an explicit rebuild is timed
    t = db.hq.table("h")
    db.execute(ham_sql, (qb[0], K)).fetchall()
    idx = t.stores[0].index
    gc.collect()
    rss0 = rss_mib()
    t0 = time.perf_counter()
    idx.build()
    res["build_s"] = time.perf_counter() - t0
    res["m"] = idx.m
    res["widths"] = [int(w) for w in idx.tables.widths]
    res["direct"] = idx.tables.direct
    res["index_bytes_per_row"] = idx.nbytes / n
    res["cache_bytes_per_row"] = (t.stores[0].codes.nbytes + t.stores[0].rowids.nbytes + t.stores[0].valid.nbytes) / n
    res["rss_peak_mib"] = max(rss0, rss_mib())

    def timed(sql, args_of, label):
        lat, out = S.time_queries(lambda i: db.execute(sql, args_of(i)).fetchall(), nq, wu)
        S.log(f"  {label}: p50 {np.percentile(lat, 50) * 1e3:.3f} ms, p95 {np.percentile(lat, 95) * 1e3:.3f} ms")
        return p(lat), out

    failures = []
    for mode, sql, args_of in (
        ("hamming", ham_sql, lambda i: (qb[wu + i], K)),
        ("two_stage", two_sql, lambda i: (qv[wu + i], K, C)),
    ):
        table = db.hq.table("h" if mode == "hamming" else "s")
        db.execute(sql, args_of(0)).fetchall()  # builds this table's index
        ix = table.stores[0].index
        ix.stats.update(searches=0, scans=0)
        res[f"mih_{mode}"], got = timed(sql, args_of, f"MIH {mode}")
        res[f"mih_{mode}"]["scans"] = ix.stats["scans"]
        saved = mih.MIN_ROWS
        mih.MIN_ROWS = 1 << 62
        try:
            res[f"scan_{mode}"], want = timed(sql, args_of, f"scan {mode}")
        finally:
            mih.MIN_ROWS = saved
        bad = sum(g != w for g, w in zip(got, want))
        if bad:
            failures.append(f"{bits} bits {mode}: {bad} of {nq} queries differ from the scan")
        res[f"speedup_{mode}"] = res[f"scan_{mode}"]["p50"] / res[f"mih_{mode}"]["p50"]
        if mode == "hamming":
            exact = [sorted(r[2] for r in w) for w in want]
    res["failures"] = failures
    db.close()

    # cold open: a fresh Python process (import hqdb, connect, first query: cache load, numba
    # loading its cached machine code, index build, search), with the index and without
    for label, off in (("cold_mih", False), ("cold_scan", True)):
        res[label] = cold_open(path, ham_sql, qb[wu], off)
    res["db_mib"] = path.stat().st_size / 2**20

    # FAISS, same codes and queries, one thread
    if faiss is not None:
        faiss.omp_set_num_threads(1)
        qf = np.ascontiguousarray(qcodes_q)
        flat = faiss.IndexBinaryFlat(bits)
        flat.add(codes)
        lat, _ = S.time_queries(lambda i: flat.search(qf[wu + i : wu + i + 1], K), nq, wu)
        res["faiss_flat"] = p(lat)
        del flat
        m = res["m"]
        b = bits // m
        t0 = time.perf_counter()
        mh = faiss.IndexBinaryMultiHash(bits, m, b)
        mh.add(codes)
        res["faiss_mh_build_s"] = time.perf_counter() - t0
        res["faiss_mh_b"] = b
        for nflip in (0, 1, 2):
            mh.nflip = nflip
            lat, out = S.time_queries(lambda i: mh.search(qf[wu + i : wu + i + 1], K), nq, wu)
            hit = 0
            for (dist, _ids), ex in zip(out, exact):
                d = sorted(int(x) for x in dist[0] if x < 2**30)
                hit += sum(1 for x, y in zip(d + [None] * K, ex) if x == y)
            res[f"faiss_mh_{nflip}"] = {**p(lat), "recall": hit / (K * nq)}
            S.log(
                f"  FAISS MultiHash nflip={nflip}: p50 {res[f'faiss_mh_{nflip}']['p50']:.3f} ms, "
                f"distance recall@10 {hit / (K * nq):.3f}"
            )
        del mh
    path.unlink()
    return res


def report(results: list[dict], a, cmd: str, elapsed: float, info: dict, faiss_version: str) -> list[str]:
    mi = S.machine_info()
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = [
        "## Multi-index hashing (`index='mih'`)",
        "",
        f"Generated by `{cmd}` on {when} ({elapsed / 60:.1f} min), git HEAD {S.git_head()}; {mi['cpu']}, "
        f"{mi['cores']} cores, {mi['memory']} RAM; lscpu flags: {S.cpu_flags_summary()}; `hqdb.info()`: "
        f"`{json.dumps(info)}`. Load average at the end: {tuple(round(x, 2) for x in os.getloadavg())} "
        "(a shared machine).",
        "",
        "Data: clustered codes, N / 2000 cluster centres of uniform random bits, each row a centre with "
        "3 (64-bit) or 8 (128-bit) random bits flipped; queries are fresh draws of the same kind. k = 10, "
        f"{a.queries} queries (+{a.warmup} warm-up), one thread, through SQL (`hq_match`). *Scan* is the same "
        "table with the index switched off (the kernel's linear Hamming scan, or two-stage: Hamming scan, "
        "top 1000, AQD re-rank). MIH results equal the scan's on every query "
        + ("(checked)." if not any(r["failures"] for r in results) else "— **NOT on every query: see below**."),
        "",
        "| N | bits | m (widths) | search | MIH p50 / p95 ms | scan p50 / p95 ms | MIH speed-up | "
        "fell back to the scan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for mode, label in (("hamming", "hamming k=10"), ("two_stage", f"two-stage c={C} k=10")):
            mm, sc = r[f"mih_{mode}"], r[f"scan_{mode}"]
            L.append(
                f"| {r['n']:,} | {r['bits']} | {r['m']} ({'/'.join(map(str, sorted(set(r['widths']))))}) | {label} | "
                f"{mm['p50']:.3f} / {mm['p95']:.3f} | {sc['p50']:.3f} / {sc['p95']:.3f} | "
                f"**{r[f'speedup_{mode}']:.1f}×** | {mm['scans']} of {a.queries} |"
            )
    L += [
        "",
        "Build, memory and cold open. The index lives in memory only: every new connection builds it "
        "at its first search (and a write batch larger than the recent-writes list makes the next search "
        "rebuild it). *Index build* is `MIHIndex.build()` on a warm cache; *cold open* is a fresh Python "
        "process (median of 3, database file in the OS page cache): `import hqdb`, then `hqdb.connect` + "
        "the first query (cache load, numba loading its cached machine code, index build, search), with the "
        "index and with it switched off. Memory: the index's arrays per row; the cache (codes, rowids, "
        "valid) per row for comparison, as hqdb allocates it (arrays grow geometrically).",
        "",
        "| N | bits | index build s | index bytes/row | cache bytes/row | import hqdb s | "
        "connect + first query, MIH s (of which index build, incl. importing numba) | same, index off s | "
        "second query MIH ms | "
        "db file MiB | insert_codes rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cm, cs = r["cold_mih"], r["cold_scan"]
        L.append(
            f"| {r['n']:,} | {r['bits']} | {r['build_s']:.2f} | {r['index_bytes_per_row']:.1f} | "
            f"{r['cache_bytes_per_row']:.1f} | {cm['import_s']:.2f} | {cm['first_s']:.2f} ({cm['build_s']:.2f}) | "
            f"{cs['first_s']:.2f} | {cm['second_ms']:.3f} | {r['db_mib']:.0f} | {r['insert_rps']:,.0f} |"
        )
    if any("faiss_flat" in r for r in results):
        L += [
            "",
            f"FAISS {faiss_version}, same codes and queries, one thread. "
            "`IndexBinaryMultiHash(d, nhash = m, b = d // m)` "
            "probes each substring's buckets within `nflip` bits only: it is not exact, so its recall of the exact "
            "top-10 *distances* is given (1.0 = the same distances as the exact search).",
            "",
            "| N | bits | FAISS IndexBinaryFlat p50 ms | MultiHash build s | MultiHash nflip=0 p50 ms (recall) | "
            "nflip=1 | nflip=2 | hqdb MIH hamming p50 ms (recall 1.0) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            if "faiss_flat" not in r:
                continue
            cells = [f"{r[f'faiss_mh_{f}']['p50']:.3f} ({r[f'faiss_mh_{f}']['recall']:.3f})" for f in (0, 1, 2)]
            L.append(
                f"| {r['n']:,} | {r['bits']} | {r['faiss_flat']['p50']:.3f} | {r['faiss_mh_build_s']:.2f} | "
                + " | ".join(cells)
                + f" | {r['mih_hamming']['p50']:.3f} |"
            )
    fails = [f for r in results for f in r["failures"]]
    if fails:
        L += ["", "**Failures:**", *[f"- {f}" for f in fails]]
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mih-rows", type=int, nargs="+", default=DEFAULT_ROWS)
    ap.add_argument("--mih-bits", type=int, nargs="+", default=DEFAULT_BITS, choices=[64, 128, 192, 256])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-wait-quiet", action="store_true")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    S.QUIET["enabled"] = not a.no_wait_quiet
    hqdb, reason = S.import_hqdb()
    if hqdb is None:
        S.log(f"hqdb could not be imported: {reason}")
        return 2
    faiss, _ = (None, None) if a.no_faiss else S.import_faiss()
    default = a.mih_rows == DEFAULT_ROWS and a.mih_bits == DEFAULT_BITS
    out = a.out or (S.BENCH / "RESULTS.md" if default else S.CACHE / "mih" / "RESULTS.md")
    cmd = "python bench/search.py --mih" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(dir=a.tmpdir) as tmp:
        for n in a.mih_rows:
            for bits in a.mih_bits:
                results.append(run_bits(a, hqdb, faiss, bits, n, Path(tmp) / f"mih{bits}.db"))
    elapsed = time.perf_counter() - t0
    info = hqdb.info()
    lines = report(results, a, cmd, elapsed, info, getattr(faiss, "__version__", "?"))
    S.log("\n" + "\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_section(out, SECTION, lines)
    S.log(f"\nwrote the '{SECTION}' section of {out}")
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
