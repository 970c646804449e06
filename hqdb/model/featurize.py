"""Raw text → tf-idf vectors, so a model trained on strings can encode strings at query time.

Deterministic and numpy-only: lowercase, tokens are runs of letters/digits, the vocabulary is the
``vocab_size`` words with the highest document frequency (ties broken alphabetically), idf is the
smoothed ``log((1 + N) / (1 + df)) + 1``, each row is raw term count × idf, L2-normalised. The
whole state is JSON (vocabulary + idf), never pickled.

A text with no word of the vocabulary (or no word at all) would be all zeros: its code would come
from the model's biases alone, the same for every such text, and searching with it would return
the same confident hits whatever was asked. :meth:`TfidfFeaturizer.transform` refuses such texts
(``ValueError`` naming the text); training, where a few such captions are harmless, passes
``strict=False``.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

TOKEN_PATTERN = r"[^\W_]+"  # letters and digits of any script; '_' and punctuation split
_TOKEN = re.compile(TOKEN_PATTERN)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a sequence of strings, got a single string")
    out = list(texts)
    for t in out:
        if not isinstance(t, (str, np.str_)):
            raise TypeError(f"expected strings, got {type(t).__name__}")
    return [str(t) for t in out]


class TfidfFeaturizer:
    def __init__(self, vocab_size: int = 1000):
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.vocab: list[str] = []
        self.idf = np.zeros(0, dtype=np.float64)
        self._index: dict[str, int] = {}

    @property
    def dim(self) -> int:
        """Length of the output vectors (the vocabulary may be smaller than ``vocab_size``)."""
        return len(self.vocab)

    def fit(self, texts) -> TfidfFeaturizer:
        texts = _as_texts(texts)
        if not texts:
            raise ValueError("TfidfFeaturizer.fit needs at least one text")
        df: Counter = Counter()
        for t in texts:
            df.update(set(tokenize(t)))
        if not df:
            raise ValueError("TfidfFeaturizer.fit: the texts contain no words")
        # Highest document frequency first, ties alphabetical: the same vocabulary on any machine.
        words = sorted(df, key=lambda w: (-df[w], w))[: self.vocab_size]
        n = len(texts)
        self.vocab = words
        self.idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in words], dtype=np.float64)
        self._index = {w: i for i, w in enumerate(words)}
        return self

    def transform(self, texts, *, strict: bool = True) -> np.ndarray:
        """tf-idf rows (float32, N × dim). ``strict``: a text without any word of the vocabulary
        is a ``ValueError`` (it would encode to the same code as every other such text)."""
        if not self.vocab:
            raise ValueError("TfidfFeaturizer is not fitted")
        texts = _as_texts(texts)
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float64)
        for r, t in enumerate(texts):
            known = 0
            for w, c in Counter(tokenize(t)).items():
                j = self._index.get(w)
                if j is not None:
                    out[r, j] = c
                    known += 1
            if strict and not known:
                self._refuse(t, r, len(texts))
        out *= self.idf
        norms = np.sqrt((out * out).sum(axis=1, keepdims=True))
        np.divide(out, norms, out=out, where=norms > 0)
        return out.astype(np.float32)

    def _refuse(self, text: str, row: int, n: int) -> None:
        which = f"text {row + 1} of {n}" if n > 1 else "the text"
        if not tokenize(text):
            raise ValueError(f"{which} is empty (no words): give some words to encode")
        examples = ", ".join(repr(w) for w in self.vocab[:5])
        raise ValueError(
            f"{which} {text[:60]!r} has no word the model knows (its vocabulary has {len(self.vocab)} "
            f"words, e.g. {examples}): it cannot be encoded meaningfully; use other words"
        )

    def fit_transform(self, texts, *, strict: bool = False) -> np.ndarray:
        texts = _as_texts(texts)
        return self.fit(texts).transform(texts, strict=strict)

    def state(self) -> dict:
        return {
            "type": "tfidf",
            "vocab_size": self.vocab_size,
            "token_pattern": TOKEN_PATTERN,
            "lowercase": True,
            "vocab": list(self.vocab),
            "idf": [float(v) for v in self.idf],  # JSON floats round-trip float64 exactly
        }

    @classmethod
    def from_state(cls, state: dict) -> TfidfFeaturizer:
        if not isinstance(state, dict) or state.get("type") != "tfidf":
            raise ValueError("featurizer state must be a dict with type 'tfidf'")
        if state.get("token_pattern", TOKEN_PATTERN) != TOKEN_PATTERN or state.get("lowercase", True) is not True:
            raise ValueError("featurizer state was made with a different tokenizer than this hqdb's")
        vocab, idf = state.get("vocab"), state.get("idf")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab) or not vocab:
            raise ValueError("featurizer state: 'vocab' must be a non-empty list of strings")
        if len(set(vocab)) != len(vocab):
            raise ValueError("featurizer state: 'vocab' has duplicate words")
        if not isinstance(idf, list) or len(idf) != len(vocab):
            raise ValueError(f"featurizer state: 'idf' must be a list of {len(vocab)} numbers")
        try:
            idf_arr = np.array(idf, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("featurizer state: 'idf' must hold numbers") from None
        if not np.isfinite(idf_arr).all():
            raise ValueError("featurizer state: 'idf' contains NaN or infinity")
        size = state.get("vocab_size", len(vocab))
        if not isinstance(size, int) or size < len(vocab):
            raise ValueError("featurizer state: 'vocab_size' must be an integer >= len(vocab)")
        f = cls(size)
        f.vocab = list(vocab)
        f.idf = idf_arr
        f._index = {w: i for i, w in enumerate(vocab)}
        return f


FEATURIZERS = ("tfidf", "minilm")
IMAGE_FEATURIZERS = ("image",)  # a backbone of timm or open_clip (hqdb.model.images)
# Text featurizers configured by name and weights file: train(text_featurizer="open_clip:NAME",
# text_weights=FILE) (hqdb.model.images.ClipTextFeaturizer, state type "clip_text").
CONFIGURED_TEXT = ("clip_text",)


def make_featurizer(kind: str, vocab_size: int = 1000):
    """A new, unfitted text featurizer: ``tfidf`` (this module) or ``minilm`` (sentence
    embeddings, :mod:`hqdb.model.minilm`, imported only when asked for)."""
    if kind == "tfidf":
        return TfidfFeaturizer(vocab_size)
    if kind == "minilm":
        return _minilm()()
    raise ValueError(f"unknown text featurizer {kind!r} (known: {', '.join(FEATURIZERS)})")


def featurizer_from_state(state: dict):
    """Rebuild a featurizer from its ``state()``, dispatching on ``state["type"]``."""
    kind = state.get("type") if isinstance(state, dict) else None
    if kind == "tfidf":
        return TfidfFeaturizer.from_state(state)
    if kind == "minilm":
        return _minilm().from_state(state)
    if kind == "image":  # images.py imports numpy only: a model with an image featurizer loads without timm
        from .images import ImageFeaturizer

        return ImageFeaturizer.from_state(state)
    if kind == "clip_text":
        from .images import ClipTextFeaturizer

        return ClipTextFeaturizer.from_state(state)
    known = ", ".join((*FEATURIZERS, *CONFIGURED_TEXT, *IMAGE_FEATURIZERS))
    raise ValueError(f"featurizer state has unknown type {kind!r} (known: {known})")


def is_image_featurizer(fz) -> bool:
    """Whether a featurizer takes images (paths, bytes, PIL images, image arrays), not text."""
    return getattr(fz, "kind", "text") == "image"


def _minilm():
    try:
        from .minilm import MiniLMFeaturizer
    except ImportError:
        raise ValueError("the 'minilm' text featurizer is not part of this hqdb installation") from None
    return MiniLMFeaturizer
