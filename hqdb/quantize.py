"""Additive quantization helpers for raw tables: fit codebooks to vectors and encode them.

This is residual quantization (each book is k-means on what the previous books left over),
a simple, deterministic way to get codebooks for vectors a user already has. The HQ model layer
learns its codebooks jointly with the encoders instead; both produce the same storage format:
codebooks float32 (books, codewords, dim) and indices (N, books).
"""

from __future__ import annotations

import numpy as np


def _nearest(x: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for each row of x; ties to the lower index."""
    c_norm = (centroids.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].astype(np.float64)
        d = c_norm[None, :] - 2.0 * xb @ centroids.T.astype(np.float64)
        out[s : s + batch] = d.argmin(1)
    return out


def fit_codebooks(
    x: np.ndarray, books: int, codewords: int, *, iters: int = 8, sample: int = 20000, seed: int = 0
) -> np.ndarray:
    """Residual k-means codebooks, float32 (books, codewords, dim)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("fit_codebooks: x must be a finite 2-D float array")
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[rng.choice(len(x), sample, replace=False)]
    residual = x.astype(np.float64)
    out = np.zeros((books, codewords, x.shape[1]), dtype=np.float32)
    for b in range(books):
        init = rng.choice(len(residual), min(codewords, len(residual)), replace=False)
        cent = residual[init].copy()
        if len(cent) < codewords:  # fewer points than codewords: pad with zeros
            cent = np.vstack([cent, np.zeros((codewords - len(cent), x.shape[1]))])
        for _ in range(iters):
            assign = _nearest(residual, cent)
            sums = np.zeros_like(cent)
            np.add.at(sums, assign, residual)
            counts = np.bincount(assign, minlength=codewords)
            nonempty = counts > 0
            cent[nonempty] = sums[nonempty] / counts[nonempty, None]
        out[b] = cent
        residual = residual - cent[_nearest(residual, cent)]
    return out


def encode(x: np.ndarray, codebooks: np.ndarray, *, batch: int = 16384) -> np.ndarray:
    """Greedy residual encoding of x with ``codebooks``: indices (N, books), uint8 or uint16.

    float32 throughout (one BLAS product per book and block of rows): about 5x the float64 path's
    speed, ~300k 128-d vectors/s with 4 books on two cores; ties go to the lower index."""
    x = np.asarray(x, dtype=np.float32)
    books, codewords, _ = codebooks.shape
    cb = np.asarray(codebooks, dtype=np.float32)
    norms = (cb**2).sum(2)  # (books, codewords)
    cbt = np.ascontiguousarray(cb.transpose(0, 2, 1))  # (books, dim, codewords)
    codes = np.empty((len(x), books), dtype=np.uint8 if codewords <= 256 else np.uint16)
    for s in range(0, len(x), batch):
        residual = x[s : s + batch].copy()
        for b in range(books):
            d = residual @ cbt[b]
            d *= -2.0
            d += norms[b]
            idx = d.argmin(1)
            codes[s : s + batch, b] = idx
            residual -= cb[b][idx]
    return codes
