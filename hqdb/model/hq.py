"""HQ's towers and loss (paper §4, Eq. 3-7), in torch. Only training imports this module.

Normalisation of the sums in Eq. 3-6 (so the λ's don't depend on batch size or code length):

- L_sim (Eq. 3): mean over the B×B cross-modal pairs (image i, text j) of a batch of B items of
  log(1 + e^θ_ij) − s_ij θ_ij, θ_ij = ⟨f_i, g_j⟩ (computed stably);
- L_h (Eq. 4): mean over items of ‖f − h‖² / n, h = sgn(f) (sgn(0) = +1 as in §4.3), image and
  text terms added;
- L_b (Eq. 5): mean over items of (f·1)² / n — the paper's per-sample balance ("balances the
  number of +1 and −1 ... for each training sample"), image and text added;
- L_q (Eq. 6): mean over items of ‖f − Σ_l C^l b^l‖² / n, image and text added; C and b are
  constants here (updated between epochs by :mod:`hqdb.model.aq`).

The /n makes each per-item term O(1) for ±1 codes whatever the code length; L_sim keeps the
paper's unscaled ⟨f_i, g_j⟩.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

TERMS: tuple[str, ...] = ("sim", "h", "b", "q")


class Tower(nn.Module):
    """x → standardise (fixed mean/scale buffers) → [Linear → ReLU]* → Linear → f ∈ R^n.

    No tanh on the output: the hash loss (Eq. 4) is what pulls f toward ±1."""

    mean: torch.Tensor  # buffers (registered in __init__)
    scale: torch.Tensor

    def __init__(self, input_dim: int, hidden: list[int], bits: int, mean=None, scale=None, dropout: float = 0.0):
        super().__init__()
        sizes = [input_dim, *hidden, bits]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(dropout)  # training only: identity in eval mode and in numpy inference
        self.register_buffer("mean", torch.zeros(input_dim) if mean is None else torch.as_tensor(mean).float())
        self.register_buffer("scale", torch.ones(input_dim) if scale is None else torch.as_tensor(scale).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.scale
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(torch.relu(x))
        return x


def sgn(f: torch.Tensor) -> torch.Tensor:
    """The optimal h of Eq. 4 for fixed f (§4.3): +1 where f >= 0, else −1."""
    return torch.where(f >= 0, torch.ones_like(f), -torch.ones_like(f))


def similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """s_ij = 1 iff the multi-hot labels share at least one class."""
    return ((labels_a.float() @ labels_b.float().T) > 0).float()


def loss_terms(
    f: torch.Tensor, g: torch.Tensor, s: torch.Tensor, qf: torch.Tensor | None = None, qg: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The four terms of Eq. 7 for image features f (B, n), text features g (B, n), similarity
    s (B, B) with s[i, j] for (image i, text j), and the quantized reconstructions qf, qg (B, n)
    (L_q is 0 when they are None). Normalised as in the module docstring."""
    n = f.shape[1]
    theta = f @ g.T
    # log(1 + e^θ) = max(θ, 0) + log1p(e^−|θ|): exact and never overflows (torch's softplus
    # switches to θ itself above θ = 20).
    softplus = torch.clamp(theta, min=0) + torch.log1p(torch.exp(-theta.abs()))
    sim = (softplus - s * theta).mean()  # Eq. 3
    h = (((f - sgn(f).detach()) ** 2).sum(1) + ((g - sgn(g).detach()) ** 2).sum(1)).mean() / n  # Eq. 4
    b = (f.sum(1) ** 2 + g.sum(1) ** 2).mean() / n  # Eq. 5
    if qf is None or qg is None:
        q = f.new_zeros(())
    else:
        q = (((f - qf) ** 2).sum(1) + ((g - qg) ** 2).sum(1)).mean() / n  # Eq. 6
    return {"sim": sim, "h": h, "b": b, "q": q}


def total_loss(terms: dict[str, torch.Tensor], lambdas: dict[str, float]) -> torch.Tensor:
    """Eq. 7: λ_sim L_sim + λ_h L_h + λ_b L_b + λ_q L_q."""
    return cast(torch.Tensor, sum(lambdas[t] * terms[t] for t in TERMS))  # non-empty: a tensor, not 0


from .methods import Method, pair_contrastive  # noqa: E402  (methods imports this module lazily)


class HQ(Method):
    """The HQ paper's method (§4): Eq. 7 over the batch, codebooks shared by both modalities,
    two-stage search (Hamming prefilter, AQD re-rank)."""

    name = "hq"
    search = "two_stage"
    terms = (*TERMS, "pair")
    # See train.DEFAULT_LAMBDAS for how these were chosen.
    lambdas = {"sim": 1.0, "h": 0.3, "b": 0.01, "q": 0.01, "pair": 0.1}

    # Label-free training (no ``labels``): "contrastive" replaces L_sim by the symmetric InfoNCE
    # of :func:`methods.pair_contrastive` on θ_ij = ⟨f_i, g_j⟩ / (τ n) (n = bits: the logits of
    # ±1 codes lie in [−1/τ, 1/τ]); "logistic" keeps Eq. 3 with s = I.
    pair_loss = "contrastive"
    temperature = 0.1

    # With labels, L_pair (λ "pair") adds the same contrastive loss over the batch's own pairs to
    # Eq. 7: the labels say which classes match, the pairs which image goes with which text
    # within a class (what CCA learns from). Without labels it is 0 (L_sim is already that loss).
    # Its τ is ``pair_temperature``, softer than L_sim's: the pair term only nudges (Wiki's 10-d
    # LDA text with labels, inner splits: MAP@all I→T 0.253 → 0.270, T→I 0.516 → 0.564; tf-idf
    # text clusters: 0.223 → 0.241 I→T). The one exception is ``sharp_pairs`` (set by the
    # trainer for text-cluster pseudo-labels of a low-dimensional text, e.g. short captions):
    # there the pairs are the finer truth and the sharp ``temperature`` did better
    # (docs/methods.md, "Generalisation").
    pair_temperature = 0.3

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        terms = loss_terms(f, g, s, qf, qg)
        contrastive = labels is None and self.pair_loss == "contrastive"
        pair = None
        if contrastive or (labels is not None and self.lam.get("pair")):
            tau = self.temperature if labels is None or self.sharp_pairs else self.pair_temperature
            pair = pair_contrastive((f @ g.T) / (tau * f.shape[1]))
        if contrastive and pair is not None:
            terms["sim"] = pair
        terms["pair"] = pair if labels is not None and pair is not None else f.new_zeros(())
        return terms


class Lossless(HQ):
    """The HQ paper's Lossless row: the towers trained with L_sim (Eq. 3) alone, searched by
    the cosine of the float vectors (stored model: no quantizer; its output is normalised, so
    the inner product of two search vectors is their cosine)."""

    name = "lossless"
    search = "float"
    output = "normalize"
    terms = ("sim",)
    lambdas = {"sim": 1.0}
    # Without HQ's L_h the towers overfit fast at lr 3e-3 (validation split: best epoch 6,
    # harmonic MAP@50 0.364); lr 1e-3 trains longer and better (best epoch 25, 0.394).
    train_defaults = {"lr": 1e-3}

    @classmethod
    def books(cls, bits, books):
        return 0
