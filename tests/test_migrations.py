"""hqdb's catalog migrations: applied in order, once, atomically; newer databases refused."""

from __future__ import annotations

import pytest

import apsw
import hqdb
from hqdb.engine.schema import Migration, available_migrations, current_version, migrate


def test_fresh_database_is_at_latest_version(db):
    assert current_version(db) == hqdb.schema_version() == len(available_migrations())
    applied = db.execute("SELECT version, name FROM hqdb_migrations ORDER BY version").fetchall()
    assert applied == [(m.version, m.name) for m in available_migrations()]


def test_plain_sqlite_database_gets_the_catalog_with_its_first_hq_table(db_path):
    plain = apsw.Connection(str(db_path))
    plain.execute("CREATE TABLE notes(x); INSERT INTO notes VALUES ('hello')")
    plain.close()
    db = hqdb.connect(db_path)
    assert current_version(db) == 0  # another application's file: untouched by connect
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=0)")
    assert current_version(db) == hqdb.schema_version()
    assert db.execute("SELECT x FROM notes").fetchall() == [("hello",)]


def test_reopening_does_not_reapply(db_path):
    hqdb.connect(db_path).close()
    db = hqdb.connect(db_path)
    assert db.execute("SELECT count(*) FROM hqdb_migrations").fetchone() == (hqdb.schema_version(),)


def test_old_version_upgrades_in_order_once(db):
    base = available_migrations()
    extra = [
        Migration(len(base) + 1, "add_a", "CREATE TABLE mig_a(x); INSERT INTO mig_a VALUES (1);"),
        Migration(len(base) + 2, "add_b", "CREATE TABLE mig_b(y); INSERT INTO mig_b SELECT x + 1 FROM mig_a;"),
    ]
    assert migrate(db, base + extra) == len(base) + 2
    assert migrate(db, base + extra) == len(base) + 2  # nothing left to do
    assert db.execute("SELECT y FROM mig_b").fetchall() == [(2,)]
    assert db.execute("SELECT count(*) FROM mig_a").fetchone() == (1,)


def test_failing_migration_rolls_back_everything(db):
    base = available_migrations()
    bad = base + [
        Migration(len(base) + 1, "ok", "CREATE TABLE mig_ok(x);"),
        Migration(len(base) + 2, "broken", "CREATE TABLE mig_bad(; nonsense"),
    ]
    with pytest.raises(apsw.SQLError):
        migrate(db, bad)
    assert current_version(db) == len(base)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'mig_ok'").fetchone() == (0,)


def test_newer_database_is_refused(db_path):
    db = hqdb.connect(db_path)
    db.execute("INSERT INTO hqdb_migrations(version, name) VALUES (999, 'from_the_future')")
    db.close()
    with pytest.raises(hqdb.SchemaError, match="newer than this hqdb supports"):
        hqdb.connect(db_path)


def test_readonly_old_database_is_refused_clearly(db_path):
    old = apsw.Connection(str(db_path))
    migrate(old, available_migrations()[:2])  # an hqdb database of schema version 2
    old.close()
    with pytest.raises(hqdb.SchemaError, match="read-only"):
        hqdb.connect(db_path, readonly=True)
    hqdb.connect(db_path).close()
    db = hqdb.connect(db_path, readonly=True)
    assert current_version(db) == hqdb.schema_version()
