"""The writer of the crash tests: seeded batches of inserts, updates and deletes into a raw hq
table ``t`` and a model-bound table ``docs``, one transaction per batch, printing each batch
number after its COMMIT. The test kills it at random points and replays the same batches in
memory (``apply``) to know what the database must hold.

Run: ``python crash_writer.py DB SEED FIRST_BATCH`` (rows already in the database decide what
the next batch updates and deletes, so a restarted writer continues the same history).
"""

from __future__ import annotations

import sys

import numpy as np

DIM, BOOKS, CODEWORDS = 64, 4, 16


def batch_ops(seed: int, b: int, t_rows: list[int], docs_rows: list[int], image_dim: int) -> dict:
    """The operations of batch ``b`` given the sorted rowids present in ``t`` and ``docs``."""
    rng = np.random.default_rng([seed, b])
    n_ins = int(rng.integers(1, 400))
    ops = {
        "t_insert_ids": np.arange(n_ins, dtype=np.int64) + b * 10_000 + 1,
        "t_codes": rng.integers(0, 256, (n_ins, DIM // 8), dtype=np.uint8),
        "t_qcodes": rng.integers(0, CODEWORDS, (n_ins, BOOKS), dtype=np.uint8),
        "t_bulk": bool(rng.integers(0, 2)),  # hqdb.insert_codes, else SQL INSERT row by row
    }
    n_upd = min(len(t_rows), int(rng.integers(0, 60)))
    ops["t_update_ids"] = np.sort(rng.choice(t_rows, n_upd, replace=False)) if n_upd else np.zeros(0, np.int64)
    ops["t_update_codes"] = rng.integers(0, 256, (n_upd, DIM // 8), dtype=np.uint8)
    ops["t_update_qcodes"] = rng.integers(0, CODEWORDS, (n_upd, BOOKS), dtype=np.uint8)
    rest = sorted(set(t_rows) - set(ops["t_update_ids"].tolist()))
    n_del = min(len(rest), int(rng.integers(0, 150)))
    ops["t_delete_ids"] = np.sort(rng.choice(rest, n_del, replace=False)) if n_del else np.zeros(0, np.int64)
    n_docs = int(rng.integers(1, 80))
    ops["docs_insert_ids"] = np.arange(n_docs, dtype=np.int64) + b * 10_000 + 1
    ops["docs_images"] = rng.standard_normal((n_docs, image_dim)).astype(np.float32)
    ops["docs_bulk"] = bool(rng.integers(0, 2))  # hqdb.insert_items, else SQL (queued, encoded at commit)
    n_ddel = min(len(docs_rows), int(rng.integers(0, 30)))
    ops["docs_delete_ids"] = np.sort(rng.choice(docs_rows, n_ddel, replace=False)) if n_ddel else np.zeros(0, np.int64)
    return ops


def apply(state: dict, ops: dict, b: int) -> None:
    """Replay a batch on the in-memory picture of the tables (``state = {"t": {rowid: (code,
    qcode, batch)}, "docs": {rowid: (image bytes, title)}}``)."""
    t, docs = state["t"], state["docs"]
    for r, c, q in zip(ops["t_insert_ids"], ops["t_codes"], ops["t_qcodes"]):
        t[int(r)] = (c.tobytes(), q.tobytes(), b)
    for r, c, q in zip(ops["t_update_ids"], ops["t_update_codes"], ops["t_update_qcodes"]):
        t[int(r)] = (c.tobytes(), q.tobytes(), b)
    for r in ops["t_delete_ids"]:
        del t[int(r)]
    for r, x in zip(ops["docs_insert_ids"], ops["docs_images"]):
        docs[int(r)] = (x.tobytes(), f"doc {int(r)}")
    for r in ops["docs_delete_ids"]:
        del docs[int(r)]


def run(path: str, seed: int, first: int) -> None:
    import hqdb

    db = hqdb.connect(path)
    image_dim = hqdb.load_model(db, "m").input_dim("image")
    print("ready", flush=True)
    b = first
    while True:
        t_rows = [r for (r,) in db.execute("SELECT rowid FROM t ORDER BY rowid")]
        docs_rows = [r for (r,) in db.execute("SELECT rowid FROM docs ORDER BY rowid")]
        ops = batch_ops(seed, b, t_rows, docs_rows, image_dim)
        db.execute("BEGIN")
        if ops["t_bulk"]:
            hqdb.insert_codes(db, "t", ops["t_codes"], ops["t_qcodes"], rowids=ops["t_insert_ids"],
                              metadata={"batch": [b] * len(ops["t_insert_ids"])})
        else:
            db.executemany("INSERT INTO t(rowid, code, qcode, batch) VALUES (?, ?, ?, ?)",
                           [(int(r), c.tobytes(), q.tobytes(), b)
                            for r, c, q in zip(ops["t_insert_ids"], ops["t_codes"], ops["t_qcodes"])])
        db.executemany("UPDATE t SET code = ?, qcode = ?, batch = ? WHERE rowid = ?",
                       [(c.tobytes(), q.tobytes(), b, int(r))
                        for r, c, q in zip(ops["t_update_ids"], ops["t_update_codes"], ops["t_update_qcodes"])])
        db.executemany("DELETE FROM t WHERE rowid = ?", [(int(r),) for r in ops["t_delete_ids"]])
        titles = [f"doc {int(r)}" for r in ops["docs_insert_ids"]]
        if ops["docs_bulk"]:
            hqdb.insert_items(db, "docs", image=ops["docs_images"], rowids=ops["docs_insert_ids"],
                              metadata={"title": titles})
        else:
            db.executemany("INSERT INTO docs(rowid, image, title) VALUES (?, ?, ?)",
                           [(int(r), x.tobytes(), s) for r, x, s in zip(ops["docs_insert_ids"], ops["docs_images"], titles)])
        db.executemany("DELETE FROM docs WHERE rowid = ?", [(int(r),) for r in ops["docs_delete_ids"]])
        db.execute("COMMIT")
        print(b, flush=True)
        b += 1


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
