"""Multi-index hashing: exact Hamming k-NN without scanning every row (``index='mih'``).

Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing"
(TPAMI 2014). Each code of ``b`` bits is cut into ``m`` contiguous substrings; each substring
is indexed in its own table (bucket = the substring's value). Two codes at Hamming distance
``d`` differ in some substring by at most ``floor(d / m)`` bits (pigeonhole), and more finely:
once substring ``i`` has been probed within radius ``r_i`` (every bucket whose value differs
from the query's substring in at most ``r_i`` bits), every code at distance
``d <= sum(r_i) + m - 1`` has been seen. The search grows the radii one substring at a time and
stops when the ``t``-th smallest distance seen is within that bound: then every row that can
be among the top ``t`` by (Hamming distance, rowid) — ties included — has been seen, and the
result equals the linear scan's.

One :class:`MIHIndex` per code set and connection, attached to its
:class:`~hqdb.engine.storage.CodeStore` (``store.index``), in memory only:

* built (lazily, at the first search) from the cache arrays: per substring the valid slots
  sorted by substring value (a two-pass stable radix sort) and, for substrings of up to
  :data:`DIRECT_MAX_BITS` bits, a direct-addressed offset table (bucket ``v`` is
  ``positions[offsets[v]:offsets[v + 1]]``), else the sorted values (``searchsorted``);
* ``store.load`` calls :meth:`MIHIndex.reset` (the next search rebuilds), ``store.apply``
  calls :meth:`MIHIndex.touched` with every slot it changed: those *recent* slots are scored
  directly on every search (their index entries may be stale) until there are more than
  :func:`rebuild_threshold` of them, when the next search rebuilds.

The cache arrays are the truth: every row a probe or the recent list brings up is scored from
the current ``codes`` and kept only if ``valid`` (the search's mask, metadata filters included)
says so. When the probes would cost about as much as a scan (:data:`BUDGET`), or fewer rows
pass the mask than are asked for, the linear kernel runs instead: the answer is the same. After
:data:`MISSES` such give-ups in a row (codes without clusters: the index cannot help) the next
:data:`SKIP` searches scan without trying. Tables under :data:`MIN_ROWS` slots always scan.

:func:`search` and :func:`search_many` return exactly what :func:`hqdb.kernels.search` /
:func:`~hqdb.kernels.search_many` return for mode 'hamming' and 'two_stage' (the two-stage
re-rank runs the kernel itself on the shortlist MIH found, with the same lookup table).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .. import kernels

MIN_ROWS = 65536  # a table with fewer slots is scanned (the scan takes microseconds there)
BUDGET = 1 / 256  # probes + rows looked at, per slot, beyond which the scan is cheaper (~70 ns vs ~0.3 ns)
MISSES, SKIP = 8, 15  # after MISSES give-ups in a row, SKIP searches scan straight away (random codes)
DIRECT_MAX_BITS = 24  # substrings up to this width may get a direct-addressed offset table
DIRECT_LOAD = 1  # ... when it has at most this many buckets per indexed row (else sorted values)
MIN_WIDTH, MAX_WIDTH = 8, 32  # substring widths the automatic choice of m aims for


def rebuild_threshold(n: int) -> int:
    """Recent (changed) slots a search scores directly before it rebuilds the index."""
    return min(65536, max(1024, n // 256))


def m_range(bits: int) -> tuple[int, int]:
    """The substring counts a code of ``bits`` bits allows: substrings of at most 32 bits (the
    index keys are uint32) and at least one bit."""
    return -(-bits // MAX_WIDTH), bits


def choose_m(bits: int, n: int) -> int:
    """Norouzi et al.'s m ≈ b / log2 N, kept to substrings of 8..32 bits."""
    m = max(1, round(bits / math.log2(max(n, 2))))
    lo = -(-bits // MAX_WIDTH)
    hi = max(lo, bits // MIN_WIDTH)
    return min(max(m, lo), hi)


def split(bits: int, m: int) -> list[tuple[int, int]]:
    """(first bit, width) of each of m contiguous substrings, widths differing by at most 1."""
    base, extra = divmod(bits, m)
    out, start = [], 0
    for j in range(m):
        w = base + (j < extra)
        out.append((start, w))
        start += w
    return out


class MIHIndex:
    """The multi-index hash of one code store's bit codes, in memory (see the module doc)."""

    def __init__(self, store: Any, m: int | None = None):
        self.store = store
        self.bits = store.opts.dim
        self.m_given = m
        self.m = 0
        self.tables: Any = None  # hqdb.kernels.mih.Tables once built
        self.recent = np.zeros(0, dtype=np.int64)  # changed slots since the build, sorted, distinct
        self._pending: list[np.ndarray] = []
        self._seen = np.zeros(0, dtype=np.uint8)  # scratch of the probes: slots already looked at
        self.stats: dict[str, Any] = {"builds": 0, "build_s": 0.0, "searches": 0, "scans": 0, "skipped": 0}
        self.misses = 0  # searches in a row that gave up for the scan
        self.skip = 0  # searches left that scan without trying the index

    # ---------------------------------------------------------------- upkeep
    @property
    def built(self) -> bool:
        return self.tables is not None

    def reset(self) -> None:
        """The cache (re)loaded: forget everything; the next search builds."""
        self.tables = None
        self.recent = np.zeros(0, dtype=np.int64)
        self._pending = []

    def touched(self, positions: np.ndarray) -> None:
        """Slots whose codes or validity changed (``CodeStore.apply``)."""
        if self.built and len(positions):
            self._pending.append(np.asarray(positions, dtype=np.int64))

    def _recent(self) -> np.ndarray:
        if self._pending:
            self.recent = np.unique(np.concatenate([self.recent, *self._pending]))
            self._pending = []
        return self.recent

    @property
    def nbytes(self) -> int:
        """Bytes the index holds (tables and scratch; the codes are the cache's)."""
        return (self.tables.nbytes if self.built else 0) + self._seen.nbytes + self.recent.nbytes

    def build(self) -> None:
        """Index every valid slot of the store's cache, by substring."""
        from ..kernels import mih as kmih  # numba: loaded when an index is first built

        t0 = time.perf_counter()
        st = self.store
        n = st.size
        valid = st.valid[:n]
        pos_dtype = np.int32 if n < 2**31 else np.int64
        everything = bool(valid.all()) if n else True
        positions = np.arange(n, dtype=pos_dtype) if everything else np.flatnonzero(valid).astype(pos_dtype)
        codes = st.codes[:n] if everything else st.codes[positions]
        count = len(positions)
        self.m = self.m_given or choose_m(self.bits, count)
        widths = [w for _, w in split(self.bits, self.m)]
        top = max(widths)
        direct = top <= DIRECT_MAX_BITS and (1 << top) <= max(count * DIRECT_LOAD, 1 << 16)
        self.tables = None  # the old tables go before the new ones take memory
        self.tables = kmih.Tables(codes, positions, n, widths, direct)
        self.recent = np.zeros(0, dtype=np.int64)
        self._pending = []
        self.stats["builds"] += 1
        self.stats["build_s"] = time.perf_counter() - t0

    def ready(self) -> None:
        """Build if never built, or if too many slots changed since."""
        if not self.built or len(self._recent()) > rebuild_threshold(self.store.size):
            self.build()

    # ---------------------------------------------------------------- search
    def shortlist(
        self, codes: np.ndarray, valid: np.ndarray, query: np.ndarray, t: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(slots, Hamming distances) of the rows ``valid`` lets through that are within the
        ``t``-th smallest distance (all ties included): a superset of the top ``t`` by
        (distance, any tie-break). None when a scan would be cheaper (the caller scans)."""
        from ..kernels import mih as kmih

        self.ready()
        n = len(codes)
        if len(self._seen) < n:
            self._seen = np.zeros(max(n, 2 * len(self._seen)), dtype=np.uint8)
        budget = max(1024, int(n * BUDGET))
        status, pos, d = self.tables.shortlist(codes, valid.view(np.uint8), query, self.recent, t, budget, self._seen)
        return (pos, d) if status == kmih.OK else None


def _scan(codes, qcodes, rowids, valid, bits, lut, k, candidates, mode, threads):
    return kernels.search(
        codes, qcodes, rowids, valid, bits, lut, k=k, candidates=candidates, mode=mode, threads=threads
    )


def search(
    index: MIHIndex,
    codes: np.ndarray,
    qcodes: np.ndarray | None,
    rowids: np.ndarray,
    valid: np.ndarray,
    bits: np.ndarray,
    lut: np.ndarray | None,
    *,
    k: int,
    candidates: int,
    mode: str,
    threads: int = 1,
    n_valid: int | None = None,
):
    """:func:`hqdb.kernels.search` (mode 'hamming' or 'two_stage'), through the index: the
    same rowids, distances and Hamming distances in the same order. ``n_valid``: how many
    rows ``valid`` lets through, if the caller knows (else counted)."""
    n = len(codes)
    t = k if mode == "hamming" else max(k, candidates)
    if mode not in ("hamming", "two_stage") or n < MIN_ROWS:
        return _scan(codes, qcodes, rowids, valid, bits, lut, k, candidates, mode, threads)
    if n_valid is None:
        n_valid = int(np.count_nonzero(valid))
    if n_valid <= t:
        return _scan(codes, qcodes, rowids, valid, bits, lut, k, candidates, mode, threads)
    if index.skip > 0:  # the index kept giving up lately: scan, and try it again now and then
        index.skip -= 1
        index.stats["skipped"] += 1
        return _scan(codes, qcodes, rowids, valid, bits, lut, k, candidates, mode, threads)
    got = index.shortlist(codes, valid, bits, t)
    if got is None:
        index.stats["scans"] += 1
        index.misses += 1
        if index.misses >= MISSES:
            index.skip = SKIP
        return _scan(codes, qcodes, rowids, valid, bits, lut, k, candidates, mode, threads)
    index.stats["searches"] += 1
    index.misses = 0
    pos, d = got
    rid = rowids[pos]
    if mode == "hamming":
        order = np.lexsort((rid, d))[:k]
        return rid[order], d[order].astype(np.float32), d[order].astype(np.int32)
    assert qcodes is not None
    return kernels.search(
        np.ascontiguousarray(codes[pos]),
        np.ascontiguousarray(qcodes[pos]),
        rid,
        None,
        bits,
        lut,
        k=k,
        candidates=candidates,
        mode="two_stage",
    )


def search_many(
    index: MIHIndex,
    codes: np.ndarray,
    qcodes: np.ndarray | None,
    rowids: np.ndarray,
    valid: np.ndarray,
    queries_bits: np.ndarray,
    luts: np.ndarray | None,
    *,
    k: int,
    candidates: int,
    mode: str,
    threads: int = 1,
    n_valid: int | None = None,
):
    """:func:`hqdb.kernels.search_many` through the index, one query at a time: row j is
    :func:`search` of query j ((Q, r) arrays, r = min(k, rows passing ``valid``))."""
    if mode not in ("hamming", "two_stage") or len(codes) < MIN_ROWS or not len(queries_bits):
        return kernels.search_many(
            codes, qcodes, rowids, valid, queries_bits, luts, k=k, candidates=candidates, mode=mode, threads=threads
        )
    if n_valid is None:
        n_valid = int(np.count_nonzero(valid))
    r = min(k, n_valid)
    out: tuple[np.ndarray, np.ndarray, np.ndarray] = (
        np.empty((len(queries_bits), r), dtype=np.int64),
        np.empty((len(queries_bits), r), dtype=np.float32),
        np.empty((len(queries_bits), r), dtype=np.int32),
    )
    for j, q in enumerate(queries_bits):
        got = search(
            index,
            codes,
            qcodes,
            rowids,
            valid,
            q,
            None if luts is None else luts[j],
            k=k,
            candidates=candidates,
            mode=mode,
            threads=threads,
            n_valid=n_valid,
        )
        for a, b in zip(out, got):
            a[j] = b
    return out
