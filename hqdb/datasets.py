"""A generated paired image/text dataset for the demo and for tests: SYNTHETIC, not real data.

Each item belongs to one of a few topics. Its "image" is a 128-d feature vector drawn around its
topic's centre (standing in for CNN features), and its "text" is a short caption drawn from the
topic's words plus common filler words, so raw-text queries such as "a castle on a hill" work.
"""

from __future__ import annotations

import numpy as np

TOPICS = {
    "castles": "castle tower knight king stone wall fortress hill moat gate queen battle",
    "beaches": "beach sand sea wave surf sun shell coast palm island tide swim",
    "forests": "forest tree pine moss deer trail leaf oak wood fern owl river",
    "cities": "city street car tower light bridge traffic crowd building night taxi metro",
    "mountains": "mountain snow peak climb glacier ridge summit rock cliff valley ice hike",
    "kitchens": "kitchen bread cake oven cook soup pan spoon table coffee fruit salad",
    "music": "music guitar piano song band concert drum stage singer violin choir jazz",
    "sports": "football match goal team player stadium ball race runner tennis score coach",
}
FILLER = [
    "a",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "near",
    "under",
    "over",
    "some",
    "old",
    "new",
    "big",
    "small",
    "red",
    "blue",
    "photo",
    "view",
]


def synthetic_pairs(n: int = 2000, *, dim_image: int = 128, noise: float = 3.0, seed: int = 0) -> dict:
    """``{"image", "text", "labels", "label_names"}`` with ``n`` items (labels as class ids)."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    centres = rng.standard_normal((len(names), dim_image)).astype(np.float32)
    labels = rng.integers(0, len(names), n)
    image = centres[labels] + noise * rng.standard_normal((n, dim_image)).astype(np.float32)
    texts = []
    for c in labels:
        words = TOPICS[names[c]].split()
        # Some captions borrow a word from another topic, so text alone is not a perfect signal.
        other = TOPICS[names[rng.integers(len(names))]].split()
        picked = list(rng.choice(words, 3)) + list(rng.choice(FILLER, 3)) + [rng.choice(other)]
        rng.shuffle(picked)
        texts.append(" ".join(picked))
    return {
        "image": image.astype(np.float32),
        "text": np.array(texts),
        "labels": labels.astype(np.int64),
        "label_names": np.array(names),
    }
