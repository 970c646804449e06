#!/usr/bin/env python
"""What ``candidates`` trades, measured: recall@10 and latency of a raw table's search as the
Hamming shortlist grows, codes only (no stored floats).

    python bench/candidates.py                       # 100k rows, 100 queries, both data sets (~3 min)
    python bench/candidates.py --n 20000 --datasets clustered

Data: bench/peers.py's seeded 'clustered' and 'anisotropic' sets (128-dim unit vectors; queries
fresh draws from the same distribution); ground truth the exact inner-product top-10. For each
quantizer of ``hqdb.fit_table`` (fitted on 20,000 rows), a table of 16 B of sign bits + 16 books
of 256 codewords (32 B per row) filled by ``hqdb.insert_vectors``, searched one query at a time
through SQL with k = 10: mode 'hamming', mode 'two_stage' at each candidates value, and mode 'aqd'
(every row scored). Prints a markdown table (recall@10, p50 ms) — docs/concepts.md quotes it.
Times are one thread, on whatever else the machine runs: compare within a run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import peers  # noqa: E402  (the data sets and the exact top-k)

import hqdb  # noqa: E402

SQL = "SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 10 AND candidates = ? AND mode = ?"
CANDIDATES = (10, 30, 100, 300, 1000, 3000, 10000, 30000)


def run(name: str, n: int, nq: int, quantizers, seed: int = 0) -> list[str]:
    x, q = peers.DATASETS[name](n, nq, seed)
    truth = peers.exact_topk(x, q)
    cols = [("hamming", 10)] + [("two_stage", c) for c in CANDIDATES if c < n] + [("aqd", n)]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for quantizer in quantizers:
            db = hqdb.connect(os.path.join(tmp, f"{quantizer}.db"))
            db.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=16, codewords=256)")
            hqdb.fit_table(db, "t", x[:20000], quantizer=quantizer, seed=seed)
            hqdb.insert_vectors(db, "t", x)
            cells = []
            for mode, c in cols:
                for v in q[:5]:  # warm-up
                    db.execute(SQL, (v.tobytes(), c, mode)).fetchall()
                rec, ts = [], []
                for v, want in zip(q, truth):
                    t0 = time.perf_counter()
                    got = [r[0] - 1 for r in db.execute(SQL, (v.tobytes(), c, mode))]
                    ts.append(time.perf_counter() - t0)
                    rec.append(len(set(got) & set(want.tolist())) / 10)
                cells.append(f"{np.mean(rec):.3f} / {1e3 * np.median(ts):.2f}")
            db.close()
            lines.append(f"| {name} | {quantizer} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    head = "| data | quantizer | hamming | " + " | ".join(
        f"c={c:,}" if m == "two_stage" else "aqd (all)" for m, c in cols[1:]) + " |"
    return [head, "|" + "---|" * (len(cols) + 2)] + lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--datasets", nargs="+", choices=list(peers.DATASETS), default=list(peers.DATASETS))
    ap.add_argument("--quantizers", nargs="+", default=["rq", "bits_pq"])
    a = ap.parse_args(argv)
    out = []
    for name in a.datasets:
        table = run(name, a.n, a.queries, a.quantizers)
        out = out + (table if not out else table[2:])
    print(f"\nrecall@10 / p50 ms, {a.n:,} rows x 128 dims, 32 B per row, {a.queries} queries, k = 10, "
          f"1 thread; {platform.processor() or platform.machine()}; hqdb.info(): {hqdb.info()}\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
