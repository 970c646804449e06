"""hqdb's search kernels: Hamming prefilter and Asymmetric Quantizer Distance (AQD) re-rank.

This module is the only way into the kernels. Every function validates dtypes, shapes,
contiguity and scalar ranges here, in Python, before any buffer reaches compiled code.

Two backends give bit-identical results:

``native``
    C compiled through cffi (``hqdb.kernels._native``), OpenMP threads, hardware popcount where the
    CPU has it.
``numba``
    :mod:`hqdb.kernels._numba`, used when the native module can't be imported (one
    :class:`RuntimeWarning` says why) or when ``HQDB_DISABLE_NATIVE=1`` is set. It ignores
    ``threads``; the results are the same.

Bit layout of codes: bit ``i`` of a vector is bit ``i % 8`` (least significant first) of
byte ``i // 8``, set iff the value is > 0, as sqlite-vec's ``vec_quantize_binary``.

Ranking: every mode orders rows by ``(distance, Hamming distance, rowid)`` ascending (in
``"hamming"`` mode the distance is the Hamming distance), so ties always resolve the same way
(smaller Hamming distance, then smaller rowid first), whatever the number of threads or the
backend.

Batches: :func:`search_many` runs many queries in one kernel call with, for each query, exactly
the result :func:`search` gives it. :mod:`hqdb.kernels.torch_backend` runs the same batched search with
torch tensor operations on any torch device (CPU or CUDA), again with identical results.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import warnings

import numpy as np

__all__ = [
    "BACKEND",
    "FALLBACK_REASON",
    "MODES",
    "info",
    "pack_bits",
    "unpack_bits",
    "hamming_distances",
    "aqd_lut",
    "search",
    "search_many",
]

MODES = ("two_stage", "hamming", "aqd")  # the one list of search modes, in the order docs give them
_MODE_CODE = {"hamming": 0, "aqd": 1, "two_stage": 2}
MAX_BITS = 1024  # the longest code any table or model may have
MAX_CODE_BYTES = MAX_BITS // 8
MAX_CODEWORDS = 65536  # quantization codes are at most uint16

# Error codes of native/hq_kernels.h (the numba kernels return the same ones).
_OK, _ERR_QCODE, _ERR_NOMEM, _ERR_ARG = 0, -1, -2, -3
_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------
class _NativeBackend:
    name = "native"

    def __init__(self, module):
        self.ffi, self.lib = module.ffi, module.lib

    def _buf(self, ctype, arr):
        # The array was validated (dtype, C-contiguous, aligned); the caller keeps it alive.
        return self.ffi.from_buffer(ctype, arr) if arr is not None else self.ffi.NULL

    def hamming(self, codes, query, out, threads):
        b = self._buf
        return self.lib.hq_hamming(
            b("uint8_t[]", codes),
            codes.shape[0],
            codes.shape[1],
            b("uint8_t[]", query),
            b("int32_t[]", out),
            threads,
        )

    def pack_bits(self, x, out):
        return self.lib.hq_pack_bits(self._buf("float[]", x), x.shape[0], self._buf("uint8_t[]", out))

    def aqd_lut(self, query, codebooks, out, threads):
        m, kw, dim = codebooks.shape
        b = self._buf
        return self.lib.hq_aqd_lut(b("float[]", query), b("float[]", codebooks), m, kw, dim, b("float[]", out), threads)

    def _search_args(
        self,
        codes,
        qcodes,
        rowids,
        valid,
        n_queries,
        queries,
        luts,
        mode,
        k,
        candidates,
        threads,
        out_rowids,
        out_dist,
        out_ham,
        out_n,
    ):
        """An hq_search_args (native/hq_kernels.h) over validated arrays (out_n: a cdata), and
        the buffers it points into: keep both alive for the call (the struct alone does not)."""
        keep = []

        def ptr(ctype, arr):
            p = self._buf(ctype, arr)
            keep.append(p)
            return p

        a = self.ffi.new("hq_search_args *")
        a.n_rows, a.code_bytes = codes.shape
        a.codes, a.rowids = ptr("uint8_t[]", codes), ptr("int64_t[]", rowids)
        a.valid = ptr("uint8_t[]", valid)
        if qcodes is not None:
            a.qcodes = ptr(f"uint{8 * qcodes.itemsize}_t[]", qcodes)
            a.qcode_bytes, a.books = qcodes.itemsize, qcodes.shape[1]
        if luts is not None:
            a.luts, a.codewords = ptr("float[]", luts), luts.shape[-1]
        a.n_queries, a.query_bits = n_queries, ptr("uint8_t[]", queries)
        a.mode, a.k, a.candidates, a.threads = _MODE_CODE[mode], k, candidates, threads
        a.out_rowids, a.out_dist = ptr("int64_t[]", out_rowids), ptr("float[]", out_dist)
        a.out_ham, a.out_n = ptr("int32_t[]", out_ham), out_n
        return a, keep

    def search(
        self, codes, qcodes, rowids, valid, query_bits, lut, mode, k, candidates, threads, out_rowids, out_dist, out_ham
    ):
        out_n = self.ffi.new("int64_t[1]")
        a, _buffers = self._search_args(  # _buffers: alive until the call returns
            codes,
            qcodes,
            rowids,
            valid,
            1,
            query_bits,
            lut,
            mode,
            k,
            candidates,
            threads,
            out_rowids,
            out_dist,
            out_ham,
            out_n,
        )
        return self.lib.hq_search(a), int(out_n[0])

    def search_many(
        self,
        codes,
        qcodes,
        rowids,
        valid,
        queries,
        luts,
        mode,
        k,
        candidates,
        threads,
        out_rowids,
        out_dist,
        out_ham,
        out_n,
    ):
        n_out = self._buf("int64_t[]", out_n)
        a, _buffers = self._search_args(  # _buffers: alive until the call returns
            codes,
            qcodes,
            rowids,
            valid,
            queries.shape[0],
            queries,
            luts,
            mode,
            k,
            candidates,
            threads,
            out_rowids,
            out_dist,
            out_ham,
            n_out,
        )
        return self.lib.hq_search_many(a)

    def tune(self, knob, value):
        """The hq_knobs field `knob`'s value before; set it to value unless value < 0."""
        knobs = self.ffi.new("hq_knobs *")
        self.lib.hq_knobs_get(knobs)
        prev = int(getattr(knobs, knob))
        if value >= 0:
            new = self.ffi.new("hq_knobs *", {f: -1 for f, _ in self.ffi.typeof("hq_knobs").fields})
            setattr(new, knob, value)
            if self.lib.hq_knobs_set(new) != _OK:
                raise ValueError(f"knob {knob!r}: value {value} out of range (see hq_knobs)")
        return prev

    def info(self):
        f = self.lib.hq_cpu_features()
        paths = self.lib.hq_hamming_paths()
        return {
            "cpu": {
                "popcnt": bool(f & 1),
                "avx2": bool(f & 2),
                "avx512_vpopcntdq": bool(f & 4),
                "neon": bool(f & 8),
            },
            "openmp": bool(self.lib.hq_openmp_available()),
            "max_threads": int(self.lib.hq_max_threads()),
            "hamming_impl": self.ffi.string(self.lib.hq_hamming_impl()).decode(),
            "hamming_path": ISA_PATHS[self.lib.hq_hamming_path()],
            "hamming_paths": [name for i, name in enumerate(ISA_PATHS) if i and paths & (1 << i)],
        }


class _NumbaBackend:
    name = "numba"

    def __init__(self):
        from . import _numba as nk  # imported only when needed: numba loads slowly

        self.nk = nk

    def hamming(self, codes, query, out, threads):
        return self.nk.hamming(codes, query, out)

    def aqd_lut(self, query, codebooks, out, threads):
        return self.nk.aqd_lut(query, codebooks, out.reshape(codebooks.shape[:2]))

    def search(
        self, codes, qcodes, rowids, valid, query_bits, lut, mode, k, candidates, threads, out_rowids, out_dist, out_ham
    ):
        # numba wants concrete arrays where C takes NULL: 0-sized stand-ins, never read.
        if valid is None:
            valid = np.empty(0, dtype=np.uint8)
            has_valid = False
        else:
            has_valid = True
        if qcodes is None:
            qcodes = np.empty((codes.shape[0], 1), dtype=np.uint8)
        if lut is None:
            lut = np.empty((1, 1), dtype=np.float32)
        rc, n = self.nk.search(
            codes,
            qcodes,
            rowids,
            valid,
            has_valid,
            query_bits,
            lut,
            _MODE_CODE[mode],
            k,
            candidates,
            out_rowids,
            out_dist,
            out_ham,
        )
        return int(rc), int(n)

    def search_many(
        self,
        codes,
        qcodes,
        rowids,
        valid,
        queries,
        luts,
        mode,
        k,
        candidates,
        threads,
        out_rowids,
        out_dist,
        out_ham,
        out_n,
    ):
        has_valid = valid is not None
        if valid is None:
            valid = np.empty(0, dtype=np.uint8)
        if qcodes is None:
            qcodes = np.empty((codes.shape[0], 1), dtype=np.uint8)
        if luts is None:
            luts = np.empty((queries.shape[0], 1, 1), dtype=np.float32)
        return int(
            self.nk.search_many(
                codes,
                qcodes,
                rowids,
                valid,
                has_valid,
                queries,
                luts,
                _MODE_CODE[mode],
                k,
                candidates,
                out_rowids,
                out_dist,
                out_ham,
                out_n,
            )
        )

    def info(self):
        try:
            from llvmlite import binding as llvm

            feats = llvm.get_host_cpu_features()
            cpu = {
                "popcnt": bool(feats.get("popcnt", False)),
                "avx2": bool(feats.get("avx2", False)),
                "avx512_vpopcntdq": bool(feats.get("avx512vpopcntdq", False)),
                "neon": bool(feats.get("neon", False)),
            }
        except Exception:  # feature query is informational only
            cpu = {"popcnt": False, "avx2": False, "avx512_vpopcntdq": False, "neon": False}
        return {
            "cpu": cpu,
            "openmp": False,
            "max_threads": 1,
            "hamming_impl": "numba (llvm ctpop)",
            "hamming_path": "numba",
            "hamming_paths": [],
        }


def _native_disabled() -> bool:
    return os.environ.get("HQDB_DISABLE_NATIVE", "").strip().lower() not in ("", "0", "false", "no")


def _load_native() -> _NativeBackend:
    if _native_disabled():
        raise ImportError("disabled by HQDB_DISABLE_NATIVE")
    if importlib.util.find_spec("hqdb.kernels._native") is None:
        raise ImportError("the extension hqdb.kernels._native is not built (the install could not compile it)")
    from . import _native  # type: ignore[attr-defined]  # a compiled extension: mypy can't see it

    return _NativeBackend(_native)


def _select_backend():
    try:
        return _load_native(), None
    except Exception as exc:  # ImportError, or a broken build (OSError: undefined symbol, ...)
        reason = f"{type(exc).__name__}: {exc}"
    try:
        impl = _NumbaBackend()
    except Exception as exc:
        raise ImportError(f"hqdb has no usable search kernels: native failed ({reason}), numba failed ({exc})") from exc
    warnings.warn(
        f"hqdb: native kernels unavailable ({reason}); using the numba fallback",
        RuntimeWarning,
        stacklevel=3,
    )
    return impl, reason


_IMPL, FALLBACK_REASON = _select_backend()
BACKEND: str = _IMPL.name
"""The backend in use: ``"native"`` or ``"numba"``."""


def _backend_api(name: str):
    """The public kernel functions bound to one backend (``"native"`` or ``"numba"``).

    For tests that compare backends; raises ImportError if that backend can't be loaded.
    """
    import functools
    import types

    impl = {
        "native": lambda: _load_native() if BACKEND != "native" else _IMPL,
        "numba": lambda: _NumbaBackend() if BACKEND != "numba" else _IMPL,
    }[name]()
    return types.SimpleNamespace(
        name=name,
        hamming_distances=functools.partial(_hamming_distances, impl),
        aqd_lut=functools.partial(_aqd_lut, impl),
        search=functools.partial(_search, impl),
        search_many=functools.partial(_search_many, impl),
    )


_KNOBS = ("isa", "path", "min_chunk_rows")  # the fields of hq_knobs
ISA_PATHS = ("auto", "scalar", "avx2", "avx512", "neon")
"""The native Hamming scan paths by their ``hq_knobs.isa`` value (``HQ_ISA_*`` in hq_kernels.h)."""


def _tune(knob: str, value: int | str = -1) -> int:
    """Test hook: set a native code-path knob, return its previous value (-1: not available).

    The knobs (``"isa"``, ``"path"``, ``"min_chunk_rows"``) are the fields of ``hq_knobs``,
    documented in native/hq_kernels.h. ``"isa"`` also takes a name of :data:`ISA_PATHS`
    (``"auto"``, ``"scalar"``, ``"avx2"``, ``"avx512"``, ``"neon"``); forcing a path this CPU or
    build lacks is a ValueError (``info()["hamming_paths"]`` lists the ones it has). Results never
    depend on the knobs, only the code path does. Not thread-safe: for tests and benchmarks only.
    ``value < 0`` just reads the knob.
    """
    if knob not in _KNOBS:
        raise ValueError(f"unknown knob {knob!r}: use one of {', '.join(map(repr, _KNOBS))}")
    if isinstance(value, str):
        if knob != "isa" or value not in ISA_PATHS:
            raise ValueError(f"knob {knob!r}: unknown value {value!r} (isa names: {', '.join(ISA_PATHS)})")
        value = ISA_PATHS.index(value)
    value = _int("value", value, -1)
    if BACKEND != "native":
        return -1
    return _IMPL.tune(knob, value)


def info() -> dict:
    """Describe the kernels in use.

    Returns
    -------
    dict
        ``backend`` (``"native"`` or ``"numba"``), ``fallback_reason`` (why native is not used,
        or None), ``cpu`` (``popcnt``, ``avx2``, ``avx512_vpopcntdq``, ``neon`` booleans),
        ``openmp`` (bool), ``max_threads`` (int), ``hamming_impl`` (which popcount code runs, in
        words), ``hamming_path`` (the Hamming scan path in use for 8/16/32/64/128-byte codes:
        ``"scalar"``, ``"avx2"``, ``"avx512"`` or ``"neon"``; ``"numba"`` on that backend) and
        ``hamming_paths`` (the native paths this CPU and build can run).
    """
    return {"backend": BACKEND, "fallback_reason": FALLBACK_REASON, **_IMPL.info()}


# ------------------------------------------------------------------------------------------
# Validation helpers
# ------------------------------------------------------------------------------------------
def _array(name, arr, dtypes, ndim):
    """Check that arr is an aligned, C-contiguous ndarray of one of dtypes with ndim dims."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype not in dtypes:
        want = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise TypeError(f"{name} must have dtype {want} (native byte order), got {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if not arr.flags.aligned:
        raise ValueError(f"{name} must be aligned for its dtype (copy it first)")
    return arr


def _int(name, value, lo, hi=None):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def _threads(threads):
    # Any count >= 1 is fine; the kernels cap the chunks they actually use.
    return min(_int("threads", threads, 1), 1024)


def check_codes(codes):
    """Check packed bit codes: a C-contiguous uint8 (N, 1..MAX_CODE_BYTES) array."""
    _array("codes", codes, (np.uint8,), 2)
    nb = codes.shape[1]
    if not 1 <= nb <= MAX_CODE_BYTES:
        raise ValueError(f"codes must have 1..{MAX_CODE_BYTES} bytes per row, got {nb}")
    return codes


def _query_bits(name, query, nb):
    _array(name, query, (np.uint8,), 1)
    if query.shape[0] != nb:
        raise ValueError(
            f"{name} has {query.shape[0]} bytes ({query.shape[0] * 8} bits) but the codes have "
            f"{nb} bytes ({nb * 8} bits) per row"
        )
    return query


def _check(rc, what):
    if rc == _OK:
        return
    if rc == _ERR_QCODE:
        raise ValueError(
            f"qcode out of range in {what}: a quantization code is >= the number of codewords "
            "(the LUT's second dimension)"
        )
    if rc == _ERR_NOMEM:
        raise MemoryError(f"{what}: out of memory for the kernel's scratch buffers")
    raise ValueError(f"{what}: the kernel rejected its arguments (error {rc})")


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------
def pack_bits(x) -> np.ndarray:
    """Binarize float vectors into packed bit codes (sign > 0), as sqlite-vec does.

    Parameters
    ----------
    x : array_like of float or int, shape (..., n)
        ``n`` must be a positive multiple of 8. NaN and infinity are rejected.

    Returns
    -------
    np.ndarray of uint8, shape (..., n // 8)
        Bit ``i`` is bit ``i % 8`` (LSB first) of byte ``i // 8``; set iff ``x[..., i] > 0``.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"pack_bits needs a real-valued float or integer array, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("pack_bits needs at least one dimension (the vector)")
    n = x.shape[-1]
    if n == 0 or n % 8:
        raise ValueError(f"vector length must be a positive multiple of 8, got {n}")
    if x.ndim == 1 and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned and BACKEND == "native":
        # One query vector (every search's): one C call instead of three numpy passes.
        out = np.empty(n // 8, dtype=np.uint8)
        if _IMPL.pack_bits(x, out) != _OK:
            raise ValueError("pack_bits: input contains NaN or infinity")
        return out
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("pack_bits: input contains NaN or infinity")
    return np.packbits(x > 0, axis=-1, bitorder="little")


def unpack_bits(codes, n: int) -> np.ndarray:
    """Expand packed bit codes back to +-1 float32 vectors (the inverse of :func:`pack_bits`).

    Parameters
    ----------
    codes : np.ndarray of uint8, shape (..., n // 8)
    n : int
        Number of bits per code; must equal ``8 * codes.shape[-1]``.

    Returns
    -------
    np.ndarray of float32, shape (..., n)
        ``+1.0`` where the bit is set, ``-1.0`` elsewhere.
    """
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise TypeError("codes must be a numpy uint8 array")
    if codes.ndim == 0:
        raise ValueError("codes needs at least one dimension")
    n = _int("n", n, 1)
    if n != 8 * codes.shape[-1]:
        raise ValueError(f"n must be 8 * codes.shape[-1] = {8 * codes.shape[-1]}, got {n}")
    bits = np.unpackbits(codes, axis=-1, count=n, bitorder="little")
    return bits.astype(np.float32) * np.float32(2) - np.float32(1)


def hamming_distances(codes, query, *, threads: int = 1) -> np.ndarray:
    """Hamming distance from one query code to every row (no ranking, no validity mask).

    Parameters
    ----------
    codes : np.ndarray of uint8, shape (N, nb), C-contiguous
        Packed bit codes, ``1 <= nb <= 128``.
    query : np.ndarray of uint8, shape (nb,)
    threads : int, default 1
        Worker threads (native backend with OpenMP only); results do not depend on it.

    Returns
    -------
    np.ndarray of int32, shape (N,)
    """
    return _hamming_distances(_IMPL, codes, query, threads=threads)


def _hamming_distances(impl, codes, query, *, threads=1):
    check_codes(codes)
    _query_bits("query", query, codes.shape[1])
    threads = _threads(threads)
    out = np.empty(codes.shape[0], dtype=np.int32)
    _check(impl.hamming(codes, query, out, threads), "hamming_distances")
    return out


def aqd_lut(query, codebooks, *, threads: int = 1) -> np.ndarray:
    """Lookup table of inner products between the query and every codeword.

    ``LUT[l, j] = <query, codebooks[l, j]>``, each dot product accumulated left to right in
    float64 (the float32 products are exact there) and rounded once to float32.

    Parameters
    ----------
    query : np.ndarray of float32, shape (n,)
    codebooks : np.ndarray of float32, shape (m, k, n), C-contiguous
        ``m >= 1`` codebooks of ``1 <= k <= 65536`` codewords each.
    threads : int, default 1

    Returns
    -------
    np.ndarray of float32, shape (m, k)

    Raises
    ------
    ValueError
        On NaN or infinity in ``query`` or ``codebooks``, or mismatched dimensions.
    """
    return _aqd_lut(_IMPL, query, codebooks, threads=threads)


def _aqd_lut(impl, query, codebooks, *, threads=1):
    _array("query", query, (np.float32,), 1)
    _array("codebooks", codebooks, (np.float32,), 3)
    m, kw, dim = codebooks.shape
    if m < 1 or dim < 1:
        raise ValueError(f"codebooks must have shape (m >= 1, k, n >= 1), got {codebooks.shape}")
    if not 1 <= kw <= MAX_CODEWORDS:
        raise ValueError(f"codebooks must have 1..{MAX_CODEWORDS} codewords, got {kw}")
    if m > _INT32_MAX or dim > _INT32_MAX:
        raise ValueError(f"codebooks shape {codebooks.shape} is too large")
    if query.shape[0] != dim:
        raise ValueError(f"query has {query.shape[0]} dimensions but the codebooks have {dim}")
    if not np.isfinite(query).all():
        raise ValueError("query contains NaN or infinity")
    threads = _threads(threads)
    out = np.empty((m, kw), dtype=np.float32)
    _check(impl.aqd_lut(query, codebooks, out, threads), "aqd_lut")
    # A NaN or inf anywhere in the codebooks reaches the LUT (inf * 0 is NaN too), so checking
    # the small output replaces a scan of all the codebooks on every query.
    if not np.isfinite(out).all():
        raise ValueError("codebooks contain NaN or infinity (or an inner product overflows float32)")
    return out


def search(codes, qcodes, rowids, valid, query_bits, lut, *, k, candidates, mode: str = "two_stage", threads: int = 1):
    """Top-k rows for one query: Hamming prefilter, AQD re-rank, or both.

    Parameters
    ----------
    codes : np.ndarray of uint8, shape (N, nb), C-contiguous
        Packed bit codes of the rows, ``1 <= nb <= 128``.
    qcodes : np.ndarray of uint8 or uint16, shape (N, m), or None
        Quantization codes (codeword index per codebook). Needed by ``"aqd"`` and
        ``"two_stage"``; ignored (may be None) for ``"hamming"``.
    rowids : np.ndarray of int64, shape (N,)
        The rows' ids, unique among valid rows, in any order.
    valid : np.ndarray of uint8 (or bool), shape (N,), or None
        Rows with ``valid == 0`` are skipped entirely. None means every row is valid.
    query_bits : np.ndarray of uint8, shape (nb,)
        The query's packed bit code (see :func:`pack_bits`).
    lut : np.ndarray of float32, shape (m, kw), or None
        AQD lookup table from :func:`aqd_lut`, finite. Needed unless ``mode="hamming"``.
    k : int
        Number of results, ``>= 1``.
    candidates : int
        Rows kept by the Hamming stage of ``"two_stage"`` (at least ``k`` are kept), ``>= 1``.
    mode : {"two_stage", "hamming", "aqd"}
        ``"hamming"``: rank valid rows by (Hamming distance, rowid).
        ``"aqd"``: score every valid row ``s = LUT[0][b0] + LUT[1][b1] + ...`` (float32, in
        that order), distance ``-s`` (larger inner product = closer), rank by (distance, Hamming,
        rowid).
        ``"two_stage"``: the ``max(candidates, k)`` best rows by (Hamming, rowid), re-ranked
        by (AQD distance, Hamming, rowid).
    threads : int, default 1
        Worker threads (native backend with OpenMP); results are identical for any value.

    Returns
    -------
    rowids : np.ndarray of int64, shape (r,)
    distance : np.ndarray of float32, shape (r,)
        The ranking distance: ``-s`` for AQD modes, the Hamming distance for ``"hamming"``.
    hamming : np.ndarray of int32, shape (r,)
        Hamming distance of each returned row.

    ``r = min(k, number of valid rows)``, results ordered best first.

    Raises
    ------
    ValueError
        Bad shapes, scalars or mode; NaN/inf in the LUT; a quantization code of a scored row
        ``>= kw`` ("qcode out of range").
    TypeError
        Wrong types or dtypes.
    """
    return _search(
        _IMPL, codes, qcodes, rowids, valid, query_bits, lut, k=k, candidates=candidates, mode=mode, threads=threads
    )


def _search_scalars(mode, k, candidates, threads):
    if not isinstance(mode, str) or mode not in _MODE_CODE:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(map(repr, MODES))}")
    return _int("k", k, 1), _int("candidates", candidates, 1), _threads(threads)


def check_rows(codes, qcodes, rowids, valid, mode):
    """Check the per-row arrays against validated codes; return (valid as uint8 or None,
    qcodes or None in 'hamming' mode)."""
    n_rows = codes.shape[0]
    _array("rowids", rowids, (np.int64,), 1)
    if rowids.shape[0] != n_rows:
        raise ValueError(f"rowids has {rowids.shape[0]} entries but codes has {n_rows} rows")
    if valid is not None:
        _array("valid", valid, (np.uint8, np.bool_), 1)
        if valid.shape[0] != n_rows:
            raise ValueError(f"valid has {valid.shape[0]} entries but codes has {n_rows} rows")
        valid = valid.view(np.uint8)
    if mode == "hamming":
        return valid, None  # qcodes not used: not checked either
    if qcodes is None:
        raise ValueError(f"mode {mode!r} needs qcodes and lut (only 'hamming' works without)")
    _array("qcodes", qcodes, (np.uint8, np.uint16), 2)
    if qcodes.shape[0] != n_rows:
        raise ValueError(f"qcodes has {qcodes.shape[0]} rows but codes has {n_rows}")
    m = qcodes.shape[1]
    if m < 1:
        raise ValueError("qcodes must have at least one column (codebook)")
    if m > _INT32_MAX:
        raise ValueError(f"too many codebooks: {m}")
    return valid, qcodes


def _lut_arg(name, lut, qcodes, mode, n_queries=None):
    """Check one AQD lookup table (books, codewords), or with ``n_queries`` one per query
    (n_queries, books, codewords), against validated qcodes; None in 'hamming' mode (not used,
    not checked either)."""
    if mode == "hamming":
        return None
    if lut is None:
        raise ValueError(f"mode {mode!r} needs qcodes and {name} (only 'hamming' works without)")
    _array(name, lut, (np.float32,), 2 if n_queries is None else 3)
    if n_queries is not None and lut.shape[0] != n_queries:
        raise ValueError(f"{name} has {lut.shape[0]} tables but there are {n_queries} queries")
    m = qcodes.shape[1]
    if lut.shape[-2] != m:
        raise ValueError(f"{name} has {lut.shape[-2]} rows but qcodes has {m} codebooks")
    if not 1 <= lut.shape[-1] <= MAX_CODEWORDS:
        raise ValueError(f"{name} must have 1..{MAX_CODEWORDS} columns (codewords), got {lut.shape[-1]}")
    if not np.isfinite(lut).all():
        raise ValueError(f"{name} {'contains' if n_queries is None else 'contain'} NaN or infinity")
    return lut


def _search(impl, codes, qcodes, rowids, valid, query_bits, lut, *, k, candidates, mode="two_stage", threads=1):
    k, candidates, threads = _search_scalars(mode, k, candidates, threads)
    check_codes(codes)
    n_rows, nb = codes.shape
    _query_bits("query_bits", query_bits, nb)
    valid, qcodes = check_rows(codes, qcodes, rowids, valid, mode)
    lut = _lut_arg("lut", lut, qcodes, mode)
    r_max = min(k, n_rows)
    out_rowids = np.empty(r_max, dtype=np.int64)
    out_dist = np.empty(r_max, dtype=np.float32)
    out_ham = np.empty(r_max, dtype=np.int32)
    if n_rows == 0:
        return out_rowids, out_dist, out_ham
    # Larger k or candidates select the same rows as n_rows does, and stay within int64.
    k, candidates = min(k, n_rows), min(candidates, n_rows)
    rc, r = impl.search(
        codes, qcodes, rowids, valid, query_bits, lut, mode, k, candidates, threads, out_rowids, out_dist, out_ham
    )
    _check(rc, f"search (mode {mode!r})")
    if r < r_max:
        return out_rowids[:r].copy(), out_dist[:r].copy(), out_ham[:r].copy()
    return out_rowids, out_dist, out_ham


def search_many(
    codes, qcodes, rowids, valid, queries_bits, luts, *, k, candidates, mode: str = "two_stage", threads: int = 1
):
    """Top-k rows for each of a batch of queries, in one kernel call.

    Query ``j``'s results are exactly those of :func:`search` with ``queries_bits[j]`` and
    ``luts[j]`` (same rowids, order, distances and ties). The native kernel walks the rows in
    L2-sized blocks and runs every query over a block before loading the next, so the codes
    are read from memory once per batch; threads split the queries of each block.

    Parameters
    ----------
    codes, qcodes, rowids, valid
        As for :func:`search`.
    queries_bits : np.ndarray of uint8, shape (Q, nb), C-contiguous
        One packed bit code per query.
    luts : np.ndarray of float32, shape (Q, m, kw), C-contiguous, or None
        One AQD lookup table per query (:func:`aqd_lut`), finite. Needed unless
        ``mode="hamming"``.
    k, candidates, mode, threads
        As for :func:`search`, the same for every query.

    Returns
    -------
    rowids : np.ndarray of int64, shape (Q, r)
    distance : np.ndarray of float32, shape (Q, r)
    hamming : np.ndarray of int32, shape (Q, r)
        Row ``j`` is query ``j``'s result, best first; ``r = min(k, number of valid rows)``
        (the same for every query).

    Raises
    ------
    ValueError, TypeError
        As :func:`search`; nothing runs if any query or LUT of the batch is bad.
    """
    return _search_many(
        _IMPL, codes, qcodes, rowids, valid, queries_bits, luts, k=k, candidates=candidates, mode=mode, threads=threads
    )


def check_search_many(codes, qcodes, rowids, valid, queries_bits, luts, k, candidates, mode, threads):
    """Validate a batched search's arguments (for every backend, the torch one too); return
    (qcodes or None, valid as uint8 or None, luts or None, k, candidates, threads)."""
    k, candidates, threads = _search_scalars(mode, k, candidates, threads)
    check_codes(codes)
    nb = codes.shape[1]
    _array("queries_bits", queries_bits, (np.uint8,), 2)
    n_queries = queries_bits.shape[0]
    if queries_bits.shape[1] != nb:
        raise ValueError(
            f"queries_bits has {queries_bits.shape[1]} bytes ({queries_bits.shape[1] * 8} bits) "
            f"per query but the codes have {nb} bytes ({nb * 8} bits) per row"
        )
    valid, qcodes = check_rows(codes, qcodes, rowids, valid, mode)
    luts = _lut_arg("luts", luts, qcodes, mode, n_queries)
    return qcodes, valid, luts, k, candidates, threads


def _search_many(impl, codes, qcodes, rowids, valid, queries_bits, luts, *, k, candidates, mode="two_stage", threads=1):
    qcodes, valid, luts, k, candidates, threads = check_search_many(
        codes, qcodes, rowids, valid, queries_bits, luts, k, candidates, mode, threads
    )
    n_rows, n_queries = codes.shape[0], queries_bits.shape[0]
    if n_rows == 0 or n_queries == 0:
        r_max = min(k, n_rows if valid is None else int(np.count_nonzero(valid)))
        return (
            np.empty((n_queries, r_max), dtype=np.int64),
            np.empty((n_queries, r_max), dtype=np.float32),
            np.empty((n_queries, r_max), dtype=np.int32),
        )
    k, candidates = min(k, n_rows), min(candidates, n_rows)
    out_rowids = np.empty((n_queries, k), dtype=np.int64)
    out_dist = np.empty((n_queries, k), dtype=np.float32)
    out_ham = np.empty((n_queries, k), dtype=np.int32)
    out_n = np.zeros(n_queries, dtype=np.int64)
    rc = impl.search_many(
        codes,
        qcodes,
        rowids,
        valid,
        queries_bits,
        luts,
        mode,
        k,
        candidates,
        threads,
        out_rowids,
        out_dist,
        out_ham,
        out_n,
    )
    _check(rc, f"search_many (mode {mode!r})")
    r = int(out_n[0])
    if not (out_n == r).all():  # every query ranks the same valid rows: a kernel bug otherwise
        raise RuntimeError(f"search_many: result counts differ between queries ({out_n.min()}..{out_n.max()})")
    if r < k:
        return out_rowids[:, :r].copy(), out_dist[:, :r].copy(), out_ham[:, :r].copy()
    return out_rowids, out_dist, out_ham
