#!/usr/bin/env python
"""Resource figures of hq tables: code-cache memory and disk bytes per row at N rows, space
given back by compaction after mass deletes, and a 10M-row table opened and queried in a fresh
process.

    python bench/resources.py                 # N = 1M and 10M (about 3 minutes, ~2 GB of disk)
    python bench/resources.py --sizes 100000  # quick

Prints a JSON report (and a Markdown table with ``--markdown``). Each size is measured in its
own child process, so resident memory is that of one connection serving one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DIM, BOOKS, CODEWORDS = 128, 4, 256


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(path: str, n: int) -> dict:
    import hqdb

    rng = np.random.default_rng(0)
    db = hqdb.connect(path)
    db.execute(f"CREATE VIRTUAL TABLE t USING hq(dim={DIM}, books={BOOKS}, codewords={CODEWORDS})")
    hqdb.set_codebooks(db, "t", rng.standard_normal((BOOKS, CODEWORDS, DIM)).astype(np.float32))
    t0 = time.perf_counter()
    step = 1_000_000
    for lo in range(0, n, step):
        m = min(step, n - lo)
        hqdb.insert_codes(db, "t", rng.integers(0, 256, (m, DIM // 8), dtype=np.uint8),
                          rng.integers(0, CODEWORDS, (m, BOOKS), dtype=np.uint8))
    insert_s = time.perf_counter() - t0
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {"insert_s": round(insert_s, 2), "disk_bytes": os.path.getsize(path)}


def open_and_query(path: str, n: int) -> dict:
    """In a fresh process: open, first query (loads the cache), more queries, memory."""
    import hqdb

    rss0 = rss_mb()
    t0 = time.perf_counter()
    db = hqdb.connect(path)
    q = np.random.default_rng(1).standard_normal(DIM).astype(np.float32).tobytes()
    sql = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = 1000"
    first = db.execute(sql, (q,)).fetchall()
    first_s = time.perf_counter() - t0
    assert len(first) == 10
    times = []
    for i in range(20):
        qi = np.random.default_rng(100 + i).standard_normal(DIM).astype(np.float32).tobytes()
        t = time.perf_counter()
        db.execute(sql, (qi,)).fetchall()
        times.append(time.perf_counter() - t)
    st = db.hq.table("t").stores[0]
    cache = st.valid.nbytes + st.rowids.nbytes + st.codes.nbytes + st.qcodes.nbytes
    return {
        "open_first_query_s": round(first_s, 3),
        "query_p50_ms": round(1000 * float(np.median(times)), 3),
        "cache_bytes": int(cache),
        "cache_bytes_per_row": round(cache / n, 2),
        "rss_growth_mb": round(rss_mb() - rss0, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def compaction(path: str, n: int) -> dict:
    """Delete 90% of the rows (scattered) with hqdb.delete_rows, then hq_rebuild + VACUUM; and
    the SQL DELETE rate on a fifth of the rest (at most 20,000 rows)."""
    import hqdb

    db = hqdb.connect(path)
    size0 = os.path.getsize(path)
    ids = np.arange(1, n + 1)
    gone = ids[ids % 10 != 0]
    t = time.perf_counter()
    hqdb.delete_rows(db, "t", gone)
    delete_s = time.perf_counter() - t
    n_sql = min(20_000, n // 20)  # a fifth of what is left
    t = time.perf_counter()
    db.execute("DELETE FROM t WHERE rowid IN (SELECT rowid FROM t_rows ORDER BY rowid LIMIT ?)", (n_sql,))
    sql_delete_rps = n_sql / (time.perf_counter() - t)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    size_deleted = os.path.getsize(path)
    t = time.perf_counter()
    stats = json.loads(db.execute("SELECT hq_rebuild('t')").fetchone()[0])
    rebuild_s = time.perf_counter() - t
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_after = os.path.getsize(path)
    ok = db.execute("SELECT hq_check('t')").fetchone()[0]
    db.close()
    return {"rows_left": stats["rows"], "bulk_delete_rows_per_s": round(len(gone) / delete_s),
            "sql_delete_rows_per_s": round(sql_delete_rps), "rebuild_s": round(rebuild_s, 2),
            "disk_before": size0, "disk_after_delete_vacuum": size_deleted, "disk_after_rebuild_vacuum": size_after,
            "chunks_before": stats["chunks_before"]["code"], "chunks_after": stats["chunks_after"]["code"],
            "check": ok}


def child(args) -> None:
    fn = {"build": build, "query": open_and_query, "compact": compaction}[args.child]
    print(json.dumps(fn(args.path, args.n)))


def run_child(step: str, path: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", step, "--path", path, "--n", str(n)],
                         check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--child"), ap.add_argument("--path"), ap.add_argument("--n", type=int)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    report = {"load_average": os.getloadavg(), "sizes": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("HQDB_BENCH_TMP")) as tmp:
        for n in args.sizes:
            path = os.path.join(tmp, f"r{n}.db")
            r = {"rows": n, **run_child("build", path, n)}
            r["disk_bytes_per_row"] = round(r["disk_bytes"] / n, 2)
            r.update(run_child("query", path, n))
            r["compaction"] = run_child("compact", path, n)
            report["sizes"][n] = r
            os.remove(path)
            print(json.dumps(r), file=sys.stderr, flush=True)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if args.markdown:
        print("\n| rows | disk B/row | cache B/row | RSS growth MB | open + first query s | p50 ms | "
              "after deleting 90%: file MB before → after rebuild+VACUUM | delete rows/s: bulk / SQL |")
        print("|---:|---:|---:|---:|---:|---:|---|---|")
        for n, r in report["sizes"].items():
            c = r["compaction"]
            print(f"| {n:,} | {r['disk_bytes_per_row']} | {r['cache_bytes_per_row']} | {r['rss_growth_mb']} | "
                  f"{r['open_first_query_s']} | {r['query_p50_ms']} | {c['disk_after_delete_vacuum'] / 2**20:.1f} → "
                  f"{c['disk_after_rebuild_vacuum'] / 2**20:.1f} ({c['chunks_before']} → {c['chunks_after']} chunks) | "
                  f"{c['bulk_delete_rows_per_s']:,} / {c['sql_delete_rows_per_s']:,} |")


if __name__ == "__main__":
    main()
