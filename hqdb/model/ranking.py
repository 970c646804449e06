"""numpy rankings of a database for a batch of queries, for validation during training and for
tests (the product's own evaluation runs through SQL: :mod:`hqdb.evaluate`). Every ranking
breaks ties like the engine: AQD ties by Hamming distance, then by database index (the engine's
rowid); Hamming and lossless ties by index. Scores: :mod:`hqdb.metrics`.

- ``hamming``: Hamming distance between the bit codes (bit set iff f > 0, ``kernels.pack_bits``);
- ``aqd``: AQD(q, y) = ⟨f_q, Σ_l C^l b_y^l⟩, highest first (metric 'ip'); or, for metric 'l2'
  (CQ), the squared distance ‖f_q − Σ_l C^l b_y^l‖², lowest first;
- ``two_stage``: the ``candidates`` nearest in Hamming, re-ranked by AQD, then the rest in
  Hamming order (so MAP@all is defined);
- ``lossless``: inner product of the float features (the paper's Lossless row; squared
  Euclidean distance for metric 'l2'; a 'normalize' model's features are unit vectors, so its
  inner product is the cosine).

Bit codes are the signs of the search vectors unless separate bit features are given (c+d).
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from ..kernels import pack_bits, unpack_bits
from . import aq


def _signs(F: np.ndarray) -> np.ndarray:
    n = F.shape[1]
    return unpack_bits(pack_bits(F), n)  # ±1 exactly as the stored bits


def _score(fq, items, metric) -> np.ndarray:
    """Higher = nearer: inner product, or −‖q − y‖² + ‖q‖² (same order as −‖q − y‖²) for 'l2'."""
    s = fq.astype(np.float64) @ items.T
    if metric == "l2":
        s = 2 * s - (items * items).sum(1)[None, :]
    return s


def rankings(
    fq,
    f_db,
    qcodes_db,
    codebooks,
    *,
    candidates: int = 100,
    kinds=("hamming", "aqd", "two_stage", "lossless"),
    metric: str = "ip",
    bits_q=None,
    bits_db=None,
) -> dict[str, np.ndarray]:
    """{kind: (Q, N) int64 database indices, best first} for queries ``fq`` (Q, n) against a
    database with features ``f_db`` (N, n) and quantization codes ``qcodes_db`` (N, m);
    ``bits_q`` / ``bits_db``: the features whose signs are the bit codes, when not fq / f_db."""
    fq = np.asarray(fq, dtype=np.float32)
    f_db = np.asarray(f_db, dtype=np.float32)
    bq = fq if bits_q is None else np.asarray(bits_q, dtype=np.float32)
    bdb = f_db if bits_db is None else np.asarray(bits_db, dtype=np.float32)
    n = bq.shape[1]
    out = {}
    ham = dist = None
    if {"hamming", "aqd", "two_stage"} & set(kinds):
        # ±1 products of at most 1024 terms are exact in float32, so the distances are exact.
        dist = (n - _signs(bq) @ _signs(bdb).T) / 2
        ham = np.argsort(dist, axis=1, kind="stable")
        out["hamming"] = ham
    score = None
    if {"aqd", "two_stage"} & set(kinds):
        assert dist is not None
        recon = aq.reconstruct(qcodes_db, codebooks).astype(np.float64)
        score = _score(fq, recon, metric)
        if "aqd" in kinds:  # AQD first, then Hamming, then index: the engine's order
            idx = np.broadcast_to(np.arange(score.shape[1]), score.shape)
            out["aqd"] = np.lexsort((idx, dist, -score), axis=1)
    if "two_stage" in kinds:
        assert ham is not None and score is not None and dist is not None
        c = min(candidates, f_db.shape[0])
        cand = ham[:, :c]
        cs = np.take_along_axis(score, cand, axis=1)
        cd = np.take_along_axis(dist, cand, axis=1)
        order = np.lexsort((cand, cd, -cs), axis=1)  # AQD first, then Hamming, then index
        out["two_stage"] = np.concatenate([np.take_along_axis(cand, order, axis=1), ham[:, c:]], axis=1)
    if "lossless" in kinds:
        out["lossless"] = np.argsort(-_score(fq, f_db.astype(np.float64), metric), axis=1, kind="stable")
    return {k: out[k].astype(np.int64) for k in kinds}


def _top_desc(score: np.ndarray, R: int, ham: np.ndarray | None = None) -> np.ndarray:
    """(Q, R) column indices of the R highest scores per row, by (score descending, ``ham``
    ascending when given, index ascending): the first R columns of the full lexicographic sort,
    without sorting the rows."""
    Q, N = score.shape
    tie = np.zeros_like(score) if ham is None else ham
    if R >= N:
        idx = np.broadcast_to(np.arange(N), score.shape)
        return np.lexsort((idx, tie, -score), axis=1)
    part = np.argpartition(-score, R - 1, axis=1)[:, :R]
    kth = np.take_along_axis(score, part, axis=1).min(axis=1)
    # Rows where the R-th best value is tied with items left outside: pick by the tie-breakers.
    for q in np.flatnonzero((score >= kth[:, None]).sum(axis=1) > R):
        idx = np.flatnonzero(score[q] >= kth[q])
        part[q] = idx[np.lexsort((idx, tie[q, idx], -score[q, idx]))[:R]]
    top = np.take_along_axis(score, part, axis=1)
    return np.take_along_axis(part, np.lexsort((part, np.take_along_axis(tie, part, axis=1), -top), axis=1), axis=1)


def _top_hamming(dist: np.ndarray, R: int) -> np.ndarray:
    """(Q, R) indices of the R smallest integer distances per row, ties by index: one
    partial selection on the unique key distance·N + index (Hamming ties are the rule)."""
    Q, N = dist.shape
    key = dist.astype(np.int64) * N + np.arange(N)
    if R >= N:
        return np.argsort(key, axis=1)
    part = np.argpartition(key, R - 1, axis=1)[:, :R]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)


def top_rankings(
    fq,
    f_db,
    qcodes_db,
    codebooks,
    *,
    R: int = 50,
    candidates: int = 100,
    kind: str = "two_stage",
    metric: str = "ip",
    block_elements: int = 1 << 24,
) -> np.ndarray:
    """The first ``R`` columns of ``rankings(...)[kind]`` (same order and ties), computed in
    blocks of queries with a partial selection instead of a full sort: memory and time linear in
    the database size for a fixed number of queries (training validation uses it for MAP@R)."""
    fq = np.asarray(fq, dtype=np.float32)
    f_db = np.asarray(f_db, dtype=np.float32)
    N = f_db.shape[0]
    R = min(R, N)
    recon = None
    if kind in ("aqd", "two_stage"):
        recon = aq.reconstruct(qcodes_db, codebooks).astype(np.float64)
    elif kind == "lossless":
        recon = f_db.astype(np.float64)
    sdb = _signs(f_db) if kind in ("hamming", "aqd", "two_stage") else None
    rows = max(1, block_elements // max(N, 1))
    out = np.empty((fq.shape[0], R), dtype=np.int64)
    for s in range(0, fq.shape[0], rows):
        q = fq[s : s + rows]
        if sdb is not None:
            # ±1 products are exact in float32: an integer Hamming distance.
            ham = (sdb.shape[1] - _signs(q) @ sdb.T) / 2
        if kind == "hamming":
            out[s : s + rows] = _top_hamming(ham, R)
        elif kind == "lossless":
            assert recon is not None
            out[s : s + rows] = _top_desc(_score(q, recon, metric), R)
        elif kind == "aqd":
            assert recon is not None
            out[s : s + rows] = _top_desc(_score(q, recon, metric), R, ham)
        else:
            assert recon is not None
            c = min(candidates, N)
            cand = _top_hamming(ham, max(c, R))
            cs = _score(q, recon, metric)
            head = cand[:, :c]
            hs = np.take_along_axis(cs, head, axis=1)
            hd = np.take_along_axis(ham, head, axis=1)
            head = np.take_along_axis(head, np.lexsort((head, hd, -hs), axis=1), axis=1)
            out[s : s + rows] = np.concatenate([head, cand[:, c:]], axis=1)[:, :R]
    return out


def scores(labels_q, labels_db, ranks: dict[str, np.ndarray], cutoffs=(50, None)) -> dict[str, dict[str, float]]:
    """{kind: {"map@50": ..., "map@all": ...}} of rankings, via hqdb.metrics. Without labels
    (both None) the database is the queries' own pairs: item i is relevant to query i only."""
    out = {}
    for kind, r in ranks.items():
        if labels_q is None and labels_db is None:
            rel = r == np.arange(len(r))[:, None]
        else:  # = metrics.relevance, through the (Q, N) similarity instead of a (Q, R, C) gather
            lq = metrics.as_multihot(labels_q).astype(np.float32)
            ldb = metrics.as_multihot(labels_db, lq.shape[1]).astype(np.float32)
            rel = np.take_along_axis((lq @ ldb.T) > 0, r, axis=1)
        out[kind] = {("map@all" if c is None else f"map@{c}"): metrics.mean_average_precision(rel, c) for c in cutoffs}
    return out


def cross_modal(
    model,
    queries: dict,
    database: dict,
    labels_q,
    labels_db,
    *,
    candidates: int = 100,
    kinds=("hamming", "aqd", "two_stage", "lossless"),
    cutoffs=(50, None),
    directions=(("image", "text"), ("text", "image")),
) -> dict:
    """MAP of I→T and T→I for a :class:`TrainedModel` given already-featurized inputs per
    modality: {"i2t": {kind: {...}}, "t2i": ...}; ``labels_q`` = ``labels_db`` = None scores
    pair retrieval (``database`` = the queries' own items, relevant = the query's pair). A model
    without a quantizer gets only the kinds that need none (hamming, lossless)."""
    m = model
    if not m.books:
        kinds = tuple(k for k in kinds if k in ("hamming", "lossless"))
    enc_q = {k: m.encode(k, v) for k, v in queries.items()}
    enc_db = {k: m.encode(k, v) for k, v in database.items()}
    codes_db = {k: m.quantize(v[1]) for k, v in enc_db.items()}
    out = {}
    for src, dst in directions:
        name = f"{src[0]}2{dst[0]}"
        r = rankings(
            enc_q[src][1],
            enc_db[dst][1],
            codes_db[dst],
            m.codebooks,
            candidates=candidates,
            kinds=kinds,
            metric=m.metric,
            bits_q=enc_q[src][0],
            bits_db=enc_db[dst][0],
        )
        out[name] = scores(labels_q, labels_db, r, cutoffs)
    return out
