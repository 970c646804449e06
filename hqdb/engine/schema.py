"""hqdb's own catalog schema and its migrations.

The numbered ``migrations/NNNN_name.sql`` files (shipped in the wheel as ``hqdb.migrations``)
are applied in order, each exactly once and all inside one transaction. They run lazily, so a
file is changed only when hqdb stores something in it:

- :func:`prepare` (every :func:`hqdb.connect`): an hqdb database (one with ``hqdb_migrations``)
  is upgraded, a new empty database gets the catalog; another application's file is left alone;
- :func:`ensure` when the first hq table or model is created in such a file.

Every reader of the catalog copes with its absence (no tables, no models). A database written
by a newer hqdb (one that has applied a migration this version does not know) is refused rather
than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import apsw

from ..errors import SchemaError

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
VERSION_TABLE = "hqdb_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migrations_dir():
    """The installed ``hqdb.migrations`` package, or ``migrations/`` beside a source checkout."""
    try:
        return resources.files("hqdb.migrations")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "migrations"


def available_migrations() -> list[Migration]:
    """All migrations this version of hqdb ships, in order. Numbering must be 1..N with no gaps."""
    found = []
    for entry in _migrations_dir().iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"hqdb's migrations are not numbered 1..N without gaps: {versions}")
    return found


def current_version(conn: apsw.Connection, schema: str = "main") -> int:
    """The schema version recorded in the database (0 for a database hqdb never touched)."""
    exists = conn.execute(
        f"SELECT 1 FROM \"{schema}\".sqlite_master WHERE type = 'table' AND name = ?",
        (VERSION_TABLE,),
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute(f'SELECT coalesce(max(version), 0) FROM "{schema}".{VERSION_TABLE}').fetchone()
    return int(row[0]) if row else 0


def latest_version() -> int:
    return len(available_migrations())


def prepare(conn: apsw.Connection) -> int:
    """At connect: upgrade an hqdb database's catalog, create it in a new empty database, leave
    any other file alone (:func:`ensure` creates the catalog when it is needed); return the
    version (0: no catalog). Raises :class:`SchemaError` for a database newer than this hqdb, or
    a read-only one that needs an upgrade."""
    version = current_version(conn)
    if version == 0:
        empty = not conn.execute("SELECT 1 FROM main.sqlite_master LIMIT 1").fetchone()
        if not empty or conn.readonly("main"):
            return 0
    return migrate(conn)


def ensure(conn: apsw.Connection, *, in_statement: bool = False) -> int:
    """Before hqdb stores something (an hq table, a model): the catalog exists and is current.
    ``in_statement``: called while a statement runs (xCreate), whose transaction the migrations
    join."""
    if current_version(conn) == latest_version():
        return latest_version()
    return migrate(conn, own_transaction=not in_statement)


def migrate(conn: apsw.Connection, migrations: list[Migration] | None = None, *, own_transaction: bool = True) -> int:
    """Bring the database's catalog up to this hqdb's schema version; return the version.

    Raises :class:`SchemaError` if the database is newer than this hqdb. All pending migrations
    run in a single transaction (``BEGIN IMMEDIATE``, or the caller's when one is open or
    ``own_transaction`` is false), so a failure leaves the database as it was, and two processes
    opening the same old database cannot both apply the same migration.
    """
    schema = "main"  # the migration files name their tables unqualified: they apply to main
    if migrations is None:
        migrations = available_migrations()
    latest = len(migrations)
    version = current_version(conn, schema)
    if version > latest:
        raise SchemaError(
            f"database schema version {version} is newer than this hqdb supports ({latest}); upgrade hqdb to open it"
        )
    if version == latest:
        return version
    if conn.readonly(schema) and version == 0:
        raise SchemaError("database is read-only: hqdb cannot add its catalog to store an hq table or a model in it")
    if conn.readonly(schema):
        raise SchemaError(
            f"database is read-only and at schema version {version}; hqdb needs version {latest}: "
            "open it once read-write to upgrade it"
        )
    in_txn = not own_transaction or not conn.get_autocommit()
    if not in_txn:
        conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = current_version(conn, schema)
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".{VERSION_TABLE} ('
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
        )
        for mig in migrations[version:]:
            conn.execute(mig.sql)
            conn.execute(
                f'INSERT INTO "{schema}".{VERSION_TABLE}(version, name) VALUES (?, ?)',
                (mig.version, mig.name),
            )
    except BaseException:
        if not in_txn:
            conn.execute("ROLLBACK")
        raise
    if not in_txn:
        conn.execute("COMMIT")
    return latest
