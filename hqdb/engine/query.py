"""Search parameters and query values: the one place that resolves ``k``, ``candidates`` and
``mode`` (defaults and validation) and that encodes ``hq_query(modality, value)``.

Every entry point (SQL ``hq_match``, the SQL aggregate ``hq_search_many``, collections, the
CLI) calls :func:`resolve`, so they agree on defaults, ranges and messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import HqError
from ..kernels import MODES

MAX_K = 65536
MAX_CANDIDATES = (1 << 31) - 1

__all__ = [
    "MODES",
    "MAX_K",
    "MAX_CANDIDATES",
    "Params",
    "resolve",
    "int_arg",
    "default_candidates",
    "encode_query",
    "decode_query",
]


def default_candidates(k: int) -> int:
    """The Hamming shortlist re-ranked by AQD when a query names none: ``max(1000, 10·k)``."""
    return max(1000, 10 * k)


def int_arg(name: str, value, lo: int, hi: int) -> int:
    """An integer parameter in [lo, hi] (an integral REAL is accepted), else :class:`HqError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise HqError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise HqError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise HqError(f"unknown mode {mode!r} (use one of: {', '.join(MODES)})")
    return mode


@dataclass(frozen=True)
class Params:
    """Validated search parameters: as asked (``k``, ``candidates``, ``mode``) and as run
    (``run_mode``: 'hamming' on a table without quantization codes)."""

    k: int
    candidates: int
    mode: str
    run_mode: str


def resolve(
    k,
    candidates=None,
    mode=None,
    *,
    default_mode: str = "two_stage",
    books: int = 1,
    table: str = "table",
    k_name: str = "k",
) -> Params:
    """Validate ``k`` / ``candidates`` / ``mode`` and fill in the defaults.

    ``default_mode`` is the table's own (a model-bound table searches the way its model was
    trained to be searched). A table with ``books = 0`` has no quantization codes: 'two_stage'
    runs as 'hamming' there, and 'aqd' is an error.
    """
    k = int_arg(k_name, k, 1, MAX_K)
    cand = default_candidates(k) if candidates is None else int_arg("candidates", candidates, 1, MAX_CANDIDATES)
    mode = check_mode(default_mode if mode is None else mode)
    run_mode = mode
    if books == 0 and mode != "hamming":
        if mode == "aqd":
            raise HqError(f"{table} has books=0: mode 'aqd' needs quantization codes")
        run_mode = "hamming"
    return Params(k, cand, mode, run_mode)


# hq_query(modality, value) hands the table a tagged BLOB: the table's own model encodes it.
_QUERY_TAG = b"HQQ\x01"


def encode_query(modality, value) -> bytes:
    """The BLOB ``hq_query(modality, value)`` returns (value: TEXT or a float32 feature BLOB)."""
    if not isinstance(modality, str) or not modality or len(modality.encode()) > 255:
        raise HqError("hq_query(modality, value): modality must be a name such as 'image' or 'text'")
    if isinstance(value, str):
        kind, payload = b"t", value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        kind, payload = b"b", bytes(value)
    else:
        raise HqError("hq_query(modality, value): value must be TEXT or a float32 feature BLOB")
    name = modality.encode("utf-8")
    return _QUERY_TAG + bytes([len(name)]) + name + kind + payload


def decode_query(blob) -> tuple[str, str | bytes] | None:
    """(modality, value) of an hq_query() BLOB, or None for any other value."""
    if not isinstance(blob, bytes) or not blob.startswith(_QUERY_TAG) or len(blob) < 6:
        return None
    n = blob[4]
    name, kind, payload = blob[5 : 5 + n], blob[5 + n : 6 + n], blob[6 + n :]
    try:
        modality = name.decode("utf-8")
        return modality, (payload.decode("utf-8") if kind == b"t" else payload)
    except UnicodeDecodeError:
        raise HqError("hq_query() value is not valid UTF-8") from None
