#!/usr/bin/env python
"""Label-free settings on short captions: tests/test_images.py's photo folder (96 drawn pictures,
12 kinds, captions "a <colour> <shape>") trained without labels (caption clusters), then each of
the 12 captions searched as text → image in a collection of the folder.

    python bench/caption_screen.py RUNS,TAU [RUNS,TAU ...]     (e.g. 1,0.1 5,0.1 5,0.3)

RUNS sets hqdb.model.train.CLUSTER_RUNS, TAU HQ.temperature (λ_pair's τ for pseudo-labels of a
low-dimensional text, which these captions are). Prints per setting the exact-caption
precision@10 averaged over the 12 captions, per seed 0-3, and the "a yellow triangle" precision
that tests/test_images.py checks (> 0.5). Needs the `images` extra (timm, Pillow, safetensors);
the backbone is a randomly initialised resnet10t, as in the test.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import hqdb  # noqa: E402
import hqdb.model.train as T  # noqa: E402
from hqdb.model import hq  # noqa: E402


def main(argv: list[str]) -> None:
    import test_images as ti
    import timm
    import torch
    from safetensors.torch import save_file

    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(net.state_dict(), str(root / "r.safetensors"))
    ti.make_folder(root / "photos")
    with open(root / "photos" / "captions.csv") as f:
        rows = list(csv.DictReader(f))
    captions = sorted({r["caption"] for r in rows})
    for spec in argv:
        runs, tau = spec.split(",")
        T.CLUSTER_RUNS, hq.HQ.temperature = int(runs), float(tau)
        res = []
        for seed in range(4):
            model = hqdb.train(
                root / "photos",
                image_featurizer="timm:resnet10t",
                weights=root / "r.safetensors",
                image_size=ti.SIZE,
                bits=32,
                epochs=15,
                hidden=[128],
                progress=False,
                seed=seed,
            )
            db, photos = ti._collection(model, root / f"m{runs}_{tau}_{seed}.db", root)
            photos.insert_all(
                [
                    {
                        "file": r["file"],
                        "caption": r["caption"],
                        "image": root / "photos" / r["file"],
                        "text": r["caption"],
                    }
                    for r in rows
                ]
            )
            prec = {c: float(np.mean([h.caption == c for h in photos.search(text=c, k=10)])) for c in captions}
            res.append((np.mean(list(prec.values())), prec["a yellow triangle"]))
            db.close()
        print(
            f"runs {runs}, τ {tau}: precision@10 per seed {[round(float(a), 2) for a, _ in res]}, "
            f"'a yellow triangle' {[round(b, 2) for _, b in res]}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["1,0.1", "5,0.1", "5,0.3"])
