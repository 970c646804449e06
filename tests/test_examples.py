"""The examples/ apps run and answer sensibly (quality floors on the synthetic set)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import photo_library as app  # noqa: E402


def test_photo_library(tmp_path, capsys):
    db = tmp_path / "library.db"
    library, held_out = app.build_demo_library(str(db), n_photos=1000)
    # text -> image: the photos found for a topic's words are mostly of that topic.
    for words, album in (("castle tower knight", "castles"), ("snow glacier summit", "mountains")):
        hits = library.find_photos(words, k=10)
        assert sum(h["album"] == album for h in hits) >= 8, [h["album"] for h in hits]
    hits = library.find_photos("castle tower knight", k=10, album="beaches", since=2020)
    assert len(hits) == 10 and all(h["album"] == "beaches" and h["year"] >= 2020 for h in hits)
    # image -> text: captions suggested for held-out photos come from the photo's topic.
    right = 0
    for i in range(20):
        captions = library.suggest_captions(held_out["image"][i], k=1)
        row = next(r for r in library.photos if r["caption"] == captions[0])
        right += row["album"] == held_out["topic"][i]
    assert right >= 16, right
    # Re-adding a path updates that photo instead of duplicating it.
    n = len(library)
    first = next(iter(library.photos))
    again = app.Photo(first["path"], "an old photo near the big tower", first["album"], 1999, image=held_out["image"][0])
    assert library.add([again]) == [first["rowid"]] and len(library) == n
    assert library.photos.get(first["rowid"])["caption"] == "an old photo near the big tower"
    library.close()
    # The script's main() reopens the same file: the model is trained once per library.
    app.main(["--db", str(db)])
    out = capsys.readouterr().out
    assert "photos of 'a castle on a hill'" in out and "1500 photos" in out  # main() adds 500 more
