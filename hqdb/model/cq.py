"""CQ — Collaborative Quantization for cross-modal similarity search (Zhang & Wang, CVPR 2016,
arXiv 1902.00623), on feature-vector towers.

Both modalities are mapped into one common space R^n (the towers), where each is quantized by
composite quantization: a vector ≈ Σ_l C^l b^l, one codeword from each of m dictionaries, the
dictionaries shared by the two modalities. Loss over a batch (means; C and b fixed within an
epoch):

- ``map``: the common-space mapping. Deviation: the paper learns linear maps from the pairs
  alone; here the towers are trained with the pairwise label likelihood of the other deep
  methods, on the *Euclidean* geometry CQ searches with: θ_ij = β − (16/n)‖f_i − g_j‖² (β
  learned; 16/n = ½ at 32 bits, so the logit's scale does not grow with the dimension),
  −Σ(s_ij θ_ij − log(1 + e^θ_ij)). Nearby pairs are likely similar, so Euclidean ranking fits.
  (Validation split, harmonic AQD MAP@50: the unscaled ½‖f − g‖² gave 0.348 at 64 bits and 0.299
  at 128; the scaled form 0.375 and 0.337.)
- ``q``: the quantization error of both modalities, ‖f − Σ C b_f‖² + ‖g − Σ C b_g‖² (/ n).
- ``align``: alignment of each pair's quantized representations, γ‖Σ C b_f − Σ C b_g‖² (/ n),
  reported; it acts through the code update: with the other modality's reconstruction fixed,
  ‖f − Cb‖² + γ‖Cb − Cb_g‖² = (1 + γ)‖Cb − (f + γ Cb_g)/(1 + γ)‖² + const, so the codes and the
  closed-form dictionaries are fitted to those blended targets.

Composite quantization's constraint that Σ_{l≠l'} ⟨C^l b^l, C^{l'} b^{l'}⟩ be one constant ε
makes ‖q − Σ C b‖² = ‖q‖² − Σ_l (2⟨q, C^l b^l⟩ − ‖C^l b^l‖²) + ε computable from per-book
tables. As in composite quantization, the constraint is a penalty μ Σ_n (cross_n − ε)² added to
the quantization error when the dictionaries are updated: after the closed-form least-squares
step, ``CONSTRAINT_STEPS`` gradient steps on the penalised objective, ε set to the mean cross
term (its optimum for fixed dictionaries). Deviation: the code update (ICM) ignores the penalty.
ε is stored in the model and the engine adds it (and ‖q‖²) to reported distances; the remaining
spread of the cross term (``epsilon_std`` in the model's metrics) is the ranking error the
table lookup leaves.
"""

from __future__ import annotations

import numpy as np
import torch

from . import aq
from .methods import Method, pairwise_logistic


class CQ(Method):
    name = "cq"
    search = "aqd"
    metric = "l2"
    terms = ("map", "q", "align")
    lambdas = {"map": 1.0, "q": 0.1, "align": 1.0}
    train_defaults = {"epochs": 30, "aq_rounds": 1}  # bits/8 books: keep the ICM budget bounded

    def __init__(self, bits, n_classes, lambdas):
        super().__init__(bits, n_classes, lambdas)
        self.bias = torch.nn.Parameter(torch.tensor(float(bits) / 4))

    @classmethod
    def books(cls, bits, books):
        return max(1, bits // 8) if books is None else books

    def modules(self):
        holder = torch.nn.Module()
        holder.bias = self.bias
        return [holder]

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        n = f.shape[1]
        d2 = (f * f).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2 * f @ g.T
        mapping = pairwise_logistic(self.bias - (16.0 / n) * d2, s)
        if qf is None:
            q = align = f.new_zeros(())
        else:
            q = (((f - qf) ** 2).sum(1) + ((g - qg) ** 2).sum(1)).mean() / n
            align = ((qf - qg) ** 2).sum(1).mean() / n
        return {"map": mapping, "q": q, "align": align}

    def total(self, terms):
        # align has no gradient w.r.t. the towers (codes fixed); its weight is γ in quant_targets.
        return self.lam["map"] * terms["map"] + self.lam["q"] * terms["q"]

    def quant_targets(self, f_img, f_txt, r_img, r_txt):
        if r_img is None:
            return f_img, f_txt
        gam = self.lam["align"]
        return (f_img + gam * r_txt) / (1 + gam), (f_txt + gam * r_img) / (1 + gam)

    CONSTRAINT_STEPS = 30
    CONSTRAINT_WEIGHT = 1.0  # μ, relative to the per-item quantization error

    def refine_codebooks(self, F, codes, C):
        Ft = torch.from_numpy(np.asarray(F, dtype=np.float32))
        idx = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        Ct = torch.from_numpy(np.asarray(C, dtype=np.float32)).clone().requires_grad_(True)
        opt = torch.optim.Adam([Ct], lr=1e-2)
        books = Ct.shape[0]
        for _ in range(self.CONSTRAINT_STEPS):
            words = torch.stack([Ct[l][idx[:, l]] for l in range(books)], 1)  # (N, m, n)
            recon = words.sum(1)
            cross = (recon * recon).sum(1) - (words * words).sum((1, 2))
            err = ((Ft - recon) ** 2).sum(1).mean()
            loss = err + self.CONSTRAINT_WEIGHT * ((cross - cross.mean().detach()) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return Ct.detach().numpy().astype(np.float32)

    def finish(self, codebooks, codes, n_tr):
        cross = cross_terms(codes, codebooks)
        return {"epsilon": float(cross.mean()), "epsilon_std": float(cross.std())}


def cross_terms(codes, C) -> np.ndarray:
    """Σ_{l≠l'} ⟨C^l b^l, C^{l'} b^{l'}⟩ per row of codes = ‖Σ C b‖² − Σ_l ‖C^l b^l‖²."""
    recon = aq.reconstruct(codes, C).astype(np.float64)
    norms = sum((C[l].astype(np.float64) ** 2).sum(1)[codes[:, l]] for l in range(C.shape[0]))
    return (recon**2).sum(1) - norms
