"""hqdb's model layer: learned encoders for the hq table (towers + optional codebooks; HQ and
the other methods of docs/methods.md).

Inference (:class:`TrainedModel`, the tf-idf featurizer, additive quantization) is numpy/numba
only; training (:func:`hqdb.model.train.train`, also ``hqdb.train``) imports torch.
"""

from __future__ import annotations

from .featurize import TfidfFeaturizer
from .model import TrainedModel

# The training methods (hqdb.train(method=...), hqdb train --method); docs/methods.md.
METHODS = ("hq", "cq", "spdq", "chn", "dcmh", "cdq", "c+d", "lossless")

# Pseudo-labels of training without labels: this many text clusters (hqdb.model.train's
# _text_clusters). 8 was chosen among 5 / 6 / 8 / 10 / 14 / 20 on inner splits of the Wiki
# database parts (docs/methods.md, "Training from pairs alone").
DEFAULT_CLUSTERS = 8

# Share of the training items held out for early stopping (hqdb.train(val_fraction=...), hqdb
# train --val-fraction). 0.15 chosen on inner splits (tf-idf text, MAP@all I→T / T→I, 8 runs):
# 0.320 / 0.725 against 0.2's 0.318 / 0.694; 0.1 gave 0.315 / 0.720, 0.05 was unstable (one run
# T→I 0.47); on the 10-d LDA text and without labels the change was within the spread
# (docs/methods.md, "Generalisation").
VAL_FRACTION = 0.15

__all__ = ["DEFAULT_CLUSTERS", "METHODS", "VAL_FRACTION", "TrainedModel", "TfidfFeaturizer"]
