"""Bulk loading of precomputed codes, and codebooks from numpy.

``INSERT INTO t(code, qcode) VALUES (?, ?)`` works row by row like any table; this module is
the fast path for arrays of codes (one vectorised write per call instead of one virtual-table
call per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import apsw
import numpy as np

from . import quantize
from .engine.table import Table
from .errors import HqError
from .kernels import pack_bits
from .sql.vtab import HqModule
from .txn import write_transaction


def _module(conn: apsw.Connection) -> HqModule:
    module = getattr(conn, "hq", None)
    if module is None:
        raise HqError("this connection was not opened with hqdb.connect()")
    return module


def _table(conn: apsw.Connection, name: str) -> Table:
    return _module(conn).table(name)


def set_codebooks(conn: apsw.Connection, table: str, codebooks: np.ndarray) -> None:
    """Store codebooks (float32, books x codewords x dim) for ``table``; with codewords = 256
    also (dim/8 + books) x 256 x dim, the bit code's own books first
    (:func:`hqdb.quantize.fit_bits_pq`)."""
    cb = np.ascontiguousarray(codebooks, dtype="<f4")
    t = _table(conn, table)
    o = t.opts
    joint = (o.books + o.code_bytes, 256, o.dim)
    if cb.shape != (o.books, o.codewords, o.dim) and not (o.books and o.codewords == 256 and cb.shape == joint):
        raise HqError(f"codebooks for {table} must have shape {(o.books, o.codewords, o.dim)}, got {cb.shape}")
    with write_transaction(conn):
        t.set_codebooks(cb.tobytes())


def _vectors(t: Table, vectors, what: str) -> np.ndarray:
    """Vectors as a C-contiguous float32 (N, dim) array: real-valued input of the right shape
    only (the values are converted, never the bytes reinterpreted), finite."""
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != t.opts.dim:
        raise HqError(
            f"{what}: vectors must be a real-valued array of shape (N, {t.opts.dim}); got {arr.dtype} {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise HqError(f"{what}: vectors contain NaN or infinity (or values beyond float32)")
    return arr


def fit_table(
    conn: apsw.Connection, table: str, sample, *, quantizer: str = "auto", iters: int = 8, seed: int = 0
) -> np.ndarray:
    """Fit a raw table's codebooks to ``sample`` (vectors like the ones you will insert, (N, dim))
    and store them; return them.

    ``quantizer``: 'auto' (the default) fits each quantizer that suits the table on the sample
    less 200 held-out rows and keeps the one whose codes alone rank the rest best for those rows
    (:func:`hqdb.quantize.fit_best`); or one by name: 'bits_pq' (codewords = 256) scores each
    row's bit code together with its quantization codes — books for the scaled signs, then a
    coarse book and product-quantized books for what they leave
    (:func:`hqdb.quantize.fit_bits_pq`) — and 'rq' is residual k-means over the quantization
    codes alone (:func:`hqdb.quantize.fit_codebooks`). Which one was kept shows in the shape
    returned: (dim/8 + books, 256, dim) for 'bits_pq', (books, codewords, dim) for 'rq'.

    Then :func:`insert_vectors` (or SQL ``INSERT INTO t(vector, ...)`` on a ``rerank`` table)
    computes every row's codes with them."""
    t = _table(conn, table)
    if t.opts.model:
        raise HqError(f"{table} takes its codebooks from model {t.opts.model!r}")
    if t.opts.books == 0:
        raise HqError(f"{table} has books=0: it has no codebooks to fit")
    x = _vectors(t, sample, f"fit_table({table!r})")
    if len(x) < 2:
        raise HqError(f"fit_table({table!r}): the sample needs at least 2 vectors")
    if quantizer not in (*quantize.QUANTIZERS, "auto"):
        raise HqError(
            f"fit_table({table!r}): quantizer must be 'auto' or one of "
            f"{', '.join(quantize.QUANTIZERS)}, got {quantizer!r}"
        )
    if quantizer == "auto":
        cb = quantize.fit_best(x, t.opts.books, t.opts.codewords, iters=iters, seed=seed)[1]
    elif quantizer == "bits_pq":
        if t.opts.codewords != 256 or t.opts.books > t.opts.dim + 1:
            raise HqError(f"fit_table({table!r}): quantizer 'bits_pq' needs codewords=256 and books <= dim + 1")
        cb = quantize.fit_bits_pq(x, t.opts.books, iters=iters, seed=seed)
    else:
        cb = quantize.fit_codebooks(x, t.opts.books, t.opts.codewords, iters=iters, seed=seed)
    set_codebooks(conn, table, cb)
    return cb


def insert_vectors(
    conn: apsw.Connection,
    table: str,
    vectors,
    *,
    rowids: Sequence[int] | np.ndarray | None = None,
    metadata: Mapping[str, Sequence] | None = None,
) -> np.ndarray:
    """Insert vectors into a raw table, its codes computed for you: the sign bits, and the
    quantization indices from the table's codebooks (:func:`fit_table`); a ``rerank`` table
    also keeps the vectors for its exact re-rank. Returns the rowids. All or nothing."""
    t = _table(conn, table)
    if t.opts.model:
        raise HqError(f"{table} is bound to model {t.opts.model!r}: insert features with hqdb.insert_items()")
    x = _vectors(t, vectors, f"insert_vectors({table!r})")
    qcodes = None
    if t.opts.books:
        cb = t.codebooks()
        if cb is None:
            raise HqError(f"{table} has no codebooks yet: fit them first with hqdb.fit_table(db, {table!r}, sample)")
        qcodes = quantize.encode_rows(x, cb, t.opts.books)
    vectors = x if t.opts.rerank else None  # a rerank table keeps them for the exact re-rank
    return _write_rows(conn, t, len(x), rowids, metadata, {0: (pack_bits(x), qcodes)}, vectors)


def insert_codes(
    conn: apsw.Connection,
    table: str,
    codes: np.ndarray,
    qcodes: np.ndarray | None = None,
    *,
    rowids: Sequence[int] | np.ndarray | None = None,
    metadata: Mapping[str, Sequence] | None = None,
) -> np.ndarray:
    """Insert many rows of precomputed codes at once; return their rowids.

    Parameters
    ----------
    codes : uint8 array (N, dim/8)
        Packed bit codes (see :func:`hqdb.kernels.pack_bits`).
    qcodes : uint8 / uint16 array (N, books), optional
        Quantization indices; required when the table has books > 0.
    rowids : int array (N,), optional
        Explicit rowids (unique, not yet in the table); default: after the current maximum.
    metadata : mapping column -> sequence of N values, optional

    The insert is atomic: on any error nothing is inserted.
    """
    t = _table(conn, table)
    o = t.opts
    if o.model:
        raise HqError(f"{table} is bound to model {o.model!r}: insert features with hqdb.insert_items()")
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != o.code_bytes:
        raise HqError(f"codes must be a uint8 array of shape (N, {o.code_bytes}); got {codes.dtype} {codes.shape}")
    n = len(codes)
    if o.books:
        if qcodes is None:
            raise HqError(f"{table} has books={o.books}: qcodes are required")
        qcodes = np.asarray(qcodes)
        if qcodes.ndim != 2 or qcodes.shape != (n, o.books) or qcodes.dtype.kind not in "iu":
            raise HqError(
                f"qcodes must be an integer array of shape ({n}, {o.books}); got {qcodes.dtype} {qcodes.shape}"
            )
        if n and (int(qcodes.min()) < 0 or int(qcodes.max()) >= o.codewords):
            raise HqError(f"qcodes must lie in [0, {o.codewords}); got [{int(qcodes.min())}, {int(qcodes.max())}]")
        qcodes = qcodes.astype(np.dtype(o.qcode_dtype).newbyteorder("="))
    elif qcodes is not None:
        raise HqError(f"{table} has books=0: pass no qcodes")
    return _write_rows(conn, t, n, rowids, metadata, {0: (codes, qcodes)})


def insert_items(
    conn: apsw.Connection,
    table: str,
    *,
    metadata: Mapping[str, Sequence] | None = None,
    rowids: Sequence[int] | np.ndarray | None = None,
    **inputs,
) -> np.ndarray:
    """Insert many items into a model-bound table, encoding each modality in one batch.

    ``inputs`` maps modality → feature matrix (N, input_dim) or list of N strings (for a
    modality with a text featurizer), or, for a modality with an image featurizer, N images
    (file paths, bytes, PIL images or image arrays); a modality left out (or None) is absent
    for these items.
    Returns the new rowids. All or nothing.

    >>> hqdb.insert_items(db, "docs", image=img_feats, text=texts, metadata={"title": titles})
    """
    t = _table(conn, table)
    if not t.opts.model:
        raise HqError(f"{table} is a raw table: insert codes with hqdb.insert_codes()")
    names = [c.name for c in t.sets]
    unknown = set(inputs) - set(names)
    if unknown:
        raise HqError(f"model {t.opts.model!r} has no modality {sorted(unknown)} (it has: {names})")
    given = {m: v for m, v in inputs.items() if v is not None}
    if not given:
        raise HqError(f"insert_items needs at least one of: {', '.join(names)}")
    sizes = {m: len(v) for m, v in given.items()}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise HqError(f"every modality needs the same number of items; got {sizes}")
    model = t.model()
    encoded = {}
    for m, values in given.items():
        i = names.index(m)
        values = _image_inputs(t.name, model, m, values)
        bitf, f = t.encode_inputs(i, values if isinstance(values, np.ndarray) else list(values))
        encoded[i] = (pack_bits(bitf), model.quantize(f) if model.books else None)
    return _write_rows(conn, t, n, rowids, metadata, encoded)


def _image_inputs(table: str, model, modality: str, values):
    """A modality with an image featurizer: image file paths, bytes, PIL images or image arrays
    → the backbone's features (N, input_dim); feature arrays pass through unchanged."""
    if not model.has_image_featurizer(modality):
        return values
    try:
        return model.featurize(modality, values)
    except (ValueError, TypeError) as e:
        raise HqError(f"{table}.{modality}: {e}") from None


def delete_rows(conn: apsw.Connection, table: str, rowids: Sequence[int] | np.ndarray) -> int:
    """Delete many rows at once (raw or model-bound table); return how many existed.

    The fast path for ``DELETE FROM t WHERE rowid IN (...)``: one write per touched chunk
    instead of one virtual-table call per row. Rowids that are not in the table are ignored.
    All or nothing.
    """
    t = _table(conn, table)
    ids = np.asarray(rowids)
    if ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
        raise HqError(f"rowids must be a 1-D sequence of integers; got {ids.dtype} {ids.shape}")
    ids = np.unique(ids.astype(np.int64))
    if not len(ids):
        return 0
    with write_transaction(conn):
        return t.delete_many(ids)


def _write_rows(conn, t: Table, n: int, rowids, metadata, codes_by_set: dict, vectors=None) -> np.ndarray:
    """Validate rowids and metadata, then insert n rows whose codes are given per code set
    (``{set index: (bit codes, qcodes)}``; sets left out stay empty) in one savepoint."""
    meta = dict(metadata or {})
    unknown = set(meta) - set(t.meta_names)
    if unknown:
        raise HqError(f"unknown metadata column(s) for {t.name}: {sorted(unknown)}")
    for name, values in meta.items():
        if len(values) != n:
            raise HqError(f"metadata column {name!r} has {len(values)} values for {n} rows")
    if rowids is not None:
        rowids = np.asarray(rowids)
        if rowids.shape != (n,) or rowids.dtype.kind not in "iu":
            raise HqError(f"rowids must be an integer array of shape ({n},)")
        rowids = rowids.astype(np.int64)
        if len(np.unique(rowids)) != n:
            raise HqError("rowids must be unique")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    with write_transaction(conn):
        return t.write_many(n, rowids, meta, codes_by_set, vectors)
