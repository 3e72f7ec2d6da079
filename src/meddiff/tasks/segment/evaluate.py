"""Scores of a segmentation against reference labels: per-class Dice and HD95 (mm; MONAI), the expected calibration
error of the top-class probability (Guo et al. 2017, 15 equal-width bins) and the Pearson correlation of the
uncertainty with the error, both over an evaluation region (the reference brain dilated by 2 voxels, so that the
air around the head, trivially right, does not flatter the numbers)."""

from __future__ import annotations

import numpy as np
import torch

from meddiff.metrics.segmentation import dice


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class 1..K-1 (NaN when the class is absent from both)."""
    out = []
    for c in range(1, num_classes):
        p, r = prediction == c, reference == c
        out.append(float("nan") if not (p.any() or r.any()) else dice(p, r))
    return out


def hd95_per_class(prediction: np.ndarray, reference: np.ndarray, num_classes: int,
                   spacing=(1.0, 1.0, 1.0)) -> list[float]:
    """95th-percentile symmetric Hausdorff distance (mm) of each foreground class (MONAI
    ``compute_hausdorff_distance``); NaN when the class is missing from either map."""
    from monai.metrics import compute_hausdorff_distance

    out = []
    for c in range(1, num_classes):
        p, r = prediction == c, reference == c
        if not (p.any() and r.any()):
            out.append(float("nan"))
            continue
        d = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None],
                                       percentile=95, spacing=list(spacing))
        out.append(float(d.reshape(-1)[0]))
    return out


def evaluation_region(reference: np.ndarray, dilation: int = 2) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(reference > 0, iterations=dilation)


def expected_calibration_error(probabilities: np.ndarray, reference: np.ndarray, region: np.ndarray,
                               bins: int = 15) -> float:
    """ECE of the top-class confidence over ``region``: sum over bins of |accuracy - confidence| x bin weight.
    ``probabilities`` (K, *spatial)."""
    p = probabilities[:, region]  # [K,N]
    conf, pred = p.max(0), p.argmax(0)
    correct = (pred == reference[region]).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def uncertainty_error_correlation(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                                  region: np.ndarray) -> float:
    """Pearson correlation of the per-voxel uncertainty with the 0/1 error over ``region`` (NaN if either is
    constant)."""
    u = uncertainty[region].astype(np.float64)
    e = (prediction[region] != reference[region]).astype(np.float64)
    if u.std() == 0 or e.std() == 0:
        return float("nan")
    return float(np.corrcoef(u, e)[0, 1])


def score_volume(probabilities: np.ndarray, reference: np.ndarray, spacing=(1.0, 1.0, 1.0),
                 labels: np.ndarray | None = None) -> dict:
    """All scores of mean probabilities (K, X, Y, Z) against reference labels (X, Y, Z); Dice, HD95 and the error
    map use ``labels`` (e.g. a cleaned-up map) when given, else the argmax."""
    from meddiff.tasks.segment.methods import entropy

    k = probabilities.shape[0]
    pred = probabilities.argmax(0) if labels is None else labels
    region = evaluation_region(reference)
    unc = entropy(probabilities, axis=0).numpy()
    d = dice_per_class(pred, reference, k)
    h = hd95_per_class(pred, reference, k, spacing)
    return {"dice": d, "hd95": h, "mean_dice": float(np.nanmean(d)),
            "mean_hd95": float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"),
            "ece": expected_calibration_error(probabilities, reference, region),
            "uncertainty_error_pearson": uncertainty_error_correlation(unc, pred, reference, region)}
