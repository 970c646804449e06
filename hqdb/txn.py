"""Transactions that wait for the write lock instead of failing at once.

A deferred transaction (``BEGIN`` or apsw's ``with conn:`` savepoint) that reads before it
writes holds a read snapshot; when it then tries to write while another connection has
committed since, SQLite answers ``SQLITE_BUSY`` *without* calling the busy handler (waiting
could not help: the snapshot is already stale). Every hqdb path that reads and then writes
therefore starts with ``BEGIN IMMEDIATE``, which takes the write lock first and so waits up to
the connection's busy timeout. Inside a transaction the caller already opened, a SAVEPOINT
makes the write all-or-nothing; taking the lock early is then the caller's business
(:meth:`hqdb.Connection.transaction` does it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from .errors import DatabaseBusyError, DatabaseReadOnlyError

_savepoints = itertools.count(1)


def _begin_immediate(conn: apsw.Connection) -> None:
    """BEGIN IMMEDIATE; a lock or permission failure as the hqdb error that says what to do."""
    where = f"database {conn.filename!r}" if conn.filename else "the database"
    try:
        conn.execute("BEGIN IMMEDIATE")
    except apsw.BusyError:
        raise DatabaseBusyError(
            f"{where} is locked: another connection held the write lock longer than the busy timeout; "
            "try again when it has finished, or connect with a longer timeout"
        ) from None
    except apsw.ReadOnlyError:
        raise DatabaseReadOnlyError(f"{where} cannot be written (read-only file, directory or connection)") from None


def _finish(conn: apsw.Connection, sql: str) -> None:
    """COMMIT (or RELEASE); if that fails, roll back so no half-open transaction is left."""
    try:
        conn.execute(sql)
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise


@contextmanager
def write_transaction(conn: apsw.Connection) -> Iterator[None]:
    """All-or-nothing write: ``BEGIN IMMEDIATE`` .. ``COMMIT`` when no transaction is open
    (waiting for the write lock up to the busy timeout), else a savepoint in the caller's."""
    if conn.get_autocommit():
        _begin_immediate(conn)
        try:
            yield
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise
        _finish(conn, "COMMIT")
        return
    name = f'"hqdb_sp_{next(_savepoints)}"'
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


@contextmanager
def read_transaction(conn: apsw.Connection) -> Iterator[None]:
    """One read snapshot for several statements (``BEGIN`` .. ``COMMIT`` when none is open)."""
    if not conn.get_autocommit():
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if not conn.get_autocommit():
            conn.execute("COMMIT")
