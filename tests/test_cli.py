"""The ``hqdb`` command line: every subcommand end to end on a small synthetic set, checked
against the Python API it wraps; user mistakes give one line and exit status 1."""

from __future__ import annotations

import csv
import json
from contextlib import closing
import subprocess
import sys

import numpy as np
import pytest

import hqdb
from hqdb import datasets
from hqdb.cli import build_parser, main
from hqdb.evaluate import evaluate

torch = pytest.importorskip("torch")

SUBCOMMANDS = ["demo", "train", "index", "search", "eval", "bench", "models", "info", "check", "rebuild", "shell", "drop",
               "backup"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with train/query/database .npz files split from one synthetic set, and
    app.db holding model 'm' (trained through the CLI)."""
    d = tmp_path_factory.mktemp("cli")
    pairs = datasets.synthetic_pairs(700, seed=5)
    fields = {k: v for k, v in pairs.items() if k != "label_names"}
    np.savez(d / "train.npz", **{k: v[:400] for k, v in fields.items()})
    np.savez(d / "queries.npz", **{k: v[400:450] for k, v in fields.items()})
    np.savez(d / "items.npz", **{k: v[450:] for k, v in fields.items()},
             title=np.array([f"item {i}" for i in range(250)]), year=2000 + np.arange(250) % 25)
    rc = main(["train", str(d / "train.npz"), "--db", str(d / "app.db"), "--name", "m", "--bits", "32",
               "--books", "2", "--codewords", "16", "--epochs", "3", "-q"])
    assert rc == 0
    rc = main(["index", str(d / "items.npz"), "--db", str(d / "app.db"), "--collection", "base", "--model", "m", "-q"])
    assert rc == 0
    return d


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("command", [None] + SUBCOMMANDS)
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(([command] if command else []) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hqdb")
    if command is None:
        assert all(c in out for c in SUBCOMMANDS)


def test_every_subcommand_is_dispatched():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


def test_index_search_info_models(work, capsys):
    db_path = work / "app.db"
    rc, out, err = run(capsys, "index", work / "items.npz", "--db", db_path, "--collection", "photos",
                       "--model", "m", "--columns", "title,year", "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["inserted"] == 250 and result["created"] and result["columns"] == {"title": "TEXT", "year": "INTEGER"}
    # The same items again: appended to the existing collection.
    rc, out, _ = run(capsys, "index", work / "items.npz", "--db", db_path, "--collection", "photos", "-q")
    assert rc == 0 and "indexed 250 items into collection 'photos'" in out and "500 rows" in out

    rc, out, _ = run(capsys, "search", "--db", db_path, "--collection", "photos", "--text", "castle on a hill",
                     "-k", "5", "--where", "year > ? AND title LIKE ?", "--arg", "2010", "--arg", "item 1%", "--json")
    assert rc == 0
    with closing(hqdb.connect(db_path)) as db:
        expected = db.collection("photos").search(text="castle on a hill", k=5, where="year > ? AND title LIKE ?",
                                                  where_args=[2010, "item 1%"])
    assert json.loads(out) == expected.to_dicts() and len(expected) == 5
    np.save(work / "q.npy", np.load(work / "queries.npz")["image"][:3])
    rc, out, _ = run(capsys, "search", "--db", db_path, "--collection", "photos", "--image", work / "q.npy",
                     "--row", "2", "-k", "3")
    assert rc == 0
    with closing(hqdb.connect(db_path)) as db:
        want = db.collection("photos").search(image=np.load(work / "q.npy")[2], k=3)
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rowid", "distance", "hamming", "title", "year"]
    assert [int(line.split()[0]) for line in lines[1:]] == want.rowids.tolist()

    rc, out, _ = run(capsys, "info", "--db", db_path, "--json")
    assert rc == 0
    info = json.loads(out)
    (photos,) = [t for t in info["database"]["tables"] if t["table"] == "photos"]
    assert photos["rows"] == 500 and photos["model"] == "m" and photos["code_bytes_per_item"] == 32 // 8 + 2
    assert photos["modalities"] == ["image", "text"] and info["backend"] in ("native", "numba")
    rc, out, _ = run(capsys, "info", "--db", db_path)
    assert rc == 0 and "photos" in out and "collection" in out and "kernels:" in out
    rc, out, _ = run(capsys, "models", "--db", db_path, "--json")
    assert rc == 0 and [m["name"] for m in json.loads(out)] == ["m"]


def test_index_csv(work, capsys):
    path = work / "captions.csv"
    img = np.load(work / "items.npz")["image"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "year", "text", "image"])
        w.writerow(["/a.jpg", "2021", "castle tower on a hill", json.dumps(img[0].tolist())])
        w.writerow(["/b.jpg", "", "sand sea wave", ""])
        w.writerow(["/c.jpg", "2019", "", " ".join(map(str, img[1].tolist()))])
    rc, out, err = run(capsys, "index", path, "--db", work / "app.db", "--collection", "csv_items", "--model", "m")
    assert rc == 0, err
    db = hqdb.connect(work / "app.db")
    c = db.collection("csv_items")
    assert c.columns == {"path": "TEXT", "year": "INTEGER"}
    assert list(c) == [{"rowid": 1, "path": "/a.jpg", "year": 2021}, {"rowid": 2, "path": "/b.jpg", "year": None},
                       {"rowid": 3, "path": "/c.jpg", "year": 2019}]
    has = c.db.execute("SELECT image_code IS NOT NULL, text_code IS NOT NULL FROM csv_items ORDER BY rowid").fetchall()
    assert has == [(1, 1), (0, 1), (1, 0)]
    assert c.search(image=img[1], target="image", k=1)[0].rowid == 3  # its own code: Hamming 0
    db.close()


def test_index_error_creates_nothing(work, capsys):
    path = work / "bad.csv"
    path.write_text('title,image\nok,"[1.0, 2.0]"\n')
    rc, _, err = run(capsys, "index", path, "--db", work / "app.db", "--collection", "never", "--model", "m")
    assert rc == 1 and "never.image (item 0): expected 128 float features (shape (128,)), got shape (2,)" in err
    with closing(hqdb.connect(work / "app.db")) as db:
        assert "never" not in db.collections()
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'never%'").fetchone() == (0,)
    path.write_text("title,image\nok,[1.0, 2.0]\n")
    rc, _, err = run(capsys, "index", path, "--db", work / "app.db", "--collection", "never", "--model", "m")
    assert rc == 1 and "bad.csv line 2: the number of fields differs from the header" in err


def test_eval_json_equals_the_python_path_and_plots(work, capsys):
    pytest.importorskip("matplotlib")
    plot = work / "eval.png"
    rc, out, _ = run(capsys, "eval", "--db", work / "app.db", "--model", "m", "--queries", work / "queries.npz",
                     "--database", work / "items.npz", "--json", "--plot", plot)
    assert rc == 0
    got = json.loads(out)
    with closing(hqdb.connect(work / "app.db")) as db:
        want = evaluate(db, "m", str(work / "queries.npz"), str(work / "items.npz"))
        # The evaluation tables are gone again.
        assert db.execute("SELECT count(*) FROM hqdb_tables WHERE name LIKE 'hqdb_eval%'").fetchone() == (0,)
    for d in ("i2t", "t2i", "harmonic"):
        assert got[d] == want[d]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_bench_full_candidates_equals_aqd_map(work, capsys):
    """At candidates = all items the two-stage search is AQD over all: its MAP@50 must equal
    evaluate()'s 'aqd' ranking on the same data."""
    pytest.importorskip("matplotlib")
    rc, out, _ = run(capsys, "bench", "--db", work / "app.db", "--model", "m", "--queries", work / "queries.npz",
                     "--database", work / "items.npz", "--candidates", "50,100,100000", "--json",
                     "--plot", work / "bench.png")
    assert rc == 0
    result = json.loads(out)
    assert [r["candidates"] for r in result["rows"]] == [50, 100, 250]
    assert all(r["p50_ms"] > 0 and 0 <= r["map@50"] <= 1 for r in result["rows"])
    with closing(hqdb.connect(work / "app.db")) as db:
        want = evaluate(db, "m", str(work / "queries.npz"), str(work / "items.npz"))
    assert result["rows"][-1]["map@50"] == pytest.approx(want["i2t"]["aqd"]["map@50"], abs=1e-12)
    assert (work / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["search", "--db", "{d}/nope.db", "--collection", "x", "--text", "a"], "no database file"),
    (["search", "--db", "{d}/app.db", "--collection", "nope", "--text", "a"], "no collection named 'nope'"),
    (["search", "--db", "{d}/app.db", "--collection", "base"], "give --text"),
    (["search", "--db", "{d}/app.db", "--collection", "base", "--text", "a", "-k", "0"], "k must be between 1"),
    (["search", "--db", "{d}/app.db", "--collection", "base", "--image", "{d}/queries.npz", "--key", "x"],
     "has no array 'x'"),
    (["search", "--db", "{d}/app.db", "--collection", "base", "--text", "a", "--where", "colour = 1"],
     "no such column: colour"),
    (["index", "{d}/items.npz", "--db", "{d}/app.db", "--collection", "new_one"], "pass --model to create it"),
    (["index", "{d}/missing.npz", "--db", "{d}/app.db", "--collection", "x", "--model", "m"], "no such file"),
    (["index", "{d}/items.npz", "--db", "{d}/app.db", "--collection", "x", "--model", "m", "--columns", "colour"],
     "has no field(s) ['colour']"),
    (["eval", "--db", "{d}/app.db", "--model", "zz", "--queries", "{d}/queries.npz", "--database", "{d}/items.npz"],
     "no model named 'zz'"),
    (["train", "{d}/train.npz", "--db", "{d}/app.db", "--name", "m"], "already has a model named 'm'"),
    (["train", "{d}/train.npz", "--db", "{d}/other.db", "--name", "x", "--bits", "12"], "bits must be a multiple of 8"),
    (["bench", "--db", "{d}/app.db"], "also give --model"),
])
def test_user_errors_are_one_line(work, capsys, argv, message):
    before = sorted(p.name for p in work.iterdir())
    rc, out, err = run(capsys, *[a.format(d=work) for a in argv])
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("hqdb: error: ") and message in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith("app.db-")) == \
        [n for n in before if not n.startswith("app.db-")]  # no file created by a mistake


def test_entry_point_exit_status(work):
    done = subprocess.run([sys.executable, "-m", "hqdb", "search", "--db", str(work / "app.db"),
                           "--collection", "nope", "--text", "x"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("hqdb: error: no collection named 'nope'")
    assert "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "hqdb", "search"], capture_output=True, text=True)
    assert done.returncode == 2 and "required" in done.stderr  # argparse usage error


def test_progress_bars_on_a_terminal(work, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, "index", work / "items.npz", "--db", work / "app.db", "--collection", "bars",
                     "--model", "m")
    assert rc == 0 and "insert bars" in err and "/250" in err
    rc, _, err = run(capsys, "index", work / "items.npz", "--db", work / "app.db", "--collection", "bars", "-q")
    assert rc == 0 and err == ""


def test_demo(tmp_path, capsys):
    """The README's main job: trains, indexes, searches in SQL and reports MAP (a quality floor
    on the synthetic set; measured 0.94 image->text, 1.00 text->image two-stage MAP@50)."""
    from hqdb.demo import run_model

    result = run_model(str(tmp_path / "demo.db"), bits=64, seed=0)
    out = capsys.readouterr().out
    assert "image -> text" in out and "text -> image" in out and "MAP@50 through SQL" in out
    assert "a typical one" in out  # the showcased query is the median one, not the first
    assert "the same from Python" in out and "Hit(rowid=" in out
    assert result["i2t"]["two_stage"]["map@50"] > 0.85 and result["t2i"]["two_stage"]["map@50"] > 0.9


def test_check_and_rebuild(tmp_path, capsys):
    import hqdb

    path = str(tmp_path / "c.db")
    db = hqdb.connect(path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=16, books=0, chunk_size=8)")
    db.executemany("INSERT INTO t(code) VALUES (?)", [(bytes([i, i]),) for i in range(40)])
    db.close()
    assert main(["check", path]) == 0
    assert "t: ok" in capsys.readouterr().out
    db = hqdb.connect(path)
    db.execute("UPDATE t_rows SET slot = (slot + 1) % 8 WHERE rowid = 3")
    db.close()
    assert main(["check", path, "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and any("row 3" in p for p in report["tables"]["t"])
    assert main(["rebuild", path, "t", "--vacuum"]) == 0
    assert "40 rows kept, 0 lost" in capsys.readouterr().out
    assert main(["check", path, "--table", "t"]) == 0
    # A row whose codes are gone: rebuild names it and changes nothing unless told to drop it.
    db = hqdb.connect(path)
    db.execute("UPDATE t_rows SET rowid = 1000 WHERE rowid = 5")  # no slot carries rowid 1000
    db.execute("DELETE FROM t_rows WHERE rowid = 6")  # the slots of rowids 5 and 6 are now orphans
    db.close()
    capsys.readouterr()
    assert main(["rebuild", path, "t"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hqdb: error: hq table t: 1 rows have lost their codes (1000)") and err.count("\n") == 1
    assert main(["rebuild", path, "t", "--drop-missing", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows_dropped"] == 1 and stats["rows"] == 38 and stats["orphans_dropped"] == {"code": 2}
    assert main(["check", path]) == 0
    assert main(["check", str(tmp_path / "nope.db")]) == 1
