"""Reference rankers for the cross-modal quality benchmark (bench/quality.py).

Every reference is fitted on the *database* part of the split only (queries are never seen), ranks
the whole database for every query, and is scored by :mod:`hqdb.metrics` exactly like the HQ rows:

* ``random``      — a seeded random permutation of the database per query;
* ``cca``         — unsupervised regularised CCA between ``image`` and a text feature, float
                    projections of both modalities to ``dim`` dimensions, ranked by cosine;
* ``sign_cca``    — the same CCA at ``bits`` dimensions, binarised by sign (after centring with the
                    database means), ranked by Hamming distance;
* ``label_space`` — supervised: one multinomial logistic regression per modality (image → class,
                    text → class); queries and items are their predicted class-probability
                    vectors, ranked by cosine.

Ties are broken by database index ascending everywhere (``np.argsort(-score, kind="stable")``).
Hyper-parameters that need a value (the CCA ridge, the logistic-regression L2 weight) are chosen
on a seeded held-out fifth *of the database part* — unsupervised (held-out canonical correlation)
for CCA, held-out log-loss for the classifiers — never on the queries.
"""

from __future__ import annotations

import numpy as np

from hqdb import metrics

CCA_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # relative to the mean variance of each modality
LOGREG_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # weight decay on the standardised-input weights


# --------------------------------------------------------------------------------------------
# split, ranking, scoring


def split(n: int, seed: int = 0, query_frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, database indices) of a seeded permutation: the first ``query_frac`` of it
    are the queries, the rest the database (both sorted ascending, so a database index is a
    position in the original order restricted to the database)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_q = int(round(query_frac * n))
    return np.sort(perm[:n_q]), np.sort(perm[n_q:])


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Best first (highest score), ties by index ascending."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")


def rank_by_hamming(q_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    """Boolean codes (Q, b) and (N, b) → rankings by Hamming distance, ties by index ascending."""
    q = np.asarray(q_bits, dtype=np.int32)
    d = np.asarray(db_bits, dtype=np.int32)
    # Hamming(q, d) = b - agreements; agreements = q·d + (1-q)·(1-d)
    dist = q.shape[1] - (q @ d.T + (1 - q) @ (1 - d).T)
    return np.argsort(dist, axis=1, kind="stable")


def cosine_rank(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    dn = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    return rank_by_score(qn @ dn.T)


def score(labels_q, labels_db, rankings, precision_k: int = 10) -> dict:
    return metrics.summary(metrics.relevance(labels_q, labels_db, rankings), precision_k=precision_k)


def score_both(q: dict, db: dict, rank_i2t, rank_t2i) -> dict:
    out = {"i2t": score(q["labels"], db["labels"], rank_i2t),
           "t2i": score(q["labels"], db["labels"], rank_t2i)}
    out["harmonic"] = {k: metrics.harmonic_mean(out["i2t"][k], out["t2i"][k]) for k in out["i2t"]}
    return out


# --------------------------------------------------------------------------------------------
# random


def random_rankings(n_q: int, n_db: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_db) for _ in range(n_q)])


def random_reference(q: dict, db: dict, seed: int = 0) -> dict:
    n_q, n_db = len(q["labels"]), len(db["labels"])
    return score_both(q, db, random_rankings(n_q, n_db, seed), random_rankings(n_q, n_db, seed + 1))


# --------------------------------------------------------------------------------------------
# regularised CCA (numpy only)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


class CCA:
    """Regularised CCA: maximise corr(Xa, Yb) with covariances Cxx + r·(tr Cxx / dx)·I (same for
    Y). Solved by whitening both sides and an SVD of the whitened cross-covariance; the
    directions are sorted by canonical correlation, there are min(dx, dy) of them."""

    def __init__(self, ridge: float = 1e-2):
        self.ridge = ridge

    def fit(self, X: np.ndarray, Y: np.ndarray) -> CCA:
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        self.mx, self.my = X.mean(0), Y.mean(0)
        Xc, Yc = X - self.mx, Y - self.my
        n = len(X)
        cxx, cyy, cxy = Xc.T @ Xc / n, Yc.T @ Yc / n, Xc.T @ Yc / n
        cxx += self.ridge * np.trace(cxx) / len(cxx) * np.eye(len(cxx))
        cyy += self.ridge * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
        wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
        u, s, vt = np.linalg.svd(wx @ cxy @ wy, full_matrices=False)
        self.corr = s
        self.A = wx @ u          # (dx, r)
        self.B = wy @ vt.T       # (dy, r)
        return self

    @property
    def rank(self) -> int:
        return len(self.corr)

    def tx(self, X, dim: int) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.mx) @ self.A[:, :dim]

    def ty(self, Y, dim: int) -> np.ndarray:
        return (np.asarray(Y, dtype=np.float64) - self.my) @ self.B[:, :dim]


def choose_cca_ridges(X, Y, dims, seed: int, ridges=CCA_RIDGES) -> tuple[dict, dict]:
    """For each dimension in ``dims``: the ridge whose CCA, fitted on a seeded 80% of (X, Y), gives
    the largest sum of the top-``dim`` canonical correlations on the other 20% (unsupervised: no
    labels). One fit per ridge serves every dimension. Returns ({dim: ridge}, {dim: {ridge: sum}})."""
    val_idx, fit_idx = split(len(X), seed=seed + 1000)  # (20%, 80%)
    held = {d: {} for d in dims}
    for r in ridges:
        cca = CCA(r).fit(X[fit_idx], Y[fit_idx])
        a, b = cca.tx(X[val_idx], cca.rank), cca.ty(Y[val_idx], cca.rank)
        a, b = a - a.mean(0), b - b.mean(0)
        corr = (a * b).sum(0) / np.maximum(np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0), 1e-12)
        for d in dims:
            held[d][r] = float(corr[:d].sum())
    return {d: max(h, key=h.get) for d, h in held.items()}, held


class CCAFamily:
    """The CCA references of one (image, text) pairing: ridges chosen per dimension on the database,
    one fit per distinct ridge (on the whole database part)."""

    def __init__(self, db: dict, text_key: str, dims, seed: int = 0):
        self.text_key, self.seed = text_key, seed
        self.ridge, self.held = choose_cca_ridges(db["image"], db[text_key], sorted(set(dims)), seed)
        self.fits = {r: CCA(r).fit(db["image"], db[text_key]) for r in sorted(set(self.ridge.values()))}

    def model(self, dim: int) -> CCA:
        return self.fits[self.ridge[dim]]

    def cosine(self, q: dict, db: dict, dim: int) -> tuple[dict, dict]:
        """Float CCA (``dim`` dimensions) ranked by cosine. Returns (scores, info)."""
        cca, tk = self.model(dim), self.text_key
        i2t = cosine_rank(cca.tx(q["image"], dim), cca.ty(db[tk], dim))
        t2i = cosine_rank(cca.ty(q[tk], dim), cca.tx(db["image"], dim))
        return score_both(q, db, i2t, t2i), {"ridge": self.ridge[dim], "held_out_corr_sum": self.held[dim],
                                             "dim": dim, "rank": cca.rank, "top_corr": cca.corr[:dim].tolist()}

    def sign(self, q: dict, db: dict, bits: int) -> tuple[dict, dict]:
        """sign(CCA) at ``bits`` bits ranked by Hamming distance. Returns (scores, info)."""
        cca, tk = self.model(bits), self.text_key
        qi, qt, how = sign_cca_codes(cca, q["image"], q[tk], bits, self.seed)
        di, dt, _ = sign_cca_codes(cca, db["image"], db[tk], bits, self.seed)
        return (score_both(q, db, rank_by_hamming(qi, dt), rank_by_hamming(qt, di)),
                {"ridge": self.ridge[bits], "how": how})


def sign_cca_codes(cca: CCA, X, Y, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """sign() of the top-``bits`` CCA directions (centred with the database means). When ``bits``
    exceeds the CCA rank r, the r-dim CCA space is mapped to ``bits`` dims by a seeded random
    matrix with orthonormal rows (an over-complete random rotation) before the sign."""
    if bits <= cca.rank:
        return cca.tx(X, bits) > 0, cca.ty(Y, bits) > 0, f"top-{bits} CCA directions"
    r = cca.rank
    g = np.random.default_rng(seed).standard_normal((bits, r))
    rot = np.linalg.qr(g)[0].T  # (r, bits), orthonormal rows
    return (cca.tx(X, r) @ rot > 0, cca.ty(Y, r) @ rot > 0,
            f"all {r} CCA directions x random {r}x{bits} rotation")


# --------------------------------------------------------------------------------------------
# supervised label-space reference: per-modality multinomial logistic regression


class LogReg:
    """Multinomial logistic regression on standardised inputs (statistics of the fitting data),
    L2 weight decay on the weights (not the bias), full-batch L-BFGS in float64 from zero."""

    def __init__(self, l2: float = 1e-3, seed: int = 0, max_iter: int = 500):
        self.l2, self.seed, self.max_iter = l2, seed, max_iter

    def fit(self, X, y) -> LogReg:
        import torch

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny problem: threads only add contention on a shared machine
        try:
            self._fit(torch, X, y)
        finally:
            torch.set_num_threads(prev_threads)
        return self

    def _fit(self, torch, X, y) -> None:
        torch.manual_seed(self.seed)
        X = np.asarray(X, dtype=np.float64)
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-8
        x = torch.from_numpy((X - self.mu) / self.sd)
        t = torch.from_numpy(np.asarray(y, dtype=np.int64))
        n_classes = int(t.max()) + 1
        W = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ W + b, t) + self.l2 * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W, self.b = W.detach().numpy(), b.detach().numpy()

    def proba(self, X) -> np.ndarray:
        z = ((np.asarray(X, dtype=np.float64) - self.mu) / self.sd) @ self.W + self.b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


def choose_l2(X, y, seed: int, grid=LOGREG_L2) -> tuple[float, dict]:
    """The L2 weight with the lowest log-loss on a seeded held-out 20% of (X, y)."""
    val_idx, fit_idx = split(len(X), seed=seed + 2000)
    losses = {}
    for l2 in grid:
        p = LogReg(l2, seed).fit(X[fit_idx], y[fit_idx]).proba(X[val_idx])
        losses[l2] = float(-np.log(np.maximum(p[np.arange(len(val_idx)), y[val_idx]], 1e-12)).mean())
    return min(losses, key=losses.get), losses


def label_space_reference(q: dict, db: dict, text_key: str, seed: int = 0) -> tuple[dict, dict]:
    """Returns (scores, info): per-modality L2 choice, held-out log-losses, query accuracy."""
    y = np.asarray(db["labels"]).argmax(1)
    info, probs = {}, {}
    for mod, key in (("image", "image"), ("text", text_key)):
        l2, losses = choose_l2(db[key], y, seed)
        clf = LogReg(l2, seed).fit(db[key], y)
        probs[mod] = (clf.proba(q[key]), clf.proba(db[key]))
        info[mod] = {"key": key, "l2": l2, "held_out_logloss": losses,
                     "query_accuracy": float((probs[mod][0].argmax(1) == np.asarray(q["labels"]).argmax(1)).mean())}
    i2t = cosine_rank(probs["image"][0], probs["text"][1])
    t2i = cosine_rank(probs["text"][0], probs["image"][1])
    return score_both(q, db, i2t, t2i), info
