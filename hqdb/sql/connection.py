"""``hqdb.connect``: an apsw connection with the hq module, its SQL functions, sqlite-vec and
hqdb's catalog migrations in place."""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
import weakref
from typing import Literal

import apsw
import sqlite_vec

from ..engine.schema import migrate
from ..errors import HqError
from ..txn import write_transaction
from .functions import check_threads, register_functions
from .vtab import HqModule, HqShadowModule

__all__ = ["Connection", "connect", "register"]


# Connections opened by connect() and not closed yet. The hq module registered on a connection
# holds the connection, so it is never freed by reference counting (and objects are not
# finalized at interpreter exit): _close_all, run at exit, closes what is left, so SQLite
# checkpoints the write-ahead log into the database file and removes it.
_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()


def _close_all() -> None:
    """Close every hqdb connection still open (at interpreter exit)."""
    for conn in list(_OPEN):
        try:
            conn.close()
        except Exception:  # exit must go on (SQLite replays the WAL at the next open)
            with contextlib.suppress(Exception):
                conn.close(True)


atexit.register(_close_all)


class Connection(apsw.Connection):
    """An apsw connection opened by :func:`connect`; ``hq`` is its hq module instance.

    ``with hqdb.connect(path) as db:`` closes the connection when the block ends (unlike a
    plain apsw connection, where ``with conn:`` is a transaction); group writes with
    ``with db.transaction():``."""

    hq: HqModule

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self.close()
        return False  # exceptions propagate

    def close(self, force: bool = False) -> None:
        """Close the connection (an open transaction is rolled back); closing again does nothing.
        The last connection to a file database checkpoints the write-ahead log into it."""
        _OPEN.discard(self)
        super().close(force)

    def transaction(self):
        """``with db.transaction():`` runs its block as one transaction: committed at the end,
        rolled back if the block raises. It starts with ``BEGIN IMMEDIATE`` (waiting up to the
        busy timeout for another writer instead of failing later); inside an open transaction it
        is a savepoint, so only the inner block is undone. See :mod:`hqdb.txn`."""
        return write_transaction(self)


def _check_device(device) -> str | None:
    """The torch device batched searches run on, or None for the native kernels.

    A CUDA device without CUDA (or without torch) is not an error: one notice, then the native
    CPU kernels, so the same code runs on machines with and without a GPU."""
    if device is None:
        return None
    if not isinstance(device, str) or not device:
        raise HqError(f"device must be a torch device name such as 'cuda' or 'cpu', got {device!r}")
    from ..kernels import torch_backend

    if device.startswith("cuda") and not torch_backend.cuda_available():
        warnings.warn(
            f"hqdb: device={device!r} but CUDA is not available here; batched searches run on the native CPU kernels",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        torch_backend._device(device)  # ImportError (no torch) or ValueError (bad name) now
    except ValueError as e:
        raise HqError(str(e)) from None
    return device


def register(conn: apsw.Connection, *, threads: int = 1, device: str | None = None) -> HqModule:
    """Register the ``hq`` module and hqdb's SQL functions on an existing apsw connection, and
    bring its catalog to this hqdb's schema version."""
    threads = check_threads(threads)
    device = _check_device(device)
    module: HqModule = HqShadowModule(conn)
    try:
        conn.create_module("hq", module, use_bestindex_object=True, iVersion=4)  # type: ignore[arg-type]
    except Exception as e:  # apsw's module slots for API version 3+ (33 per process) are all taken
        if "ShadowName" not in str(e):
            raise
        # Without a slot apsw offers only the version-2 module API: no xShadowName and no
        # xIntegrity (PRAGMA integrity_check then skips hq tables; hq_check() still runs).
        module = HqModule(conn)
        # apsw's stubs want ShadowName on every module; a version-2 module has none by design.
        conn.create_module("hq", module, use_bestindex_object=True, iVersion=2)  # type: ignore[arg-type]
    module.threads = threads
    module.device = device
    with contextlib.suppress(AttributeError):  # a plain apsw.Connection: hqdb.bulk then needs hqdb.connect()
        conn.hq = module  # type: ignore[attr-defined]  # Connection declares it; apsw.Connection has no slot
    register_functions(conn, module)
    migrate(conn)
    return module


def connect(
    path: str = ":memory:",
    *,
    threads: int = 1,
    readonly: bool = False,
    timeout: float = 5.0,
    wal: bool = True,
    device: str | None = None,
    factory: type[Connection] = Connection,
) -> Connection:
    """Open ``path`` (a file, or ``":memory:"``) ready for hq tables.

    The returned apsw connection has sqlite-vec loaded, the ``hq`` virtual-table module and
    the ``hq_*`` SQL functions registered, and hqdb's catalog migrated to the current version.

    Parameters
    ----------
    path : str
        Database file (created if missing, unless ``readonly``) or ``":memory:"``.
    threads : int
        Threads each search may use (``SELECT hq_threads(n)`` changes it later).
    readonly : bool
        Open read-only; a database that needs a migration is then refused.
    timeout : float
        Seconds to wait on another connection's lock before failing with ``apsw.BusyError``.
    wal : bool
        Put a file database in write-ahead-log mode (the default: readers and one writer work
        concurrently, and readers never block the writer). The mode is stored in the file, so
        ``wal=False`` only avoids switching a database that is not in WAL mode yet.
    device : str, optional
        A torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``) for batched searches
        (``hq_search_many``, :meth:`hqdb.engine.table.Table.search_many`): the code arrays are kept there and
        searched with :mod:`hqdb.kernels.torch_backend`. None (the default) uses the native kernels.
        ``"cuda"`` where CUDA is not available prints a one-line notice and uses the native
        kernels. Needs torch (the ``train`` extra) otherwise.
    factory : type
        The :class:`Connection` subclass to open (:func:`hqdb.connect` adds collections).
    """
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = factory(os.fspath(path), flags=flags | apsw.SQLITE_OPEN_URI)
    _OPEN.add(conn)
    conn.set_busy_timeout(int(timeout * 1000))
    try:
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        if wal and not readonly and conn.db_filename("main"):  # "" for :memory: and temp databases
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])  # type: ignore[index]  # a PRAGMA row
            if mode.lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
        register(conn, threads=threads, device=device)
    except BaseException:
        conn.close()
        raise
    return conn
