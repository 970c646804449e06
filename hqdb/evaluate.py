"""Cross-modal retrieval quality measured through the real search path.

The database items are inserted into a model-bound hq table through hqdb's insert path, and
every query runs as ``SELECT ... WHERE hq_match(t.<target>, hq_query(<source>, ?))``. Rankings:

- ``two_stage``: the first ``candidates`` results of the two-stage search (Hamming prefilter,
  then AQD re-rank), followed by the remaining items in Hamming order — so MAP@all is defined;
- ``hamming``: Hamming distance only (the paper's α = 0);
- ``aqd``: AQD over every item (α = 1);
- ``lossless``: the model's float search vectors compared directly (the paper's Lossless row):
  inner product, or squared Euclidean distance for 'l2' models (CQ), or cosine for the
  ``lossless`` method (its vectors are unit length); computed in numpy from the same model,
  ties by index — hq tables store codes, not float vectors, so this row is a reference.

Models without a quantizer (chn, dcmh, lossless) get only ``hamming`` and ``lossless``.
``bytes_per_item`` is what the model's own search reads per item and modality (``search`` in
its config: bit code + quantization codes for two-stage, bit code for Hamming, quantization codes
for AQD, float32 vector for float); ``stored_bytes_per_item`` is what an hq table stores (always
the bit code, plus the quantization codes). ``ms_per_query`` is the median wall time of one
``k = 50`` query of the model's own search mode through SQL (query encoding included).

All rankings break ties by rowid (= database index + 1). Scores come from :mod:`hqdb.metrics`.
"""

from __future__ import annotations

import time

import numpy as np

from . import metrics
from .engine.catalog import quote_ident, quote_string
from .errors import HqdbError

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}


def load_npz(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    with np.load(path_or_dict, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def modality_inputs(model, data: dict) -> dict:
    """The arrays (or texts) of ``data`` that feed each of the model's modalities."""
    keys = model.config.get("data_keys", {})
    out = {}
    for m in model.modalities:
        key = keys.get(m, m)
        if key not in data:
            raise KeyError(f"data has no {key!r} array for the model's {m!r} modality (keys: {sorted(data)})")
        value = data[key]
        out[m] = [str(v) for v in value] if value.dtype.kind in "UO" else np.asarray(value, dtype=np.float32)
    return out


def evaluate(
    conn,
    model_name: str,
    queries,
    database,
    *,
    candidates: int = 1000,
    precision_k: int = 10,
    table: str | None = None,
    keep: bool = False,
) -> dict:
    """MAP@all, MAP@50 and P@k for image→text and text→image, per ranking, through SQL."""
    from .bulk import insert_items
    from .model.store import load_model

    model = load_model(conn, model_name)
    q, db = load_npz(queries), load_npz(database)
    q_in, db_in = modality_inputs(model, q), modality_inputs(model, db)
    labels_q, labels_db = q["labels"], db["labels"]
    n = len(labels_db)
    table = table or f"hqdb_eval_{model_name}".replace("-", "_").replace(".", "_")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ? COLLATE NOCASE", (table,)).fetchone():
        raise HqdbError(
            f"evaluate: a table named {table!r} already exists; pass table= another name (it is "
            "created for the evaluation and dropped after it)"
        )
    conn.execute(f"CREATE VIRTUAL TABLE {quote_ident(table)} USING hq(model={quote_string(model_name)})")
    t0 = time.perf_counter()
    insert_items(conn, table, rowids=np.arange(1, n + 1), **db_in)
    index_s = time.perf_counter() - t0
    qbytes = model.books * (1 if model.codewords <= 256 else 2)
    search = model.search
    out: dict = {
        "model": model_name,
        "method": model.config.get("method"),
        "search": search,
        "metric": model.metric,
        "bits": model.bits,
        "books": model.books,
        "codewords": model.codewords,
        "n_queries": len(labels_q),
        "n_database": n,
        "candidates": candidates,
        "bytes_per_item": {
            "two_stage": model.bits // 8 + qbytes,
            "hamming": model.bits // 8,
            "aqd": qbytes,
            "float": 4 * model.bits,
        }[search],
        "stored_bytes_per_item": model.bits // 8 + qbytes,
        "index_seconds": index_s,
        "ms_per_query": {},
    }
    try:
        for direction, (src, dst) in DIRECTIONS.items():
            if src not in model.modalities or dst not in model.modalities:
                continue
            rankings, ms = _rankings(conn, table, model, src, dst, q_in[src], db_in[dst], n, candidates)
            out["ms_per_query"][direction] = ms
            out[direction] = {
                name: metrics.summary(metrics.relevance(labels_q, labels_db, ranking), precision_k=precision_k)
                for name, ranking in rankings.items()
            }
        if "i2t" in out and "t2i" in out:
            out["harmonic"] = {
                name: {
                    key: metrics.harmonic_mean(out["i2t"][name][key], out["t2i"][name][key]) for key in out["i2t"][name]
                }
                for name in out["i2t"]
            }
    finally:
        if not keep:
            conn.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
    return out


def _rankings(conn, table, model, src, dst, queries, items, n, candidates):
    t = quote_ident(table)
    sql = (
        f"SELECT rowid FROM {t} WHERE hq_match({t}.{quote_ident(dst)}, hq_query(?, ?)) "
        "AND k = ? AND mode = ? AND candidates = ?"
    )
    values = queries if isinstance(queries, list) else [np.ascontiguousarray(v).tobytes() for v in queries]
    modes = ("hamming", "aqd") if model.books else ("hamming",)
    out: dict[str, list[list[int]]] = {m: [] for m in modes}
    for mode in modes:
        for v in values:
            out[mode].append([r[0] - 1 for r in conn.execute(sql, (src, v, n, mode, 1))])
    c = min(candidates, n)
    if model.books:
        out["two_stage"] = []
        for qi, v in enumerate(values):
            head = [r[0] - 1 for r in conn.execute(sql, (src, v, c, "two_stage", c))]
            seen = set(head)
            out["two_stage"].append(head + [i for i in out["hamming"][qi] if i not in seen])
    # Time of the model's own search, k = 50, as an application would run it.
    own = {"float": "hamming"}.get(model.search, model.search)
    times = []
    for v in values:
        t0 = time.perf_counter()
        conn.execute(sql, (src, v, min(50, n), own, c)).fetchall()
        times.append(time.perf_counter() - t0)
    # Lossless: the same model's float search vectors, compared directly in numpy.
    fq = model.embed(src, model.featurize(src, queries)).astype(np.float64)
    fd = model.embed(dst, model.featurize(dst, items)).astype(np.float64)
    scores = fq @ fd.T
    if model.metric == "l2":
        scores = 2 * scores - (fd * fd).sum(1)[None, :]  # −‖q − y‖² + ‖q‖²: same order
    out["lossless"] = np.argsort(-scores, axis=1, kind="stable").tolist()
    ranks = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    return ranks, 1e3 * float(np.median(times))
