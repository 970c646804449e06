"""Hostile or careless input through the API and the CLI (issue 13): what a newcomer, or a file
a stranger sent, can do to hqdb — each test fails on the code before its fix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import apsw
import hqdb
from conftest import random_table
from hqdb import datasets
from hqdb.cli import main
from hqdb.engine.check import check
from hqdb.engine.schema import current_version

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def digest(path) -> str:
    """The bytes of a database file and of its -wal/-shm companions (absent ones count too)."""
    h = hashlib.sha256()
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        h.update(suffix.encode() + (p.read_bytes() if p.exists() else b"<absent>"))
    return h.hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """queries.npz / items.npz and a tiny model 'm' (trained once for the module)."""
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("newcomer")
    pairs = datasets.synthetic_pairs(300, seed=3)
    fields = {k: v for k, v in pairs.items() if k != "label_names"}
    np.savez(d / "train.npz", **{k: v[:200] for k, v in fields.items()})
    np.savez(d / "queries.npz", **{k: v[200:220] for k, v in fields.items()})
    np.savez(d / "items.npz", **{k: v[220:] for k, v in fields.items()})
    model = hqdb.train(str(d / "train.npz"), bits=32, books=2, codewords=16, epochs=2, progress=False)
    return d, model


def model_db(path, model, name="m"):
    with closing(hqdb.connect(path)) as db:
        hqdb.save_model(db, name, model)


# ------------------------------------------------------------------------------ item 4
def test_view_in_attached_file_cannot_set_codebooks(db, tmp_path):
    """A view in an ATTACHed file (perhaps one a stranger sent) calling hq_set_codebooks on the
    user's own table fails, and the codebooks stay as they were."""
    _, _, cb, _ = random_table(db, "t", n=20, dim=64, books=2, codewords=16)
    evil = tmp_path / "evil.db"
    with closing(apsw.Connection(str(evil))) as e:
        e.execute(
            "CREATE VIEW v AS SELECT hq_set_codebooks('t', zeroblob(2 * 16 * 64 * 4)); "
            "CREATE VIEW r AS SELECT hq_rebuild('t'); CREATE VIEW th AS SELECT hq_threads(64)"
        )
    db.execute("ATTACH ? AS evil", (str(evil),))
    for view in ("v", "r", "th"):
        with pytest.raises(apsw.SQLError, match="unsafe use"):
            db.execute(f"SELECT * FROM evil.{view}").fetchall()
    assert np.array_equal(_codebooks(db), cb)
    assert db.execute("SELECT hq_threads()").fetchone() == (1,)


def _codebooks(db):
    blob = db.execute("SELECT hq_codebooks('t')").fetchone()[0]
    return np.frombuffer(blob, dtype="<f4").reshape(2, 16, 64)


def test_own_views_on_hq_tables_keep_working(db):
    """hqdb leaves trusted_schema on: with it off, SQLite refuses any view over an hq table."""
    random_table(db, "t", n=20, dim=64, books=0)
    db.execute("CREATE VIEW near AS SELECT rowid FROM t WHERE hq_match(t.code, hq_bits(zeroblob(256))) AND k = 3")
    assert len(db.execute("SELECT * FROM near").fetchall()) == 3


# ------------------------------------------------------------------------------ item 9
def test_bench_model_name_cannot_inject_sql(data, tmp_path, capsys):
    d, model = data
    path = tmp_path / "b.db"
    model_db(path, model)
    with closing(hqdb.connect(path)) as db:
        db.execute("CREATE TABLE victim(x); INSERT INTO victim VALUES (1)")
    rc, _, err = run(capsys, "bench", "--db", path, "--model", "m'); DROP TABLE victim; --",
                     "--queries", d / "queries.npz", "--database", d / "items.npz", "-q")
    assert rc == 1 and "model name" in err
    with closing(hqdb.connect(path)) as db:
        assert db.execute("SELECT x FROM victim").fetchall() == [(1,)]


def test_bench_and_eval_keep_a_users_table_of_the_same_name(data, tmp_path, capsys):
    d, model = data
    path = tmp_path / "b.db"
    model_db(path, model)
    with closing(hqdb.connect(path)) as db:
        db.execute("CREATE TABLE hqdb_bench(x); INSERT INTO hqdb_bench VALUES ('mine')")
        db.execute("CREATE TABLE hqdb_eval_m(x); INSERT INTO hqdb_eval_m VALUES ('mine too')")
    rc, out, _ = run(capsys, "bench", "--db", path, "--model", "m", "--queries", d / "queries.npz",
                     "--database", d / "items.npz", "--candidates", "50", "-k", "5", "--json")
    assert rc == 0 and json.loads(out)["rows"]
    rc, out, _ = run(capsys, "eval", "--db", path, "--model", "m", "--queries", d / "queries.npz",
                     "--database", d / "items.npz", "--json", "-q")
    assert rc == 0
    with closing(hqdb.connect(path)) as db:
        assert db.execute("SELECT x FROM hqdb_bench").fetchall() == [("mine",)]
        assert db.execute("SELECT x FROM hqdb_eval_m").fetchall() == [("mine too",)]
        assert db.collections() == []  # the runs' own tables are gone


@pytest.mark.parametrize("raw, table", [(False, "docs"), (True, "items")])
def test_demo_never_drops_a_users_table(tmp_path, capsys, monkeypatch, raw, table):
    path = tmp_path / "mine.db"
    with closing(apsw.Connection(str(path))) as db:
        db.execute(f"CREATE TABLE {table}(x); INSERT INTO {table} VALUES ('precious')")
    before = digest(path)

    def no_training(*a, **k):
        raise AssertionError("the demo trained before refusing")

    monkeypatch.setattr(hqdb, "train", no_training)
    rc, _, err = run(capsys, "demo", "--db", path, *(["--raw"] if raw else []))
    assert rc == 1 and repr(table) in err and str(path) in err
    assert digest(path) == before


# ------------------------------------------------------------------------------ item 12
@pytest.mark.parametrize("text, problem", [("", "empty"), ("   ", "empty"), ("zzqx wvvk", "no word")])
def test_query_text_without_known_words_is_an_error(data, db, text, problem):
    _, model = data
    hqdb.save_model(db, "m", model)
    coll = db.create_collection("c", "m")
    coll.insert_all([{"image": x} for x in np.asarray(datasets.synthetic_pairs(20, seed=1)["image"])])
    with pytest.raises(hqdb.CollectionError, match=problem):
        coll.search(text=text, k=3)
    with pytest.raises(hqdb.HqError, match=problem):
        db.execute("SELECT rowid FROM c WHERE hq_match(c.image, hq_query('text', ?)) AND k = 3", (text,)).fetchall()
    with pytest.raises(hqdb.HqdbError, match=problem):  # HqError from the engine's encoder
        coll.insert({"text": text})
    with pytest.raises(hqdb.HqError, match=problem):
        db.execute("INSERT INTO c(text) VALUES (?)", (text,))
    assert len(coll) == 20


def test_training_texts_without_known_words_still_train(data):
    """Only queries and inserted items are refused: a training caption of rare words is fine."""
    pytest.importorskip("torch")
    pairs = datasets.synthetic_pairs(60, seed=2)
    pairs["text"] = np.array([*pairs["text"][:-1], ""])
    model = hqdb.train({k: v for k, v in pairs.items() if k != "label_names"}, bits=16, books=1,
                       codewords=4, epochs=1, progress=False)
    assert model.bits == 16


# ------------------------------------------------------------------------------ item 13
@pytest.fixture
def foreign(tmp_path):
    """Another application's SQLite file (rollback journal, one table)."""
    path = tmp_path / "other.db"
    with closing(apsw.Connection(str(path))) as c:
        c.execute("CREATE TABLE notes(x); INSERT INTO notes VALUES ('hello')")
    return path


def test_connect_leaves_another_applications_file_alone(foreign, capsys):
    before = digest(foreign)
    with closing(hqdb.connect(foreign)) as db:
        assert db.collections() == [] and hqdb.list_models(db) == []
        assert db.execute("SELECT x FROM notes").fetchall() == [("hello",)]
        assert check(db)["ok"]
        with pytest.raises(hqdb.ModelError, match="no model named 'x'"):
            hqdb.load_model(db, "x")
        with pytest.raises(hqdb.HqError, match="no hq table"):
            db.execute("SELECT hq_codebooks('t')").fetchall()
    with closing(hqdb.connect(foreign, readonly=True)) as db:
        assert db.collections() == []
    for argv in (["info", "--db", foreign], ["models", "--db", foreign], ["check", foreign]):
        rc, out, err = run(capsys, *argv)
        assert rc == 0, err
    assert "0 hq table(s), 0 model(s)" in run(capsys, "info", "--db", foreign)[1]
    assert digest(foreign) == before
    with closing(apsw.Connection(str(foreign))) as c:
        assert c.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert c.execute("SELECT name FROM sqlite_master WHERE name LIKE 'hqdb%'").fetchall() == []


def test_catalog_appears_with_the_first_hq_table_or_model(foreign, data):
    _, model = data
    with closing(hqdb.connect(foreign)) as db:
        random_table(db, "t", n=5, dim=64, books=0)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (5,)
        assert current_version(db) == hqdb.schema_version()
    with closing(hqdb.connect(foreign)) as db:  # an hqdb file now: write-ahead log from here on
        assert db.execute("SELECT name FROM hqdb_tables").fetchall() == [("t",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    path = foreign.with_name("models.db")
    with closing(apsw.Connection(str(path))) as c:
        c.execute("CREATE TABLE notes(x)")
    with closing(hqdb.connect(path)) as db:
        hqdb.save_model(db, "m", model)
        assert [m["name"] for m in hqdb.list_models(db)] == ["m"]
        coll = db.create_collection("c", "m")
        assert db.collections() == ["c"] and len(coll) == 0


def test_a_new_file_is_an_hqdb_database(tmp_path):
    with closing(hqdb.connect(tmp_path / "new.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)


# ------------------------------------------------------------------------------ item 14
READ_SCRIPT = """
import sys, hqdb
from hqdb.cli import main
path = sys.argv[1]
with hqdb.connect(path, readonly=True) as db:
    print("rows", db.execute("SELECT count(*) FROM c").fetchone()[0])
    print("hits", len(db.collection("c").search(text="castle on a hill", k=3)))
try:  # read-write asked, the directory says no: a clear error naming the file
    hqdb.connect(path)
except hqdb.DatabaseReadOnlyError as e:
    print("write refused:", e)
assert main(["info", "--db", path]) == 0
assert main(["search", "--db", path, "--collection", "c", "--text", "castle", "-k", "2"]) == 0
assert main(["models", "--db", path]) == 0
print("done")
"""


def test_database_in_a_read_only_directory_can_be_read(data):
    """WAL needs a -shm file beside the database; in a directory nobody may write hqdb reads the
    file immutable instead. As root (where chmod does not stop writes) the reads run in a
    subprocess as user 'nobody' (setpriv)."""
    _, model = data
    root = os.geteuid() == 0
    if root and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only directory cannot be simulated")
    base = Path(tempfile.mkdtemp(prefix="hqdb-ro-"))  # not under pytest's 0700 tmp for 'nobody'
    try:
        d = base / "ro"
        d.mkdir()
        path = d / "x.db"
        with closing(hqdb.connect(path)) as db:
            hqdb.save_model(db, "m", model)
            coll = db.create_collection("c", "m")
            pairs = datasets.synthetic_pairs(30, seed=4)
            coll.insert_all([{"text": str(t), "image": x} for t, x in zip(pairs["text"], pairs["image"])])
        assert not Path(str(path) + "-shm").exists()
        before = digest(path)
        os.chmod(path, 0o444)
        os.chmod(d, 0o555)
        os.chmod(base, 0o755)
        cache = base / "numba"
        cache.mkdir(mode=0o777)
        os.chmod(cache, 0o777)
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", READ_SCRIPT, str(path)]
        if root:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=base, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "rows 30" in p.stdout and "hits 3" in p.stdout
        assert f"write refused: database {str(path)!r}" in p.stdout and "read-only" in p.stdout
        assert digest(path) == before
    finally:
        for p in (base, base / "ro"):
            if p.exists():
                os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ items 15, 16
def test_train_checks_the_destination_before_training(data, tmp_path, capsys, monkeypatch):
    d, _ = data

    def no_training(*a, **k):
        raise AssertionError("trained before checking the destination")

    monkeypatch.setattr(hqdb, "train", no_training)
    missing = tmp_path / "missing" / "dir" / "m.db"
    rc, _, err = run(capsys, "train", d / "train.npz", "--db", missing, "--name", "m", "-q")
    assert rc == 1 and str(missing.parent) in err and "Traceback" not in err
    rc, _, err = run(capsys, "train", d / "train.npz", "--db", tmp_path / "x.db", "--name", "no'quote", "-q")
    assert rc == 1 and "model name" in err
    assert not (tmp_path / "x.db").exists()


def test_connect_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing" / "m.db"
    with pytest.raises(hqdb.HqdbError, match="missing") as e:
        hqdb.connect(missing)
    assert isinstance(e.value, apsw.CantOpenError) and str(missing) in str(e.value)
    with pytest.raises(hqdb.HqdbError, match=str(tmp_path / "nope.db")):
        hqdb.connect(tmp_path / "nope.db", readonly=True)


def test_locked_database_is_a_clear_error(foreign, capsys):
    holder = apsw.Connection(str(foreign))
    holder.execute("BEGIN EXCLUSIVE; INSERT INTO notes VALUES ('lock')")
    try:
        with pytest.raises(hqdb.HqdbError, match="locked") as e:
            hqdb.connect(foreign, timeout=0.05)
        assert isinstance(e.value, apsw.BusyError) and str(foreign) in str(e.value)
        rc, _, err = run(capsys, "info", "--db", foreign)
        assert rc == 1 and "locked" in err and str(foreign) in err
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_training_data_without_a_key_is_a_training_error(data):
    pairs = datasets.synthetic_pairs(20, seed=1)
    with pytest.raises(hqdb.TrainingError, match="'text'"):
        hqdb.train({"image": pairs["image"], "labels": pairs["labels"]}, progress=False)
    with pytest.raises(hqdb.TrainingError, match="no such file"):
        hqdb.train("/nonexistent/train.npz", progress=False)
    with pytest.raises(hqdb.TrainingError, match="bits"):
        hqdb.train(pairs, bits=7, progress=False)


@pytest.mark.parametrize("k", [str(2**63), "0", "65537", "-1"])
def test_cli_search_k_out_of_range(data, tmp_path, capsys, k):
    _, model = data
    path = tmp_path / "k.db"
    model_db(path, model)
    with closing(hqdb.connect(path)) as db:
        db.create_collection("c", "m")
    rc, _, err = run(capsys, "search", "--db", path, "--collection", "c", "--text", "castle", "-k", k)
    assert rc == 1 and f"k must be between 1 and 65536, got {k}" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ item 18
def test_readme_quickstart_runs_twice(tmp_path):
    from test_docs import run_file

    first = run_file(ROOT / "README.md", tmp_path)
    assert first, "the README has no runnable example"
    assert run_file(ROOT / "README.md", tmp_path) == first
    with closing(hqdb.connect(tmp_path / "media.db")) as db:
        assert len(db.collection("photos")) == 1000


def test_gitignore_covers_the_demo_files():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "demo.db" in ignored and "media.db" in ignored


def test_k_limit_is_documented():
    for page in ("python.md", "cli.md", "sql.md"):
        assert "65,536" in (ROOT / "docs" / page).read_text() or "65536" in (ROOT / "docs" / page).read_text(), page
