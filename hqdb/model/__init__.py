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

__all__ = ["METHODS", "TrainedModel", "TfidfFeaturizer"]
