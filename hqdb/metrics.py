"""Retrieval quality: the one MAP / precision implementation hqdb uses everywhere.

Definitions (as in the cross-modal hashing literature, e.g. the HQ paper's MAP@50):

- An item is *relevant* to a query when the two share at least one label
  (``labels_q[i] · labels_db[j] > 0`` with multi-hot labels).
- A ranking is a list of database indices, best first. Rankings produced by hqdb break ties by
  rowid ascending, so they are deterministic; this module takes them as given.
- ``AP@R`` of one query = (1 / n_rel@R) · Σ_{r ≤ R, item r relevant} precision@r, where n_rel@R
  is the number of relevant items *within the first R* results; a query with no relevant item in
  its first R results has AP 0. ``R = None`` means the whole ranking (MAP@all).
- ``MAP@R`` is the mean of AP@R over queries; ``P@k`` is the mean fraction of relevant items in
  the first k results.
"""

from __future__ import annotations

import numpy as np

MAX_CLASSES = 1 << 16  # class ids above this are refused, not turned into a giant matrix


def as_multihot(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Class ids (N,) or multi-hot (N, C) → multi-hot uint8 (N, C)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return (labels > 0).astype(np.uint8)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError("labels must be class ids (N,) or a multi-hot matrix (N, C)")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= MAX_CLASSES):
        raise ValueError(f"class ids must lie in [0, {MAX_CLASSES}), got [{int(labels.min())}, {int(labels.max())}]")
    n_classes = (int(labels.max()) + 1 if len(labels) else 1) if n_classes is None else n_classes
    out = np.zeros((len(labels), n_classes), dtype=np.uint8)
    out[np.arange(len(labels)), labels] = 1
    return out


def relevance(labels_q: np.ndarray, labels_db: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """Boolean matrix (Q, R): is the r-th ranked database item relevant to query q?"""
    lq = as_multihot(labels_q).astype(np.int32)
    ldb = as_multihot(labels_db, lq.shape[1]).astype(np.int32)
    rankings = np.asarray(rankings)
    return np.einsum("qc,qrc->qr", lq, ldb[rankings]) > 0


def average_precision(rel: np.ndarray, cutoff: int | None = None) -> np.ndarray:
    """AP@cutoff per query from a relevance matrix (Q, R) (see the module docstring)."""
    rel = np.asarray(rel, dtype=bool)
    if cutoff is not None:
        rel = rel[:, :cutoff]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    prec_at_hit = np.where(rel, hits / ranks, 0.0)
    n_rel = hits[:, -1] if rel.shape[1] else np.zeros(len(rel))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_rel > 0, prec_at_hit.sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return ap


def mean_average_precision(rel: np.ndarray, cutoff: int | None = None) -> float:
    return float(average_precision(rel, cutoff).mean()) if len(rel) else 0.0


def precision_at(rel: np.ndarray, k: int) -> float:
    rel = np.asarray(rel, dtype=bool)[:, :k]
    return float(rel.mean()) if rel.size else 0.0


def summary(rel: np.ndarray, *, precision_k: int = 10) -> dict:
    """{"map@all", "map@50", "p@k"} of a relevance matrix."""
    return {
        "map@all": mean_average_precision(rel),
        "map@50": mean_average_precision(rel, 50),
        f"p@{precision_k}": precision_at(rel, precision_k),
    }


def precision_recall_curve(
    labels_q: np.ndarray, labels_db: np.ndarray, rankings: np.ndarray, points: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and mean recall over queries at ``points`` cut-offs spread evenly over the
    ranking's length (recall = relevant items found / relevant items in the database; queries
    with no relevant item in the database are left out of the recall mean)."""
    rel = relevance(labels_q, labels_db, rankings)
    n_rel = (
        as_multihot(labels_q).astype(np.int32)
        @ as_multihot(labels_db, as_multihot(labels_q).shape[1]).astype(np.int32).T
        > 0
    ).sum(axis=1)
    cutoffs = np.unique(np.linspace(1, rel.shape[1], points).round().astype(np.int64))
    hits = np.cumsum(rel, axis=1)[:, cutoffs - 1]
    precision = (hits / cutoffs).mean(axis=0)
    has = n_rel > 0
    recall = (hits[has] / n_rel[has, None]).mean(axis=0) if has.any() else np.zeros(len(cutoffs))
    return precision, recall


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
