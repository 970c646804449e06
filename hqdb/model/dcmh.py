"""DCMH — Deep Cross-Modal Hashing (Jiang & Li, CVPR 2017), a baseline of the HQ paper's Table 2.

Loss (DCMH Eq. 2, as means over a batch): with Θ_ij = ½⟨F_i, G_j⟩,
    −Σ (s_ij Θ_ij − log(1 + e^Θ_ij)) + γ(‖B − F‖² + ‖B − G‖²) + η(‖F1‖² + ‖G1‖²),
B = sgn(F + G) over the whole training set, recomputed with the towers fixed after every epoch
(DCMH's closed-form B-step). Codes at search time: sgn of each modality's own output; Hamming.
"""

from __future__ import annotations

import numpy as np
import torch

from .methods import Method, pairwise_logistic


class DCMH(Method):
    name = "dcmh"
    search = "hamming"
    terms = ("sim", "code", "balance")
    lambdas = {"sim": 1.0, "code": 0.3, "balance": 0.01}

    @classmethod
    def books(cls, bits, books):
        return 0

    def end_epoch(self, f_img, f_txt):
        self.B = torch.from_numpy(np.where(f_img + f_txt >= 0, 1.0, -1.0).astype(np.float32))

    def loss_terms(self, f, g, s, labels, qf, qg, pos):
        n = f.shape[1]
        sim = pairwise_logistic(0.5 * f @ g.T, s)
        b = self.B[pos] if getattr(self, "B", None) is not None else torch.sign(f + g).detach()
        code = (((b - f) ** 2).sum(1) + ((b - g) ** 2).sum(1)).mean() / n
        balance = (f.sum(1) ** 2 + g.sum(1) ** 2).mean() / n
        return {"sim": sim, "code": code, "balance": balance}
