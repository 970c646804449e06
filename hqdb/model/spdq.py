"""SPDQ — Shared Predictive Deep Quantization (Yang, Deng, Li, Liu, Li, Tao; TNNLS 2019,
arXiv 1904.07488), on feature-vector towers.

Each modality's tower ends in two tanh units: a *shared* representation s ∈ (−1, 1)^n (the
first ``bits`` outputs: the search vector) and a *private* one p ∈ (−1, 1)^n (the rest; used in
training only). Loss over a batch (means):

- ``mmd``: the squared maximum mean discrepancy between the image and the text shared
  representations, MMD² = ‖E φ(s^x) − E φ(s^y)‖² in the RKHS of a Gaussian kernel (a sum of
  kernels of bandwidths 0.5, 1, 2 × the batch's median squared distance), so the two modality
  distributions share one subspace;
- ``private``: keeps each modality's private representation apart from its shared one:
  ‖S_mᵀ P_m‖²_F / B² (the batch's shared/private matrices made orthogonal);
- ``label``: label alignment — one linear classifier W shared by the modalities predicts the
  labels from s (cross-entropy against the label distribution), so the shared subspace is
  semantic and the same for both modalities;
- ``qlabel``: the supervised quantizer — the same W must predict the labels from the quantized
  shared representation Σ C b (fixed within an epoch; the gradient reaches W);
- ``q``: quantization error ‖s − Σ_l C^l b^l‖² / n, one set of codebooks for both modalities.

Search: AQD by inner product between the query's shared vector and the items' reconstructions.
"""

from __future__ import annotations

from typing import cast

import torch

from .methods import Method


def mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Biased estimate of MMD² between the rows of a and of b, multi-bandwidth Gaussian kernel."""
    x = torch.cat([a, b])
    d2 = (x * x).sum(1, keepdim=True) + (x * x).sum(1)[None, :] - 2 * x @ x.T
    d2 = d2.clamp_min(0)
    scale = d2.detach().median().clamp_min(1e-6)
    k = cast(torch.Tensor, sum(torch.exp(-d2 / (w * scale)) for w in (0.5, 1.0, 2.0)))  # 3 tensors: not 0
    n = a.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class SPDQ(Method):
    name = "spdq"
    search = "aqd"
    output = "tanh"
    terms = ("mmd", "private", "label", "qlabel", "q")
    lambdas = {"mmd": 1.0, "private": 0.1, "label": 1.0, "qlabel": 0.5, "q": 0.1}
    train_defaults = {"epochs": 30, "aq_rounds": 1, "lr": 1e-3}

    def __init__(self, bits, n_classes, lambdas):
        super().__init__(bits, n_classes, lambdas)
        self.classifier = torch.nn.Linear(bits, n_classes)

    @classmethod
    def books(cls, bits, books):
        return max(1, bits // 8) if books is None else books

    def private(self):
        return self.bits

    def modules(self):
        return [self.classifier]

    def _ce(self, x, labels):
        target = labels / labels.sum(1, keepdim=True).clamp_min(1)
        return -(target * torch.log_softmax(self.classifier(x), 1)).sum(1).mean()

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        n = self.bits
        sx, px, sy, py = f[:, :n], f[:, n:], g[:, :n], g[:, n:]
        B = f.shape[0]
        terms = {
            "mmd": mmd2(sx, sy),
            "private": (((sx.T @ px) ** 2).sum() + ((sy.T @ py) ** 2).sum()) / (B * B),
            "label": self._ce(sx, labels) + self._ce(sy, labels),
        }
        if qf is None:
            terms["qlabel"] = terms["q"] = f.new_zeros(())
        else:
            terms["qlabel"] = self._ce(qf, labels) + self._ce(qg, labels)
            terms["q"] = (((sx - qf) ** 2).sum(1) + ((sy - qg) ** 2).sum(1)).mean() / n
        return terms
