"""The MAP / precision definitions, checked on rankings small enough to work out by hand."""

import numpy as np
import pytest

from hqdb import metrics


def test_average_precision_by_hand():
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 0]], dtype=bool)
    ap = metrics.average_precision(rel)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1] == 0.0
    assert ap[2] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    # Cut-off 2: only the first two results count, normalised by the relevant ones among them.
    ap2 = metrics.average_precision(rel, 2)
    assert ap2.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert metrics.precision_at(rel, 2) == pytest.approx(2 / 6)


def test_relevance_is_label_overlap_and_accepts_class_ids():
    labels_q = np.array([0, 2])
    labels_db = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    rankings = np.array([[2, 1, 0], [0, 1, 2]])
    rel = metrics.relevance(labels_q, labels_db, rankings)
    assert rel.tolist() == [[False, False, True], [True, False, True]]
    assert metrics.relevance(np.array([0, 2]), np.array([0, 1, 2]), rankings).tolist() == [
        [False, False, True], [False, False, True]]


def test_harmonic_mean():
    assert metrics.harmonic_mean(0.5, 0.5) == 0.5
    assert metrics.harmonic_mean(0.0, 0.9) == 0.0
