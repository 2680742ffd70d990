"""Evaluation metrics, small enough to keep here rather than depend on scikit-learn."""

from __future__ import annotations

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half).

    Returns NaN when only one class is present.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # Average ranks over ties.
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 (0.5 when there are no positives).

    When a range of thresholds gives the same best F1 (classes separated with a
    margin), the middle of that range is returned rather than its lower edge, so the
    threshold sits in the gap between the classes instead of on a negative's score.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    if not y.any():
        return 0.5
    candidates = np.unique(s)
    f1s = []
    for t in candidates:
        pred = s >= t
        tp = float((pred & y).sum())
        fp = float((pred & ~y).sum())
        fn = float((~pred & y).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    best = np.flatnonzero(np.isclose(f1s, max(f1s)))
    lo_index, hi_index = int(best[0]), int(best[-1])
    # Every threshold in (previous candidate, candidates[hi]] behaves like candidates[hi];
    # the optimal plateau therefore spans from just above the candidate before lo to hi.
    lower = candidates[lo_index - 1] if lo_index > 0 else 0.0
    return float((lower + candidates[hi_index]) / 2.0)
