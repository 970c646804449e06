"""Batched search with torch tensor operations, on any torch device (CPU or CUDA).

The same search as :func:`hqdb.kernels.search_many`, with the same results (rowids, order,
distances, ties by rowid), written with tensor operations so it runs where torch runs:

* Hamming distance: codes packed into int64 words. For the scan, a block of rows is expanded to
  +-1 vectors and multiplied with the queries' (``dot = bits - 2 * Hamming``, exact in float32:
  every partial sum is a small integer), so the bulk of the work is one GEMM per block; the
  result rows' distances are XOR + popcount by shifts and masks (torch has no popcount op).
* AQD: ``s = LUT[0][b0] + LUT[1][b1] + ...`` as a gather per codebook, added in float32 in
  that order (the C kernel's order, so the sums are bit-identical), distance ``-s``.
* Top-k: every row gets one int64 key that sorts exactly like the C kernels' total order
  (distance, Hamming, rowid, slot): ``distance_key * N + rank``, where ``rank`` is the row's
  position in (rowid, slot) order and ``distance_key`` is the Hamming distance, or (AQD) the
  float32 distance mapped to an order-preserving 32-bit integer, shifted left past the
  Hamming distance it is tied by. The keys are distinct, so ``torch.topk`` on them has one
  answer on every device. AQD keys need 32 + log2(bits + 1) + log2(N) < 63 bits: beyond
  that (e.g. more than 8M rows of 128-bit codes) the search runs on the native kernels.

Rows are processed in blocks (queries x rows) that bound the memory of the intermediate
tensors; the running top-c of each query is merged block by block.

torch is optional (the ``train`` extra) and imported only when this backend is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import check_codes, check_rows, check_search_many

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DeviceCodes", "cuda_available", "search_many"]

# Elements of the (queries x rows) intermediates per block: ~64 MB of int64.
_BLOCK_ELEMENTS = 1 << 23


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "the torch backend needs PyTorch, which is not installed: pip install 'hqdb[train]' "
            "(or search without device=..., on the native kernels)"
        ) from None
    return torch


def cuda_available() -> bool:
    """True if torch is installed and sees a CUDA device."""
    try:
        return bool(_torch().cuda.is_available())
    except ImportError:
        return False


def _device(device):
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here")
    return dev


def _popcount64(x):
    """Bits set in each int64 (as int64). Arithmetic right shifts are harmless: every mask
    below clears the bits they fill, and the sums never reach the sign bit."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


_signs_table: Tensor | None = None  # (256, 8) float32 tensor of _signs, on the device last used


def _signs(torch, bytes_):
    """uint8 codes (n, nb) → float32 (n, 8 * nb): +1 where a bit is set, -1 elsewhere (a
    table lookup per byte: far cheaper than shifting every bit out)."""
    global _signs_table
    table = _signs_table
    if table is None or table.device != bytes_.device:
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
        table = torch.from_numpy((bits * 2 - 1).astype(np.float32)).to(bytes_.device)
        _signs_table = table
    return table[bytes_.to(torch.int64)].reshape(bytes_.shape[0], -1)


def _hamming_block(torch, bytes_, q_signs):
    """Hamming distances (queries, rows) as a matrix product of +-1 bit vectors: the dot
    product is (bits) - 2 * Hamming, and every partial sum is a small integer, so float32
    gives it exactly in any summation order (a GEMM: fast on CPU and GPU alike)."""
    dot = q_signs @ _signs(torch, bytes_).T
    return ((q_signs.shape[1] - dot) * 0.5).to(torch.int64)


def _words(torch, bits: np.ndarray, device):
    """uint8 codes (n, nb) → int64 words (n, ceil(nb / 8)), zero-padded: XOR + popcount over
    the words counts the same differing bits as over the bytes."""
    n, nb = bits.shape
    nw = (nb + 7) // 8
    padded = np.zeros((n, 8 * nw), dtype=np.uint8)
    padded[:, :nb] = bits
    return torch.from_numpy(padded.view(np.int64)).to(device)


def _float_key(torch, d):
    """float32 → int64 in [0, 2^32) with the same order (-0.0 and 0.0 equal, as in C)."""
    d = d + 0.0  # -0.0 + 0.0 is +0.0: one key for both zeros
    bits = d.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)


class DeviceCodes:
    """One code set's arrays copied to a torch device, ready for :func:`search_many`.

    Build it once and pass it as ``resident=`` to keep the codes on the device between
    searches (hqdb's tables cache one per code set and table version).

    Parameters
    ----------
    codes, qcodes, rowids
        As for :func:`hqdb.kernels.search` (``qcodes`` may be None: Hamming searches only).
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """

    def __init__(self, codes, qcodes, rowids, device="cpu"):
        torch = _torch()
        check_codes(codes)
        check_rows(codes, None, rowids, None, "hamming")
        if qcodes is not None:
            check_rows(codes, qcodes, rowids, None, "aqd")
        self.device = _device(device)
        self.n_rows, self.nb = codes.shape
        if self.n_rows >= 2**31:
            raise ValueError("the torch backend takes at most 2^31 - 1 rows")
        self.m = qcodes.shape[1] if qcodes is not None else 0
        self.words = _words(torch, codes, self.device)  # for XOR + popcount of result rows
        self.bytes = torch.from_numpy(codes).to(self.device)  # for the +-1 expansion of a block
        self.qcodes = torch.from_numpy(qcodes.astype(np.int64)).to(self.device) if qcodes is not None else None
        self.rowids = torch.from_numpy(rowids.copy()).to(self.device)
        # rank: the row's position in (rowid, slot) order, the C kernels' tie-break
        order = np.lexsort((np.arange(self.n_rows), rowids))
        rank = np.empty(self.n_rows, dtype=np.int64)
        rank[order] = np.arange(self.n_rows, dtype=np.int64)
        self.rank = torch.from_numpy(rank).to(self.device)
        self._slot_of_rank: Tensor | None = None  # the inverse of rank, made by _slots when first needed

    def matches(self, codes, qcodes, rowids) -> bool:
        """Whether these are (shape-wise) the arrays this copy was made from."""
        return (
            codes.shape == (self.n_rows, self.nb)
            and rowids.shape == (self.n_rows,)
            and (qcodes is None or qcodes.shape == (self.n_rows, self.m))
        )


def search_many(
    codes,
    qcodes,
    rowids,
    valid,
    queries_bits,
    luts,
    *,
    k,
    candidates,
    mode="two_stage",
    device="cpu",
    resident: DeviceCodes | None = None,
):
    """:func:`hqdb.kernels.search_many` on a torch device: same arguments, same results.

    Parameters
    ----------
    codes, qcodes, rowids, valid, queries_bits, luts, k, candidates, mode
        As for :func:`hqdb.kernels.search_many` (validated the same way).
    device : str or torch.device
        Where to run when ``resident`` is not given.
    resident : DeviceCodes, optional
        A device copy of ``codes``, ``qcodes`` and ``rowids`` made earlier (its device wins).

    Returns
    -------
    rowids, distance, hamming : np.ndarray, shape (Q, r)
        As :func:`hqdb.kernels.search_many`.
    """
    torch = _torch()
    qcodes, valid, luts, k, candidates, _ = check_search_many(
        codes, qcodes, rowids, valid, queries_bits, luts, k, candidates, mode, 1
    )
    if mode != "hamming" and (1 << (32 + (codes.shape[1] * 8).bit_length())) * max(len(codes), 1) >= 1 << 62:
        from . import search_many as native_search_many  # AQD keys would overflow int64

        return native_search_many(
            codes, qcodes, rowids, valid, queries_bits, luts, k=k, candidates=candidates, mode=mode
        )
    if resident is None:
        resident = DeviceCodes(codes, qcodes, rowids, device)
    elif not resident.matches(codes, qcodes, rowids):
        raise ValueError("resident= was made from arrays of other shapes than these")
    dc, dev = resident, resident.device
    n, n_queries = codes.shape[0], queries_bits.shape[0]
    nvalid = n if valid is None else int(np.count_nonzero(valid))
    r = min(k, nvalid)
    out = (
        np.empty((n_queries, r), dtype=np.int64),
        np.empty((n_queries, r), dtype=np.float32),
        np.empty((n_queries, r), dtype=np.int32),
    )
    if r == 0 or n_queries == 0:
        return out
    c = min(max(candidates, k) if mode == "two_stage" else k, nvalid)
    valid_t = None if valid is None else torch.from_numpy(valid.astype(bool)).to(dev)
    q_words = _words(torch, queries_bits, dev)
    luts_t = None if luts is None else torch.from_numpy(luts).to(dev)
    kw = 0 if luts is None else luts.shape[2]
    nw = q_words.shape[1]
    hb = (codes.shape[1] * 8).bit_length()  # bits of a Hamming distance in the AQD keys
    big = (nw * 64 + 1) * n if mode != "aqd" else (1 << (32 + hb)) * n  # above every valid row's key

    q_signs = _signs(torch, torch.from_numpy(queries_bits).to(dev))
    q_block = max(1, min(n_queries, 256))
    r_block = max(1024, _BLOCK_ELEMENTS // (q_block * max(dc.m, 1)))
    with torch.no_grad():
        for q0 in range(0, n_queries, q_block):
            q1 = min(n_queries, q0 + q_block)
            qw = q_words[q0:q1]
            lq = None if luts_t is None else luts_t[q0:q1]
            keep = c if mode != "aqd" else r
            best = None  # (queries, <= keep) int64 keys, ascending
            for lo in range(0, n, r_block):
                hi = min(n, lo + r_block)
                if mode == "aqd":
                    assert dc.qcodes is not None  # check_search_many requires qcodes for AQD
                    d = _aqd(torch, dc.qcodes[lo:hi], lq, kw, valid_t, lo, hi)
                    h = _hamming_block(torch, dc.bytes[lo:hi], q_signs[q0:q1])
                    key = ((_float_key(torch, d) << hb) | h) * n + dc.rank[lo:hi]
                else:
                    key = _hamming_block(torch, dc.bytes[lo:hi], q_signs[q0:q1]) * n + dc.rank[lo:hi]
                if valid_t is not None:
                    key = torch.where(valid_t[lo:hi], key, big + dc.rank[lo:hi])
                if best is not None:
                    key = torch.cat([best, key], dim=1)
                best = torch.topk(key, min(keep, key.shape[1]), dim=1, largest=False, sorted=True).values
            assert best is not None  # n >= r > 0: the loop above ran
            # rank → slot: the keys hold rank = key % n; slots by inverting the rank
            slots = _slots(torch, dc, best % n)
            if mode == "two_stage":
                d = _aqd_rows(torch, dc.qcodes, slots, lq, kw)
                key = ((_float_key(torch, d) << hb) | (best // n)) * n + (best % n)
                top = torch.topk(key, r, dim=1, largest=False, sorted=True).indices
                slots = torch.gather(slots, 1, top)
                dist = torch.gather(d, 1, top)
            else:
                slots = slots[:, :r]
                if mode == "hamming":
                    dist = (best[:, :r] // n).to(torch.float32)
                else:
                    dist = _aqd_rows(torch, dc.qcodes, slots, lq, kw)
            ham = _popcount64(dc.words[slots] ^ qw.unsqueeze(1)).sum(-1)
            out[0][q0:q1] = dc.rowids[slots].cpu().numpy()
            out[1][q0:q1] = dist.cpu().numpy()
            out[2][q0:q1] = ham.to(torch.int32).cpu().numpy()
    return out


def _slots(torch, dc: DeviceCodes, rank):
    """Slot indices of rows given their ranks (computed once per DeviceCodes)."""
    inv = dc._slot_of_rank
    if inv is None:
        inv = torch.empty_like(dc.rank)
        inv[dc.rank] = torch.arange(dc.n_rows, device=dc.device)
        dc._slot_of_rank = inv
    return inv[rank]


def _check_qcodes(qc, kw):
    if bool((qc >= kw).any()):
        raise ValueError(
            "qcode out of range in search_many: a quantization code is >= the number of "
            "codewords (the LUT's second dimension)"
        )


def _aqd(torch, qc, lq, kw, valid_t, lo, hi):
    """AQD distances (queries, rows) of rows [lo, hi): -(LUT[0][b0] + LUT[1][b1] + ...)."""
    check = qc if valid_t is None else qc[valid_t[lo:hi]]
    _check_qcodes(check, kw)  # as the C kernel, only rows that get scored must be in range
    qc = qc.clamp(max=kw - 1)  # invalid rows' codes: any index, their keys are replaced
    s = lq[:, 0, :][:, qc[:, 0]]
    for book in range(1, qc.shape[1]):
        s = s + lq[:, book, :][:, qc[:, book]]
    return -s


def _aqd_rows(torch, qcodes, slots, lq, kw):
    """AQD distances (queries, c) of each query's own rows slots (queries, c)."""
    qc = qcodes[slots]  # (queries, c, m)
    _check_qcodes(qc, kw)
    s = torch.gather(lq[:, 0, :], 1, qc[:, :, 0])
    for book in range(1, qc.shape[2]):
        s = s + torch.gather(lq[:, book, :], 1, qc[:, :, book])
    return -s
