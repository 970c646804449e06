"""Plain-numpy reference for search results: what every search path must reproduce exactly."""

from __future__ import annotations

import numpy as np


def hamming(codes: np.ndarray, query_bits: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes ^ query_bits, axis=1).sum(axis=1).astype(np.int64)


def lut(query: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    return (codebooks.astype(np.float64) @ query.astype(np.float64)).astype(np.float32)


def aqd_distance(qcodes: np.ndarray, table: np.ndarray) -> np.ndarray:
    s = np.zeros(len(qcodes), dtype=np.float32)
    for book in range(table.shape[0]):  # float32 sums, book by book, as the kernels do
        s = s + table[book][qcodes[:, book]]
    return -s


def search(codes, qcodes, rowids, query, codebooks, *, k, candidates=None, mode="two_stage", mask=None):
    """Top-k (rowid, distance, hamming) lists. 'hamming': by (Hamming, rowid); 'aqd' and
    'two_stage': by (AQD, Hamming, rowid): equal AQD scores go to the closer bit code."""
    from hqdb.kernels import pack_bits

    rowids = np.asarray(rowids, dtype=np.int64)
    keep = np.ones(len(codes), bool) if mask is None else np.asarray(mask, bool)
    codes, rowids = codes[keep], rowids[keep]
    qcodes = qcodes[keep] if qcodes is not None else None
    bits = pack_bits(query) if query.dtype != np.uint8 else query
    ham = hamming(codes, bits)
    if mode == "hamming":
        order = np.lexsort((rowids, ham))[:k]
        return rowids[order].tolist(), ham[order].astype(np.float32).tolist(), ham[order].tolist()
    idx = np.arange(len(codes))
    if mode == "two_stage":
        idx = np.lexsort((rowids, ham))[: max(candidates, k)]
    dist = aqd_distance(qcodes[idx], lut(query, codebooks))
    order = np.lexsort((rowids[idx], ham[idx], dist))[:k]
    sel = idx[order]
    return rowids[sel].tolist(), dist[order].tolist(), ham[sel].tolist()
