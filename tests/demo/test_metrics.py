import numpy as np
import pytest

from demo.metrics import auroc, best_f1_threshold


def test_auroc_perfect_inverse_and_chance():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(y, s) == pytest.approx(pairs)


def test_auroc_single_class_is_nan():
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def test_best_f1_threshold_separates_classes():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = best_f1_threshold(y, s)
    assert 0.3 < t <= 0.7
