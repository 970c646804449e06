"""numba fallback for hqdb's search kernels; results identical to the C kernels of native/ (hq_kernels.h).

Only :mod:`hqdb.kernels` calls this, with validated arrays. Same algorithms and the same
arithmetic as the C code: the same strict ranking order (distance, Hamming, rowid, slot index), AQD
scores summed in float32 left to right, LUT dot products summed in float64 left to right,
no fastmath. Single-threaded: the C code's results don't depend on its thread count either.
Return codes match hq_kernels.h.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

OK, ERR_QCODE, ERR_NOMEM, ERR_ARG = 0, -1, -2, -3
MODE_HAMMING, MODE_AQD, MODE_TWO_STAGE = 0, 1, 2


@intrinsic
def _popcount64(typingctx, x):
    """LLVM's ctpop: a single POPCNT instruction on CPUs that have it."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:  # type: ignore[attr-defined]  # numba's stubs omit it
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.uint64(types.uint64), codegen


# Hot loops live in small functions of their own and read rows as codes[i, j], never through
# a view codes[i]: otherwise numba may keep a reference-count update per row (20x slower).
@njit(cache=True, inline="always")
def _load(a, i, off, n):
    """n (1..8) bytes of a[i] from off as a little-endian word (LLVM merges this into one load)."""
    x = np.uint64(0)
    for j in range(n):
        x |= np.uint64(a[i, off + j]) << np.uint64(8 * j)
    return x


@njit(cache=True)
def _query_words(q):
    nb = q.shape[0]
    nw = nb // 8
    q2 = q.reshape((1, nb))
    words = np.empty(nw + 1, dtype=np.uint64)  # last word: the nb % 8 tail bytes, zero-padded
    for w in range(nw):
        words[w] = _load(q2, 0, 8 * w, 8)
    words[nw] = _load(q2, 0, 8 * nw, nb % 8)
    return words


@njit(cache=True, inline="always")
def _ham_row(codes, i, qw, nw, ntail):
    s = np.uint64(0)
    for w in range(nw):
        s += _popcount64(_load(codes, i, 8 * w, 8) ^ qw[w])  # type: ignore[call-arg]  # intrinsic: no typingctx
    if ntail:
        s += _popcount64(_load(codes, i, 8 * nw, ntail) ^ qw[nw])  # type: ignore[call-arg]  # intrinsic: no typingctx
    return np.int32(s)


@njit(cache=True)
def hamming(codes, query, out):
    nb = codes.shape[1]
    qw = _query_words(query)
    nw, ntail = nb // 8, nb % 8
    for i in range(codes.shape[0]):
        out[i] = _ham_row(codes, i, qw, nw, ntail)
    return OK


@njit(cache=True)
def aqd_lut(query, codebooks, out):
    m, kw, dim = codebooks.shape
    for l in range(m):
        for j in range(kw):
            acc = 0.0  # exact float32 products, summed left to right in float64
            for i in range(dim):
                acc += np.float64(query[i]) * np.float64(codebooks[l, j, i])
            out[l, j] = np.float32(acc)
    return OK


# ------------------------------------------------------------------------------------------
# Ranking: entries are (d, ham, rowid, idx) in four parallel arrays; strict order on
# (d, ham, rowid, idx); bounded max-heaps for top-k.
# ------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _less(d1, h1, r1, x1, d2, h2, r2, x2):
    if d1 < d2:
        return True
    if d2 < d1:
        return False
    if h1 != h2:  # equal distance: the smaller Hamming distance first
        return h1 < h2
    if r1 != r2:
        return r1 < r2
    return x1 < x2


@njit(cache=True, inline="always")
def _less_at(ed, eh, er, ex, a, b):
    return _less(ed[a], eh[a], er[a], ex[a], ed[b], eh[b], er[b], ex[b])


@njit(cache=True, inline="always")
def _swap(ed, eh, er, ex, a, b):
    ed[a], ed[b] = ed[b], ed[a]
    eh[a], eh[b] = eh[b], eh[a]
    er[a], er[b] = er[b], er[a]
    ex[a], ex[b] = ex[b], ex[a]


@njit(cache=True)
def _sift_down(ed, eh, er, ex, n, i):
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and _less_at(ed, eh, er, ex, c, c + 1):
            c += 1
        if not _less_at(ed, eh, er, ex, i, c):
            return
        _swap(ed, eh, er, ex, i, c)
        i = c


@njit(cache=True)
def _sift_up(ed, eh, er, ex, i):
    while i > 0:
        p = (i - 1) // 2
        if not _less_at(ed, eh, er, ex, p, i):
            return
        _swap(ed, eh, er, ex, i, p)
        i = p


@njit(cache=True)
def _offer(ed, eh, er, ex, n, cap, d, h, r, x):
    """Keep the cap smallest entries offered in a max-heap of n used slots; return new n."""
    if n < cap:
        ed[n], eh[n], er[n], ex[n] = d, h, r, x
        _sift_up(ed, eh, er, ex, n)
        return n + 1
    if _less(d, h, r, x, ed[0], eh[0], er[0], ex[0]):
        ed[0], eh[0], er[0], ex[0] = d, h, r, x
        _sift_down(ed, eh, er, ex, cap, 0)
    return n


@njit(cache=True)
def _select_sorted(ed, eh, er, ex, n, r):
    """Reorder so the first r entries are the r smallest, ascending."""
    if r <= 0:
        return
    for i in range(r // 2 - 1, -1, -1):
        _sift_down(ed, eh, er, ex, r, i)
    for i in range(r, n):
        if _less_at(ed, eh, er, ex, i, 0):
            ed[0], eh[0], er[0], ex[0] = ed[i], eh[i], er[i], ex[i]
            _sift_down(ed, eh, er, ex, r, 0)
    for end in range(r - 1, 0, -1):
        _swap(ed, eh, er, ex, 0, end)
        _sift_down(ed, eh, er, ex, end, 0)


@njit(cache=True, inline="always")
def _aqd(qcodes, i, lut, kw):
    """-(LUT[0][b0] + LUT[1][b1] + ...) of row i in float32, left to right; ok=False on a bad code."""
    b = np.int64(qcodes[i, 0])
    if b >= kw:
        return np.float32(0), False
    s = lut[0, b]
    for l in range(1, qcodes.shape[1]):
        b = np.int64(qcodes[i, l])
        if b >= kw:
            return np.float32(0), False
        s += lut[l, b]
    return -s, True


@njit(cache=True)
def _entries(n):
    """Storage for n entries: distance, hamming, rowid, slot index."""
    return (np.empty(n, np.float32), np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64))


@njit(cache=True)
def _aqd_scan(codes, qw, qcodes, rowids, valid, has_valid, lut, ed, eh, er, ex):
    """Score every valid row; keep the best len(ed) in the heap by (AQD, Hamming, rowid, slot);
    the Hamming distance only of rows that may enter. Returns (ok, kept)."""
    kw = lut.shape[1]
    nb = codes.shape[1]
    nw, ntail = nb // 8, nb % 8
    cap = ed.shape[0]
    n = 0
    for i in range(qcodes.shape[0]):
        if has_valid and valid[i] == 0:
            continue
        d, ok = _aqd(qcodes, i, lut, kw)
        if not ok:
            return False, n
        if n == cap and d > ed[0]:
            continue  # can't enter the top k
        h = _ham_row(codes, i, qw, nw, ntail)
        n = _offer(ed, eh, er, ex, n, cap, d, h, rowids[i], np.int64(i))
    return True, n


@njit(cache=True)
def _search_aqd(codes, qcodes, rowids, valid, has_valid, qw, lut, k, out_rowids, out_dist, out_ham):
    n_rows = codes.shape[0]
    ed, eh, er, ex = _entries(min(k, n_rows))
    ok, n = _aqd_scan(codes, qw, qcodes, rowids, valid, has_valid, lut, ed, eh, er, ex)
    if not ok:
        return ERR_QCODE, 0
    r = min(k, n)
    _select_sorted(ed, eh, er, ex, n, r)
    for j in range(r):
        out_rowids[j] = er[j]
        out_dist[j] = ed[j]
        out_ham[j] = eh[j]
    return OK, r


@njit(cache=True)
def _pass1(codes, qw, valid, has_valid, dist, hist):
    """Distance of every row into dist (invalid rows: the last bucket) and their histogram."""
    nb = codes.shape[1]
    nw, ntail = nb // 8, nb % 8
    inval = hist.shape[0] - 1
    for i in range(codes.shape[0]):
        d = _ham_row(codes, i, qw, nw, ntail)
        if has_valid and valid[i] == 0:
            d = inval
        dist[i] = d
        hist[d] += 1


@njit(cache=True)
def _collect(dist, rowids, dstar, need, ed, eh, er, ex, qd, qh, qr, qx):
    """Rows with distance < dstar into e*, the need smallest (rowid, idx) at dstar into q*."""
    nbelow = 0
    neq = 0
    for i in range(dist.shape[0]):
        d = np.int64(dist[i])
        if d < dstar:
            ed[nbelow], eh[nbelow], er[nbelow], ex[nbelow] = 0.0, d, rowids[i], i
            nbelow += 1
        elif d == dstar:
            neq = _offer(qd, qh, qr, qx, neq, need, np.float32(0), np.int32(d), rowids[i], np.int64(i))
    return nbelow, neq


@njit(cache=True)
def _search_hamming_stage(
    codes, qcodes, rowids, valid, has_valid, qw, lut, mode, k, candidates, out_rowids, out_dist, out_ham
):
    n_rows, nb = codes.shape
    nbits = nb * 8
    inval = nbits + 1
    dist = np.empty(n_rows, dtype=np.uint16)
    hist = np.zeros(nbits + 2, dtype=np.int64)
    _pass1(codes, qw, valid, has_valid, dist, hist)
    nvalid = n_rows - hist[inval]
    c = k if mode == MODE_HAMMING else max(candidates, k)
    c = min(c, nvalid)
    if c == 0:
        return OK, 0

    # Threshold d*: fewer than c rows strictly closer, at least c within d*.
    dstar = 0
    below = 0
    while below + hist[dstar] < c:
        below += hist[dstar]
        dstar += 1
    need = c - below

    ed, eh, er, ex = _entries(c)
    qd, qh, qr, qx = _entries(need)  # the `need` smallest (rowid, idx) among ties at d*
    _collect(dist, rowids, dstar, need, ed, eh, er, ex, qd, qh, qr, qx)
    for j in range(need):
        ed[below + j], eh[below + j], er[below + j], ex[below + j] = qd[j], qh[j], qr[j], qx[j]

    kw = lut.shape[1]
    if mode == MODE_HAMMING:
        for j in range(c):
            ed[j] = np.float32(eh[j])
        r = c
    else:
        for j in range(c):
            d, ok = _aqd(qcodes, ex[j], lut, kw)
            if not ok:
                return ERR_QCODE, 0
            ed[j] = d
        r = min(k, c)
    _select_sorted(ed, eh, er, ex, c, r)
    for j in range(r):
        out_rowids[j] = er[j]
        out_dist[j] = ed[j]
        out_ham[j] = eh[j]
    return OK, r


@njit(cache=True)
def search(
    codes, qcodes, rowids, valid, has_valid, query_bits, lut, mode, k, candidates, out_rowids, out_dist, out_ham
):
    qw = _query_words(query_bits)
    if mode == MODE_AQD:
        return _search_aqd(codes, qcodes, rowids, valid, has_valid, qw, lut, k, out_rowids, out_dist, out_ham)
    return _search_hamming_stage(
        codes, qcodes, rowids, valid, has_valid, qw, lut, mode, k, candidates, out_rowids, out_dist, out_ham
    )


@njit(cache=True)
def search_many(
    codes, qcodes, rowids, valid, has_valid, queries, luts, mode, k, candidates, out_rowids, out_dist, out_ham, out_n
):
    """Each query of the batch by :func:`search` (no blocking: this is the fallback), results
    in row j of the outputs; returns the first error code, or OK."""
    for j in range(queries.shape[0]):
        rc, n = search(
            codes,
            qcodes,
            rowids,
            valid,
            has_valid,
            queries[j],
            luts[j],
            mode,
            k,
            candidates,
            out_rowids[j],
            out_dist[j],
            out_ham[j],
        )
        if rc != OK:
            return rc
        out_n[j] = n
    return OK
