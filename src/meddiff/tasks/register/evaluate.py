"""Scores of a registration against the fixed image's labels: per-class Dice and HD95 (mm) of the warped (nearest
neighbour) moving labels, reusing the segmentation scores (``meddiff.tasks.segment.evaluate``), the percentage of
voxels whose Jacobian determinant is <= 0 (folding) and the seconds per pair."""

from __future__ import annotations

import numpy as np

from meddiff.tasks.register.fields import folding_percent
from meddiff.tasks.segment.evaluate import dice_per_class, hd95_per_class


def pair_scores(warped_labels: np.ndarray, fixed_labels: np.ndarray, ddf: np.ndarray | None, num_classes: int,
                spacing=(1.0, 1.0, 1.0), seconds: float = float("nan"), hd95: bool = True) -> dict:
    """Scores of one registered pair: labels (*spatial) int on the fixed grid, ``ddf`` (N, *spatial) voxels of the
    deformable part (None: affine only, no folding possible) -> {"dice", "mean_dice", "hd95", "mean_hd95",
    "folding_percent", "seconds"}."""
    warped_labels = np.asarray(warped_labels).astype(np.int64)
    fixed_labels = np.asarray(fixed_labels).astype(np.int64)
    d = dice_per_class(warped_labels, fixed_labels, num_classes)
    out = {"dice": d, "mean_dice": float(np.nanmean(d))}
    if hd95:
        h = hd95_per_class(warped_labels, fixed_labels, num_classes, spacing)
        out.update(hd95=h, mean_hd95=float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"))
    out["folding_percent"] = 0.0 if ddf is None else folding_percent(ddf)
    out["seconds"] = float(seconds)
    return out


def summarise(rows: list[dict]) -> dict:
    """Means (and the standard deviation of the Dice) over pairs of ``pair_scores`` rows."""
    keys = ("mean_dice", "mean_hd95", "folding_percent", "seconds")
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys if all(k in r for r in rows)}
    out["dice_std"] = float(np.std([r["mean_dice"] for r in rows]))
    out["pairs"] = len(rows)
    return out
