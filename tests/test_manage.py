"""Managing databases and models: ``hqdb models list|rm|rename`` (``hqdb.delete_model``,
``hqdb.rename_model``), ``hqdb backup`` (``hqdb.backup``) while another process writes,
``hqdb shell`` (apsw's shell with the hq module) and ``hqdb drop``; and what a client without
hqdb (Python's sqlite3) can and cannot do with an hq database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

import hqdb
from hqdb import datasets
from hqdb.cli import main

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    pairs = datasets.synthetic_pairs(500, seed=3)
    return hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=2)


@pytest.fixture(scope="module")
def pairs():
    return datasets.synthetic_pairs(400, seed=11)


@pytest.fixture
def media(tmp_path, model, pairs):
    """media.db: model 'm', collection 'photos' (300 items, columns title, year), raw hq table
    'raw', plain table 'notes'."""
    path = tmp_path / "media.db"
    with closing(hqdb.connect(path)) as db:
        hqdb.save_model(db, "m", model)
        hqdb.save_model(db, "spare", model)
        photos = db.create_collection("photos", model="m", columns={"title": str, "year": int})
        photos.insert_all([{"title": f"photo {i}", "year": 2000 + i % 25, "image": pairs["image"][i],
                            "text": str(pairs["text"][i])} for i in range(300)])
        db.execute("CREATE VIRTUAL TABLE raw USING hq(dim=64, books=0)")
        db.execute("CREATE TABLE notes(body TEXT)")
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- models
def test_models_list_rm_rename(media, capsys):
    rc, out, _ = run(capsys, "models", "--db", media)  # the old spelling still lists
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "method", "bits", "books", "modalities", "tables", "created"]
    assert lines[1].split()[:6] == ["m", "hq", "32", "2x16", "image,text", "photos"]
    assert lines[2].split()[:6] == ["spare", "hq", "32", "2x16", "image,text", "-"]
    rc, out, _ = run(capsys, "models", "list", "--db", media, "--json")
    assert rc == 0 and [(m["name"], m["tables"]) for m in json.loads(out)] == [("m", ["photos"]), ("spare", [])]

    rc, out, _ = run(capsys, "models", "rename", "spare", "backup-1", "--db", media)
    assert rc == 0 and "renamed model 'spare' to 'backup-1'" in out
    with closing(hqdb.connect(media)) as db:
        assert [m["name"] for m in hqdb.list_models(db)] == ["backup-1", "m"]
        again = hqdb.load_model(db, "backup-1")  # config and every tensor moved with the name
        assert again.bits == 32 and again.modalities == ("image", "text")
    rc, out, _ = run(capsys, "models", "rm", "backup-1", "--db", media, "--json")
    assert rc == 0 and json.loads(out) == {"deleted": "backup-1", "tables_left_without_model": []}
    with closing(hqdb.connect(media)) as db:
        assert [m["name"] for m in hqdb.list_models(db)] == ["m"]
        assert db.execute("SELECT count(*) FROM hqdb_model_tensors WHERE model = 'backup-1'").fetchone() == (0,)


@pytest.mark.parametrize("argv, message", [
    (["models", "rm", "m"], "model 'm' is used by hq table(s) photos: drop them first"),
    (["models", "rename", "m", "m2"], "model 'm' is used by hq table(s) photos"),
    (["models", "rename", "spare", "m"], "a model named 'm' already exists"),
    (["models", "rm", "nope"], "no model named 'nope' in this database (models: ['m', 'spare'])"),
    (["models", "rename", "spare", "bad name"], "model name 'bad name': use 1-128 letters"),
    (["models", "rm"], "models rm takes 1 name(s), got 0"),
    (["models", "list", "x"], "models list takes 0 name(s), got 1"),
    (["models", "rename", "spare", "x", "--force"], "--force goes with models rm"),
])
def test_models_mistakes_change_nothing(media, capsys, argv, message):
    rc, _, err = run(capsys, *argv, "--db", media)
    assert rc == 1 and err.startswith("hqdb: error: ") and message in err and err.count("\n") == 1, err
    with closing(hqdb.connect(media)) as db:
        assert [m["name"] for m in hqdb.list_models(db)] == ["m", "spare"]
        assert len(db.collection("photos")) == 300


def test_delete_model_force_leaves_tables_that_cannot_encode(media, capsys, pairs):
    with closing(hqdb.connect(media)) as db:
        with pytest.raises(hqdb.ModelError, match=r"used by hq table\(s\) photos"):
            hqdb.delete_model(db, "m")
        with pytest.raises(hqdb.ModelError, match="a table's definition names its model"):
            hqdb.rename_model(db, "m", "m2")
        hqdb.rename_model(db, "spare", "spare")  # to its own name: nothing to do
    rc, _, err = run(capsys, "models", "rm", "m", "--force", "--db", media)
    assert rc == 0 and "photos" in err and "cannot insert or search" in err
    with closing(hqdb.connect(media)) as db:
        assert [m["name"] for m in hqdb.list_models(db)] == ["spare"]
        assert db.execute("SELECT count(*) FROM photos_rows").fetchone() == (300,)  # rows stay
        with pytest.raises(hqdb.HqdbError, match="no model named 'm'"):
            db.collection("photos").search(text="castle", k=3)
        # Saving a model of that name and shape again makes the table usable.
        hqdb.save_model(db, "m", hqdb.load_model(db, "spare"))
        assert len(db.collection("photos").search(image=pairs["image"][0], k=3)) == 3
        assert hqdb.delete_model(db, "spare") == []


# ---------------------------------------------------------------- backup
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import hqdb
    path, batches = sys.argv[1], int(sys.argv[2])
    db = hqdb.connect(path, timeout=30)
    photos = db.collection("photos")
    rng = np.random.default_rng(0)
    d = photos.model.input_dim("image")
    for b in range(batches):
        # 25 items per transaction: a consistent copy holds a multiple of 25 new rows
        photos.insert_all([{"title": f"w{b}", "year": b, "image": rng.standard_normal(d)} for _ in range(25)])
        print(b, flush=True)
    db.close()
""")


def test_backup_is_consistent_while_another_process_writes(media, tmp_path, capsys, pairs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(media), "400"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "0", writer.stderr.read()  # the writer is writing
        copies = []
        for i in range(3):
            out = tmp_path / f"copy{i}.db"
            rc, stdout, err = run(capsys, "backup", media, out, "--check", "--json")
            assert rc == 0, err
            result = json.loads(stdout)
            assert result["check"]["ok"] and result["bytes"] == out.stat().st_size
            copies.append(out)
            time.sleep(0.2)
        running = writer.poll() is None
    finally:
        writer.wait(timeout=300)
    assert writer.returncode == 0, writer.stderr.read()
    assert running  # the copies were made while the writer was still inserting
    counts = []
    for out in copies:
        assert not Path(str(out) + "-wal").exists()  # a self-contained file
        with closing(hqdb.connect(out, readonly=True)) as db:
            assert hqdb.check.check(db)["ok"]
            n = len(db.collection("photos"))
            assert (n - 300) % 25 == 0  # whole transactions only
            counts.append(n)
            hits = db.collection("photos").search(image=pairs["image"][7], target="image", k=5, mode="hamming")
            assert len(hits) == 5 and hits[0].hamming == 0  # the item's own image code is in the copy
    assert counts == sorted(counts) and counts[-1] > 300


def test_backup_errors(media, tmp_path, capsys):
    with closing(hqdb.connect(media)) as db:
        copy = hqdb.backup(db, tmp_path / "one.db")
        assert copy["path"] == str(tmp_path / "one.db") and copy["pages"] > 0
        with pytest.raises(hqdb.DatabaseError, match="already exists"):
            hqdb.backup(db, tmp_path / "one.db")
        with pytest.raises(hqdb.DatabaseError, match="onto itself"):
            hqdb.backup(db, media, overwrite=True)
        with db.transaction(), pytest.raises(hqdb.DatabaseError, match="open transaction"):
            hqdb.backup(db, tmp_path / "two.db")
        assert hqdb.backup(db, tmp_path / "one.db", overwrite=True)["bytes"] > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    rc, _, err = run(capsys, "backup", media, tmp_path / "one.db")
    assert rc == 1 and "--overwrite" in err
    rc, _, err = run(capsys, "backup", tmp_path / "nope.db", tmp_path / "x.db")
    assert rc == 1 and "no database file" in err and not (tmp_path / "x.db").exists()


# ---------------------------------------------------------------- shell
def test_shell_runs_sql_on_hq_tables(media, capsys, pairs):
    sql = ("SELECT rowid, title FROM photos WHERE hq_match(image, hq_query('text', 'castle tower')) "
           "AND k = 4")
    rc, out, err = run(capsys, "shell", media, "--header", sql)
    assert rc == 0, err
    with closing(hqdb.connect(media)) as db:
        want = db.collection("photos").search(text="castle tower", k=4)
    assert out.splitlines() == ["rowid|title"] + [f"{h.rowid}|{h.title}" for h in want]
    rc, out, _ = run(capsys, "shell", media, "--mode", "json", "SELECT count(*) AS n FROM photos")
    assert rc == 0 and json.loads(out) == [{"n": 300}]
    # Writes through the hq table work; the shadow tables are read-only here (defensive mode).
    rc, out, err = run(capsys, "shell", media, "INSERT INTO photos(text, title, year) VALUES ('a castle', 'new', 2030)",
                       "SELECT count(*) FROM photos_rows")
    assert rc == 0 and out.strip() == "301", err
    rc, out, err = run(capsys, "shell", media, "DELETE FROM photos_rows WHERE rowid = 1", "SELECT 'not run'")
    assert rc == 1 and "photos_rows may not be modified" in err and "not run" not in out
    rc, _, err = run(capsys, "shell", media, "SELECT * FROM nowhere")
    assert rc == 1 and "no such table: nowhere" in err
    rc, _, err = run(capsys, "shell", media, "--readonly", "DELETE FROM photos WHERE rowid = 2")
    assert rc == 1 and "readonly" in err
    with closing(hqdb.connect(media)) as db:
        assert hqdb.check.check(db)["ok"] and len(db.collection("photos")) == 301
    rc, _, err = run(capsys, "shell", media.parent / "typo.db", "SELECT 1")
    assert rc == 1 and "no database file" in err and not (media.parent / "typo.db").exists()


def test_shell_reads_sql_from_stdin(media):
    done = subprocess.run([sys.executable, "-m", "hqdb", "shell", str(media)], capture_output=True, text=True,
                          input="SELECT count(*) FROM photos;\nSELECT length(image_code) FROM photos LIMIT 1;\n",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["300", "4"]  # 32-bit codes: 4 bytes
    # A script stops at its first error, with exit status 1.
    done = subprocess.run([sys.executable, "-m", "hqdb", "shell", str(media)], capture_output=True, text=True,
                          input="SELECT 1;\nSELECT * FROM nowhere;\nSELECT 2;\n",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and done.stdout.split() == ["1"] and "no such table: nowhere" in done.stderr


# ---------------------------------------------------------------- drop
def test_drop(media, capsys):
    rc, _, err = run(capsys, "drop", media, "notes")
    assert rc == 1 and "notes is not an hq table but a plain SQLite table" in err and "DROP TABLE" in err
    rc, _, err = run(capsys, "drop", media, "photos_rows")
    assert rc == 1 and "shadow table of the hq table 'photos'" in err
    rc, _, err = run(capsys, "drop", media, "nope")
    assert rc == 1 and "no table 'nope'" in err and "hq tables: photos, raw" in err
    rc, out, _ = run(capsys, "drop", media, "nope", "--if-exists", "--json")
    assert rc == 0 and json.loads(out) == {"dropped": None}
    rc, out, _ = run(capsys, "drop", media, "PHOTOS", "--json")
    assert rc == 0 and json.loads(out) == {"dropped": "photos", "kind": "collection", "model": "m", "rows": 300}
    rc, out, _ = run(capsys, "drop", media, "raw")
    assert rc == 0 and "dropped raw hq table 'raw' (0 rows)" in out
    with closing(hqdb.connect(media)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert not [n for n in names if n.startswith(("photos", "raw"))] and "notes" in names
        assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)
        assert [m["name"] for m in hqdb.list_models(db)] == ["m", "spare"]  # models stay


# ---------------------------------------------------------------- other clients
def test_other_clients_read_plain_and_shadow_tables_only(media):
    """What docs/sql.md says about clients without hqdb, checked with Python's sqlite3."""
    with closing(sqlite3.connect(media)) as plain:
        assert plain.execute("SELECT title, year FROM photos_rows WHERE rowid = 3").fetchone() == ("photo 2", 2002)
        assert plain.execute("SELECT name FROM hqdb_tables ORDER BY name").fetchall() == [("photos",), ("raw",)]
        assert plain.execute("SELECT count(*) FROM photos_image_chunks").fetchone()[0] >= 1
        for sql in ("SELECT * FROM photos", "DROP TABLE photos", "INSERT INTO photos(title) VALUES ('x')"):
            with pytest.raises(sqlite3.OperationalError, match="no such module: hq"):
                plain.execute(sql)
    with closing(hqdb.connect(media)) as db:
        assert hqdb.check.check(db)["ok"] and len(db.collection("photos")) == 300


def test_drop_a_table_whose_model_was_force_deleted(media, capsys):
    assert run(capsys, "models", "rm", "m", "--force", "--db", media)[0] == 0
    rc, out, err = run(capsys, "drop", media, "photos")
    assert rc == 0 and out.strip() == f"dropped collection 'photos' (300 rows) with its shadow tables from {media}"
    with closing(hqdb.connect(media)) as db:
        assert db.collections() == ["raw"] and hqdb.check.check(db)["ok"]


def test_shell_bad_mode_is_one_line(media, capsys):
    rc, _, err = run(capsys, "shell", media, "--mode", "bogus", "SELECT 1")
    assert rc == 1 and err.startswith("hqdb: error: --mode 'bogus': Expected a valid output mode") and \
        err.count("\n") == 1


def test_shell_opens_a_database_with_a_keyword_index(media, capsys):
    # The keyword index's sync triggers sit on a shadow table; SQLite's defensive mode cannot
    # parse them, so the shell runs without it there and says so, instead of failing every query.
    with closing(hqdb.connect(media)) as db:
        db.collection("photos").enable_fts("title")
    rc, out, err = run(capsys, "shell", media, "SELECT count(*) FROM photos WHERE year = 2003")
    assert rc == 0 and out.strip() == "12"
    assert "keyword index" in err and "defensive mode is off" in err
    rc, out, err = run(capsys, "shell", media, "SELECT rowid FROM photos_fts WHERE photos_fts MATCH 'photo' LIMIT 1")
    assert rc == 0 and out.strip()
