"""CDQ — Collective Deep Quantization (Cao, Long, Wang, Liu; AAAI 2017), a baseline of the HQ
paper's Table 2.

Per-modality towers end in a tanh layer z ∈ (−1, 1)^n. Loss (as means over a batch):

- pairwise cosine loss between the modalities: (s̃_ij − cos(z^x_i, z^y_j))², s̃ = ±1;
- quantization loss of both modalities against one set of codebooks shared by the two
  modalities ("collective" quantization): ‖z − Σ_l C^l b^l‖² / n, C and b fixed within an
  epoch and refitted after it (the trainer's closed-form C / ICM b alternation).

Search: AQD by inner product between the query's z and the items' reconstructions.
"""

from __future__ import annotations

from .methods import Method, cosine


class CDQ(Method):
    name = "cdq"
    search = "aqd"
    output = "tanh"
    terms = ("cos", "q")
    # Validation split (64 bits, harmonic MAP@50): lr 3e-3 / λ_q 0.1 peaked at epoch 6 (0.343);
    # lr 1e-3 / λ_q 0.01 trained to epoch 21 (0.354).
    lambdas = {"cos": 1.0, "q": 0.01}
    train_defaults = {"epochs": 30, "aq_rounds": 1, "lr": 1e-3}  # bits/8 books: bounded ICM budget

    @classmethod
    def books(cls, bits, books):
        return max(1, bits // 8) if books is None else books

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        cos = ((2 * s - 1 - cosine(f, g)) ** 2).mean()
        if qf is None:
            q = f.new_zeros(())
        else:
            n = f.shape[1]
            q = (((f - qf) ** 2).sum(1) + ((g - qg) ** 2).sum(1)).mean() / n
        return {"cos": cos, "q": q}
