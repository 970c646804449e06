"""``hqdb.connect``: an apsw connection with the hq module, its SQL functions, sqlite-vec and
hqdb's catalog migrations in place.

A file is changed only when hqdb is asked to store something in it: a new (empty) database
becomes an hqdb database (write-ahead log, catalog); another application's file keeps its
journal mode and gets hqdb's catalog with its first hq table or model (:mod:`hqdb.engine.schema`);
an hqdb database is upgraded to this version's catalog and kept in write-ahead-log mode.
Opening and locking errors name the file (:class:`hqdb.errors.DatabaseError`).

``PRAGMA trusted_schema`` stays on (SQLite's default): with it off SQLite refuses every view or
trigger that reads an hq table (the module is not declared innocuous: ``unsafe use of virtual
table``), which would break the user's own views over ``hq_match``/``hq_query``. Views and
triggers in a file (or an ATTACHed one) cannot call the functions with side effects anyway:
``hq_set_codebooks``, ``hq_rebuild`` and ``hq_threads`` are direct-only."""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
import weakref
from pathlib import Path
from typing import Literal

import apsw
import sqlite_vec

from ..engine.schema import current_version, prepare
from ..errors import (
    DatabaseBusyError,
    DatabaseError,
    DatabaseOpenError,
    DatabaseReadOnlyError,
    HqError,
)
from ..txn import write_transaction
from .functions import check_threads, register_functions
from .vtab import HqModule, HqShadowModule

__all__ = ["Connection", "connect", "register", "database_error"]


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
    bring an hqdb database's catalog to this hqdb's schema version (a database without hqdb's
    catalog gets it with its first hq table or model; see :func:`hqdb.engine.schema.prepare`)."""
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
    prepare(conn)
    return module


def database_error(e: apsw.Error, path: str, *, readonly: bool = False, timeout: float | None = None):
    """The :class:`hqdb.errors.DatabaseError` for an apsw error about the database file at
    ``path`` (cannot open, locked, read-only), naming the file and what to do; other errors
    (and errors that already are hqdb's) are returned unchanged."""
    if isinstance(e, DatabaseError) or path in ("", ":memory:"):
        return e
    where = f"database {path!r}"
    if isinstance(e, apsw.CantOpenError):
        parent = os.path.dirname(os.path.abspath(path))
        if path.startswith("file:"):
            why = "check the URI"
        elif not os.path.isdir(parent):
            why = f"the directory {parent!r} does not exist"
        elif not os.path.exists(path):
            why = "no such file" if readonly else f"the directory {parent!r} is not writable"
        elif os.path.isdir(path):
            why = "it is a directory"
        else:
            why = "check that it is readable (and, to write, that it and its directory are writable)"
        return DatabaseOpenError(f"cannot open {where}: {why}")
    if isinstance(e, apsw.BusyError):
        waited = f" for {timeout:g} s" if timeout is not None else ""
        return DatabaseBusyError(
            f"{where} is locked: another connection is writing to it (waited{waited}); "
            "try again when it has finished, or give a longer timeout"
        )
    if isinstance(e, apsw.ReadOnlyError):
        return DatabaseReadOnlyError(
            f"{where} cannot be written (the file, or its directory where SQLite keeps the "
            "write-ahead log, is read-only): open it read-only to read it, or check the permissions"
        )
    return e


def _immutable_uri(path: str) -> str:
    """A URI opening ``path`` read-only and immutable: no lock, no -wal or -shm file."""
    return Path(path).absolute().as_uri() + "?mode=ro&immutable=1"


def _probe(conn: apsw.Connection) -> tuple[int, str]:
    """(number of schema objects, journal mode): the first read of the file, where a locked or
    unreadable database fails."""
    objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])  # type: ignore[index]
    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()  # type: ignore[index]
    return objects, mode


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
    the ``hq_*`` SQL functions registered, and an hqdb database's catalog migrated to the
    current version. Another application's file is not changed until an hq table or a model is
    created in it. Errors opening the file raise :class:`hqdb.errors.DatabaseError` subclasses
    (also the matching ``apsw`` error) naming the file.

    Parameters
    ----------
    path : str
        Database file (created if missing, unless ``readonly``) or ``":memory:"``.
    threads : int
        Threads each search may use (``SELECT hq_threads(n)`` changes it later).
    readonly : bool
        Open read-only; nothing is written. An hqdb database that needs a migration is then
        refused. A write-ahead-log database in a read-only directory is read as immutable.
    timeout : float
        Seconds to wait on another connection's lock before failing with
        :class:`hqdb.errors.DatabaseBusyError` (an ``apsw.BusyError``).
    wal : bool
        Put a file database in write-ahead-log mode (the default: readers and one writer work
        concurrently, and readers never block the writer). The mode is stored in the file, so
        ``wal=False`` only avoids switching a database that is not in WAL mode yet. Only files
        hqdb manages are switched: a new one, or one that holds hqdb's catalog.
    device : str, optional
        A torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``) for batched searches
        (``hq_search_many``, :meth:`hqdb.engine.table.Table.search_many`): the code arrays are kept there and
        searched with :mod:`hqdb.kernels.torch_backend`. None (the default) uses the native kernels.
        ``"cuda"`` where CUDA is not available prints a one-line notice and uses the native
        kernels. Needs torch (the ``train`` extra) otherwise.
    factory : type
        The :class:`Connection` subclass to open (:func:`hqdb.connect` adds collections).
    """
    name = os.fspath(path)
    try:
        return _connect(name, threads, readonly, timeout, wal, device, factory)
    except apsw.Error as e:
        err = database_error(e, name, readonly=readonly, timeout=timeout)
        if err is e:
            raise
        raise err from None


def _connect(name: str, threads, readonly, timeout, wal, device, factory) -> Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = factory(name, flags=flags | apsw.SQLITE_OPEN_URI)
    _OPEN.add(conn)
    try:
        conn.set_busy_timeout(int(timeout * 1000))
        try:
            objects, mode = _probe(conn)
        except (apsw.ReadOnlyError, apsw.CantOpenError):
            # A write-ahead-log database in a directory nobody may write: SQLite cannot create
            # the -shm file every reader needs. Then nobody can write the database either (a
            # writer needs -wal and -shm too), so it is read as immutable: no locks, no files.
            if not conn.readonly("main") or name.startswith("file:") or not conn.db_filename("main"):
                raise
            conn.close()
            if not readonly:
                raise apsw.ReadOnlyError("attempt to write a readonly database") from None
            conn = factory(_immutable_uri(name), flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            _OPEN.add(conn)
            objects, mode = _probe(conn)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        # Write-ahead log for the files hqdb manages: a new one, or one with hqdb's catalog.
        # Another application's file keeps its journal mode (the mode is stored in the file).
        ours = objects == 0 or current_version(conn) > 0
        if wal and ours and not conn.readonly("main") and conn.db_filename("main") and mode != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        register(conn, threads=threads, device=device)
    except BaseException:
        conn.close()
        raise
    return conn
