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

__all__ = ["DEFAULT_CLUSTERS", "METHODS", "TrainedModel", "TfidfFeaturizer"]
