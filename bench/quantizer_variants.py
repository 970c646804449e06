#!/usr/bin/env python
"""Two 32-byte quantizer variants tried for raw tables (issue 16, part 3) and not kept.

    python bench/quantizer_variants.py

On 30,000 rows of each of bench/peers.py's data sets (16 B of sign bits + 16 books of 256), the
codes-only recall@10 of hqdb.quantize.codes_only_recall (200 queries, against the exact top-100)
for: 'bits_pq' as shipped; 'bits_pq' whose product-quantized books are fitted in a rotated frame
of what the bits and the coarse book leave (optimized product quantization, non-parametric:
PQ k-means and the orthogonal Procrustes rotation alternated, from the principal axes dealt
round-robin to the slices; the books are stored rotated back, so the table scores them as
usual); and 'bits_pq' whose bit-code books hold, for each byte and sign pattern, the mean of the
rows with that pattern (shrunk toward ± the scale) instead of ± the scale. docs/performance.md
reports the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from peers import make_anisotropic, make_clustered  # noqa: E402

from hqdb import quantize as Q  # noqa: E402
from hqdb.kernels import pack_bits  # noqa: E402

BOOKS = 16


def front_of(books: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The front of 'bits_pq' codebooks (the bit code's books and the coarse book) and what it
    leaves of x."""
    front = books[: x.shape[1] // 8 + 1]
    codes = np.hstack([pack_bits(x), Q.encode_rows(x, front, 1)]).astype(np.int64)
    return front, x - front[np.arange(len(front))[None, :], codes].sum(1)


def front_pattern(x: np.ndarray, seed: int, shrink: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Bit books of per-byte sign-pattern centroids, then the coarse book."""
    scale = np.abs(x).astype(np.float64).mean(0).astype(np.float32)
    bb = Q.bit_books(scale)
    codes = pack_bits(x)
    residual = x.copy()
    for j in range(bb.shape[0]):
        sl = slice(8 * j, 8 * j + 8)
        sums = np.zeros((256, 8))
        np.add.at(sums, codes[:, j], x[:, sl].astype(np.float64))
        count = np.bincount(codes[:, j], minlength=256)[:, None]
        bb[j][:, sl] = ((sums + shrink * bb[j][:, sl]) / (count + shrink)).astype(np.float32)
        residual[:, sl] -= bb[j][codes[:, j], sl]
    coarse = Q.fit_codebooks(residual, 1, 256, sample=len(residual), seed=seed)
    return np.concatenate([bb, coarse]), residual - coarse[0][Q.encode(residual, coarse)[:, 0]]


def slices(dim: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, dim, parts + 1).round().astype(int)
    return [(int(edges[b]), int(edges[b + 1])) for b in range(parts)]


def pq_books(residual: np.ndarray, seed: int) -> np.ndarray:
    out = np.zeros((BOOKS - 1, 256, residual.shape[1]), dtype=np.float32)
    for b, (lo, hi) in enumerate(slices(residual.shape[1], BOOKS - 1)):
        out[b, :, lo:hi] = Q.fit_codebooks(residual[:, lo:hi], 1, 256, sample=len(residual), seed=seed + b + 1)[0]
    return out


def kmeans(x: np.ndarray, k: int, iters: int, init: np.ndarray | None, seed: int) -> np.ndarray:
    if init is None:
        init = x[np.random.default_rng(seed).choice(len(x), k, replace=False)].astype(np.float64)
    cent = np.array(init, dtype=np.float64)
    for _ in range(iters):
        assign = Q._nearest(x, cent)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, x.astype(np.float64))
        counts = np.bincount(assign, minlength=k)
        cent[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    return cent


def opq_books(residual: np.ndarray, seed: int, rounds: int = 8) -> np.ndarray:
    dim = residual.shape[1]
    parts = slices(dim, BOOKS - 1)
    r64 = residual.astype(np.float64)
    w, v = np.linalg.eigh(r64.T @ r64)
    dealt: list[list[int]] = [[] for _ in parts]
    turn = 0
    for axis in np.argsort(-w, kind="stable"):
        while len(dealt[turn % len(parts)]) == parts[turn % len(parts)][1] - parts[turn % len(parts)][0]:
            turn += 1
        dealt[turn % len(parts)].append(int(axis))
        turn += 1
    rot = v[:, np.concatenate(dealt)]
    cents: list = [None] * len(parts)
    for r in range(rounds + 1):
        y = (r64 @ rot).astype(np.float32)
        recon = np.zeros_like(r64)
        for b, (lo, hi) in enumerate(parts):
            cents[b] = kmeans(y[:, lo:hi], 256, 8 if r == rounds else 2, cents[b], seed + b + 1)
            recon[:, lo:hi] = cents[b][Q._nearest(y[:, lo:hi], cents[b])]
        if r < rounds:
            u, _, vt = np.linalg.svd(r64.T @ recon)  # orthogonal Procrustes
            rot = u @ vt
    out = np.zeros((BOOKS - 1, 256, dim), dtype=np.float32)
    for b, (lo, hi) in enumerate(parts):
        out[b] = (cents[b] @ rot[:, lo:hi].T).astype(np.float32)
    return out


def main() -> None:
    for name, make in (("anisotropic", make_anisotropic), ("clustered", make_clustered)):
        x, q = make(30000, 200, 0)
        fit = x[:20000]
        shipped = Q.fit_bits_pq(fit, BOOKS)
        front, residual = front_of(shipped, fit)
        rotated = np.concatenate([front, opq_books(residual, 0)])
        front_p, residual_p = front_pattern(fit, 0)
        pattern = np.concatenate([front_p, pq_books(residual_p, 0)])
        for label, cb in (("bits_pq", shipped), ("OPQ-rotated books", rotated), ("sign-pattern bit books", pattern)):
            print(f"{name:<12} {label:<24} recall@10 {Q.codes_only_recall(x, q, cb, BOOKS):.3f}", flush=True)


if __name__ == "__main__":
    main()
