"""Ranking measures shared by stages (the classifier's validation, the peaks' quality)."""

import numpy as np


def average_precision(scores, targets):
    """Per-class average precision [C] (NaN for classes without positives).

    AP = sum over distinct score thresholds of (recall step) x precision, the non-interpolated
    definition (as sklearn's average_precision_score); tied scores count as one threshold.
    """
    scores, targets = np.asarray(scores, float), np.asarray(targets) > 0
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, t = scores[order, c], targets[order, c]
        tp = np.cumsum(t)
        # the last position of each group of equal scores closes a threshold
        last = np.r_[s[1:] != s[:-1], True]
        tp_at, n_at = tp[last], np.flatnonzero(last) + 1
        recall_steps = np.diff(np.r_[0, tp_at]) / positives
        aps[c] = float(np.sum(recall_steps * tp_at / n_at))
    return aps
