#!/usr/bin/env python
"""Which pseudo-labels to train without labels from: a quick check in numpy, no tower trained.

    python bench/pseudo_labels.py

For outer seeds 0, 1 and folds 0, 1 of bench/quality_folds.py, the database part (80% of
wiki_train.npz) is cut into 20% inner queries and 80% inner database (bench/quality_screen.py's
cut). On the inner database each candidate gives every item a cluster: the tf-idf text by
spherical k-means (hqdb's _text_clusters, its own LSA step switched off) with k clusters, the
same after LSA (a truncated SVD), or the joint CCA space (image and text projections, each
normalised, summed). Printed per
candidate: purity against the true classes (what the labels would say), and a label-space proxy
of the model: a logistic regression per modality predicting the cluster, inner queries ranked
against the inner database by the cosine of the predicted distributions, MAP@all with the true
labels. Cheap enough to try many candidates before training towers on the few that look best
(bench/quality_screen.py with free=1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import references as R  # noqa: E402
from quality_folds import DATA  # noqa: E402
from quality_screen import inner_split  # noqa: E402

import hqdb.model.train as trainer  # noqa: E402

CANDIDATES = ("text_8", "text_10", "text_20", "lsa100_8", "lsa100_10", "joint10_10", "joint20_20")


def purity(c: np.ndarray, y: np.ndarray) -> float:
    return sum(np.bincount(y[c == j]).max() for j in np.unique(c)) / len(c)


def clusters(name: str, image: np.ndarray, text: np.ndarray, seed: int) -> np.ndarray:
    kind, k = name.split("_")
    k = int(k)
    if kind == "text":
        z = text
    elif kind.startswith("lsa"):
        tc = text - text.mean(0)
        z = tc @ np.linalg.svd(tc, full_matrices=False)[2][: int(kind[3:])].T
    else:  # joint CCA space of both modalities
        dim = int(kind[5:])
        cca = R.CCA(10.0).fit(image, text)
        a, b = cca.tx(image, dim), cca.ty(text, dim)
        z = a / np.linalg.norm(a, axis=1, keepdims=True) + b / np.linalg.norm(b, axis=1, keepdims=True)
    saved = trainer.LSA_DIM
    trainer.LSA_DIM = max(saved, z.shape[1])  # k-means in the space given: the trainer's LSA step off
    try:
        return trainer._text_clusters(z.astype(np.float32), np.arange(len(z)), k, seed)
    finally:
        trainer.LSA_DIM = saved


def main() -> None:
    with np.load(DATA, allow_pickle=False) as f:
        d = {k: f[k] for k in ("image", "text_tfidf", "labels")}
    lab = d["labels"].argmax(1)
    res: dict[str, list] = {}
    for seed in (0, 1):
        for fold in (0, 1):
            iq, idb = inner_split(len(lab), seed, fold)
            img, txt = d["image"], d["text_tfidf"]
            for name in CANDIDATES:
                c = clusters(name, img[idb], txt[idb], seed)
                li, lt = R.LogReg(1e-2).fit(img[idb], c), R.LogReg(1e-2).fit(txt[idb], c)
                s = R.score_both(
                    {"labels": d["labels"][iq]},
                    {"labels": d["labels"][idb]},
                    R.cosine_rank(li.proba(img[iq]), lt.proba(txt[idb])),
                    R.cosine_rank(lt.proba(txt[iq]), li.proba(img[idb])),
                )
                out = (purity(c, lab[idb]), s["i2t"]["map@all"], s["t2i"]["map@all"])
                res.setdefault(name, []).append(out)
                print(f"seed {seed} fold {fold} {name}: purity {out[0]:.3f}, proxy I→T {out[1]:.3f} T→I {out[2]:.3f}",
                      flush=True)
    print("\nmean over the 4 inner splits: purity, proxy I→T, proxy T→I")
    for name, v in res.items():
        m = np.mean(v, axis=0)
        print(f"{name:<12} {m[0]:.3f}  {m[1]:.3f}  {m[2]:.3f}")


if __name__ == "__main__":
    main()
