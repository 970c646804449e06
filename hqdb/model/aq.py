"""Additive quantization for the HQ loss term L_q (paper Eq. 6): f ≈ Σ_l C^l b^l.

Codebooks C are float32 (m, k, n): m books of k codewords of the n-dim feature space; a code is
m indices (uint8 when k <= 256, else uint16). Both steps of the paper's §4.3 alternation:

- :func:`update_codebooks` — C in closed form with the indicators fixed (least squares);
- :func:`encode` — the indicators with C fixed: per book, an exhaustive search over its k
  codewords with the other books held fixed (iterated conditional modes), started from a greedy
  residual assignment.

Everything is deterministic: sums in a fixed order (codeword scores ⟨f, C^l_j⟩ in float32, the
rest in float64), no fastmath, ties to the lower index; a row's codes do not depend on the
batch it is encoded in or on the thread count. Speed (issue 14): encode scores each row against
the m·k codewords once and then runs ICM on a precomputed codeword-pair table (m·k ≤ MAX_TABLE),
splitting large batches over threads (the kernels release the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

MAX_EXACT = 4096  # largest m*k solved as one dense system; above, block coordinate descent


def _check_codes(codes, n_items, m, k):
    codes = np.asarray(codes)
    if codes.shape != (n_items, m) or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers of shape ({n_items}, {m}), got {codes.dtype}{codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise ValueError(f"codes must lie in [0, {k})")
    return codes.astype(np.int64)


def _check_features(F, what="F"):
    F = np.asarray(F)
    if F.ndim != 2 or F.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be a 2-D real array, got shape {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError(f"{what} contains NaN or infinity")
    return F


@njit(cache=True, nogil=True)
def _reconstruct(codes, C64, out):
    n = C64.shape[2]
    acc = np.empty(n)
    for i in range(codes.shape[0]):
        for d in range(n):
            acc[d] = 0.0
        for l in range(C64.shape[0]):
            b = codes[i, l]
            for d in range(n):
                acc[d] += C64[l, b, d]
        for d in range(n):
            out[i, d] = acc[d]


def reconstruct(codes, C) -> np.ndarray:
    """Σ_l C^l b^l for every row of ``codes`` (float64 sum, books in order), as float32 (N, n)."""
    C64 = np.ascontiguousarray(C, dtype=np.float64)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    out = np.empty((codes.shape[0], C64.shape[2]), dtype=np.float32)
    _reconstruct(codes, C64, out)
    return out


@njit(cache=True)
def _assigned_sums(F, codes, rhs):
    """rhs[l, j] += F[i] for every row i with codes[i, l] == j, rows in order (= np.add.at)."""
    for i in range(F.shape[0]):
        for l in range(codes.shape[1]):
            b = codes[i, l]
            for d in range(F.shape[1]):
                rhs[l, b, d] += F[i, d]


def quantization_error(F, codes, C) -> float:
    """Σ_i ‖f_i − Σ_l C^l b_i^l‖² (the sum in Eq. 6), in float64."""
    diff = np.asarray(F, dtype=np.float64) - reconstruct(codes, C).astype(np.float64)
    return float((diff * diff).sum())


def update_codebooks(
    F, codes, m: int, k: int, *, prev=None, ridge: float = 1e-6, max_exact: int = MAX_EXACT
) -> np.ndarray:
    """C = argmin_C ‖F − B C‖² + ridge·‖C − prev‖² with B the N × (m·k) one-hot indicator of ``codes``.

    This is the paper's closed form C = [F Bᵀ][B Bᵀ]⁻¹ (§4.3, with F holding the features of both
    modalities stacked) made well-posed: BᵀB is singular (a codeword nobody uses; and adding a
    vector to every codeword of one book while subtracting it from another changes nothing), so
    a tiny ridge pulls those free directions toward ``prev`` (zero when None) — an unused
    codeword keeps its previous value. ``codes`` are the (N, m) indices that B encodes.
    Returns float32 (m, k, n).
    """
    F = _check_features(F).astype(np.float64)
    N, n = F.shape
    if m < 1 or k < 1:
        raise ValueError("m and k must be positive")
    codes = _check_codes(codes, N, m, k)
    prev64 = np.zeros((m, k, n)) if prev is None else np.asarray(prev, dtype=np.float64)
    if prev64.shape != (m, k, n):
        raise ValueError(f"prev must have shape {(m, k, n)}, got {prev64.shape}")
    # Bᵀ F: per codeword, the sum of the features assigned to it (np.add.at adds in row order).
    rhs = np.zeros((m, k, n))
    _assigned_sums(F, codes, rhs)
    if m * k <= max_exact:
        gram = np.zeros((m * k, m * k))
        for a in range(m):
            for b in range(m):
                pairs = np.bincount(codes[:, a] * k + codes[:, b], minlength=k * k)
                gram[a * k : (a + 1) * k, b * k : (b + 1) * k] = pairs.reshape(k, k)
        gram[np.diag_indices_from(gram)] += ridge
        sol = np.linalg.solve(gram, (rhs + ridge * prev64).reshape(m * k, n))
        return sol.reshape(m, k, n).astype(np.float32)
    # Too many codewords for one dense system: exact minimisation over one book at a time
    # (Gauss-Seidel sweeps), which decreases the same objective monotonically.
    C = prev64.copy()
    counts = np.stack([np.bincount(codes[:, l], minlength=k) for l in range(m)]).astype(np.float64)
    recon = sum(C[l][codes[:, l]] for l in range(m))
    for _ in range(20):
        for l in range(m):
            others = recon - C[l][codes[:, l]]
            acc = np.zeros((k, n))
            np.add.at(acc, codes[:, l], F - others)
            C[l] = (acc + ridge * prev64[l]) / (counts[l] + ridge)[:, None]
            recon = others + C[l][codes[:, l]]
    return C.astype(np.float32)


MAX_TABLE = 2048  # largest m*k whose codeword-pair table (m*k)^2 float64 is precomputed (32 MB)
PARALLEL_MIN = 8192  # rows from which encode splits the work over threads


@njit(cache=True, nogil=True)
def _encode_table(F, CT, norms, P, codes, greedy, iters, lo, hi):
    """Rows lo..hi of :func:`encode` with the codeword-pair table P[l, l2, b, j] = 2⟨C^l_j, C^l2_b⟩:
    ‖f − Σ_l C^l b_l‖² = ‖f‖² + Σ_l (‖C^l_{b_l}‖² − 2⟨f, C^l_{b_l}⟩) + Σ_{l<l2} 2⟨C^l_{b_l}, C^l2_{b_l2}⟩,
    so a book's exhaustive step costs k·m table reads once the m·k scores ⟨f, C^l_j⟩ are known.
    Each row's sums run in a fixed order (d, then books ascending): a row's codes never depend
    on the batch or the thread it is computed in."""
    n = F.shape[1]
    m, k = norms.shape
    unary = np.empty((m, k))
    acc = np.empty(k)
    dots = np.empty(k, dtype=np.float32)
    for i in range(lo, hi):
        for l in range(m):
            for j in range(k):
                dots[j] = 0.0
            for d in range(n):
                fd = F[i, d]
                for j in range(k):
                    dots[j] += fd * CT[l, d, j]
            for j in range(k):
                unary[l, j] = norms[l, j] - 2.0 * np.float64(dots[j])
        if greedy:
            # Greedy residual start: book l quantizes what books 0..l-1 left over.
            for l in range(m):
                for j in range(k):
                    acc[j] = unary[l, j]
                for l2 in range(l):
                    b2 = codes[i, l2]
                    for j in range(k):
                        acc[j] += P[l, l2, b2, j]
                best = 0
                for j in range(1, k):
                    if acc[j] < acc[best]:
                        best = j
                codes[i, l] = best
        for _ in range(iters):
            changed = False
            for l in range(m):
                for j in range(k):
                    acc[j] = unary[l, j]
                for l2 in range(m):
                    if l2 != l:
                        b2 = codes[i, l2]
                        for j in range(k):
                            acc[j] += P[l, l2, b2, j]
                best = 0
                for j in range(1, k):
                    if acc[j] < acc[best]:
                        best = j
                if best != codes[i, l]:
                    codes[i, l] = best
                    changed = True
            if not changed:
                break


@njit(cache=True)
def _best(r, CT, norms, l, scores):
    """argmin_j ‖r − C^l_j‖² = argmin_j ‖C^l_j‖² − 2⟨r, C^l_j⟩; ties to the lower j.

    Codewords sit in the inner loop (CT is (m, n, k)) so each score has its own accumulator:
    vectorisable without reordering any sum."""
    n, k = CT.shape[1], CT.shape[2]
    for j in range(k):
        scores[j] = 0.0
    for d in range(n):
        rd = r[d]
        for j in range(k):
            scores[j] += rd * CT[l, d, j]
    best = 0
    best_s = norms[l, 0] - 2.0 * scores[0]
    for j in range(1, k):
        s = norms[l, j] - 2.0 * scores[j]
        if s < best_s:
            best_s = s
            best = j
    return best


@njit(cache=True, nogil=True)
def _encode(F, C, CT, norms, codes, greedy, iters, lo, hi):
    """Rows lo..hi of :func:`encode` by residuals (used when the pair table would be too big)."""
    n = F.shape[1]
    m = C.shape[0]
    k = C.shape[1]
    r = np.empty(n)
    scores = np.empty(k)
    for i in range(lo, hi):
        if greedy:
            # Greedy residual start: book l quantizes what books 0..l-1 left over.
            for d in range(n):
                r[d] = F[i, d]
            for l in range(m):
                b = _best(r, CT, norms, l, scores)
                codes[i, l] = b
                for d in range(n):
                    r[d] -= C[l, b, d]
        for _ in range(iters):
            changed = False
            for l in range(m):
                # Residual of every other book (recomputed in a fixed order, not updated
                # incrementally, so the result doesn't depend on the path taken).
                for d in range(n):
                    r[d] = F[i, d]
                for l2 in range(m):
                    if l2 != l:
                        b2 = codes[i, l2]
                        for d in range(n):
                            r[d] -= C[l2, b2, d]
                b = _best(r, CT, norms, l, scores)
                if b != codes[i, l]:
                    codes[i, l] = b
                    changed = True
            if not changed:
                break


def encode(F, C, init=None, iters: int = 3) -> np.ndarray:
    """Quantization codes (N, m) of ``F`` with codebooks ``C`` (m, k, n): greedy residual start
    (or ``init``), then ``iters`` rounds of per-book exhaustive search with the other books fixed
    (paper §4.3: "b can be updated by thoroughly checking all possible indicators"). Each step
    picks the best codeword for its book given the rest, so the error never goes up; with m = 1
    the result is the exhaustive optimum. uint8 codes when k <= 256, else uint16."""
    C = np.asarray(C)
    if C.ndim != 3 or min(C.shape) < 1:
        raise ValueError(f"codebooks must have shape (m, k, n), got {C.shape}")
    m, k, n = C.shape
    if k > 65536:
        raise ValueError(f"at most 65536 codewords per book, got {k}")
    F = _check_features(F)
    if F.shape[1] != n:
        raise ValueError(f"F has {F.shape[1]} dimensions but the codebooks have {n}")
    if not np.isfinite(C).all():
        raise ValueError("codebooks contain NaN or infinity")
    if iters < 0:
        raise ValueError("iters must be >= 0")
    C64 = np.ascontiguousarray(C, dtype=np.float64)
    CT = np.ascontiguousarray(C64.transpose(0, 2, 1))
    norms = np.zeros((m, k))
    for d in range(n):  # Σ_d in order, as in _best
        norms += C64[:, :, d] * C64[:, :, d]
    N = F.shape[0]
    if init is None:
        codes = np.zeros((N, m), dtype=np.int64)
    else:
        codes = _check_codes(init, N, m, k).copy()
    greedy, iters = init is None, int(iters)
    if m * k <= MAX_TABLE:
        flat = C64.reshape(m * k, n)
        P = np.ascontiguousarray((2.0 * (flat @ flat.T)).reshape(m, k, m, k).transpose(0, 2, 3, 1))
        F32, CT32 = np.ascontiguousarray(F, dtype=np.float32), CT.astype(np.float32)

        def run(lo, hi):
            _encode_table(F32, CT32, norms, P, codes, greedy, iters, lo, hi)
    else:

        def run(lo, hi):
            _encode(np.ascontiguousarray(F, dtype=np.float64), C64, CT, norms, codes, greedy, iters, lo, hi)

    workers = _threads() if N >= PARALLEL_MIN else 1
    if workers <= 1:
        run(0, N)
    else:  # rows are independent and the kernels release the GIL: same codes, more cores
        bounds = np.linspace(0, N, 4 * workers + 1).astype(np.int64)
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(run, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
                f.result()
    return codes.astype(np.uint8 if k <= 256 else np.uint16)


def _threads() -> int:
    """Threads for large encodes: HQDB_AQ_THREADS, else the CPUs this process may use (at most 8)."""
    env = os.environ.get("HQDB_AQ_THREADS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)
