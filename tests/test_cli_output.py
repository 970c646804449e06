"""What the command line shows: ``hqdb search``'s aligned columns (Hamming distances as
integers), the one install hint for a missing matplotlib (the README's command), and pictures
whose legends sit off the data and whose candidate axis labels every measured count."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import hqdb
from hqdb import datasets
from hqdb.cli import main

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    pairs = datasets.synthetic_pairs(500, seed=4)
    model = hqdb.train({k: v[:400] for k, v in pairs.items() if k != "label_names"}, bits=32, books=2,
                       codewords=16, seed=0, progress=False, epochs=2)
    with hqdb.connect(d / "app.db") as db:
        hqdb.save_model(db, "m", model)
        photos = db.create_collection("photos", model="m", columns={"title": str, "year": int, "score": float})
        photos.insert_all([{"title": f"photo number {i}", "year": None if i % 2 == 0 else 1990 + i,
                            "score": i * 1.5, "image": pairs["image"][i], "text": str(pairs["text"][i])}
                           for i in range(400, 500)])
    fields = {k: v for k, v in pairs.items() if k != "label_names"}
    np.savez(d / "q.npz", **{k: v[:20] for k, v in fields.items()})
    np.savez(d / "items.npz", **{k: v[400:] for k, v in fields.items()})
    return d


def search_lines(work, capsys, *extra, k=12):
    rc = main(["search", "--db", str(work / "app.db"), "--collection", "photos", "--text", "castle tower",
               "-k", str(k), *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out.rstrip("\n").splitlines()


def test_search_columns_are_aligned(work, capsys):
    # every one of the 100 items (rowids 1..100): which 12 a model puts first is not this test's
    # business, rowids of 1, 2 and 3 digits are
    lines = search_lines(work, capsys, k=100)
    header, rows = lines[0], lines[1:]
    assert header.split() == ["rowid", "distance", "hamming", "title", "year", "score"] and len(rows) == 100
    assert any(" NULL " in r for r in rows)  # a NULL year among the hits
    assert {len(r.split()[0]) for r in rows} == {1, 2, 3}  # rowids of different widths, still aligned below
    for name in ("rowid", "distance", "hamming", "year", "score"):  # numbers: right-aligned under the name
        end = header.index(name) + len(name)
        for r in rows:
            assert r[end - 1] != " " and (end == len(r) or r[end] == " "), (name, r)
    start = header.index("title")  # text: left-aligned under the name
    for r in rows:
        assert r[start - 1] == " " and r[start:].startswith("photo number ")
    for r in rows:
        assert re.fullmatch(r"-?\d+\.\d{4}", r[:header.index("distance") + 8].split()[-1])


def test_hamming_distances_are_integers(work, capsys):
    lines = search_lines(work, capsys, "--mode", "hamming")
    for r in lines[1:]:
        rowid, distance, hamming = r.split()[:3]
        assert distance == hamming and distance.isdigit()


def test_missing_matplotlib_hint_once_and_as_in_the_readme(work, capsys, monkeypatch):
    command = "pip install -e '.[plot]'"
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails, as when not installed
    for argv in (["eval", "--db", str(work / "app.db"), "--model", "m", "--queries", str(work / "q.npz"),
                  "--database", str(work / "items.npz"), "--plot", str(work / "e.png")],
                 ["bench", "--plot", str(work / "b.png"), "--items", "100000"]):  # fails before training
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and err.count("pip install") == 1 and command in err and err.count("\n") == 1, err
        assert not (work / "e.png").exists() and not (work / "b.png").exists()
    with hqdb.connect(work / "app.db") as db:  # the evaluation never started
        assert db.execute("SELECT count(*) FROM hqdb_tables WHERE name LIKE 'hqdb_eval%'").fetchone() == (0,)


def test_pictures_legends_off_the_data_and_labelled_ticks(work, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from hqdb.plots import draw_bench, draw_eval

    rc = main(["bench", "--db", str(work / "app.db"), "--model", "m", "--queries", str(work / "q.npz"),
               "--database", str(work / "items.npz"), "--candidates", "10,20,50,100", "-k", "10", "--json",
               "--plot", str(tmp_path / "bench.png")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    fig = draw_bench(result)
    top, bottom = fig.axes
    assert [r["candidates"] for r in result["rows"]] == [10, 20, 50, 100]
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["10", "20", "50", "100"]  # each count labelled
    assert not bottom.xaxis.get_minorticklocs().size  # and no unlabelled minor ticks between them
    assert top.get_ylim()[0] == 0 and top.get_legend() is None and bottom.get_legend() is None
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"

    rc = main(["eval", "--db", str(work / "app.db"), "--model", "m", "--queries", str(work / "q.npz"),
               "--database", str(work / "items.npz"), "--json", "-q"])
    assert rc == 0
    evaluation = json.loads(capsys.readouterr().out)
    curves = {"m": {d: {"precision": [1.0, 0.5], "recall": [0.1, 1.0]} for d in ("i2t", "t2i")}}
    fig = draw_eval([evaluation], curves)
    assert all(ax.get_legend() is None for ax in fig.axes)  # figure legends, outside the panels
    assert [[t.get_text() for t in leg.get_texts()] for leg in fig.legends] == [
        ["m (32 bits)"], ["two-stage", "aqd", "hamming", "lossless"]]
