"""Compiled loops of the multi-index hash (:mod:`hqdb.engine.mih`): bucket tables and probes.

numba-compiled (``cache=True``), imported only when an ``index='mih'`` table builds its index.
Every public function validates dtypes, shapes and ranges here before the loops run (the loops
index without bounds checks).

A substring table of width ``w`` over ``count`` indexed slots is ``positions`` (the slots grouped
by substring value, slot order inside a bucket) and either ``offsets`` (direct addressing:
bucket ``v`` is ``positions[offsets[v]:offsets[v + 1]]``, ``2**w + 1`` entries) or ``values``
(the sorted substring values, searched by bisection). An index of ``m`` substrings stacks them:
``positions`` (m, count), ``offsets`` (m, 2**max_w + 1) or ``values`` (m, count).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._numba import _ham_row, _load, _popcount64, _query_words

OK, OVER_BUDGET, TOO_FEW = 0, 1, 2


@njit(cache=True)
def _bucket_sort(values, positions, out_offsets, out_positions):  # pragma: no cover - compiled
    """Counting sort of ``positions`` by ``values`` (stable: slot order inside a bucket)."""
    n_buckets = out_offsets.shape[0] - 1
    for v in range(n_buckets + 1):
        out_offsets[v] = 0
    for i in range(values.shape[0]):
        out_offsets[values[i] + 1] += 1
    for v in range(n_buckets):
        out_offsets[v + 1] += out_offsets[v]
    cursor = out_offsets[:n_buckets].copy()
    for i in range(values.shape[0]):
        v = values[i]
        out_positions[cursor[v]] = positions[i]
        cursor[v] += 1


@njit(cache=True, inline="always")
def _lower(vals, j, lo, hi, x):  # pragma: no cover - compiled
    while lo < hi:
        mid = (lo + hi) >> 1
        if vals[j, mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _shortlist(
    positions,
    offsets,
    values,
    direct,
    starts,
    widths,
    qsub,
    codes,
    valid,
    query,
    recent,
    t,
    budget,
    seen,
    out_pos,
    out_d,
    bits,
):  # pragma: no cover - compiled
    m = widths.shape[0]
    count = positions.shape[1]
    nb = codes.shape[1]
    nw, ntail = nb // 8, nb % 8
    qw = _query_words(query)
    xw = np.zeros(nw + 2, dtype=np.uint64)  # the row's XOR words (+1 zero word: substrings may straddle)
    hist = np.zeros(bits + 1, dtype=np.int64)
    n_found = 0
    work = 0
    status = OVER_BUDGET
    cut = bits  # rows farther than the t-th smallest distance seen so far are not kept
    has_recent = recent.shape[0] > 0
    # where substring i sits in the XOR words: word, shift, straddling into the next word, mask
    sub_word = np.empty(m, dtype=np.int64)
    sub_shift = np.empty(m, dtype=np.uint64)
    sub_left = np.empty(m, dtype=np.uint64)
    sub_mask = np.empty(m, dtype=np.uint64)
    sub_straddles = np.empty(m, dtype=np.bool_)
    for i in range(m):
        sh = starts[i] & 63
        sub_word[i] = starts[i] >> 6
        sub_shift[i] = np.uint64(sh)
        sub_left[i] = np.uint64((64 - sh) & 63)
        sub_straddles[i] = sh + widths[i] > 64
        sub_mask[i] = (np.uint64(1) << np.uint64(widths[i])) - np.uint64(1)
    for i in range(recent.shape[0]):
        p = recent[i]
        seen[p] = 1
        work += 1
        if valid[p]:
            d = _ham_row(codes, p, qw, nw, ntail)
            out_pos[n_found] = p
            out_d[n_found] = d
            n_found += 1
            hist[d] += 1
    radii = np.full(m, -1, dtype=np.int64)
    done = False
    while not done:
        progressed = False
        for j in range(m):
            w = widths[j]
            r = radii[j] + 1
            if r > w:
                continue
            progressed = True
            # every w-bit mask with r bits set (Gosper's hack), each probed once
            x = (np.int64(1) << r) - 1
            top = np.int64(1) << w
            while x < top:
                v = qsub[j] ^ x
                if direct:
                    s = np.int64(offsets[j, v])
                    e = np.int64(offsets[j, v + 1])
                else:
                    s = _lower(values, j, 0, count, v)
                    e = _lower(values, j, s, count, v + 1)
                work += 1 + (e - s)
                if work > budget:
                    done = True
                    break
                for a in range(s, e):
                    p = positions[j, a]
                    if has_recent and seen[p]:
                        continue  # scored above; its entry here may be stale
                    d = 0
                    for k in range(nw):
                        xw[k] = _load(codes, p, 8 * k, 8) ^ qw[k]
                        d += _popcount64(xw[k])  # type: ignore[call-arg]  # intrinsic: no typingctx
                    if ntail:
                        xw[nw] = _load(codes, p, 8 * nw, ntail) ^ qw[nw]
                        d += _popcount64(xw[nw])  # type: ignore[call-arg]  # intrinsic: no typingctx
                    if d > cut:
                        continue
                    # Seen before iff an earlier probe reached it: another substring within a
                    # smaller radius, or within r and probed before j in this round.
                    dup = False
                    for i in range(m):
                        if i != j:
                            u = xw[sub_word[i]] >> sub_shift[i]
                            if sub_straddles[i]:
                                u |= xw[sub_word[i] + 1] << sub_left[i]
                            di = np.int64(_popcount64(u & sub_mask[i]))  # type: ignore[call-arg]  # intrinsic
                            if di < r or (di == r and i < j):
                                dup = True
                                break
                    if dup or not valid[p]:
                        continue
                    out_pos[n_found] = p
                    out_d[n_found] = d
                    n_found += 1
                    hist[d] += 1
                if x == 0:
                    break
                c = x & -x
                y = x + c
                x = (((y ^ x) >> 2) // c) | y
            if done:
                break
            radii[j] = r
            total = 0
            for d in range(bits + 1):
                total += hist[d]
                if total >= t:
                    cut = d  # the t-th smallest distance seen
                    break
            # Not seen => every substring differs in more than radii[i] bits => d >= sum(radii + 1).
            bound = bits if r == w else radii.sum() + m - 1
            if total >= t and cut <= bound:
                status = OK
                done = True
                break
            if r == w:  # every indexed row seen, still fewer than t
                status = TOO_FEW
                done = True
                break
        if not progressed:
            status = TOO_FEW
            break
    for i in range(recent.shape[0]):
        seen[recent[i]] = 0
    if status != OK:
        return status, 0, work
    kept = 0
    for i in range(n_found):
        if out_d[i] <= cut:
            out_pos[kept] = out_pos[i]
            out_d[kept] = out_d[i]
            kept += 1
    return status, kept, work


def _need(name, arr, dtype, ndim):
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim or not arr.flags.c_contiguous:
        raise ValueError(f"mih: {name} must be a C-contiguous {np.dtype(dtype)} array of {ndim} dimensions")


def substring(codes: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits ``start .. start + width - 1`` of each packed code (bit i = bit i % 8 of byte
    i // 8) as uint32 values, bit ``start`` the least significant."""
    lo, shift = start >> 3, start & 7
    v = np.zeros(len(codes), dtype=np.uint64)
    for i in range((shift + width + 7) >> 3):
        v |= codes[:, lo + i].astype(np.uint64) << np.uint64(8 * i)
    return ((v >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint32)


def _radix_order(values: np.ndarray, width: int) -> np.ndarray:
    """A stable argsort of uint32 values below 2**width: one or two 16-bit radix passes."""
    order = np.argsort((values & 0xFFFF).astype(np.uint16), kind="stable")
    if width > 16:
        high = (values >> 16).astype(np.uint16)[order]
        order = order[np.argsort(high, kind="stable")]
    return order


class Tables:
    """The m substring tables of one index, built from the codes of the indexed slots.

    ``codes`` (count, nb) uint8 are the codes of ``positions`` (count,) (distinct slots below
    ``n_slots``); ``widths`` the substring widths (1..32 bits, summing to the code length);
    ``direct``: offset tables (widths up to 30 bits) rather than sorted values."""

    def __init__(self, codes: np.ndarray, positions: np.ndarray, n_slots: int, widths: list[int], direct: bool):
        _need("codes", codes, np.uint8, 2)
        if positions.dtype not in (np.int32, np.int64) or positions.shape != (len(codes),):
            raise ValueError("mih: positions must be int32 or int64, one per code")
        bits = 8 * codes.shape[1]
        if sum(widths) != bits or min(widths) < 1 or max(widths) > (30 if direct else 32):
            raise ValueError(f"mih: substring widths {widths} do not cover {bits} bits")
        if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= n_slots):
            raise ValueError("mih: a position is outside the slots")
        self.bits, self.n_slots, self.direct = bits, int(n_slots), bool(direct)
        self.widths = np.asarray(widths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        m, count, top = len(widths), len(positions), max(widths)
        self.positions = np.empty((m, count), dtype=positions.dtype)
        self.offsets = np.zeros((m if direct else 1, ((1 << top) + 1) if direct else 1), dtype=positions.dtype)
        self.values = np.zeros((1, 1) if direct else (m, count), dtype=np.uint32)
        for j, (start, w) in enumerate(zip(self.starts.tolist(), widths)):
            vals = substring(codes, start, w)
            if direct:
                _bucket_sort(vals, positions, self.offsets[j, : (1 << w) + 1], self.positions[j])
                self.offsets[j, (1 << w) + 1 :] = count
            else:
                order = _radix_order(vals, w)
                self.positions[j] = positions[order]
                self.values[j] = vals[order]
        self._scratch = np.zeros(0, dtype=np.int64)
        self.last_work = 0  # probes + rows looked at by the last shortlist

    @property
    def nbytes(self) -> int:
        return self.positions.nbytes + self.offsets.nbytes + self.values.nbytes

    def query_substrings(self, query: np.ndarray) -> np.ndarray:
        q = int.from_bytes(query.tobytes(), "little")
        return np.array(
            [(q >> s) & ((1 << w) - 1) for s, w in zip(self.starts.tolist(), self.widths.tolist())], dtype=np.int64
        )

    def shortlist(
        self,
        codes: np.ndarray,
        valid: np.ndarray,
        query: np.ndarray,
        recent: np.ndarray,
        t: int,
        budget: int,
        seen: np.ndarray,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """(status, slots, Hamming distances): with status :data:`OK`, every slot ``valid``
        lets through whose distance to ``query`` is at most the ``t``-th smallest (ties
        included); :data:`OVER_BUDGET` when probes + rows looked at would pass ``budget``;
        :data:`TOO_FEW` when fewer than ``t`` rows pass. ``codes`` and ``valid`` are the
        current cache (the truth: every row is scored from them); ``recent`` slots are scored
        whether or not the tables hold them (changed since the build); ``seen`` is a zeroed
        uint8 scratch over the slots, zeroed again on return."""
        _need("codes", codes, np.uint8, 2)
        _need("valid", valid, np.uint8, 1)
        _need("query", query, np.uint8, 1)
        _need("recent", recent, np.int64, 1)
        _need("seen", seen, np.uint8, 1)
        n, nb = codes.shape
        if 8 * nb != self.bits or len(query) != nb or len(valid) != n or n < self.n_slots or len(seen) < n:
            raise ValueError("mih: the codes, mask, query or scratch disagree with the index")
        if len(recent) and (int(recent[0]) < 0 or int(recent[-1]) >= n or (np.diff(recent) <= 0).any()):
            raise ValueError("mih: recent slots must be distinct, sorted and inside the codes")
        t, budget = int(t), int(budget)
        if t < 1 or budget < 0:
            raise ValueError("mih: t must be >= 1 and budget >= 0")
        cap = min(budget + len(recent), n) + 1  # rows kept: distinct slots, each counted in the budget
        if len(self._scratch) < 2 * cap:
            self._scratch = np.empty(2 * cap, dtype=np.int64)
        out_pos = self._scratch[:cap]
        out_d = self._scratch[cap : 2 * cap].view(np.int32)[:cap]
        status, kept, self.last_work = _shortlist(
            self.positions,
            self.offsets,
            self.values,
            self.direct,
            self.starts,
            self.widths,
            self.query_substrings(query),
            codes,
            valid,
            query,
            recent,
            t,
            budget,
            seen,
            out_pos,
            out_d,
            self.bits,
        )
        return int(status), out_pos[:kept].copy(), out_d[:kept].copy()
