#!/usr/bin/env python
"""Which pseudo-labels to train without labels from: a quick check in numpy, no tower trained.

    python bench/pseudo_labels.py [CANDIDATE ...]   (default: all of CANDIDATES)

For outer seeds 0, 1 and folds 0, 1 of bench/quality_folds.py, the database part (80% of
wiki_train.npz) is cut into 20% inner queries and 80% inner database (bench/quality_screen.py's
cut). On the inner database each candidate gives every item a cluster: the tf-idf text by
spherical k-means (hqdb's _text_clusters, its own LSA step switched off) with k clusters, the
same after LSA (a truncated SVD), or the joint CCA space (image and text projections, each
normalised, summed); a few candidates are several clusterings at once (purity: their mean).
Printed per candidate: purity against the true classes (what the labels would say), and a label-space proxy
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
from quality_screen import inner_split, lsa  # noqa: E402

import hqdb.model.train as trainer  # noqa: E402

CANDIDATES = (
    "text_8", "text_10", "text_20", "lsa100_8", "lsa100_10", "joint10_10", "joint20_20",
    # tried later (docs/methods.md): more restarts, fewer directions, graph and consensus
    # clusterings, NMF topics, the 10-d LDA topics, and the true classes (the proxy's ceiling)
    "lsa100r20_8", "lsa30_8", "spectral10_8", "spectral20_8", "consensus_8", "nmf_8", "nmf_10", "lda_8",
    "classes_10",
    # several clusterings at once (the trainer's CLUSTER_RUNS): 5 seeded runs, or k = 4, 8 and 16
    "lsa100x5_8", "lsa100x1_8", "multik_4-8-16",
)  # fmt: skip


def purity(c: np.ndarray, y: np.ndarray) -> float:
    return sum(np.bincount(y[c == j]).max() for j in np.unique(c)) / len(c)


def kmeans(z: np.ndarray, k: int, seed: int, restarts: int = 4) -> np.ndarray:
    """The trainer's spherical k-means in the space given (its LSA step off)."""
    saved = trainer.LSA_DIM
    trainer.LSA_DIM = max(saved, z.shape[1])
    try:
        return trainer._text_clusters(z.astype(np.float32), np.arange(len(z)), k, seed, restarts=restarts)[:, 0]
    finally:
        trainer.LSA_DIM = saved


def spectral(W: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means of the top k eigenvectors of the normalised affinity D^-1/2 W D^-1/2."""
    W = W.copy()
    np.fill_diagonal(W, 0)
    d = np.maximum(W.sum(1), 1e-12)
    return kmeans(np.linalg.eigh(W / np.sqrt(np.outer(d, d)))[1][:, -k:], k, seed, restarts=10)


def knn_graph(z: np.ndarray, nn: int) -> np.ndarray:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    S = z @ z.T
    np.fill_diagonal(S, -np.inf)
    W = np.zeros_like(S)
    rows, cols = np.repeat(np.arange(len(z)), nn), np.argsort(-S, axis=1)[:, :nn].ravel()
    W[rows, cols] = np.maximum(S[rows, cols], 0)
    return np.maximum(W, W.T)


def nmf_topics(X: np.ndarray, k: int, seed: int, iters: int = 300, restarts: int = 4) -> np.ndarray:
    """Each item's largest topic of a seeded NMF X ≈ WH (multiplicative updates; best restart)."""
    X = np.maximum(X, 0)
    best, best_err = None, np.inf
    for r in range(restarts):
        rng = np.random.default_rng([seed, r])
        W, H = rng.random((len(X), k)) + 0.1, rng.random((k, X.shape[1])) + 0.1
        for _ in range(iters):
            H *= (W.T @ X) / (W.T @ W @ H + 1e-9)
            W *= (X @ H.T) / (W @ (H @ H.T) + 1e-9)
        err = float(np.linalg.norm(X - W @ H))
        if err < best_err:
            best, best_err = W, err
    assert best is not None
    return best.argmax(1)


def clusters(name: str, image: np.ndarray, text: np.ndarray, seed: int, lda=None, classes=None) -> np.ndarray:
    """The candidate's clusters: (items,), or (items, runs) for several clusterings at once."""
    kind, k_text = name.split("_")
    if kind == "multik":
        z = lsa(text, 100)
        return np.stack([kmeans(z, int(k), seed) for k in k_text.split("-")], axis=1)
    k = int(k_text)
    if kind.startswith("lsa100x"):  # runs seeded apart, like the trainer's CLUSTER_RUNS
        z = lsa(text, 100)
        return np.stack([kmeans(z, k, seed * 1000 + r) for r in range(int(kind[7:]))], axis=1)
    if kind == "classes":
        return classes
    if kind == "nmf":
        return nmf_topics(text, k, seed)
    if kind == "consensus":  # co-association of 10 single-start k-means runs, split spectrally
        z = lsa(text, 100)
        runs = [kmeans(z, k, seed * 100 + r, restarts=1) for r in range(10)]
        return spectral(np.mean([c[:, None] == c[None, :] for c in runs], axis=0), k, seed)
    if kind.startswith("spectral"):
        return spectral(knn_graph(lsa(text, 100), int(kind[8:])), k, seed)
    if kind == "lda":
        return kmeans(lda, k, seed)
    if kind == "text":
        z = text
    elif kind.startswith("lsa"):
        dim, _, restarts = kind[3:].partition("r")
        return kmeans(lsa(text, int(dim)), k, seed, restarts=int(restarts or 4))
    else:  # joint CCA space of both modalities
        dim = int(kind[5:])
        cca = R.CCA(10.0).fit(image, text)
        a, b = cca.tx(image, dim), cca.ty(text, dim)
        z = a / np.linalg.norm(a, axis=1, keepdims=True) + b / np.linalg.norm(b, axis=1, keepdims=True)
    return kmeans(z, k, seed)


def main(names=None) -> None:
    names = names or sys.argv[1:] or CANDIDATES
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        sys.exit(f"unknown candidates {sorted(unknown)}; choose from {CANDIDATES}")
    with np.load(DATA, allow_pickle=False) as f:
        d = {k: f[k] for k in ("image", "text", "text_tfidf", "labels")}
    lab = d["labels"].argmax(1)
    res: dict[str, list] = {}
    for seed in (0, 1):
        for fold in (0, 1):
            iq, idb = inner_split(len(lab), seed, fold)
            img, txt = d["image"], d["text_tfidf"]
            for name in names:
                c = clusters(name, img[idb], txt[idb], seed, lda=d["text"][idb], classes=lab[idb])
                runs = c.reshape(len(c), -1).T
                # per clustering a logistic regression per modality; several clusterings: their
                # predicted distributions (unit length each) concatenated
                p: dict[str, list] = {"qi": [], "qt": [], "di": [], "dt": []}
                for r in runs:
                    li, lt = R.LogReg(1e-2).fit(img[idb], r), R.LogReg(1e-2).fit(txt[idb], r)
                    for key, model, x in (("qi", li, img[iq]), ("qt", lt, txt[iq]), ("di", li, img[idb]),
                                          ("dt", lt, txt[idb])):  # fmt: skip
                        pr = model.proba(x)
                        p[key].append(pr / np.linalg.norm(pr, axis=1, keepdims=True))
                v = {key: np.hstack(parts) for key, parts in p.items()}
                s = R.score_both(
                    {"labels": d["labels"][iq]},
                    {"labels": d["labels"][idb]},
                    R.cosine_rank(v["qi"], v["dt"]),
                    R.cosine_rank(v["qt"], v["di"]),
                )
                out = (np.mean([purity(r, lab[idb]) for r in runs]), s["i2t"]["map@all"], s["t2i"]["map@all"])
                res.setdefault(name, []).append(out)
                print(
                    f"seed {seed} fold {fold} {name}: purity {out[0]:.3f}, proxy I→T {out[1]:.3f} T→I {out[2]:.3f}",
                    flush=True,
                )
    print("\nmean over the 4 inner splits: purity, proxy I→T, proxy T→I")
    for name, v in res.items():
        m = np.mean(v, axis=0)
        print(f"{name:<12} {m[0]:.3f}  {m[1]:.3f}  {m[2]:.3f}")


if __name__ == "__main__":
    main()
