"""hqdb: cross-modal search over learned compact codes, inside SQLite.

>>> import hqdb
>>> db = hqdb.connect("app.db")
>>> db.execute("CREATE VIRTUAL TABLE t USING hq(dim=128, books=4, codewords=256, title TEXT)")
"""

from __future__ import annotations

from . import kernels
from .bulk import insert_codes, set_codebooks
from .connection import connect, register
from .errors import HqdbError, SchemaError
from .schema import latest_version as schema_version

__version__ = "0.1.0"

__all__ = [
    "connect", "register", "insert_codes", "set_codebooks", "info",
    "HqdbError", "SchemaError", "schema_version", "__version__",
]


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
