"""What a training method is, for :func:`hqdb.model.train.train` (torch; training only).

A method is a small object: the shape of its towers' output (activation, private units), its
loss terms over a mini-batch, how its quantizer (if any) is fed, what happens to per-item state
at the end of an epoch (DCMH's B), and how it is searched. The trainer owns everything else —
data, featurizers, batches, optimiser, codebook alternation, validation, early stopping, the
stored model — so every method is trained, stored and evaluated the same way. Formulations and
every deviation from the papers: docs/methods.md.

Registry: :data:`METHODS` maps the ``method=`` name to its class; ``c+d`` is not a class (two
models trained separately and merged, see train.py).
"""

from __future__ import annotations

from typing import cast

import torch


class Method:
    """Defaults shared by the methods; subclasses override what differs."""

    name = ""
    search = "two_stage"  # the search mode it is meant for (and validated with)
    metric = "ip"  # AQD: inner product ('ip') or squared Euclidean ('l2')
    output = "linear"  # tower output: linear, tanh (trained with it), normalize (at search)
    terms: tuple[str, ...] = ()
    lambdas: dict[str, float] = {}
    train_defaults: dict = {}  # overrides of train()'s generic defaults (epochs, lr, ...)
    sharp_pairs = False  # hq: set by the trainer for pseudo-labels of a low-dimensional text

    def __init__(self, bits: int, n_classes: int, lambdas: dict[str, float]):
        self.bits = bits
        self.n_classes = n_classes
        self.lam = lambdas

    @classmethod
    def label_free(cls) -> bool:
        """Whether it trains from the pairs alone (data without ``labels``): the trainer then
        passes s = I (item i's image and text similar, every other pair in the batch not) and
        labels None. A method with a label-prediction term (SPDQ) cannot."""
        return not {"label", "qlabel"} & set(cls.terms)

    # -- shape
    @classmethod
    def books(cls, bits: int, books: int | None) -> int:
        """Number of codebooks for a code of ``bits`` (0 = no quantizer)."""
        return 4 if books is None else books

    def private(self) -> int:
        return 0

    def modules(self) -> list[torch.nn.Module]:
        """Trainable parts beyond the towers (a classifier, a bias), optimised with them."""
        return []

    # -- training
    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """Training-time view of a tower's raw output (tanh for tanh methods)."""
        return torch.tanh(out) if self.output == "tanh" else out

    def loss_terms(self, f, g, s, labels, qf, qg, pos) -> dict[str, torch.Tensor]:
        """Mean loss terms over a batch: f, g (B, bits + private) image / text outputs after
        :meth:`activate`, s (B, B) cross-modal similarity, labels (B, C) multi-hot float (None
        when training from the pairs alone: s is then the identity),
        qf, qg (B, bits) current quantized reconstructions (None without quantizer), pos (B,)
        the items' positions in the training set."""
        raise NotImplementedError

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return cast(torch.Tensor, sum(self.lam[t] * terms[t] for t in self.terms))  # terms non-empty: not 0

    def quant_targets(self, f_img, f_txt, r_img, r_txt):
        """What the codebooks/codes are fitted to (numpy (N, bits) each; r_* the current
        reconstructions, None at the start). Default: the features themselves."""
        return f_img, f_txt

    def refine_codebooks(self, F, codes, C):
        """Codebooks after the closed-form update (CQ enforces its constraint here)."""
        return C

    def end_epoch(self, f_img, f_txt) -> None:
        """Per-item state updated with the towers fixed (numpy training features)."""

    def finish(self, codebooks, codes, n_tr) -> dict:
        """Extra config entries of the stored model (CQ's epsilon)."""
        return {}


def sgn(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else −1 (the bit convention of ``kernels.pack_bits``)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def pairwise_logistic(theta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of log(1 + e^θ) − s θ (the negative log-likelihood of s under
    σ(θ) shared by HQ Eq. 3 and DCMH), computed without overflow."""
    softplus = torch.clamp(theta, min=0) + torch.log1p(torch.exp(-theta.abs()))
    return (softplus - s * theta).mean()


def pair_contrastive(theta: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch's (B, B) pair logits θ_ij (image i, text j) when the pairs
    are the only supervision: −log softmax_j θ_ij at j = i for each image, the same over the
    images for each text, averaged. The softmax form of Eq. 3 with s = I: each positive pair is
    pushed above the batch's other pairs instead of every pair being classified on its own."""
    target = torch.arange(theta.shape[0])
    return 0.5 * (torch.nn.functional.cross_entropy(theta, target) + torch.nn.functional.cross_entropy(theta.T, target))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) cosine similarities of the rows of a and b."""
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return an @ bn.T


def _registry() -> dict[str, type[Method]]:
    from .cdq import CDQ
    from .chn import CHN
    from .cq import CQ
    from .dcmh import DCMH
    from .hq import HQ, Lossless
    from .spdq import SPDQ

    return {c.name: c for c in (HQ, CQ, SPDQ, CHN, DCMH, CDQ, Lossless)}


def method_class(name: str) -> type[Method]:
    return _registry()[name]
