"""hqdb: cross-modal search over learned compact codes, inside SQLite.

>>> import hqdb
>>> db = hqdb.connect("app.db")
>>> db.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=4, codewords=256, title TEXT)")
"""

from __future__ import annotations

from . import kernels, metrics  # noqa: F401  (hqdb.kernels, hqdb.metrics: public modules)
from .bulk import delete_rows, fit_table, insert_codes, insert_items, insert_vectors, set_codebooks
from .collections import Collection, Hit, Hits, RawCollection
from .connection import Connection, connect
from .engine import check
from .engine.schema import latest_version as schema_version
from .errors import (
    CollectionError,
    ConstraintError,
    CorruptTableError,
    DatabaseBusyError,
    DatabaseError,
    DatabaseOpenError,
    DatabaseReadOnlyError,
    HqdbError,
    HqError,
    ModelError,
    NotFoundError,
    OptionError,
    RebuildError,
    SchemaError,
    StaleTableError,
    TrainingError,
)
from .model.store import list_models as _list_models
from .sql.connection import register

__version__ = "0.1.0"

__all__ = [
    "connect",
    "register",
    "insert_codes",
    "insert_vectors",
    "fit_table",
    "insert_items",
    "delete_rows",
    "set_codebooks",
    "info",
    "train",
    "save_model",
    "load_model",
    "list_models",
    "delete_model",
    "rename_model",
    "backup",
    "Collection",
    "RawCollection",
    "CollectionError",
    "Hit",
    "Hits",
    "NotFoundError",
    "Connection",
    "check",
    "HqdbError",
    "HqError",
    "OptionError",
    "ConstraintError",
    "CorruptTableError",
    "StaleTableError",
    "SchemaError",
    "TrainingError",
    "ModelError",
    "RebuildError",
    "DatabaseError",
    "DatabaseOpenError",
    "DatabaseBusyError",
    "DatabaseReadOnlyError",
    "schema_version",
    "__version__",
]


def train(data, **kwargs):
    """Train an encoder (HQ by default) on paired data; see :func:`hqdb.model.train.train`.
    Needs torch (``pip install -e '.[train]'``); searching with the result does not."""
    from .model.train import train as _train

    return _train(data, **kwargs)


def save_model(conn, name: str, model, *, replace: bool = False) -> None:
    """Store a trained model in the database under ``name`` (JSON config + raw tensors)."""
    from .engine.catalog import tables_using_model
    from .engine.schema import ensure
    from .model.store import save

    config, tensors = model.state()
    save(conn, name, config, tensors, replace=replace, users=tables_using_model, prepare=ensure)


def load_model(conn, name: str):
    """A model stored in the database, ready to encode (numpy only, no torch)."""
    from .model.store import load_model as _load

    return _load(conn, name)


def list_models(conn) -> list[dict]:
    """The models stored in the database: name, method, bits, books, codewords, modalities."""
    return _list_models(conn)


def delete_model(conn, name: str, *, force: bool = False) -> list[str]:
    """Delete a stored model. Refused (:class:`ModelError` naming them) while hq tables use it,
    unless ``force``: they keep their rows but cannot insert or search until a model of that
    name is saved again. Returns the tables that used it."""
    from .engine.catalog import tables_using_model
    from .model.store import delete

    return delete(conn, name, users=tables_using_model, force=force)


def rename_model(conn, name: str, new_name: str) -> None:
    """Store model ``name`` as ``new_name``. Refused while hq tables use it (their definitions
    name the model) or when ``new_name`` is taken."""
    from .engine.catalog import tables_using_model
    from .model.store import rename

    rename(conn, name, new_name, users=tables_using_model)


def backup(conn, path, *, overwrite: bool = False) -> dict:
    """Copy the database of ``conn`` to the file ``path`` as one consistent snapshot, while
    other connections keep writing (SQLite's online backup API); see :func:`hqdb.manage.backup`."""
    from .manage import backup as _backup

    return _backup(conn, path, overwrite=overwrite)


def info() -> dict:
    """What this hqdb runs on: version, kernel backend (native or numba fallback and why),
    CPU features, threads, and the versions of SQLite and sqlite-vec it uses."""
    import apsw
    import sqlite_vec

    return {
        "hqdb": __version__,
        "schema_version": schema_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apswversion(),
        "sqlite_vec": getattr(sqlite_vec, "__version__", None),
        **kernels.info(),
    }
