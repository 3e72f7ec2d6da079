"""Pixel- and image-level detection metrics for anomaly maps: Dice, best Dice over thresholds, AUROC, AUPRC.

Scores and labels are flattened; every function takes NumPy arrays or tensors of any shape. Definitions follow the
anomaly-segmentation literature (Baur et al. 2021; Wolleb et al. 2022; Wyatt et al. 2022): AUROC is the
Mann-Whitney probability that a random positive outscores a random negative (ties count 1/2), AUPRC is the average
precision sum_n (R_n - R_{n-1}) P_n over distinct thresholds (as sklearn's ``average_precision_score``), and the
best Dice is the maximum of 2 TP / (|pred| + |true|) over every threshold "score >= tau".
"""

from __future__ import annotations

import numpy as np

from meddiff.errors import MeddiffError


def _flat(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if s.shape != y.shape:
        raise MeddiffError(f"scores ({s.size} values) and labels ({y.size} values) must have the same size")
    if not np.all(np.isfinite(s)):
        raise MeddiffError("scores contain NaN or infinite values")
    return s, y.astype(bool)


def dice(prediction, target) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two binary masks of the same shape; 1.0 when both are empty."""
    p, t = _flat(prediction, target)
    p = p.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def _threshold_counts(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(distinct thresholds descending, TP and predicted counts for 'score >= threshold', positives)."""
    s, y = _flat(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]   # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    return s[last], tp, last + 1, int(y.sum())


def best_dice(scores, labels) -> tuple[float, float]:
    """(best Dice, its threshold) over every threshold 'score >= tau' (the upper bound reported by Baur et al.)."""
    thresholds, tp, predicted, positives = _threshold_counts(scores, labels)
    if positives == 0:
        raise MeddiffError("best_dice needs at least one positive label")
    values = 2 * tp / (predicted + positives)
    i = int(np.argmax(values))
    return float(values[i]), float(thresholds[i])


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + P(equal) / 2 (Mann-Whitney U / (n_pos n_neg))."""
    s, y = _flat(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise MeddiffError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_s))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    average = (starts + ends + 1) / 2.0                    # mid-ranks (1-based) of tied runs
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores, labels) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    _, tp, predicted, positives = _threshold_counts(scores, labels)
    if positives == 0:
        raise MeddiffError("AUPRC needs at least one positive label")
    recall = tp / positives
    precision = tp / predicted
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of a 1D set of values (Otsu 1979)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or v.min() == v.max():
        return float(v.max()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def detection_metrics(scores, labels, threshold: float | None = None) -> dict:
    """Pixel-level summary: AUROC, AUPRC, best Dice (+ threshold) and, given ``threshold``, Dice at it."""
    s, y = _flat(scores, labels)
    best, tau = best_dice(s, y)
    out = {"auroc": auroc(s, y), "auprc": auprc(s, y), "best_dice": best, "best_threshold": tau}
    if threshold is not None:
        out["dice"] = dice(s >= threshold, y)
    return out
