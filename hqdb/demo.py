"""``hqdb demo``: the main job.

:func:`run_model` (the default) trains an HQ model on paired image/text data (a generated
SYNTHETIC set unless a file is given), stores it in the database, indexes the items through a
model-bound hq table and runs image→text and text→image searches in SQL (and one through the
Python collection API), then reports MAP.

:func:`run` (``hqdb demo --raw``) is the engine alone: a raw hq table of vectors. The data is a
seeded mixture of Gaussian clusters in a 128-d "common space" (standing in for the output of
trained encoders), so nearest neighbours exist and recall is meaningful. ``hqdb.fit_table``
fits the table's codebooks (quantizer 'bits_pq': the AQD score counts the bit code too) and
``hqdb.insert_vectors`` stores each item as 128 sign bits plus 8 quantization indices (24 bytes);
searches run through SQL and are compared with exact float inner-product search.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .bulk import fit_table, insert_vectors
from .connection import connect
from .engine.catalog import model_of_tables
from .errors import HqdbError
from .model.store import list_models

KINDS = ("photo", "drawing", "caption", "article")


class DemoError(HqdbError, ValueError):
    """The demo's database file holds something the demo did not make."""


DEMO_MODEL = "demo"
# The tables each demo (re)creates, and the model-bound demo's evaluation table.
RAW_TABLES = ("items",)
MODEL_TABLES = ("docs", "hqdb_eval_demo")
CATALOG_TABLES = ("hqdb_tables", "hqdb_models", "hqdb_model_tensors", "hqdb_migrations")


def check_demo_db(path: str, tables: tuple[str, ...]) -> None:
    """Refuse (:class:`DemoError`) a database file that holds anything but an earlier demo's hq
    tables and model: the demo drops and recreates ``tables`` and replaces model ``demo``, and
    must never drop or replace a user's table or model. A missing or empty file is fine."""
    if path == ":memory:" or not os.path.exists(path):
        return
    with connect(path, readonly=True) as db:
        hq = model_of_tables(db)  # every hq table -> its model (None: raw)
        names = [str(r[0]) for r in db.execute("SELECT name FROM main.sqlite_master WHERE type IN ('table', 'view')")]
        models = [m["name"] for m in list_models(db)]
    expected = {"items": None, "docs": DEMO_MODEL, "hqdb_eval_demo": DEMO_MODEL}
    demo = [t for t in hq if t.lower() in expected and hq[t] == expected[t.lower()]]

    def made_by_demo(name: str) -> bool:
        low = name.lower()
        if low.startswith("sqlite_") or low in CATALOG_TABLES or name in demo:
            return True
        return any(  # a demo table's shadow tables: t_rows, t_pending, t_chunks, t_<modality>_chunks
            low[len(t) + 1 :] in ("rows", "pending") or low.endswith("chunks")
            for t in demo
            if low.startswith(t.lower() + "_")
        )

    foreign = [n for n in names if not made_by_demo(n)]
    other_models = [m for m in models if m != DEMO_MODEL]
    if foreign or other_models:
        clash = [n for n in foreign if n.lower() in tables]
        what = (
            f"a table {clash[0]!r} the demo did not make"
            if clash
            else f"tables the demo did not make ({', '.join(map(repr, sorted(foreign)))})"
            if foreign
            else f"models the demo did not make ({', '.join(map(repr, other_models))})"
        )
        raise DemoError(
            f"{path} holds {what}: the demo (re)creates its tables ({', '.join(tables)}) and model "
            f"{DEMO_MODEL!r}, so it runs only in a new file or one an earlier demo made; give --db a new file"
        )


def synthetic(n: int, dim: int, clusters: int = 1000, noise: float = 1.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(np.float32), labels


def run(
    path: str = "demo.db",
    n: int = 100_000,
    dim: int = 128,
    books: int = 8,
    codewords: int = 256,
    queries: int = 100,
    k: int = 10,
    seed: int = 0,
    out=print,
) -> dict:
    check_demo_db(path, RAW_TABLES)
    t0 = time.perf_counter()
    x, labels = synthetic(n + queries, dim, seed=seed)
    base, qs = x[:n], x[n:]
    db = connect(path)
    db.execute("DROP TABLE IF EXISTS items")
    db.execute(
        f"CREATE VIRTUAL TABLE items USING hq(dim={dim}, books={books}, codewords={codewords}, "
        "title TEXT, kind TEXT, year INTEGER)"
    )
    # quantizer='auto' (fit_table's default) would measure 'bits_pq' against 'rq' on the sample
    # and keep 'bits_pq' on this data (bench/candidates.py); naming it halves the fitting time.
    quantizer = "bits_pq" if codewords == 256 else "rq"
    fit_table(db, "items", base[:20000], quantizer=quantizer, seed=seed)
    t1 = time.perf_counter()
    insert_vectors(
        db,
        "items",
        base,
        metadata={
            "title": [f"item {i} (cluster {c})" for i, c in enumerate(labels[:n])],
            "kind": [KINDS[i % len(KINDS)] for i in range(n)],
            "year": (2000 + np.arange(n) % 25).tolist(),
        },
    )
    t2 = time.perf_counter()
    out(
        f"built {path}: {n} items x {dim} bits + {books}x{codewords} AQ codes, quantizer {quantizer!r} "
        f"(codebooks {t1 - t0:.1f}s, encode + insert {t2 - t1:.2f}s = {n / (t2 - t1):,.0f} rows/s)"
    )

    sql = (
        "SELECT rowid, title, distance, hamming FROM items "
        "WHERE hq_match(items.code, :q) AND k = :k AND candidates = :c"
    )
    example = db.execute(sql, {"q": qs[0].tobytes(), "k": 3, "c": 1000}).fetchall()
    out("\n" + sql.replace(":k", "3").replace(":c", "1000"))
    for row in example:
        out(f"  {row}")
    filtered = db.execute(
        "SELECT rowid, title, kind, year FROM items WHERE hq_match(items.code, ?) AND k = 3 "
        "AND kind = 'photo' AND year >= 2020",
        (qs[0].tobytes(),),
    ).fetchall()
    out("... AND kind = 'photo' AND year >= 2020:")
    for row in filtered:
        out(f"  {row}")

    # Relevance as in cross-modal benchmarks: an item is relevant when it shares the query's label
    # (here: its cluster). Exact float inner-product search is the reference point.
    qlabels, base_labels = labels[n:], labels[:n]
    exact = np.argsort(-(qs @ base.T), axis=1, kind="stable")[:, :k]
    exact_p = float((base_labels[exact] == qlabels[:, None]).mean())
    results = {"exact float": {"p50_ms": None, "precision": exact_p, "recall": 1.0}}
    out(
        f"\n{queries} queries, k={k}: latency through SQL, precision@{k} (same cluster) and recall@{k} "
        f"(of the exact float top-{k}); exact float search: precision@{k} {exact_p:.3f}"
    )
    for label, mode, cand in [
        ("hamming only", "hamming", 0),
        ("two-stage c=100", "two_stage", 100),
        ("two-stage c=1000", "two_stage", 1000),
        ("two-stage c=10000", "two_stage", 10000),
        ("AQD over all", "aqd", 0),
    ]:
        times, hits, found = [], 0, 0
        for i, q in enumerate(qs):
            t = time.perf_counter()
            rows = db.execute(
                "SELECT rowid FROM items WHERE hq_match(items.code, ?) AND k = ? AND mode = ? AND candidates = ?",
                (q.tobytes(), k, mode, max(cand, 1)),
            ).fetchall()
            times.append(time.perf_counter() - t)
            for (rowid,) in rows:
                assert isinstance(rowid, int)  # SELECT rowid
                hits += int(base_labels[rowid - 1] == qlabels[i])
                found += int(rowid - 1 in exact[i])
        p50 = 1000 * float(np.median(times))
        precision, recall = hits / (k * queries), found / (k * queries)
        results[label] = {"p50_ms": p50, "precision": precision, "recall": recall}
        out(f"  {label:<18} p50 {p50:6.2f} ms   precision@{k} {precision:.3f}   recall@{k} {recall:.3f}")
    out(
        "\nWhat candidates trades: the Hamming stage reads every bit code and keeps the `candidates`\n"
        "closest; only those are scored by AQD (sign bits + codebooks), ties going to the smaller\n"
        "Hamming distance. More candidates cost more AQD lookups and approach 'AQD over all' (the best\n"
        "ranking the codes can give); fewer approach Hamming only. The codes are an approximation:\n"
        "exact float search is the ceiling, and a table with rerank='int8' keeps vectors to reach it."
    )
    db.close()
    return results


def run_model(
    path: str = "demo.db", data: str | None = None, bits: int = 64, seed: int = 0, n_queries: int = 400, out=print
) -> dict:
    import hqdb

    from . import datasets
    from .evaluate import evaluate, load_npz

    check_demo_db(path, MODEL_TABLES)
    if data is None:
        pairs = datasets.synthetic_pairs(2400, seed=seed)
        out("data: SYNTHETIC paired set generated by hqdb.datasets (8 topics; 128-d 'image' features, short captions)")
    else:
        pairs = load_npz(data)
        out(f"data: {data}")
    n = len(pairs["labels"])
    order = np.random.default_rng(seed).permutation(n)
    q_idx, db_idx = order[:n_queries], order[n_queries:]
    queries = {k: v[q_idx] for k, v in pairs.items() if k != "label_names"}
    database = {k: v[db_idx] for k, v in pairs.items() if k != "label_names"}
    names = pairs.get("label_names")

    t0 = time.perf_counter()
    model = hqdb.train(database, bits=bits, seed=seed, progress=False)
    out(f"trained HQ: {bits} bits + {model.books}x{model.codewords} AQ codes in {time.perf_counter() - t0:.1f}s")
    db = connect(path)
    for t in ("docs", "hqdb_eval_demo"):
        db.execute(f"DROP TABLE IF EXISTS {t}")
    hqdb.save_model(db, "demo", model, replace=True)
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='demo', title TEXT, topic TEXT)")
    texts = database["text"]
    topics = [_topic(database, names, i) for i in range(len(db_idx))]
    inputs = {"image": database["image"], "text": [str(x) for x in texts] if texts.dtype.kind in "UO" else texts}
    hqdb.insert_items(db, "docs", metadata={"title": [f"item {i}" for i in db_idx], "topic": topics}, **inputs)
    out(f"indexed {len(db_idx)} items into docs (model-bound hq table) in {path}")

    sql_i2t = (
        "SELECT rowid, topic, round(distance, 2) FROM docs WHERE hq_match(docs.text, hq_query('image', :img)) AND k = 5"
    )
    # Show a typical query, not a lucky (or unlucky) one: of the first 50 held-out queries, the
    # first whose precision@5 (results of the query's topic) is the median.
    precision = []
    for i in range(min(50, len(q_idx))):
        img = np.ascontiguousarray(queries["image"][i], dtype=np.float32).tobytes()
        topics_i = [r[1] for r in db.execute(sql_i2t, {"img": img})]
        precision.append(sum(t == _topic(queries, names, i) for t in topics_i) / 5)
    median = float(np.sort(precision)[len(precision) // 2])
    shown = precision.index(median)
    img = np.ascontiguousarray(queries["image"][shown], dtype=np.float32).tobytes()
    out(
        f"\nimage -> text   (held-out query {shown}, topic {_topic(queries, names, shown)}: a typical one, "
        f"precision@5 {median:.1f} = the median of the first {len(precision)} queries; mean "
        f"{np.mean(precision):.2f})\n  {sql_i2t}"
    )
    for row in db.execute(sql_i2t, {"img": img}):
        out(f"    {row}")
    if texts.dtype.kind in "UO":
        phrase = "a castle on a hill" if data is None else str(queries["text"][0])
        sql_t2i = (
            "SELECT rowid, topic, round(distance, 2) FROM docs "
            "WHERE hq_match(docs.image, hq_query('text', :q)) AND k = 5"
        )
        out(f"\ntext -> image   ('{phrase}')\n  {sql_t2i}")
        for row in db.execute(sql_t2i, {"q": phrase}):
            out(f"    {row}")
        # The same table from Python: a collection gives typed hits instead of tuples.
        out(
            f"\nthe same from Python:\n  db.collection('docs').search(text='{phrase}', k=3, where='topic != ?', "
            "where_args=['music'])"
        )
        for hit in db.collection("docs").search(text=phrase, k=3, where="topic != ?", where_args=["music"]):
            out(f"    {hit}")

    result = evaluate(db, "demo", queries, database, table="hqdb_eval_demo")
    out(
        f"\nMAP@50 through SQL, {len(q_idx)} held-out queries, {result['bytes_per_item']} bytes per item "
        "(two-stage: Hamming shortlist of max(1000, 10k) re-ranked by AQD; lossless: exact float vectors):"
    )
    out(f"  {'':<10} {'two-stage':>10} {'hamming':>10} {'aqd':>10} {'lossless':>10}")
    for direction in ("i2t", "t2i"):
        r = result[direction]
        out(
            f"  {direction:<10} "
            + " ".join(f"{r[m]['map@50']:>10.4f}" for m in ("two_stage", "hamming", "aqd", "lossless"))
        )
    db.close()
    return result


def _topic(data, names, i):
    lab = np.asarray(data["labels"])[i]
    c = int(lab.argmax()) if np.ndim(lab) else int(lab)
    return str(names[c]) if names is not None else str(c)
