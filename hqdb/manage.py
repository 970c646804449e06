"""Database management: a consistent copy of a live database (``hqdb.backup``, ``hqdb backup``).

The copy is made with SQLite's online backup API (through apsw) in one step, so it reads one
snapshot of the source: with the write-ahead log (hqdb's default) other connections and
processes keep writing while it runs, and the copy holds exactly the transactions committed
before it started. It is written to a temporary file beside the destination and renamed into
place at the end, so a crash or error never leaves a half-written file under the destination's
name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import apsw

from .errors import DatabaseError

__all__ = ["backup"]


def _remove(path: str) -> None:
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def backup(conn: apsw.Connection, path: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Copy the main database of ``conn`` to the file ``path``; return ``{"path", "bytes",
    "pages", "seconds"}``.

    ``path`` must not exist unless ``overwrite`` (then nothing may have it open), and may not be
    the source file. The copy is one snapshot (see the module docstring); ``conn`` itself must not
    be inside a transaction (its uncommitted changes would not be in the copy)."""
    dest = os.fspath(path)
    if not dest or dest == ":memory:":
        raise DatabaseError(f"backup needs a file to write, got {dest!r}")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise DatabaseError(f"cannot write the backup {dest!r}: the directory {parent!r} does not exist")
    if os.path.isdir(dest):
        raise DatabaseError(f"cannot write the backup {dest!r}: it is a directory")
    source = conn.filename
    if source and os.path.exists(dest) and os.path.samefile(source, dest):
        raise DatabaseError(f"cannot back up {source!r} onto itself")
    if os.path.exists(dest) and not overwrite:
        raise DatabaseError(f"{dest!r} already exists (overwrite=True, hqdb backup --overwrite, replaces it)")
    if conn.in_transaction:
        raise DatabaseError("commit or roll back the open transaction before a backup: it would not be in the copy")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".partial", dir=parent)
    os.close(fd)
    # The copy gets the source's permissions (a new file's default when the source is in memory),
    # not mkstemp's private 0600.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (os.stat(source).st_mode & 0o777) if source and os.path.exists(source) else 0o666 & ~umask)
    t0 = time.perf_counter()
    try:
        target = apsw.Connection(tmp)
        try:
            with target.backup("main", conn, "main") as b:
                b.step(-1)  # every page in one step: one read transaction, one snapshot
                pages = b.page_count
        finally:
            target.close()
        if overwrite:  # a stale write-ahead log beside the old file must not be replayed into the copy
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(dest + suffix)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    return {
        "path": dest,
        "bytes": os.path.getsize(dest),
        "pages": pages,
        "seconds": round(time.perf_counter() - t0, 3),
    }
