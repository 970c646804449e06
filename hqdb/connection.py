"""``hqdb.connect``: a connection with everything hqdb offers — the SQL layer's
(:mod:`hqdb.sql.connection`: the ``hq`` module, SQL functions, sqlite-vec, migrations, closing,
transactions) plus collections."""

from __future__ import annotations

from . import collections as _coll
from .sql import connection as _sql

__all__ = ["Connection", "connect"]


class Connection(_sql.Connection):
    """A database connection opened by :func:`connect` (an ``apsw.Connection``)."""

    def create_collection(
        self,
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
    ) -> _coll.Collection:
        """Create a collection: a model-bound hq table bound to the stored model ``model``, with
        ``columns`` a dict of name -> type (str, int, float, bytes) or a typed class (dataclass,
        NamedTuple, ...; fields named like a modality are inputs). ``key`` makes a column unique
        (upsert matches on it). ``fts`` names a TEXT column (or a list) to keep a keyword index
        over (:meth:`hqdb.Collection.enable_fts`). Without a model, ``dim`` (and ``books``,
        ``codewords``, ``metric``, ``rerank``: the raw table's options) make a
        :class:`hqdb.RawCollection` of your own codes or vectors. Returns the collection."""
        return _coll.create_collection(
            self,
            name,
            model,
            columns,
            key=key,
            exist_ok=exist_ok,
            fts=fts,
            dim=dim,
            books=books,
            codewords=codewords,
            metric=metric,
            rerank=rerank,
        )

    def collection(self, name: str) -> _coll.Collection:
        """The collection of an existing hq table: a :class:`hqdb.Collection` (model-bound) or a
        :class:`hqdb.RawCollection` (raw)."""
        return _coll.get_collection(self, name)

    def collections(self) -> list[str]:
        """Names of the collections (every hq table, model-bound or raw) in the main database."""
        return _coll.list_collections(self)

    def drop_collection(self, name: str, *, missing_ok: bool = False) -> None:
        """Drop a collection with its rows and codes (its model stays stored)."""
        _coll.drop_collection(self, name, missing_ok=missing_ok)


def connect(
    path: str = ":memory:",
    *,
    threads: int = 1,
    readonly: bool = False,
    timeout: float = 5.0,
    wal: bool = True,
    device: str | None = None,
) -> Connection:
    """Open ``path`` (a file, or ``":memory:"``) ready for hq tables and collections.

    ``with hqdb.connect(path) as db:`` closes the connection when the block ends; group writes
    with ``with db.transaction():``. Parameters as :func:`hqdb.sql.connection.connect`: ``threads``
    per search, ``readonly``, ``timeout`` (seconds to wait for another writer's lock), ``wal``
    (write-ahead-log mode for the files hqdb manages), ``device`` (a torch device for batched
    searches). Another application's file is not changed until an hq table or a model is stored
    in it; a file that cannot be opened, is locked or cannot be written raises an
    :class:`hqdb.DatabaseError` naming it.
    """
    conn = _sql.connect(
        path, threads=threads, readonly=readonly, timeout=timeout, wal=wal, device=device, factory=Connection
    )
    assert isinstance(conn, Connection)
    return conn
