"""CHN — Correlation Hashing Network (Cao, Long, Wang, Yu; arXiv 1602.06697, BMVC 2017).

Per-modality towers end in a fully connected hashing layer with tanh, h ∈ (−1, 1)^n. Loss
(paper §3, as means over a batch's cross-modal pairs, s̃_ij = +1 similar / −1 dissimilar):

- structured max-margin loss on the cosine of a pair's hash vectors:
  max(0, μ − s̃_ij cos(h^x_i, h^y_j)) — similar pairs pushed above cosine μ, dissimilar below −μ;
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
    lambdas = {"margin": 1.0, "quant": 0.1}
    MARGIN = 0.5  # μ

    @classmethod
    def books(cls, bits, books):
        return 0

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        st = 2 * s - 1
        margin = torch.clamp(self.MARGIN - st * cosine(f, g), min=0).mean()
        n = f.shape[1]
        quant = 0.0
        for h in (f, g):
            quant = quant + (1 - h.abs().sum(1) / (h.norm(dim=1).clamp_min(1e-8) * n ** 0.5)).mean()
        return {"margin": margin, "quant": quant}
