"""CHN — Correlation Hashing Network (Cao, Long, Wang, Yu; arXiv 1602.06697, BMVC 2017).

Per-modality towers end in a fully connected hashing layer with tanh, h ∈ (−1, 1)^n. Loss
(paper §3, as means over a batch's cross-modal pairs, s̃_ij = +1 similar / −1 dissimilar):

- structured max-margin loss on the cosine of a pair's hash vectors: similar pairs are pushed
  above cosine μ, dissimilar pairs below cosine ν: s_ij max(0, μ − cos) + (1 − s_ij) max(0, cos − ν),
  μ = 0.5, ν = 0 (deviation: the paper's single margin on s̃·cos, s̃ = ±1, asks every dissimilar
  pair for cos ≤ −μ, which ten classes in one space cannot meet; on Wiki it collapsed the codes —
  validation MAP@50 0.22/0.22 — so dissimilar pairs only need to be orthogonal or worse);
- cosine quantization loss per item: 1 − cos(|h|, 1), zero iff every |h_k| is equal (all ±1
  after scaling), which controls the error of taking sgn(h).

Codes = sgn(h); Hamming search (no quantizer).
"""

from __future__ import annotations

import torch

from .methods import Method, cosine


class CHN(Method):
    name = "chn"
    search = "hamming"
    output = "tanh"
    terms = ("margin", "quant")
    # λ_quant 0.1 and 0.01 collapsed or slowed training on the validation split; 0.001 kept
    # codes near ±1 (tanh) without fighting the margin loss. lr 1e-3 beat 3e-3 there.
    lambdas = {"margin": 1.0, "quant": 0.001}
    train_defaults = {"lr": 1e-3}
    MARGIN = 0.5  # μ: similar pairs above this cosine
    NEG = 0.0  # ν: dissimilar pairs below this cosine

    @classmethod
    def books(cls, bits, books):
        return 0

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        c = cosine(f, g)
        margin = (s * torch.clamp(self.MARGIN - c, min=0) + (1 - s) * torch.clamp(c - self.NEG, min=0)).mean()
        n = f.shape[1]
        quant = 0.0
        for h in (f, g):
            quant = quant + (1 - h.abs().sum(1) / (h.norm(dim=1).clamp_min(1e-8) * n**0.5)).mean()
        return {"margin": margin, "quant": quant}
