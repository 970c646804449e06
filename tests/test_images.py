"""Images and captions in: image featurizers (timm backbones stored as configuration), image
inputs to collections and insert_items, training from a folder, ``hqdb index DIR`` (resumable
after SIGKILL) and ``hqdb search --image``.

Nothing is downloaded: the backbone is a randomly initialised timm ``resnet10t`` (seed 0) whose
state dict the tests save to local files and load through the real code path. The images are
real PNG files drawn with Pillow (coloured shapes; the captions name colour and shape), so
search quality can be asserted. Most tests need the ``images`` extra (timm, Pillow on torch) and
skip without it; the checks of stored configurations need numpy only and always run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hqdb
from hqdb.model.featurize import featurizer_from_state

EXTRA = "needs the images extra: pip install 'hqdb[images]'"
COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")
SIZE = 64
N_IMAGES = 96
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------
# stored configuration (no image stack needed)
# ------------------------------------------------------------------------------------------
GOOD = {
    "type": "image",
    "library": "timm",
    "backbone": "resnet10t",
    "weights": "/models/resnet10t.safetensors",
    "sha256": "0" * 64,
    "image_size": 64,
    "dim": 512,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


def test_stored_image_featurizer_state_round_trips_without_building_anything():
    fz = featurizer_from_state(GOOD)
    assert fz.state() == GOOD
    assert fz.dim == 512 and fz.kind == "image"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"library": "pickle"}, "'library' must be one of"),
        ({"backbone": "../../etc/passwd"}, "is not a timm model name"),
        ({"backbone": "os.system('rm -rf /')"}, "is not a timm model name"),
        ({"backbone": ""}, "is not a timm model name"),
        ({"backbone": "hf-hub:someone/evil"}, "is not a timm model name"),
        ({"weights": 12}, "'weights' must be a file path"),
        ({"weights": "a\x00b"}, "'weights' must be a file path"),
        ({"weights": "x" * 5000}, "'weights' must be a file path"),
        ({"sha256": "abc"}, "'sha256' must be 64"),
        ({"image_size": 100000}, "'image_size' must be an integer in 16..1024"),
        ({"image_size": 8}, "'image_size' must be an integer in 16..1024"),
        ({"image_size": True}, "'image_size' must be an integer"),
        ({"dim": 0}, "'dim' must be an integer in 1..65536"),
        ({"dim": "512"}, "'dim' must be an integer"),
        ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3 finite numbers"),
        ({"std": [0.2, 0.0, 0.2]}, "'std' must be positive"),
        ({"std": [0.2, float("nan"), 0.2]}, "'std' must be a list of 3 finite numbers"),
        ({"code": "import os"}, "unknown keys"),
    ],
)
def test_hostile_image_featurizer_states_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        featurizer_from_state({**GOOD, **change})


def test_image_featurizer_dim_must_match_the_tower():
    from hqdb.model.model import FORMAT, TrainedModel

    config = {
        "format": FORMAT,
        "bits": 8,
        "books": 0,
        "codewords": 1,
        "modalities": ["image"],
        "towers": {"image": {"input_dim": 4, "layers": [8], "activation": "relu"}},
        "featurizers": {"image": GOOD},
    }
    with pytest.raises(ValueError, match="featurizer makes 512-d vectors but input_dim is 4"):
        TrainedModel.from_state(config, {})


# ------------------------------------------------------------------------------------------
# fixtures with the image stack
# ------------------------------------------------------------------------------------------
def draw(color: str, shape: str, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(im)
    r = int(rng.integers(14, 24))
    cx, cy = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, 2))
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def kind(i: int) -> tuple[str, str]:
    return list(COLORS)[i % 4], SHAPES[(i // 4) % 3]


def make_folder(folder: Path, n: int = N_IMAGES, *, sidecars: bool = False, seed: int = 0) -> list[tuple[str, str]]:
    """n PNG files with captions (captions.csv with a year column, or sidecar .txt files)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        color, shape = kind(i)
        name = f"img{i:03d}.png"
        draw(color, shape, rng).save(folder / name)
        rows.append((name, f"a {color} {shape}"))
        if sidecars:
            (folder / f"img{i:03d}.txt").write_text(f"a {color} {shape}\n")
    if not sidecars:
        with open(folder / "captions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "caption", "year"])
            w.writerows([(name, cap, 2000 + i % 5) for i, (name, cap) in enumerate(rows)])
    return rows


@pytest.fixture(scope="module")
def stack():
    pytest.importorskip("timm", reason=EXTRA)
    pytest.importorskip("PIL", reason=EXTRA)
    pytest.importorskip("safetensors", reason=EXTRA)
    import torch

    return torch


@pytest.fixture(scope="module")
def assets(stack, tmp_path_factory):
    """Local weight files of a random resnet10t (and of another backbone), and a photo folder."""
    import timm
    from safetensors.torch import save_file

    torch = stack
    root = tmp_path_factory.mktemp("images")
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(net.state_dict(), str(root / "resnet10t.safetensors"))
    torch.save(net.state_dict(), root / "resnet10t.pth")
    torch.manual_seed(1)
    other = timm.create_model("resnet14t", pretrained=False, num_classes=0)
    save_file(other.state_dict(), str(root / "resnet14t.safetensors"))
    make_folder(root / "photos")
    return root


@pytest.fixture(scope="module")
def trained(assets):
    """A model trained from the photo folder (labels not given: caption clusters)."""
    return hqdb.train(
        assets / "photos",
        image_featurizer="timm:resnet10t",
        weights=assets / "resnet10t.safetensors",
        image_size=SIZE,
        bits=32,
        epochs=15,
        hidden=[128],
        progress=False,
    )


def fresh_backbones():
    """Forget the built backbones: the next use loads them from the stored configuration."""
    from hqdb.model import images

    images._BACKBONES.clear()


# ------------------------------------------------------------------------------------------
# featurizers and weights
# ------------------------------------------------------------------------------------------
def test_weights_from_safetensors_and_pth_agree(assets):
    from hqdb.model.images import ImageFeaturizer

    a = ImageFeaturizer.create("timm:resnet10t", assets / "resnet10t.safetensors", image_size=SIZE)
    b = ImageFeaturizer.create("timm:resnet10t", assets / "resnet10t.pth", image_size=SIZE)
    assert a.dim == b.dim == 512
    ims = [draw("red", "circle", np.random.default_rng(3)), draw("blue", "square", np.random.default_rng(4))]
    fa, fb = a.transform(ims), b.transform(ims)
    assert fa.shape == (2, 512) and fa.dtype == np.float32
    np.testing.assert_allclose(fa, fb, atol=1e-6)
    assert not np.allclose(fa[0], fa[1])  # the features see the image
    state = a.state()
    assert state["weights"] == str(assets / "resnet10t.safetensors") and len(state["sha256"]) == 64
    json.dumps(state)  # configuration only


def test_weights_and_backbones_that_do_not_fit_are_refused(assets, tmp_path):
    from hqdb.model.images import ImageFeaturizer

    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        ImageFeaturizer.create("timm:no_such_net", assets / "resnet10t.safetensors")
    with pytest.raises(ValueError, match="unknown library"):
        ImageFeaturizer.create("keras:resnet10t", assets / "resnet10t.safetensors")
    with pytest.raises(ValueError, match="does not fit this backbone"):
        ImageFeaturizer.create("timm:resnet10t", assets / "resnet14t.safetensors", image_size=SIZE)
    with pytest.raises(ValueError, match="does not exist"):
        ImageFeaturizer.create("timm:resnet10t", tmp_path / "missing.pth")
    # A pickle that would run code when unpickled: torch.load(weights_only=True) refuses it.
    evil = tmp_path / "evil.pth"
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil.write_bytes(pickle.dumps({"conv1.weight": Boom()}, protocol=2))
    with pytest.raises(ValueError, match="cannot read weights file"):
        ImageFeaturizer.create("timm:resnet10t", evil)
    assert not (tmp_path / "pwned").exists()


def test_changed_weights_file_is_noticed(assets, tmp_path):
    from hqdb.model.images import ImageFeaturizer

    w = tmp_path / "w.safetensors"
    shutil.copy(assets / "resnet10t.safetensors", w)
    state = ImageFeaturizer.create("timm:resnet10t", w, image_size=SIZE).state()
    shutil.copy(assets / "resnet14t.safetensors", w)
    fresh_backbones()
    fz = featurizer_from_state(state)
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        fz.transform([draw("red", "circle", np.random.default_rng(0))])
    w.unlink()
    with pytest.raises(ValueError, match="does not exist here"):
        fz.transform([draw("red", "circle", np.random.default_rng(0))])


def test_pretrained_weights_come_from_the_user_cache_only(assets, tmp_path, monkeypatch):
    from hqdb.model.images import ImageFeaturizer

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="not in the Hugging Face cache here"):
        ImageFeaturizer.create("timm:resnet10t", None, image_size=SIZE)
    # The cache layout of huggingface_hub: refs/main names a snapshot holding the file.
    repo = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    shutil.copy(assets / "resnet10t.safetensors", repo / "snapshots" / "abc123" / "model.safetensors")
    fz = ImageFeaturizer.create("timm:resnet10t", None, image_size=SIZE)
    assert fz.state()["weights"] == str(repo / "snapshots" / "abc123" / "model.safetensors")
    ref = ImageFeaturizer.create("timm:resnet10t", assets / "resnet10t.safetensors", image_size=SIZE)
    im = draw("green", "square", np.random.default_rng(0))
    np.testing.assert_array_equal(fz.transform([im]), ref.transform([im]))


# ------------------------------------------------------------------------------------------
# training from a folder, collections, insert_items
# ------------------------------------------------------------------------------------------
def _collection(trained, path, assets):
    db = hqdb.connect(path)
    hqdb.save_model(db, "shapes", trained)
    return db, db.create_collection("photos", model="shapes", columns={"file": str, "caption": str}, key="file")


def test_train_from_folder_then_search_by_image_and_text(trained, assets, tmp_path):
    fz_state = trained.config["featurizers"]["image"]
    assert fz_state["type"] == "image" and fz_state["backbone"] == "resnet10t"
    assert trained.config["supervision"].startswith("text clusters")
    db, photos = _collection(trained, tmp_path / "media.db", assets)
    with open(assets / "photos" / "captions.csv") as f:
        rows = list(csv.DictReader(f))
    photos.insert_all(
        [{"file": r["file"], "caption": r["caption"], "image": assets / "photos" / r["file"], "text": r["caption"]}
         for r in rows]
    )
    db.close()
    fresh_backbones()  # the backbone is rebuilt from the configuration stored in the database
    db = hqdb.connect(tmp_path / "media.db")
    photos = db.collection("photos")
    rng = np.random.default_rng(99)  # query images the database has never seen
    same_color, same_caption = [], []
    for i in range(12):
        color, shape = kind(i)
        hits = photos.search(image=draw(color, shape, rng), target="image", k=10)
        same_color.append(np.mean([color in h.caption for h in hits]))
        same_caption.append(np.mean([h.caption == f"a {color} {shape}" for h in hits]))
    # Chance: 1/4 for the colour, 1/12 for colour and shape.
    assert np.mean(same_color) > 0.7, same_color
    assert np.mean(same_caption) > 0.3, same_caption
    red = photos.search(image=draw("red", "circle", np.random.default_rng(5)), target="image", k=10)
    assert sum(h.caption == "a red circle" for h in red) >= 5, [h.caption for h in red]
    hits = photos.search(text="a yellow triangle", k=10)  # text -> images
    assert np.mean([h.caption == "a yellow triangle" for h in hits]) > 0.5, [h.caption for h in hits]
    db.close()


def test_every_input_kind_gives_the_same_features(trained, assets):
    from PIL import Image

    path = assets / "photos" / "img000.png"
    data = path.read_bytes()
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    ref = trained.featurize("image", [str(path)])
    assert ref.shape == (1, 512)
    for value in (path, data, pil, arr, arr.astype(np.float32) / 255.0, bytearray(data)):
        np.testing.assert_array_equal(trained.featurize("image", [value]), ref)
    np.testing.assert_array_equal(trained.featurize("image", ref), ref)  # features stay features
    np.testing.assert_array_equal(trained.featurize("image", ref[0]), ref)
    b1, f1 = trained.encode("image", [path, data])
    b2, f2 = trained.encode("image", np.vstack([ref, ref]))
    np.testing.assert_array_equal(f1, f2)


def test_insert_items_and_collections_take_images(trained, assets, tmp_path):
    from PIL import Image

    db, photos = _collection(trained, tmp_path / "m.db", assets)
    folder = assets / "photos"
    ids = hqdb.insert_items(
        db,
        "photos",
        image=[folder / "img000.png", (folder / "img001.png").read_bytes(), Image.open(folder / "img002.png")],
        metadata={"file": ["img000.png", "img001.png", "img002.png"], "caption": ["a", "b", "c"]},
    )
    assert len(ids) == 3 and len(photos) == 3
    photos.insert({"file": "img003.png", "image": np.asarray(Image.open(folder / "img003.png"))})
    photos.upsert({"file": "img000.png", "image": str(folder / "img004.png")})
    feats = trained.featurize("image", [folder / "img004.png"])
    # The upserted row now has img004's codes: searching with its features finds it first.
    top = photos.search(image=feats[0], target="image", k=1)[0]
    assert top.file == "img000.png" and top.hamming == 0
    assert photos.search(image=str(folder / "img003.png"), target="image", k=1)[0].file == "img003.png"
    # In SQL, TEXT for the image modality of such a model is a file path as well.
    q = str(folder / "img003.png")
    sql = "SELECT file FROM photos WHERE hq_match(photos.image, hq_query('image', ?)) AND k = 1"
    assert db.execute(sql, (q,)).fetchall() == [("img003.png",)]
    db.execute("INSERT INTO photos(file, image) VALUES ('sql.png', ?)", (str(folder / "img006.png"),))
    photos.insert({"file": "py.png", "image": folder / "img006.png"})
    # The row inserted through SQL got img006's codes, the same as the Python insert: the same
    # Hamming distance (0: the query's own sign bits) and AQD. (Not necessarily first: AQD is an
    # inner product, which another item's reconstruction can exceed.)
    rows = db.execute(sql.replace("SELECT file", "SELECT file, hamming, distance").replace("k = 1", "k = 6"),
                      (str(folder / "img006.png"),)).fetchall()  # fmt: skip
    found = {f: (h, d) for f, h, d in rows}
    assert found["sql.png"] == found["py.png"] and found["sql.png"][0] == 0, rows
    with pytest.raises(hqdb.HqError, match="nope.png"):
        db.execute(sql, (str(tmp_path / "nope.png"),)).fetchall()
    db.close()


def test_unreadable_images_are_named_and_nothing_is_lost(trained, assets, tmp_path):
    db, photos = _collection(trained, tmp_path / "bad.db", assets)
    folder = assets / "photos"
    photos.insert({"file": "ok.png", "image": folder / "img000.png"})
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((folder / "img001.png").read_bytes()[:120])
    items = [{"file": f"f{i}", "image": folder / f"img00{i}.png"} for i in range(1, 4)]
    items.append({"file": "broken", "image": b"not an image at all"})
    with pytest.raises(hqdb.CollectionError, match=r"photos\.image \(item 3\) \(19 bytes\) is not a readable image"):
        photos.insert_all(items)
    with pytest.raises(hqdb.CollectionError, match=r"truncated\.png.*is not a readable image"):
        photos.insert_all([{"file": "t", "image": truncated}])
    with pytest.raises(hqdb.CollectionError, match="missing.png"):
        photos.insert({"file": "m", "image": str(tmp_path / "missing.png")})
    with pytest.raises(hqdb.HqError, match=r"photos\.image: image 2 of 2 .*truncated\.png"):
        hqdb.insert_items(db, "photos", image=[folder / "img005.png", truncated], metadata={"file": ["a", "b"]})
    with pytest.raises(hqdb.CollectionError, match="not a readable image"):
        photos.search(image=b"\x89PNG garbage", target="image")
    with pytest.raises(hqdb.CollectionError, match=r"must be \(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        photos.insert({"file": "x", "image": np.zeros((8, 8, 5), np.uint8)})
    assert [r["file"] for r in photos] == ["ok.png"]  # all or nothing: the failed inserts left nothing
    from hqdb.engine.check import check

    assert check(db)["ok"]
    db.close()


def test_folder_with_sidecar_captions(assets, tmp_path):
    from hqdb.model.images import read_folder

    folder = tmp_path / "side"
    make_folder(folder, 8, sidecars=True)
    (folder / "img007.txt").unlink()
    (folder / "notes.md").write_text("not an image")
    items, types = read_folder(folder)
    assert [it["file"] for it in items] == [f"img{i:03d}.png" for i in range(8)]
    assert items[0]["caption"] == "a red circle" and items[7]["caption"] is None and types == {}
    with pytest.raises(hqdb.TrainingError, match="1 image.* have no caption, e.g. 'img007.png'"):
        hqdb.train(folder, image_featurizer="timm:resnet10t", weights=assets / "resnet10t.safetensors")
    with pytest.raises(hqdb.TrainingError, match="needs a backbone"):
        hqdb.train(folder)
    bad = tmp_path / "badcsv"
    make_folder(bad, 4)
    with open(bad / "captions.csv", "a") as f:
        f.write("gone.png,a ghost,2001\n")
    with pytest.raises(ValueError, match="line 6: no image file 'gone.png'"):
        read_folder(bad)


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------
def cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``hqdb ARGV`` in this process (the image stack is imported once)."""
    import contextlib

    import hqdb.cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = hqdb.cli.main(list(argv))
    p = subprocess.CompletedProcess(["hqdb", *argv], rc, out.getvalue(), err.getvalue())
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_cli_folder_to_search_in_two_commands(assets, tmp_path):
    db = tmp_path / "media.db"
    out = cli(
        "index", str(assets / "photos"), "--db", str(db), "--collection", "photos",
        "--backbone", "timm:resnet10t", "--weights", str(assets / "resnet10t.safetensors"),
        "--image-size", str(SIZE), "--bits", "32", "--epochs", "15", "--json",
    )
    result = json.loads(out.stdout)
    assert result["inserted"] == N_IMAGES and result["created"] and result["model"] == "photos"
    assert result["columns"] == {"file": "TEXT", "caption": "TEXT", "year": "INTEGER"}
    hits = json.loads(cli("search", "--db", str(db), "--collection", "photos", "--text", "red circle",
                          "-k", "10", "--json").stdout)
    assert np.mean([h["caption"] == "a red circle" for h in hits]) > 0.5, hits
    query = tmp_path / "query.png"
    draw("blue", "triangle", np.random.default_rng(7)).save(query)
    hits = json.loads(cli("search", "--db", str(db), "--collection", "photos", "--image", str(query),
                          "--target", "image", "-k", "10", "--json").stdout)
    assert np.mean(["blue" in h["caption"] for h in hits]) > 0.5, hits
    again = json.loads(cli("index", str(assets / "photos"), "--db", str(db), "--collection", "photos", "--json").stdout)
    assert again["inserted"] == 0 and again["skipped"] == N_IMAGES and again["rows"] == N_IMAGES
    bad = cli("search", "--db", str(db), "--collection", "photos", "--image", str(tmp_path / "nope.png"), check=False)
    assert bad.returncode == 1 and "no such file" in bad.stderr
    (tmp_path / "junk.png").write_bytes(b"junk")
    bad = cli("search", "--db", str(db), "--collection", "photos", "--image", str(tmp_path / "junk.png"), check=False)
    assert bad.returncode == 1 and "junk.png" in bad.stderr and "not a readable image" in bad.stderr
    other = cli("index", str(assets / "photos"), "--db", str(db), "--collection", "photos",
                "--backbone", "timm:resnet14t", "--weights", str(assets / "resnet14t.safetensors"), check=False)
    assert other.returncode == 1 and "already exists with timm:resnet10t, not timm:resnet14t" in other.stderr
    none = cli("index", str(assets / "photos"), "--db", str(tmp_path / "x.db"), "--collection", "p", check=False)
    assert none.returncode == 1 and "give --backbone timm:NAME --weights FILE" in none.stderr


def test_cli_index_folder_clusters_reach_the_model(assets, tmp_path):
    """`hqdb index DIR --clusters N`: the model trained from the folder is supervised by N
    caption clusters."""
    db = tmp_path / "k.db"
    cli("index", str(assets / "photos"), "--db", str(db), "--collection", "photos", "--backbone", "timm:resnet10t",
        "--weights", str(assets / "resnet10t.safetensors"), "--image-size", str(SIZE), "--bits", "16",
        "--epochs", "2", "--clusters", "5", "--json")
    assert hqdb.load_model(hqdb.connect(db), "photos").config["supervision"] == "text clusters (5)"


def test_cli_index_resumes_after_sigkill(trained, assets, tmp_path):
    """Kill `hqdb index DIR` mid-way with SIGKILL, run it again: every file is there exactly once."""
    db_path = tmp_path / "media.db"
    db = hqdb.connect(db_path)
    hqdb.save_model(db, "photos", trained)
    db.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "hqdb", "index", str(assets / "photos"), "--db", str(db_path),
            "--collection", "photos", "--batch-size", "1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                reader = hqdb.connect(db_path, readonly=True)
                try:
                    if "photos" in reader.collections():
                        seen = len(reader.collection("photos"))
                finally:
                    reader.close()
            except hqdb.HqdbError:
                pass  # the writer holds the lock right now
            if seen >= 10:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    db = hqdb.connect(db_path)
    partial = len(db.collection("photos"))
    assert 10 <= partial < N_IMAGES
    db.close()
    out = json.loads(cli("index", str(assets / "photos"), "--db", str(db_path), "--collection", "photos",
                         "--json").stdout)
    assert out["skipped"] == partial and out["inserted"] == N_IMAGES - partial
    db = hqdb.connect(db_path)
    files = [r[0] for r in db.execute("SELECT file FROM photos ORDER BY file")]
    assert files == [f"img{i:03d}.png" for i in range(N_IMAGES)]  # each exactly once
    db.close()
    assert cli("check", str(db_path)).returncode == 0


def test_cli_train_from_folder(assets, tmp_path):
    db = tmp_path / "m.db"
    out = json.loads(cli(
        "train", str(assets / "photos"), "--db", str(db), "--name", "shapes", "--backbone", "timm:resnet10t",
        "--weights", str(assets / "resnet10t.safetensors"), "--image-size", str(SIZE), "--bits", "16",
        "--epochs", "2", "--json",
    ).stdout)
    assert out["name"] == "shapes" and out["bits"] == 16
    model = hqdb.load_model(hqdb.connect(db), "shapes")
    assert model.has_image_featurizer("image") and not model.has_image_featurizer("text")
    bad = cli("train", str(assets / "photos"), "--db", str(db), "--name", "x", check=False)
    assert bad.returncode == 1 and "is a folder of images: give --backbone" in bad.stderr


def test_pil_decompression_bombs_are_refused(stack):
    from PIL import Image

    from hqdb.model.images import open_image

    big = io.BytesIO()
    Image.new("1", (14000, 14000)).save(big, format="PNG")  # 196M pixels, a few KB compressed
    with pytest.raises(ValueError, match="item 0 .* is not a readable image"):
        open_image(big.getvalue(), "item 0")


# ------------------------------------------------------------------------------------------
# the documentation's image examples (skipped by tests/test_docs.py, which runs without the extra)
# ------------------------------------------------------------------------------------------
DOC_SKIP = "needs the images extra"


@pytest.mark.parametrize("page", ["README.md", "docs/python.md", "docs/cli.md"])
def test_docs_image_examples_run(page, assets, tmp_path, monkeypatch, capsys):
    """Every block a page marks as needing the images extra runs here, in order, in a folder
    holding `photos/` (generated captioned images) and `resnet10t.safetensors` (random weights)."""
    from test_docs import blocks, run_sh

    image_blocks = [b for b in blocks(ROOT / page) if b["skip"] and b["skip"].startswith(DOC_SKIP)]
    assert image_blocks, f"{page} has no image examples"
    shutil.copytree(assets / "photos", tmp_path / "photos")
    shutil.copy(assets / "resnet10t.safetensors", tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "hqdb_docs_images"}
    for b in image_blocks:
        where = f"{page}:{b['line']}"
        if b["lang"] == "python":
            exec(compile(b["code"], where, "exec"), namespace)
        else:
            assert b["lang"] == "sh", where
            run_sh(b["code"], where)
    for v in namespace.values():
        if isinstance(v, hqdb.Connection):
            v.close()


# ------------------------------------------------------------------------------------------
# open_clip: an image tower and a CLIP text tower as featurizers
# ------------------------------------------------------------------------------------------
CLIP_GOOD = {
    "type": "clip_text",
    "library": "open_clip",
    "model": "ViT-S-32",
    "weights": "/models/clip.safetensors",
    "sha256": "a" * 64,
    "dim": 384,
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"library": "timm"}, "'library' must be 'open_clip'"),
        ({"model": "$(reboot)"}, "is not a open_clip model name"),
        ({"weights": None}, "'weights' must be a file path"),
        ({"dim": -1}, "'dim' must be an integer"),
        ({"tokenizer": "hf:evil"}, "unknown keys"),
    ],
)
def test_hostile_clip_text_states_are_refused(change, message):
    assert featurizer_from_state(CLIP_GOOD).state() == CLIP_GOOD
    with pytest.raises(ValueError, match=message):
        featurizer_from_state({**CLIP_GOOD, **change})


@pytest.fixture(scope="module")
def clip_weights(assets):
    pytest.importorskip("open_clip", reason=EXTRA)
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32", pretrained=None)
    sd = model.state_dict()
    torch.save(sd, assets / "clip.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("visual.")}, str(assets / "clip_text.safetensors"))
    return assets / "clip.pth"


def test_open_clip_towers_train_store_and_search(clip_weights, assets, tmp_path):
    from hqdb.model.images import ClipTextFeaturizer

    model = hqdb.train(
        assets / "photos",
        image_featurizer="open_clip:ViT-S-32",
        weights=clip_weights,
        text_featurizer="open_clip:ViT-S-32",  # the same weights file serves the text tower
        bits=32,
        epochs=15,
        hidden=[128],
        progress=False,
    )
    feats = model.config["featurizers"]
    assert feats["image"]["library"] == "open_clip" and feats["image"]["image_size"] == 224
    assert feats["text"]["type"] == "clip_text" and feats["text"]["weights"] == str(clip_weights)
    db = hqdb.connect(tmp_path / "clip.db")
    hqdb.save_model(db, "clip", model)
    photos = db.create_collection("photos", model="clip", columns={"file": str, "caption": str})
    with open(assets / "photos" / "captions.csv") as f:
        rows = list(csv.DictReader(f))
    photos.insert_all({"file": r["file"], "caption": r["caption"], "image": assets / "photos" / r["file"]} for r in rows)
    db.close()
    fresh_backbones()
    db = hqdb.connect(tmp_path / "clip.db")
    photos = db.collection("photos")
    hits = photos.search(text="a green square", k=10)  # CLIP text tower -> image codes
    assert np.mean(["green" in h.caption for h in hits]) > 0.5, [h.caption for h in hits]
    with pytest.raises(hqdb.CollectionError, match="empty"):
        photos.search(text="  ...  ")
    db.close()
    # The text tower alone, from a file holding only its tensors, embeds exactly the same.
    alone = ClipTextFeaturizer.create("open_clip:ViT-S-32", assets / "clip_text.safetensors")
    np.testing.assert_array_equal(alone.transform(["a red circle"]), model.featurize("text", ["a red circle"]))
    with pytest.raises(ValueError, match="cannot run on 64-pixel images"):
        from hqdb.model.images import ImageFeaturizer

        ImageFeaturizer.create("open_clip:ViT-S-32", clip_weights, image_size=64)
