"""Trained models kept inside the database (catalog tables ``hqdb_models`` and
``hqdb_model_tensors``): a JSON config plus raw little-endian tensors. Loading parses JSON and
checks every tensor's dtype, shape and byte length; nothing is ever unpickled."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import apsw
import numpy as np

from ..errors import ModelError
from ..txn import write_transaction

_DTYPES = {"float32": "<f4", "int64": "<i8", "uint8": "u1", "uint16": "<u2"}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (1-128 letters, digits, '_', '.', '-': safe in a
    quoted SQL string), else :class:`ModelError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"model name {name!r}: use 1-128 letters, digits, '_', '.', '-'")
    return name


_check_name = check_name


def _has_store(conn: apsw.Connection) -> bool:
    """Whether the database has the model tables (another application's file has none until its
    first model is saved: readers then see no models)."""
    found = conn.execute(
        "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name IN ('hqdb_models', 'hqdb_model_tensors')"
    ).fetchone()
    return bool(found and found[0] == 2)


def save(
    conn: apsw.Connection,
    name: str,
    config: dict,
    tensors: dict[str, np.ndarray],
    *,
    replace: bool = False,
    users: Callable[[apsw.Connection, str], list[str]] | None = None,
    prepare: Callable[[apsw.Connection], object] | None = None,
) -> None:
    """Store a model (``config`` must be JSON-serialisable; tensors are numpy arrays).

    ``users(conn, name)`` lists the tables bound to a model (the engine's catalog knows them):
    a model in use is not replaced. ``prepare(conn)`` runs first inside the write transaction:
    it creates hqdb's catalog in a file that has none yet (:func:`hqdb.engine.schema.ensure`)."""
    _check_name(name)
    rows = []
    for tname, arr in tensors.items():
        arr = np.asarray(arr)
        dtype = next(
            (k for k, v in _DTYPES.items() if np.dtype(v) == arr.dtype.newbyteorder("<") or np.dtype(v) == arr.dtype),
            None,
        )
        if dtype is None:
            raise ModelError(f"tensor {tname!r}: dtype {arr.dtype} cannot be stored")
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dtype]).tobytes()
        rows.append((name, tname, dtype, json.dumps(list(arr.shape)), data))
    with write_transaction(conn):
        if prepare is not None:
            prepare(conn)
        if not _has_store(conn):
            raise ModelError("this database has no hqdb catalog to store models in: save through hqdb.save_model")
        exists = conn.execute("SELECT 1 FROM hqdb_models WHERE name = ?", (name,)).fetchone()
        if exists and not replace:
            raise ModelError(f"a model named {name!r} already exists (pass replace=True to overwrite)")
        if exists:
            in_use = users(conn, name) if users is not None else []
            if in_use:
                raise ModelError(
                    f"model {name!r} is used by hq table(s) {in_use}: "
                    "their codes would no longer match; save under a new name"
                )
            conn.execute("DELETE FROM hqdb_model_tensors WHERE model = ?", (name,))
            conn.execute("DELETE FROM hqdb_models WHERE name = ?", (name,))
        conn.execute("INSERT INTO hqdb_models(name, config) VALUES (?, ?)", (name, json.dumps(config)))
        conn.executemany("INSERT INTO hqdb_model_tensors(model, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?)", rows)


def _text(raw) -> str:
    if raw is None:
        raise ValueError("missing")
    return raw.decode("utf-8")  # UnicodeDecodeError is a ValueError


def load(conn: apsw.Connection, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of a stored model; :class:`ModelError` if missing or corrupt."""
    _check_name(name)
    # Everything read from a (possibly hostile) file comes back as bytes and is decoded here:
    # TEXT that is not UTF-8 must be a ModelError, not a decoding crash inside the driver.
    has_store = _has_store(conn)
    row = (
        conn.execute("SELECT CAST(config AS BLOB) FROM hqdb_models WHERE name = ?", (name,)).fetchone()
        if has_store
        else None
    )
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM hqdb_models ORDER BY name")] if has_store else []
        raise ModelError(f"no model named {name!r} in this database (models: {known or 'none'})")
    try:
        config = json.loads(_text(row[0]))
    except (TypeError, ValueError, RecursionError) as e:
        raise ModelError(f"model {name!r}: config is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"model {name!r}: config must be a JSON object")
    tensors = {}
    for tname, dtype, shape, data in conn.execute(
        "SELECT CAST(name AS BLOB), CAST(dtype AS BLOB), CAST(shape AS BLOB), "
        "CASE WHEN typeof(data) = 'blob' THEN data END FROM hqdb_model_tensors WHERE model = ? ORDER BY name",
        (name,),
    ):
        tname = (tname or b"").decode("utf-8", "replace")
        dtype = (dtype or b"").decode("utf-8", "replace")
        try:
            shape = tuple(json.loads(_text(shape)))
            if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise ValueError("bad dimensions")
        except (TypeError, ValueError, RecursionError):
            raise ModelError(f"model {name!r}: tensor {tname!r} has a malformed shape {shape!r}") from None
        if dtype not in _DTYPES or not isinstance(data, bytes):
            raise ModelError(f"model {name!r}: tensor {tname!r} has an unknown dtype or non-BLOB data")
        np_dtype = np.dtype(_DTYPES[dtype])
        # Python integers: a hostile shape cannot overflow into a size that matches the data,
        # and nothing is allocated before the byte count agrees with the declared shape.
        expected = math.prod(shape) * np_dtype.itemsize
        if len(data) != expected:
            raise ModelError(
                f"model {name!r}: tensor {tname!r} is truncated or corrupt "
                f"({len(data)} bytes, expected {expected} for {dtype}{list(shape)})"
            )
        arr = np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelError(f"model {name!r}: tensor {tname!r} contains NaN or infinity")
        tensors[tname] = arr
    return config, tensors


def list_models(conn: apsw.Connection) -> list[dict]:
    out: list[dict] = []
    if not _has_store(conn):
        return out
    for name, config, created in conn.execute(
        "SELECT CAST(name AS BLOB), CAST(config AS BLOB), CAST(created_at AS BLOB) FROM hqdb_models ORDER BY name"
    ):
        name = (name or b"").decode("utf-8", "replace")
        created = (created or b"").decode("utf-8", "replace")
        try:
            cfg = json.loads(_text(config))
        except (TypeError, ValueError, RecursionError):
            cfg = None
        if not isinstance(cfg, dict):  # a damaged config is listed, and refused when loaded
            cfg = {}
        out.append(
            {
                "name": name,
                "created_at": created,
                **{k: cfg.get(k) for k in ("method", "bits", "books", "codewords", "modalities")},
            }
        )
    return out


def _known(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM hqdb_models ORDER BY name")] if _has_store(conn) else []


def _require(conn: apsw.Connection, name: str) -> None:
    """:class:`ModelError` naming the stored models unless ``name`` is one of them."""
    if not _has_store(conn) or conn.execute("SELECT 1 FROM hqdb_models WHERE name = ?", (name,)).fetchone() is None:
        raise ModelError(f"no model named {name!r} in this database (models: {_known(conn) or 'none'})")


def delete(
    conn: apsw.Connection,
    name: str,
    *,
    users: Callable[[apsw.Connection, str], list[str]] | None = None,
    force: bool = False,
) -> list[str]:
    """Delete a stored model; return the hq tables bound to it (``users(conn, name)``).

    A model that tables use is refused (:class:`ModelError` naming them) unless ``force``: the
    tables then keep their rows and codes but cannot encode (insert, search) until a model of
    that name and shape is saved again, or they are dropped."""
    _check_name(name)
    with write_transaction(conn):
        _require(conn, name)
        in_use = users(conn, name) if users is not None else []
        if in_use and not force:
            raise ModelError(
                f"model {name!r} is used by hq table(s) {', '.join(in_use)}: drop them first, or delete with "
                "force=True (hqdb models rm --force), after which they keep their rows but cannot insert or search"
            )
        conn.execute("DELETE FROM hqdb_model_tensors WHERE model = ?", (name,))
        conn.execute("DELETE FROM hqdb_models WHERE name = ?", (name,))
    return in_use


def rename(
    conn: apsw.Connection,
    name: str,
    new_name: str,
    *,
    users: Callable[[apsw.Connection, str], list[str]] | None = None,
) -> None:
    """Store the model ``name`` under ``new_name`` (config, tensors and creation time unchanged).

    Refused when a table is bound to the model (the table's definition names it) or
    ``new_name`` is taken."""
    _check_name(name)
    _check_name(new_name)
    with write_transaction(conn):
        _require(conn, name)
        if new_name == name:
            return
        if conn.execute("SELECT 1 FROM hqdb_models WHERE name = ?", (new_name,)).fetchone() is not None:
            raise ModelError(f"a model named {new_name!r} already exists")
        in_use = users(conn, name) if users is not None else []
        if in_use:
            raise ModelError(
                f"model {name!r} is used by hq table(s) {', '.join(in_use)}: a table's definition names its "
                "model, so a model in use keeps its name"
            )
        # New row first, then the tensors, then the old row: valid even with PRAGMA foreign_keys on.
        conn.execute(
            "INSERT INTO hqdb_models(name, config, created_at) SELECT ?, config, created_at FROM hqdb_models "
            "WHERE name = ?",
            (new_name, name),
        )
        conn.execute("UPDATE hqdb_model_tensors SET model = ? WHERE model = ?", (new_name, name))
        conn.execute("DELETE FROM hqdb_models WHERE name = ?", (name,))


def load_model(conn: apsw.Connection, name: str):
    """A stored model as a ready :class:`hqdb.model.TrainedModel` (numpy inference only)."""
    from .model import TrainedModel

    config, tensors = load(conn, name)
    try:
        return TrainedModel.from_state(config, tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"model {name!r} is corrupt or incomplete: {e}") from None
