"""Collections: the Python face of model-bound hq tables.

A collection is a model-bound ``hq`` table (``CREATE VIRTUAL TABLE photos USING hq(model='m',
title TEXT, ...)``) seen from Python: items go in as dicts or typed objects (features as numpy
arrays or lists, raw text where the model has a featurizer), searches come back as :class:`Hit`
objects. Everything runs through the SQL layer underneath (``hqdb.insert_items`` for batches,
``INSERT``/``UPDATE``/``DELETE`` and ``hq_match`` for the rest), so a table created in SQL is a
collection too, and a collection is an ordinary table to SQL.

A raw hq table (your own vectors or codes, no model) is a :class:`RawCollection`: the same API,
with ``vector=`` / ``code=`` inputs. Either kind may keep a keyword index (FTS5,
:mod:`hqdb.engine.fts`) over TEXT columns, for keyword search and for hybrid search, which fuses
the code ranking with the keyword ranking by reciprocal-rank fusion.

>>> photos = db.create_collection("photos", model="wiki64", columns={"title": str, "year": int})
>>> photos.insert({"title": "castle", "year": 2021, "image": img_features})
>>> photos.search(text="a castle on a hill", k=5, where="year > ?", where_args=[2020])
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence

import apsw
import apsw.ext
import numpy as np

from .bulk import insert_items
from .engine import fts
from .engine.catalog import model_of_tables, qualified, quote_ident, rows_name
from .engine.options import METADATA_TYPES, parse_args
from .errors import CollectionError, HqError, NotFoundError, OptionError
from .progress import progress_bar
from .txn import read_transaction, write_transaction

__all__ = ["Collection", "CollectionError", "Hit", "Hits", "NotFoundError", "RawCollection"]

# Python types a column may be declared with, and the SQL type each becomes.
_SQL_TYPES = {str: "TEXT", int: "INTEGER", bool: "INTEGER", float: "REAL", bytes: "BLOB"}
_PY_TYPES = {"TEXT": str, "INTEGER": int, "REAL": float, "BLOB": bytes}
BATCH = 1024  # items encoded and written per insert_items call
RRF_K0 = 60  # reciprocal-rank fusion: an item at rank r of a list scores 1 / (RRF_K0 + r)
PROGRESS_MIN = 5000  # show a progress bar (progress=None) from this many items on


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
class Hit:
    """One search result: ``rowid``, ``distance`` (AQD, smaller is closer; Hamming distance in
    ``mode='hamming'``), ``hamming`` and the row's columns, as attributes or ``hit["title"]``."""

    __slots__ = ("rowid", "distance", "hamming", "values")

    def __init__(self, rowid: int, distance: float, hamming: int, values: dict):
        self.rowid, self.distance, self.hamming, self.values = rowid, distance, hamming, values

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"hit has no column {name!r} (columns: {', '.join(self.values)})") from None

    def __getitem__(self, name):
        if name in ("rowid", "distance", "hamming"):
            return getattr(self, name)
        return self.values[name]

    def to_dict(self) -> dict:
        return {"rowid": self.rowid, "distance": self.distance, "hamming": self.hamming, **self.values}

    def __eq__(self, other):
        return isinstance(other, Hit) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        cols = "".join(f", {k}={v!r}" for k, v in self.values.items())
        return f"Hit(rowid={self.rowid}, distance={self.distance:.4g}, hamming={self.hamming}{cols})"


def _optional(module: str, what: str):
    """Import an optional dependency, or an ImportError naming the pip extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs {module}, which is not installed: pip install -e '.[pandas]' (the pandas extra)",
            name=module,
        ) from e


class Hits(list):
    """The results of one search, best first (a list of :class:`Hit`). ``columns`` maps the
    collection's column names to their SQL types (so an empty result still has them)."""

    def __init__(self, hits: Iterable = (), columns: Mapping[str, str] | None = None):
        super().__init__(hits)
        self.columns: dict[str, str] = (
            dict(columns) if columns is not None else (dict.fromkeys(self[0].values, "") if self else {})
        )

    @property
    def rowids(self) -> np.ndarray:
        return np.array([h.rowid for h in self], dtype=np.int64)

    @property
    def distances(self) -> np.ndarray:
        return np.array([h.distance for h in self], dtype=np.float64)

    def to_dicts(self) -> list[dict]:
        return [h.to_dict() for h in self]

    def to_numpy(self) -> np.ndarray:
        """A structured array with fields rowid, distance, hamming and one per column (int64 /
        float64 for numeric columns without NULLs, object otherwise)."""
        names = ["rowid", "distance", "hamming"] + (list(self[0].values) if self else [])
        columns = {n: [h[n] for h in self] for n in names}
        dtypes = []
        for n, vals in columns.items():
            dt: type  # a numpy scalar type, or object
            if n == "rowid" or (n == "hamming" and None not in vals):  # None: a hit found by keywords alone
                dt = np.int64
            elif n == "distance":
                dt = np.float64
            elif vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                dt = np.int64
            elif vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                dt = np.float64
            else:
                dt = object
            dtypes.append((n, dt))
        out = np.empty(len(self), dtype=dtypes)
        for n, vals in columns.items():
            out[n] = vals
        return out

    def to_arrow(self):
        """A ``pyarrow.Table`` with columns rowid (int64), distance (float64), hamming (int64) and
        the collection's columns typed by their SQL type (TEXT string, INTEGER int64, REAL
        float64, BLOB binary; NULL is null). Needs pyarrow (the ``pandas`` extra)."""
        pa = _optional("pyarrow", "Hits.to_arrow")
        types = {"TEXT": pa.string(), "INTEGER": pa.int64(), "REAL": pa.float64(), "BLOB": pa.binary()}
        arrays = {
            "rowid": pa.array([h.rowid for h in self], pa.int64()),
            "distance": pa.array([h.distance for h in self], pa.float64()),
            "hamming": pa.array([h.hamming for h in self], pa.int64()),
        }
        for c, sql_type in self.columns.items():
            arrays[c] = pa.array([h.values[c] for h in self], types.get(sql_type))
        return pa.table(arrays)

    def to_pandas(self):
        """A ``pandas.DataFrame``, one row per hit in rank order: rowid, distance, hamming and the
        collection's columns (an INTEGER column with NULLs is pandas' nullable ``Int64``; REAL
        NULLs are NaN). Needs pandas (the ``pandas`` extra)."""
        pd = _optional("pandas", "Hits.to_pandas")
        data = {
            "rowid": pd.Series([h.rowid for h in self], dtype="int64"),
            "distance": pd.Series([h.distance for h in self], dtype="float64"),
            "hamming": pd.Series([h.hamming for h in self], dtype="int64"),
        }
        for c, sql_type in self.columns.items():
            values = [h.values[c] for h in self]
            if sql_type == "INTEGER":
                dtype = "Int64" if None in values else "int64"
            elif sql_type == "REAL":
                dtype = "float64"
            else:
                dtype = None  # text and bytes as pandas infers them
            data[c] = pd.Series(values, dtype=dtype)
        return pd.DataFrame(data)


# ------------------------------------------------------------------------------------------
# Column declarations
# ------------------------------------------------------------------------------------------
def _unwrap_optional(tp):
    """``Optional[X]`` / ``X | None`` → X; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (sys.version_info >= (3, 10) and origin is types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _sql_type(collection: str, name: str, tp) -> str:
    if isinstance(tp, str):
        if tp.upper() in METADATA_TYPES:
            return tp.upper()
        raise CollectionError(
            f"{collection}.{name}: unknown column type {tp!r} "
            f"(use str, int, float, bytes or one of {', '.join(METADATA_TYPES)})"
        )
    tp = _unwrap_optional(tp)
    if tp in _SQL_TYPES:
        return _SQL_TYPES[tp]
    raise CollectionError(
        f"{collection}.{name}: cannot store {getattr(tp, '__name__', tp)!r} in a column (use str, int, float or bytes)"
    )


def _declared_columns(collection: str, columns, modalities: Sequence[str]) -> dict[str, str]:
    """{name: SQL type} from a dict of name → type, or from a typed class (dataclass,
    NamedTuple, TypedDict, any class with annotations); fields named like one of the model's
    modalities are inputs, not columns."""
    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        items = dict(columns)
    elif isinstance(columns, type):
        try:
            items = typing.get_type_hints(columns)
        except Exception as e:  # unresolvable forward references and the like
            raise CollectionError(f"{collection}: cannot read the annotations of {columns.__name__}: {e}") from None
        if not items:
            raise CollectionError(f"{collection}: {columns.__name__} has no annotated fields to make columns of")
        items = {k: v for k, v in items.items() if k not in modalities and k != "rowid" and not k.startswith("_")}
    else:
        raise CollectionError(
            f"{collection}: columns must be a dict of name -> type or a typed class, got {type(columns).__name__}"
        )
    return {name: _sql_type(collection, name, tp) for name, tp in items.items()}


def _as_dict(collection: str, item, index: int) -> dict:
    """An item (dict, dataclass, NamedTuple, pydantic model, plain object) as a dict."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    if isinstance(item, tuple) and hasattr(item, "_asdict"):
        return dict(item._asdict())
    if hasattr(item, "model_dump"):
        return dict(item.model_dump())
    if hasattr(item, "__dict__") and not isinstance(item, type):
        return {k: v for k, v in vars(item).items() if not k.startswith("_")}
    raise CollectionError(f"{collection}: item {index} must be a dict or a typed object, got {type(item).__name__}")


# ------------------------------------------------------------------------------------------
# Collection
# ------------------------------------------------------------------------------------------
class Collection:
    """A model-bound hq table with a Python face; get one from ``db.create_collection`` or
    ``db.collection``. ``len()``, iteration (dicts in rowid order) and ``in`` (rowids) work."""

    def __init__(self, conn, name: str):
        self.db = conn
        self.name = name
        t = self._table()
        self._init_inputs(t)
        self.columns: dict[str, str] = {c.name: c.type for c in t.opts.columns}
        key = t.opts.key_column
        self.key: str | None = key.name if key is not None else None
        self._q = quote_ident(name)

    def _init_inputs(self, t) -> None:
        if not t.opts.model:
            raise CollectionError(
                f"{self.name} is a raw hq table (no model): open it with db.collection({self.name!r})"
            )
        self.model_name: str | None = t.opts.model
        self.modalities: tuple[str, ...] = tuple(c.name for c in t.sets)

    def _table(self):
        try:
            return self.db.hq.table(self.name)
        except HqError:
            raise NotFoundError(f"no collection named {self.name!r}") from None

    @property
    def model(self):
        """The :class:`hqdb.model.TrainedModel` this collection encodes with."""
        return self._table().model()

    def __repr__(self) -> str:
        cols = ", ".join(f"{k} {v}" for k, v in self.columns.items())
        return (
            f"Collection({self.name!r}, model={self.model_name!r}, modalities={list(self.modalities)}, "
            f"columns=[{cols}])"
        )

    # -------------------------------------------------------------- reading
    def __len__(self) -> int:
        (n,) = self.db.execute(f"SELECT count(*) FROM {self._table().rows_table}").fetchone()
        return int(n)

    def __contains__(self, rowid) -> bool:
        return (
            self.db.execute(f"SELECT 1 FROM {self._table().rows_table} WHERE rowid = ?", (rowid,)).fetchone()
            is not None
        )

    def _select(self) -> str:
        return ", ".join(["rowid"] + [quote_ident(c) for c in self.columns])

    def _row(self, row) -> dict:
        return {"rowid": row[0], **dict(zip(self.columns, row[1:]))}

    def __iter__(self) -> Iterator[dict]:
        for row in self.db.execute(f"SELECT {self._select()} FROM {self._q} ORDER BY rowid"):
            yield self._row(row)

    def get(self, rowid: int) -> dict:
        """The row ``rowid`` as a dict (``rowid`` and the columns); :class:`NotFoundError` if absent."""
        row = self.db.execute(f"SELECT {self._select()} FROM {self._q} WHERE rowid = ?", (rowid,)).fetchone()
        if row is None:
            raise NotFoundError(f"{self.name} has no row with rowid {rowid!r}")
        return self._row(row)

    # -------------------------------------------------------------- validation
    def _check_value(self, column: str, value, where: str):
        """A metadata value ready for SQLite, checked against the column's declared type."""
        if value is None:
            return None
        if isinstance(value, np.generic):
            value = value.item()
        sql_type = self.columns[column]
        ok = {
            "TEXT": isinstance(value, str),
            "INTEGER": isinstance(value, int),
            "REAL": isinstance(value, (int, float)) and not isinstance(value, bool),
            "BLOB": isinstance(value, (bytes, bytearray, memoryview)),
        }[sql_type]
        if not ok:
            raise CollectionError(
                f"{self.name}.{column}{where}: expected {_PY_TYPES[sql_type].__name__} "
                f"({sql_type}), got {type(value).__name__} {value!r:.40}"
            )
        if isinstance(value, float) and value != value:
            raise CollectionError(f"{self.name}.{column}{where}: NaN is not a value")
        return bytes(value) if isinstance(value, (bytearray, memoryview)) else value

    def _check_input(self, modality: str, value, where: str, *, defer: bool = False):
        """A modality input: raw text (when the model has a featurizer), an image (when it has an
        image featurizer: featurized now, or left as an :class:`_Image` to batch when ``defer``)
        or a float32 feature vector."""
        model = self.model
        if _is_image_input(model, modality, value):
            image = _Image(value, f"{self.name}.{modality}{where}")
            return image if defer else self._featurize_images(modality, [image])[0]
        if isinstance(value, str):
            if not model.has_featurizer(modality):
                raise CollectionError(
                    f"{self.name}.{modality}{where}: model {self.model_name!r} has no text "
                    f"featurizer for {modality!r}; give {model.input_dim(modality)} float features"
                )
            return value
        d = model.input_dim(modality)
        try:
            x = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            x = None
        if x is None or x.shape not in ((d,), (1, d)):
            got = f"shape {x.shape}" if x is not None else type(value).__name__
            text = " or a str" if model.has_featurizer(modality) else ""
            raise CollectionError(
                f"{self.name}.{modality}{where}: expected {d} float features (shape ({d},)){text}, got {got}"
            )
        if not np.isfinite(x).all():
            raise CollectionError(f"{self.name}.{modality}{where}: features contain NaN or infinity")
        return np.ascontiguousarray(x.reshape(d))

    def _split_item(self, item: dict, where: str) -> tuple[int | None, dict, dict]:
        """(rowid or None, {modality: input}, {column: value}) of one item, all checked."""
        unknown = set(item) - set(self.columns) - set(self.modalities) - {"rowid"}
        if unknown:
            raise CollectionError(
                f"{self.name}{where}: unknown field(s) {sorted(unknown)}; columns: {list(self.columns)}, "
                f"inputs: {list(self.modalities)}"
            )
        rowid = item.get("rowid")
        if rowid is not None:
            if isinstance(rowid, np.integer):
                rowid = int(rowid)
            if isinstance(rowid, bool) or not isinstance(rowid, int):
                raise CollectionError(f"{self.name}.rowid{where}: expected int, got {type(rowid).__name__}")
        inputs = {
            m: self._check_input(m, item[m], where, defer=True) for m in self.modalities if item.get(m) is not None
        }
        meta = {c: self._check_value(c, item[c], where) for c in self.columns if c in item}
        return rowid, inputs, meta

    # -------------------------------------------------------------- writing
    def insert(self, item) -> int:
        """Insert one item (dict or typed object); return its rowid."""
        return int(self.insert_all([item], progress=False)[0])

    def insert_all(self, items: Iterable, *, batch_size: int = BATCH, progress: bool | None = None) -> list[int]:
        """Insert many items in one transaction (all or nothing); return their rowids in order.

        Each item is a dict or typed object with any of the columns, the model's modalities
        (numpy array or list of floats, or ``str`` where the model has a text featurizer) and
        optionally ``rowid``. ``items`` may also be a pandas DataFrame or a pyarrow Table (one
        item per row; a missing value, NaN or null, means the item lacks that field). Inputs are
        encoded ``batch_size`` items at a time through ``hqdb.insert_items``; ``progress`` shows
        a bar (default: from 5000 items on)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CollectionError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        table = self._table_rows(items)
        if table is not None:
            items = table
        rows = [self._split_item(_as_dict(self.name, it, i), f" (item {i})") for i, it in enumerate(items)]
        n = len(rows)
        if n == 0:
            return []
        empty = [i for i, (_, inputs, _) in enumerate(rows) if not inputs]
        if empty:
            raise CollectionError(f"{self.name} (item {empty[0]}): an item needs {self._needs()} to be searchable")
        t = self._table()
        given = [r for r, _, _ in rows if r is not None]
        if len(set(given)) != len(given):
            raise CollectionError(f"{self.name}: the same rowid appears twice among the items")
        show = n >= PROGRESS_MIN if progress is None else bool(progress)
        bar = progress_bar(n, f"insert {self.name}", show)
        try:
            # One transaction, every batch or none; BEGIN IMMEDIATE, since it reads (max rowid)
            # before writing: a deferred one would fail at once if another writer commits first.
            with write_transaction(self.db):
                existing = [r for r in given if r in self]
                if existing:
                    raise CollectionError(f"{self.name}: rowid {existing[0]} already exists (use upsert or update)")
                (top,) = self.db.execute(f"SELECT coalesce(max(rowid), 0) FROM {t.rows_table}").fetchone()
                rowids = []  # as SQLite numbers rows inserted one by one: after the largest so far
                for r, _, _ in rows:
                    top = r if r is not None and r > top else top + (r is None)
                    rowids.append(top if r is None else r)
                if len(set(rowids)) != n:
                    raise CollectionError(f"{self.name}: an item's rowid equals one given to an earlier item")
                for start in range(0, n, batch_size):
                    self._write_batch(rows[start : start + batch_size], rowids[start : start + batch_size])
                    bar.update(min(batch_size, n - start))
        finally:
            bar.close()
        return rowids

    def _table_rows(self, items) -> list[dict] | None:
        """The rows of a pandas DataFrame or a pyarrow Table / RecordBatch as dicts, missing
        values (None, NaN, pandas.NA, NaT, null) left out; None for any other ``items``. A float
        in an INTEGER column that is a whole number (pandas turns an integer column with gaps
        into floats) becomes an int."""
        library = type(items).__module__.split(".")[0]
        if library == "pandas" and hasattr(items, "to_dict") and hasattr(items, "columns"):
            names = list(items.columns)
            bad = [n for n in names if not isinstance(n, str)]
            if bad or len(set(names)) != len(names):
                raise CollectionError(
                    f"{self.name}: a DataFrame's column names must be distinct strings, got {names!r:.120}"
                )
            rows = items.to_dict("records")
        elif library == "pyarrow" and hasattr(items, "to_pylist"):
            rows = items.to_pylist()
        else:
            return None
        out = []
        for row in rows:
            item = {}
            for k, v in row.items():
                if v is None or type(v).__name__ in ("NAType", "NaTType") or (isinstance(v, float) and v != v):
                    continue
                if isinstance(v, np.generic):
                    v = v.item()
                if self.columns.get(k) == "INTEGER" and isinstance(v, float) and v.is_integer():
                    v = int(v)
                item[k] = v
            out.append(item)
        return out

    def _needs(self) -> str:
        return f"at least one of {', '.join(self.modalities)}"

    def _write_batch(self, rows: list, rowids: list[int]) -> None:
        """Insert rows through hqdb.insert_items, one call per shape of input (which modalities,
        text or features), since each call encodes every given modality for all its items."""
        rows = self._resolve_images(rows)
        groups: dict[tuple, list[int]] = {}
        for i, (_, inputs, _) in enumerate(rows):
            shape = tuple((m, isinstance(inputs[m], str)) for m in self.modalities if m in inputs)
            groups.setdefault(shape, []).append(i)
        for shape, idx in groups.items():
            inputs = {}
            for m, is_text in shape:
                values = [rows[i][1][m] for i in idx]
                inputs[m] = values if is_text else np.stack(values)
            meta = {c: [rows[i][2].get(c) for i in idx] for c in self.columns}
            try:
                insert_items(
                    self.db,
                    self.name,
                    rowids=np.array([rowids[i] for i in idx], dtype=np.int64),
                    metadata=meta,
                    **inputs,
                )
            except apsw.ConstraintError as e:
                raise CollectionError(f"{self.name}: {e}") from None

    def _resolve_images(self, rows: list) -> list:
        """Rows whose deferred image inputs (:class:`_Image`) are replaced by the backbone's
        features, each modality's images featurized in one batch."""
        out = [(r, dict(inputs), meta) for r, inputs, meta in rows]
        for m in self.modalities:
            idx = [i for i, (_, inputs, _) in enumerate(out) if isinstance(inputs.get(m), _Image)]
            if idx:
                feats = self._featurize_images(m, [out[i][1][m] for i in idx])
                for i, f in zip(idx, feats):
                    out[i][1][m] = f
        return out

    def _featurize_images(self, modality: str, images: list) -> np.ndarray:
        """Deferred images → features (N, input_dim); an unreadable one is a CollectionError
        naming its item."""
        from .model.images import BATCH as IMAGE_BATCH
        from .model.images import open_image

        model = self.model
        out = np.zeros((len(images), model.input_dim(modality)), dtype=np.float32)
        try:
            for start in range(0, len(images), IMAGE_BATCH):  # a few decoded images in memory at a time
                chunk = images[start : start + IMAGE_BATCH]
                out[start : start + len(chunk)] = model.featurize(
                    modality, [open_image(im.value, im.where) for im in chunk]
                )
        except ValueError as e:
            raise CollectionError(str(e)) from None
        return out

    def _find(self, item: dict, key: str | None) -> int | None:
        """The rowid an upsert of ``item`` matches: by the key column, else by ``rowid``."""
        key = key or self.key
        if key is not None:
            if key not in self.columns:
                raise CollectionError(
                    f"{self.name}: upsert key {key!r} is not a column (columns: {list(self.columns)})"
                )
            if item.get(key) is None:
                raise CollectionError(f"{self.name}: upsert needs a value for the key column {key!r}")
            row = self.db.execute(
                f"SELECT rowid FROM {self._q} WHERE {quote_ident(key)} = ?", (self._check_value(key, item[key], ""),)
            ).fetchone()
            return None if row is None else row[0]
        if item.get("rowid") is None:
            raise CollectionError(
                f"{self.name}: upsert needs a key column (create_collection(..., key=...)), "
                "a key= argument, or a rowid in the item"
            )
        return item["rowid"] if item["rowid"] in self else None

    def upsert(self, item, *, key: str | None = None) -> int:
        """Update the row matching ``item`` (by the collection's key column, ``key``, or the item's
        ``rowid``) with the fields it gives (inputs that are None keep their codes), or insert
        it; return the rowid."""
        return self.upsert_all([item], key=key)[0]

    def upsert_all(self, items: Iterable, *, key: str | None = None) -> list[int]:
        out = []
        with write_transaction(self.db):
            for i, it in enumerate(items):
                item = _as_dict(self.name, it, i)
                rowid = self._find(item, key)
                if rowid is None:
                    out.append(self.insert(item))
                else:
                    # An input left None (a typed object's default) is "not given", not "remove".
                    self.update(
                        rowid,
                        {k: v for k, v in item.items() if k != "rowid" and not (k in self.modalities and v is None)},
                    )
                    out.append(rowid)
        return out

    def update(self, rowid: int, values=None, **fields) -> None:
        """Change some fields of row ``rowid``: columns, and inputs (re-encoded; ``None`` in a dict
        or keyword removes the item's codes for that modality, in a typed object it means "not
        given"). ``values`` is a dict or typed object; keyword arguments add to it."""
        given = _as_dict(self.name, values, 0) if values is not None else {}
        if values is not None and not isinstance(values, Mapping):  # a typed object's None input: not given
            given = {k: v for k, v in given.items() if not (k in self.modalities and v is None)}
        item = {**given, **fields}
        item.pop("rowid", None)
        if not item:
            return
        unknown = set(item) - set(self.columns) - set(self.modalities)
        if unknown:
            raise CollectionError(
                f"{self.name}: unknown field(s) {sorted(unknown)}; columns: {list(self.columns)}, "
                f"inputs: {list(self.modalities)}"
            )
        sets, params = [], []
        for name, value in item.items():
            if name in self.columns:
                sets.append(f"{quote_ident(name)} = ?")
                params.append(self._check_value(name, value, f" (row {rowid})"))
            elif value is None:  # drop this modality's codes
                sets += [f"{quote_ident(name + '_code')} = NULL", f"{quote_ident(name + '_qcode')} = NULL"]
            else:
                x = self._check_input(name, value, f" (row {rowid})")
                sets.append(f"{quote_ident(name)} = ?")
                params.append(x if isinstance(x, str) else x.astype("<f4").tobytes())
        with write_transaction(self.db):
            if rowid not in self:
                raise NotFoundError(f"{self.name} has no row with rowid {rowid!r}")
            try:
                self.db.execute(f"UPDATE {self._q} SET {', '.join(sets)} WHERE rowid = ?", (*params, rowid))
            except apsw.ConstraintError as e:
                raise CollectionError(f"{self.name}: {e}") from None

    def delete(self, rowids) -> int:
        """Delete one rowid or a list of them; return how many rows existed and were deleted."""
        ids = [rowids] if isinstance(rowids, (int, np.integer)) else list(rowids)
        n = 0
        with write_transaction(self.db):
            for r in ids:
                if r in self:
                    self.db.execute(f"DELETE FROM {self._q} WHERE rowid = ?", (int(r),))
                    n += 1
        return n

    def delete_where(self, where: str, where_args: Sequence = ()) -> int:
        """Delete the rows matching an SQL condition on the columns; return how many."""
        select = self._matching(where, "delete_where")
        args = self._where_args(where, where_args, select, "delete_where")
        with write_transaction(self.db):
            ids = [r[0] for r in self.db.execute(select, args)]
            return self.delete(ids)

    def _matching(self, where, what: str) -> str:
        """``SELECT rowid FROM <rows> WHERE (<where>)``: the rows a condition on the columns
        selects, read from the table's rows (metadata) table. ``where`` must be one SQL
        expression: a second statement (``...; DROP TABLE x``) or anything that writes is refused
        before it runs."""
        if not isinstance(where, str) or not where.strip():
            raise CollectionError(f"{self.name}.{what}: where must be an SQL condition on the columns, got {where!r}")
        sql = f"SELECT rowid FROM {qualified('main', rows_name(self.name))} WHERE ({where})"
        try:
            info = apsw.ext.query_info(self.db, sql)
        except apsw.Error as e:
            raise CollectionError(
                f"{self.name}.{what}: where {where!r} is not a condition on the columns: {e}"
            ) from None
        if (info.query_remaining or "").strip() or not info.is_readonly:
            raise CollectionError(
                f"{self.name}.{what}: where must be one condition (an SQL expression, no ';' or second statement), "
                f"got {where!r}"
            )
        return sql

    def _where_args(self, where: str, where_args, sql: str, what: str) -> tuple:
        if isinstance(where_args, (Mapping, str, bytes)):
            raise CollectionError(f"{self.name}.{what}: where_args must be a list of values for the '?' in where")
        args = tuple(where_args)
        wanted = apsw.ext.query_info(self.db, sql).bindings_count
        if wanted != len(args):
            raise CollectionError(
                f"{self.name}.{what}: where {where!r} has {wanted} '?' but {len(args)} where_args were given"
            )
        return args

    # -------------------------------------------------------------- keyword index
    @property
    def keyword_columns(self) -> list[str] | None:
        """The TEXT columns the collection's keyword index (FTS5) covers, or None without one."""
        return fts.columns(self.db, "main", self.name)

    def enable_fts(self, columns, *, tokenize: str = "unicode61") -> None:
        """Build a keyword index (SQLite FTS5) over one TEXT column or a list of them, for
        ``search(keywords=...)`` and ``search(..., hybrid=True)``. It indexes the rows already
        there, and triggers keep it in step with every later write (collection methods, SQL,
        ``hqdb.insert_*``) inside the writer's transaction. ``tokenize``: an FTS5 tokenizer
        ('unicode61', 'porter unicode61', 'trigram', ...)."""
        cols = [columns] if isinstance(columns, str) else list(columns) if columns is not None else []
        if not cols:
            raise CollectionError(f"{self.name}.enable_fts: give a TEXT column or a list of them")
        names = []
        for c in cols:
            match = next((n for n in self.columns if isinstance(c, str) and n.lower() == c.lower()), None)
            if match is None:
                raise CollectionError(f"{self.name}.enable_fts: no column {c!r} (columns: {list(self.columns)})")
            if self.columns[match] != "TEXT":
                raise CollectionError(
                    f"{self.name}.enable_fts: column {match!r} is {self.columns[match]}; a keyword index needs TEXT"
                )
            if match in names:
                raise CollectionError(f"{self.name}.enable_fts: column {match!r} given twice")
            names.append(match)
        with write_transaction(self.db):
            have = self.keyword_columns
            if have is not None:
                raise CollectionError(
                    f"{self.name} already has a keyword index over {have}: disable_fts() first to change it"
                )
            try:
                fts.create(self.db, "main", self.name, names, tokenize)
            except (HqError, apsw.SQLError) as e:
                raise CollectionError(f"{self.name}.enable_fts: {e}") from None

    def disable_fts(self) -> bool:
        """Drop the keyword index; False if there was none."""
        with write_transaction(self.db):
            return fts.drop(self.db, "main", self.name)

    # -------------------------------------------------------------- search
    def _query(self, image, text, target):
        given = {m: v for m, v in (("image", image), ("text", text)) if v is not None}
        if len(given) != 1:
            raise CollectionError(f"{self.name}.search: give exactly one of image=... or text=...")
        ((source, value),) = given.items()
        if source not in self.modalities:
            raise CollectionError(
                f"{self.name}.search: model {self.model_name!r} has no {source!r} modality "
                f"(it has: {', '.join(self.modalities)})"
            )
        if target is None:
            others = [m for m in self.modalities if m != source]
            target = others[0] if others else source
        if target not in self.modalities:
            raise CollectionError(f"{self.name}.search: target must be one of {list(self.modalities)}, got {target!r}")
        return source, value, target

    def query_value(self, source: str, value, where: str = ""):
        """A query of modality ``source`` as ``hq_query(source, ?)`` takes it: text, or float32
        feature bytes (validated; ``where`` labels the error)."""
        x = self._check_input(source, value, where)
        return x if isinstance(x, str) else x.astype("<f4").tobytes()

    def _match_sql(self, target: str) -> str:
        return f"hq_match({self._q}.{quote_ident(target)}, hq_query(?, ?))"

    def _query_params(self, source: str, value) -> tuple:
        return (source, value)

    def _kernel_query(self, source: str, value):
        from .engine.query import encode_query

        return encode_query(source, value)

    def search_sql(self, target: str, k, candidates=None, mode=None, where=None) -> tuple[str, list]:
        """(SQL, extra parameters) of the statement :meth:`search` runs: its parameters are
        ``(query modality, query value, *extra, *where_args)`` (a raw collection's: ``(query
        value, *extra, *where_args)``); each row is (rowid, distance, hamming, columns...)."""
        sql = (
            f"SELECT rowid, distance, hamming{''.join(', ' + quote_ident(c) for c in self.columns)} "
            f"FROM {self._q} WHERE {self._match_sql(target)} AND k = ?"
        )
        extra = [k]
        if candidates is not None:
            sql += " AND candidates = ?"
            extra.append(candidates)
        if mode is not None:
            sql += " AND mode = ?"
            extra.append(mode)
        if where is not None:
            # Any condition, exactly: the table ranks only the rows it selects. The NULL keeps the
            # set non-empty (apsw 3.54 fails an empty IN set on a virtual table with SQLError
            # '<NULL>'); rowid = NULL never holds, so it selects nothing.
            sql += f" AND rowid IN ({self._matching(where, 'search')} UNION ALL SELECT NULL)"
        return sql, extra

    def _hits(self, rows) -> Hits:
        cols = list(self.columns)
        return Hits((Hit(r[0], r[1], r[2], dict(zip(cols, r[3:]))) for r in rows), self.columns)

    def search(
        self,
        image=None,
        text=None,
        *,
        target: str | None = None,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
        keywords: str | None = None,
        hybrid: bool = False,
        k0: float = RRF_K0,
        depth: int | None = None,
    ) -> Hits:
        """The ``k`` items nearest to a query, best first.

        Give ``image=`` (features) or ``text=`` (a string, or features); ``target`` is the
        modality searched (default: the other one, so text finds images). ``candidates`` is
        the Hamming shortlist re-ranked by AQD (default: the table's, ``max(1000, 10·k)``);
        ``where`` an SQL condition on the columns with ``?`` for ``where_args``, applied during
        the search; ``mode`` 'two_stage', 'hamming' or 'aqd' (default: the model's own search,
        :meth:`hqdb.engine.table.Table.default_mode`).

        Keywords (with a keyword index, :meth:`enable_fts`): ``keywords=`` alone ranks by FTS5's
        bm25 over the words of the text (``distance`` is the bm25 score, smaller is better;
        ``hamming`` None). ``hybrid=True`` fuses the code search with the keyword search of
        ``keywords`` (default: ``text`` when it is a string) by reciprocal-rank fusion: each
        list's top ``depth`` (default ``max(100, 10·k)``) give an item ``1 / (k0 + rank)``, summed;
        ties go to the smaller rowid; ``distance`` is minus that score and ``hamming`` the code
        search's (None for an item only the keywords found). ``where`` filters both lists."""
        if keywords is not None or hybrid:
            if image is None and text is None:
                return _fused(self, None, [keywords], k, candidates, where, where_args, mode, k0, depth, hybrid)[0]
            source, value, target = self._query(image, text, target)
            return _fused(
                self,
                (source, [self.query_value(source, value, "")], target),
                [keywords if keywords is not None or not isinstance(value, str) else value],
                k,
                candidates,
                where,
                where_args,
                mode,
                k0,
                depth,
                hybrid,
            )[0]
        source, value, target = self._query(image, text, target)
        return _search_batch(
            self, source, [self.query_value(source, value, "")], target, k, candidates, where, where_args, mode
        )[0]

    def search_many(
        self,
        image=None,
        text=None,
        *,
        target: str | None = None,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
        keywords: Sequence[str] | None = None,
        hybrid: bool = False,
        k0: float = RRF_K0,
        depth: int | None = None,
    ) -> list[Hits]:
        """:meth:`search` for a batch of queries (``image`` an (N, d) array or list of vectors;
        ``text`` a list of strings or an (N, d) array; ``keywords`` a list of strings, one per
        query); one :class:`Hits` per query, in order."""
        if (keywords is not None or hybrid) and image is None and text is None:
            kws = _keyword_list(self, keywords, None)
            return _fused(self, None, kws, k, candidates, where, where_args, mode, k0, depth, hybrid)
        source, values, target = self._query(image, text, target)
        if isinstance(values, str):
            raise CollectionError(f"{self.name}.search_many: give a list of queries, not one string")
        encoded = [self.query_value(source, v, f" (query {i})") for i, v in enumerate(values)]
        if keywords is not None or hybrid:
            kws = _keyword_list(self, keywords, values if keywords is None else None, len(encoded))
            return _fused(
                self, (source, encoded, target), kws, k, candidates, where, where_args, mode, k0, depth, hybrid
            )
        return _search_batch(self, source, encoded, target, k, candidates, where, where_args, mode)


class RawCollection(Collection):
    """A raw hq table (your own codes or vectors, no model) with the collections API: items carry
    ``vector=`` (float, ``dim`` values: codes computed from it, as :func:`hqdb.insert_vectors`
    does) or ``code=`` (``dim/8`` packed bytes, :func:`hqdb.kernels.pack_bits`) with ``qcode=``
    (``books`` indices) when the table has books; searches take ``vector=`` or ``code=``
    (Hamming only). A table with books needs codebooks before vectors go in: :meth:`fit`."""

    INPUTS = ("code", "qcode", "vector")

    def _init_inputs(self, t) -> None:
        self.model_name = None
        self.modalities = ()
        o = t.opts
        self.dim: int = o.dim
        self.books: int = o.books
        self.codewords: int = o.codewords
        self.rerank: str | None = o.rerank

    @property
    def model(self):
        """None: a raw collection has no model."""
        return None

    def __repr__(self) -> str:
        cols = ", ".join(f"{k} {v}" for k, v in self.columns.items())
        rr = f", rerank={self.rerank!r}" if self.rerank else ""
        return f"RawCollection({self.name!r}, dim={self.dim}, books={self.books}{rr}, columns=[{cols}])"

    def fit(self, sample, *, quantizer: str = "auto", iters: int = 8, seed: int = 0) -> np.ndarray:
        """Fit the codebooks to ``sample`` (vectors like the ones you will insert, (N, dim)) with
        :func:`hqdb.fit_table` (``quantizer`` as there); return them."""
        from .bulk import fit_table

        try:
            return fit_table(self.db, self.name, sample, quantizer=quantizer, iters=iters, seed=seed)
        except HqError as e:
            raise CollectionError(f"{self.name}.fit: {e}") from None

    def _needs(self) -> str:
        return "vector=..." if self.rerank else "vector=... or code=..."

    # -------------------------------------------------------------- validation
    def _vector(self, value, where: str) -> np.ndarray:
        try:
            x = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            x = None
        if x is None or x.shape not in ((self.dim,), (1, self.dim)) or isinstance(value, (str, bytes)):
            got = f"shape {x.shape}" if x is not None and not isinstance(value, (str, bytes)) else type(value).__name__
            raise CollectionError(
                f"{self.name}.vector{where}: expected {self.dim} floats (shape ({self.dim},)), got {got}"
            )
        if not np.isfinite(x).all():
            raise CollectionError(f"{self.name}.vector{where}: contains NaN or infinity")
        return np.ascontiguousarray(x.reshape(self.dim))

    def _code(self, value, where: str) -> np.ndarray:
        nb = self.dim // 8
        if isinstance(value, (bytes, bytearray, memoryview)):
            x = np.frombuffer(bytes(value), dtype=np.uint8)
            got = f"{len(x)} bytes"
        else:
            x = np.asarray(value)
            got = f"{x.dtype} shape {x.shape}"
        if x.dtype != np.uint8 or x.shape != (nb,):
            raise CollectionError(
                f"{self.name}.code{where}: expected {nb} packed bytes (dim={self.dim} bits, "
                f"hqdb.kernels.pack_bits; bytes or uint8 shape ({nb},)), got {got}"
            )
        return np.ascontiguousarray(x)

    def _qcode(self, value, where: str) -> np.ndarray | None:
        if self.books == 0:
            if value is not None:
                raise CollectionError(f"{self.name}.qcode{where}: the collection has books=0: give no qcode")
            return None
        if value is None:
            raise CollectionError(
                f"{self.name}.qcode{where}: the collection has books={self.books}: give qcode "
                f"({self.books} indices in [0, {self.codewords})) with code, or give vector instead"
            )
        x = np.asarray(value)
        if x.shape != (self.books,) or x.dtype.kind not in "iu":
            raise CollectionError(
                f"{self.name}.qcode{where}: expected {self.books} integers in [0, {self.codewords}), "
                f"got {x.dtype} shape {x.shape}"
            )
        if int(x.min()) < 0 or int(x.max()) >= self.codewords:
            raise CollectionError(f"{self.name}.qcode{where}: indices must lie in [0, {self.codewords})")
        return x.astype(np.int64)

    def _split_item(self, item: dict, where: str) -> tuple[int | None, dict, dict]:
        unknown = set(item) - set(self.columns) - set(self.INPUTS) - {"rowid"}
        if unknown:
            raise CollectionError(
                f"{self.name}{where}: unknown field(s) {sorted(unknown)}; columns: {list(self.columns)}, "
                f"inputs: vector, code, qcode"
            )
        rowid, _, meta = super()._split_item({k: v for k, v in item.items() if k not in self.INPUTS}, where)
        inputs = self._inputs(item, where)
        return rowid, inputs, meta

    def _inputs(self, item: Mapping, where: str) -> dict:
        """{"vector": array} or {"code": array, "qcode": array or None}, or {} when neither."""
        code, qcode, vec = (item.get(n) for n in self.INPUTS)
        if vec is not None:
            if code is not None or qcode is not None:
                raise CollectionError(
                    f"{self.name}{where}: give vector or code/qcode, not both (codes are computed from the vector)"
                )
            return {"vector": self._vector(vec, where)}
        if code is None:
            if qcode is not None:
                raise CollectionError(f"{self.name}.qcode{where}: given without code")
            return {}
        if self.rerank:
            raise CollectionError(
                f"{self.name}{where}: the collection keeps vectors for its re-rank (rerank={self.rerank!r}): "
                "give vector=..., not code="
            )
        return {"code": self._code(code, where), "qcode": self._qcode(qcode, where)}

    # -------------------------------------------------------------- writing
    def _write_batch(self, rows: list, rowids: list[int]) -> None:
        from .bulk import insert_codes, insert_vectors

        for kind in ("vector", "code"):
            idx = [i for i, (_, inputs, _) in enumerate(rows) if kind in inputs]
            if not idx:
                continue
            meta = {c: [rows[i][2].get(c) for i in idx] for c in self.columns}
            ids = np.array([rowids[i] for i in idx], dtype=np.int64)
            try:
                if kind == "vector":
                    insert_vectors(
                        self.db, self.name, np.stack([rows[i][1]["vector"] for i in idx]), rowids=ids, metadata=meta
                    )
                else:
                    codes = np.stack([rows[i][1]["code"] for i in idx])
                    q = None if self.books == 0 else np.stack([rows[i][1]["qcode"] for i in idx])
                    insert_codes(self.db, self.name, codes, q, rowids=ids, metadata=meta)
            except apsw.ConstraintError as e:
                raise CollectionError(f"{self.name}: {e}") from None
            except HqError as e:
                raise CollectionError(f"{self.name}: {e}") from None

    def update(self, rowid: int, values=None, **fields) -> None:
        """Change some fields of row ``rowid``: columns, and ``vector=`` (codes recomputed) or
        ``code=``/``qcode=``. A raw row always has codes: None for an input is refused."""
        item = {**(_as_dict(self.name, values, 0) if values is not None else {}), **fields}
        item.pop("rowid", None)
        if not item:
            return
        unknown = set(item) - set(self.columns) - set(self.INPUTS)
        if unknown:
            raise CollectionError(
                f"{self.name}: unknown field(s) {sorted(unknown)}; columns: {list(self.columns)}, "
                "inputs: vector, code, qcode"
            )
        where = f" (row {rowid})"
        given = {n: item[n] for n in self.INPUTS if n in item}
        if any(v is None for v in given.values()):
            raise CollectionError(f"{self.name}{where}: a raw row's codes cannot be removed (delete the row instead)")
        sets, params = [], []
        for name in self.columns:
            if name in item:
                sets.append(f"{quote_ident(name)} = ?")
                params.append(self._check_value(name, item[name], where))
        inputs = self._inputs(given, where) if given else {}
        if "code" in inputs:
            sets += ['"code" = ?', '"qcode" = ?']
            q = inputs["qcode"]
            params += [
                inputs["code"].tobytes(),
                None if q is None else q.astype(self._table().opts.qcode_dtype).tobytes(),
            ]
        with write_transaction(self.db):
            if rowid not in self:
                raise NotFoundError(f"{self.name} has no row with rowid {rowid!r}")
            if "vector" in inputs:
                x = inputs["vector"]
                t = self._table()
                from .kernels import pack_bits

                code = pack_bits(x[None])
                q = None
                if self.books:
                    cb = t.codebooks()
                    if cb is None:
                        raise CollectionError(
                            f"{self.name}: no codebooks yet to encode vectors: fit them with {self.name}.fit(sample)"
                        )
                    from . import quantize

                    # encode_rows: 'bits_pq' codebooks start with the bit code's own books
                    q = quantize.encode_rows(x[None], cb, t.opts.books, code)[0].astype(t.opts.qcode_dtype).tobytes()
                sets += ['"code" = ?', '"qcode" = ?']
                params += [code[0].tobytes(), q]
                if self.rerank:
                    sets.append('"vector" = ?')
                    params.append(x.astype("<f4").tobytes())
            try:
                self.db.execute(f"UPDATE {self._q} SET {', '.join(sets)} WHERE rowid = ?", (*params, rowid))
            except apsw.ConstraintError as e:
                raise CollectionError(f"{self.name}: {e}") from None
            except HqError as e:
                raise CollectionError(f"{self.name}: {e}") from None

    # -------------------------------------------------------------- search
    def _raw_query(self, vector, code, mode, what: str):
        if (vector is None) == (code is None):
            raise CollectionError(f"{self.name}.{what}: give exactly one of vector=... or code=...")
        if code is not None and mode not in (None, "hamming"):
            raise CollectionError(
                f"{self.name}.{what}: a code query can only be searched by Hamming distance (mode='hamming'), "
                f"not {mode!r}; give vector=... for {mode}"
            )
        return ("code", code, "hamming") if code is not None else ("vector", vector, mode)

    def query_value(self, source: str, value, where: str = ""):
        """A raw query as ``hq_match(t.code, ?)`` takes it: float32 bytes of a vector, or the
        packed bytes of a code."""
        if source == "code":
            return self._code(value, where).tobytes()
        return self._vector(value, where).astype("<f4").tobytes()

    def _match_sql(self, target: str) -> str:
        return f'hq_match({self._q}."code", ?)'

    def _query_params(self, source: str, value) -> tuple:
        return (value,)

    def _kernel_query(self, source: str, value):
        return value

    def search(  # type: ignore[override]
        self,
        vector=None,
        code=None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
        keywords: str | None = None,
        hybrid: bool = False,
        k0: float = RRF_K0,
        depth: int | None = None,
    ) -> Hits:
        """The ``k`` rows nearest to ``vector=`` (``dim`` floats: two-stage search, re-ranked
        exactly on a ``rerank`` collection) or ``code=`` (packed bits: Hamming), best first;
        ``candidates``, ``where``/``where_args``, ``mode``, ``keywords``, ``hybrid``, ``k0`` and
        ``depth`` as in :meth:`Collection.search`."""
        if (keywords is not None or hybrid) and vector is None and code is None:
            return _fused(self, None, [keywords], k, candidates, where, where_args, mode, k0, depth, hybrid)[0]
        source, value, mode = self._raw_query(vector, code, mode, "search")
        q = [self.query_value(source, value)]
        if keywords is not None or hybrid:
            return _fused(
                self, (source, q, "code"), [keywords], k, candidates, where, where_args, mode, k0, depth, hybrid
            )[0]
        return _search_batch(self, source, q, "code", k, candidates, where, where_args, mode)[0]

    def search_many(  # type: ignore[override]
        self,
        vector=None,
        code=None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
        where_args: Sequence = (),
        mode: str | None = None,
        keywords: Sequence[str] | None = None,
        hybrid: bool = False,
        k0: float = RRF_K0,
        depth: int | None = None,
    ) -> list[Hits]:
        """:meth:`search` for a batch: ``vector`` an (N, dim) array or ``code`` an (N, dim/8)
        uint8 array (or lists of them); one :class:`Hits` per query, in order."""
        if (keywords is not None or hybrid) and vector is None and code is None:
            return _fused(
                self,
                None,
                _keyword_list(self, keywords, None),
                k,
                candidates,
                where,
                where_args,
                mode,
                k0,
                depth,
                hybrid,
            )
        source, values, mode = self._raw_query(vector, code, mode, "search_many")
        if isinstance(values, (str, bytes)):
            raise CollectionError(f"{self.name}.search_many: give a list (or 2-D array) of queries")
        q = [self.query_value(source, v, f" (query {i})") for i, v in enumerate(values)]
        if keywords is not None or hybrid:
            kws = _keyword_list(self, keywords, None, len(q))
            return _fused(self, (source, q, "code"), kws, k, candidates, where, where_args, mode, k0, depth, hybrid)
        return _search_batch(self, source, q, "code", k, candidates, where, where_args, mode)


def _keyword_list(coll: Collection, keywords, texts, n: int | None = None) -> list:
    """One keyword text per query: ``keywords`` (a list), else the text queries themselves."""
    if keywords is None:
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise CollectionError(
                f"{coll.name}.search_many: hybrid=True needs keywords=[...] (one string per query) "
                "unless the queries are texts"
            )
        return list(texts)
    if isinstance(keywords, str):
        raise CollectionError(f"{coll.name}.search_many: keywords must be a list of strings, one per query")
    kws = list(keywords)
    if n is not None and len(kws) != n:
        raise CollectionError(f"{coll.name}.search_many: {len(kws)} keywords for {n} queries")
    return kws


def _keyword_ranking(coll: Collection, text, depth: int, where, args: tuple, what: str) -> list[tuple[int, float]]:
    """[(rowid, bm25)] of the rows whose indexed columns hold any word of ``text``, best first
    (ties by rowid), at most ``depth``, among the rows ``where`` selects."""
    if not isinstance(text, str):
        raise CollectionError(f"{coll.name}.{what}: keywords must be a str, got {type(text).__name__}")
    match = fts.match_query(text)
    if match is None:  # no word: nothing to look up
        return []
    name = quote_ident(fts.fts_name(coll.name))
    sql = f"SELECT rowid, bm25({name}) FROM {qualified('main', fts.fts_name(coll.name))} WHERE {name} MATCH ?"
    if where is not None:
        sql += f" AND rowid IN ({coll._matching(where, what)})"
    sql += f" ORDER BY bm25({name}), rowid LIMIT ?"
    try:
        return [(int(r), float(s)) for r, s in coll.db.execute(sql, (match, *args, depth))]
    except apsw.SQLError as e:
        raise CollectionError(f"{coll.name}.{what}: {e}") from None


def _fused(
    coll: Collection, code_query, keywords: list, k, candidates, where, where_args, mode, k0, depth, hybrid: bool
) -> list[Hits]:
    """Keyword search (``hybrid`` False) or reciprocal-rank fusion of the code search of
    ``code_query`` = (source, encoded values, target) with the keyword search of ``keywords``
    (one text per query); one :class:`Hits` per query."""
    from .engine.query import MAX_K, int_arg

    what = "search"
    if coll.keyword_columns is None:
        raise CollectionError(
            f"{coll.name}.{what}: keywords need a keyword index: {coll.name}.enable_fts('<text column>') "
            "or create_collection(..., fts='<text column>')"
        )
    if hybrid and code_query is None:
        raise CollectionError(f"{coll.name}.{what}: hybrid=True fuses a code search with keywords: give a query too")
    if code_query is None and (candidates is not None or mode is not None):
        raise CollectionError(
            f"{coll.name}.{what}: candidates and mode apply to a code search; a keyword search has none"
        )
    if not hybrid and code_query is not None:
        raise CollectionError(
            f"{coll.name}.{what}: keywords with a query: pass hybrid=True to fuse them (or drop the query "
            "for a keyword-only search)"
        )
    try:
        k = int_arg("k", k, 1, MAX_K)
        depth = int_arg("depth", min(MAX_K, max(100, 10 * k)) if depth is None else depth, k, MAX_K)
    except HqError as e:
        raise CollectionError(f"{coll.name}.{what}: {e}") from None
    if isinstance(k0, bool) or not isinstance(k0, (int, float)) or not (0 <= k0 < float("inf")):
        raise CollectionError(f"{coll.name}.{what}: k0 must be a finite number >= 0, got {k0!r}")
    if where is None:
        if where_args:
            raise CollectionError(f"{coll.name}.{what}: where_args given without a where condition")
        args: tuple = ()
    else:
        args = coll._where_args(where, where_args, coll._matching(where, what), what)
    with read_transaction(coll.db):  # both lists, and the hits' columns, from one snapshot
        code_lists: list[Hits] = []
        if code_query is not None:
            source, values, target = code_query
            code_lists = _search_batch(coll, source, values, target, depth, candidates, where, where_args, mode)
        out = []
        for i, text in enumerate(keywords):
            if text is None:
                if hybrid:
                    raise CollectionError(
                        f"{coll.name}.{what}: hybrid=True needs keywords=... (the text query is not a string)"
                    )
                raise CollectionError(f"{coll.name}.{what}: give keywords=... or a query")
            ranked = _keyword_ranking(coll, text, depth, where, args, what)
            if not hybrid:
                meta = _hit_columns(coll, [r for r, _ in ranked[:k]])
                out.append(Hits(Hit(r, s, None, dict(meta[r])) for r, s in ranked[:k] if r in meta))  # type: ignore[arg-type]
                continue
            codes = code_lists[i]
            score: dict[int, float] = {}
            for rank, h in enumerate(codes, 1):
                score[h.rowid] = 1.0 / (k0 + rank)
            for rank, (r, _) in enumerate(ranked, 1):
                score[r] = score.get(r, 0.0) + 1.0 / (k0 + rank)
            best = sorted(score, key=lambda r: (-score[r], r))[:k]
            by_id = {h.rowid: h for h in codes}
            meta = _hit_columns(coll, [r for r in best if r not in by_id])
            hits = Hits()
            for r in best:
                h = by_id.get(r)
                if h is not None:
                    hits.append(Hit(r, -score[r], h.hamming, h.values))
                elif r in meta:
                    hits.append(Hit(r, -score[r], None, dict(meta[r])))  # type: ignore[arg-type]
            out.append(hits)
    return out


def _search_batch(
    coll: Collection, source: str, values: list, target: str, k, candidates, where, where_args, mode
) -> list[Hits]:
    """Every search of a collection goes through here: ``values`` are checked queries of
    modality ``source`` (text, or float32 bytes); one :class:`Hits` per query.

    One query, or a ``where`` condition, runs as ``hq_match`` statements (SQLite hands the
    condition to the table, which applies it during the search). Several queries without a
    condition run as one batched kernel call (:meth:`hqdb.engine.table.Table.search_many`), whose results are
    exactly the statements' (same rows, order, distances and ties)."""
    if where is None:
        if where_args:
            raise CollectionError(f"{coll.name}.search: where_args given without a where condition")
        if len(values) > 1:
            return _search_kernel_batch(coll, source, values, target, k, candidates, mode)
        args: tuple = ()
    else:
        args = coll._where_args(where, where_args, coll._matching(where, "search"), "search")
    try:  # before any value is bound: SQLite cannot even take k = 2**63
        coll.db.hq.table(coll.name).params(k, candidates, mode)
    except HqError as e:
        raise CollectionError(f"{coll.name}.search: {e}") from None
    sql, extra = coll.search_sql(target, k, candidates, mode, where)
    out = []
    try:
        with read_transaction(coll.db) if len(values) > 1 else contextlib.nullcontext():  # one snapshot per batch
            for v in values:
                out.append(coll._hits(coll.db.execute(sql, (*coll._query_params(source, v), *extra, *args))))
    except apsw.SQLError as e:
        raise CollectionError(f"{coll.name}.search: {e}") from None
    except apsw.BindingsError as e:
        raise CollectionError(f"{coll.name}.search: where_args do not match the '?' in where: {e}") from None
    return out


def _search_kernel_batch(coll: Collection, source: str, values: list, target: str, k, candidates, mode) -> list[Hits]:
    try:
        table = coll.db.hq.table(coll.name)
        names = [c.name for c in table.sets]
        if target not in names:
            raise CollectionError(f"{coll.name}.search: no modality {target!r} (it has: {', '.join(names)})")
        params = table.params(k, candidates, mode)
        queries = [coll._kernel_query(source, v) for v in values]
        # The kernel search and the read of the hits' columns see one snapshot: a row another
        # connection deletes meanwhile is still there for both.
        with read_transaction(coll.db):
            rowids, dist, ham = table.search_many(
                names.index(target), queries, params, threads=coll.db.hq.threads, device=coll.db.hq.device
            )
            meta = _hit_columns(coll, sorted(set(rowids.ravel().tolist())))
    except apsw.SQLError as e:
        raise CollectionError(f"{coll.name}.search: {e}") from None
    # A hit whose row has no columns (cannot happen within one snapshot) is left out rather than
    # surfacing as a KeyError.
    return [
        Hits(
            (Hit(int(r), float(d), int(h), dict(meta[int(r)])) for r, d, h in zip(rr, dd, hh) if int(r) in meta),
            coll.columns,
        )
        for rr, dd, hh in zip(rowids, dist, ham)
    ]


def _hit_columns(coll: Collection, rowids: list[int]) -> dict[int, dict]:
    """{rowid: {column: value}} of the rows ``rowids`` that exist, read in one statement."""
    if not rowids:
        return {}
    cols = list(coll.columns)
    select = ", ".join(["rowid", *map(quote_ident, cols)])
    rows_table = quote_ident(coll.name + "_rows")
    return {
        r[0]: dict(zip(cols, r[1:]))
        for r in coll.db.execute(
            f"SELECT {select} FROM {rows_table} WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(rowids),)
        )
    }


class _Image:
    """An image input waiting to be featurized in a batch, with the label its errors carry."""

    __slots__ = ("value", "where")

    def __init__(self, value, where: str):
        self.value, self.where = value, where


def _is_image_input(model, modality: str, value) -> bool:
    """Whether ``value`` is an image for ``modality`` (path, bytes, PIL image or image array) of a
    model with an image featurizer; features of the backbone's size are not."""
    if not model.has_image_featurizer(modality):
        return False
    from .model.images import is_image_value

    if isinstance(value, np.ndarray) and value.ndim <= 2 and value.shape[-1:] == (model.input_dim(modality),):
        return value.dtype == np.uint8 and value.ndim == 2
    return is_image_value(value)


# ------------------------------------------------------------------------------------------
# Catalog operations (exposed as methods of hqdb's Connection)
# ------------------------------------------------------------------------------------------
def _model_names(conn) -> dict[str, str | None]:
    """{hq table name: model name or None} for every hq table of the main database."""
    return model_of_tables(conn)


def _raw_args(name: str, dim, books, codewords, metric, rerank) -> list[str]:
    """The options of a raw collection's ``CREATE VIRTUAL TABLE``, each checked here so that a
    value never reaches the SQL unvalidated."""
    out = []
    for opt, value in (("dim", dim), ("books", books), ("codewords", codewords)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CollectionError(f"{name}: {opt} must be an integer, got {value!r}")
        out.append(f"{opt}={int(value)}")
    for opt, value in (("metric", metric), ("rerank", rerank)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.isidentifier():
            raise CollectionError(f"{name}: {opt} must be a name such as 'int8' or 'ip', got {value!r}")
        out.append(f"{opt}='{value}'")
    return out


def create_collection(
    conn,
    name: str,
    model: str | None = None,
    columns=None,
    *,
    key: str | None = None,
    exist_ok: bool = False,
    fts=None,
    dim: int | None = None,
    books: int | None = None,
    codewords: int | None = None,
    metric: str | None = None,
    rerank: str | None = None,
) -> Collection:
    if not isinstance(name, str) or not name:
        raise CollectionError(f"collection name must be a non-empty string, got {name!r}")
    raw = {"dim": dim, "books": books, "codewords": codewords, "metric": metric, "rerank": rerank}
    if model is None:
        if dim is None:
            raise CollectionError(
                f"{name}: give model='<stored model>' (items encoded by a trained model) or dim=... "
                "(a raw collection of your own codes or vectors)"
            )
    elif not isinstance(model, str):
        raise CollectionError(
            f"{name}: model must be the name of a stored model (store a trained one with "
            "hqdb.save_model(db, 'name', model))"
        )
    elif any(v is not None for v in raw.values()):
        given = [k for k, v in raw.items() if v is not None]
        raise CollectionError(
            f"{name}: {', '.join(given)} come(s) from model {model!r}; give them only without a model"
        )
    existing = _model_names(conn)
    match = next((n for n in existing if n.lower() == name.lower()), None)
    if match is not None:
        if exist_ok and existing[match] == model:
            found = get_collection(conn, match)
            if model is None and found._table().opts.dim != dim:
                raise CollectionError(f"{match} already exists with dim={found._table().opts.dim}, not {dim}")
            return found
        raise CollectionError(
            f"a collection or hq table named {match!r} already exists"
            + (f" (model {existing[match]!r})" if existing[match] else " (raw)")
        )
    if model is not None:
        from .model.store import load_model

        modalities = load_model(conn, model).modalities  # ModelError names the missing model
        options = [f"model='{model}'"]
    else:
        modalities = ("code", "qcode", "vector")  # a raw item's inputs: not columns
        options = _raw_args(name, dim, books, codewords, metric, rerank)
    decl = _declared_columns(name, columns, modalities)
    if key is not None and key not in decl:
        raise CollectionError(f"{name}: key {key!r} is not one of the columns {list(decl)}")
    cols = [f"{quote_ident(c)} {t}" + (" PRIMARY KEY" if c == key else "") for c, t in decl.items()]
    try:  # names, types and options checked before touching the database
        parse_args(("dim=8", *cols) if model is not None else (*options, *cols))
    except OptionError as e:
        raise CollectionError(f"{name}: {e}") from None
    try:
        with write_transaction(conn):  # the table and its keyword index, or neither
            conn.execute(f"CREATE VIRTUAL TABLE {quote_ident(name)} USING hq({', '.join(options + cols)})")
            coll = get_collection(conn, name)
            if fts is not None:
                coll.enable_fts(fts)
    except (HqError, apsw.SQLError) as e:
        raise CollectionError(f"{name}: {e}") from None
    return coll


def get_collection(conn, name: str) -> Collection:
    existing = _model_names(conn)
    match = next((n for n in existing if n.lower() == str(name).lower()), None)
    if match is None:
        raise NotFoundError(f"no collection named {name!r} (collections: {', '.join(existing) or 'none'})")
    return Collection(conn, match) if existing[match] else RawCollection(conn, match)


def list_collections(conn) -> list[str]:
    return list(_model_names(conn))


def drop_collection(conn, name: str, *, missing_ok: bool = False) -> None:
    try:
        coll = get_collection(conn, name)
    except NotFoundError:
        if missing_ok:
            return
        raise
    conn.execute(f"DROP TABLE {quote_ident(coll.name)}")


# ------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------
