"""Anomaly maps and their post-processing: residual maps, the FLAIR-intensity baseline, median filter, thresholds
(Otsu / healthy percentile / fixed), connected components and image-level scores."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

THRESHOLDS = ("otsu", "percentile", "fixed")
RESIDUALS = ("abs", "positive")


def residual_map(x: Tensor, healthy: Tensor, channels: Sequence[int] | None = None, residual: str = "abs") -> Tensor:
    """Anomaly map (B, 1, ...) of inputs x and their healthy reconstructions (B, C, ...): |x - x_h| (``"abs"``,
    Wolleb et al.) or max(x - x_h, 0) (``"positive"``: only tissue brighter than its healthy counterpart, e.g.
    tumour and oedema in FLAIR), summed over ``channels`` (None: all)."""
    check_choice("residual", residual, RESIDUALS)
    diff = x - healthy
    if channels is not None:
        diff = diff[:, list(channels)]
    diff = diff.abs() if residual == "abs" else diff.clamp(min=0)
    return diff.sum(1, keepdim=True)


@dataclass
class Result:
    """Per input: anomaly map (*spatial), healthy reconstruction (C, *spatial) in model space, segmentation (*spatial)
    uint8, image-level score(s) (one per slice for volumes), and the brain mask (*spatial)."""

    anomaly: np.ndarray
    healthy: np.ndarray
    segmentation: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    seconds_per_slice: float = 0.0


def median_filter(maps: np.ndarray, size: int) -> np.ndarray:
    """Median filter over the last two axes of (..., H, W) with a size x size window (0 or 1: unchanged)."""
    if size <= 1:
        return maps
    from scipy.ndimage import median_filter as scipy_median

    return scipy_median(maps, size=(1,) * (maps.ndim - 2) + (size, size), mode="nearest")


def connected_components(segmentation: np.ndarray, min_size: int = 0) -> tuple[np.ndarray, int]:
    """(segmentation without components smaller than ``min_size`` voxels, number of components kept);
    8-connected in 2D, 26-connected in 3D."""
    from scipy.ndimage import label

    labels, count = label(segmentation, structure=np.ones((3,) * segmentation.ndim))
    if count == 0:
        return segmentation.astype(np.uint8), 0
    sizes = np.bincount(labels.reshape(-1))[1:]
    keep = np.r_[False, sizes >= max(min_size, 1)]
    return keep[labels].astype(np.uint8), int(keep.sum())


def image_score(anomaly: np.ndarray, mask: np.ndarray, top: float = 0.01) -> float:
    """Image-level anomaly score: mean of the top ``top`` fraction of map values inside the mask (0 if empty)."""
    values = anomaly[mask]
    if values.size == 0:
        return 0.0
    k = max(1, int(math.ceil(top * values.size)))
    return float(np.sort(values)[-k:].mean())


def intensity_map(image: np.ndarray, mask: np.ndarray, channel: int = -1) -> np.ndarray:
    """Meissen et al. 2021 baseline: z-scored intensity of ``channel`` (FLAIR) over the whole input (volume, or stack
    of slices of one subject) inside the brain mask; 0 outside. image (C, *spatial), mask (*spatial)."""
    values = image[channel][mask].astype(np.float64)
    if values.size < 2:
        return np.zeros(mask.shape, np.float32)
    z = (image[channel] - values.mean()) / max(values.std(), 1e-12)
    return np.where(mask, z, 0.0).astype(np.float32)


def pick_threshold(maps: np.ndarray, masks: np.ndarray, how: str = "otsu", value: float | None = None,
                    healthy_maps: np.ndarray | None = None) -> float:
    """Threshold for binarising anomaly maps: "otsu" on the in-mask values, "percentile" = the ``value``-th
    percentile (default 99) of healthy maps' in-mask values, or "fixed" = ``value``."""
    from meddiff.metrics.segmentation import otsu_threshold

    check_choice("threshold", how, THRESHOLDS)
    if how == "fixed":
        if value is None:
            raise MeddiffError("threshold 'fixed' needs a value (--threshold-value)")
        return float(value)
    if how == "percentile":
        if healthy_maps is None:
            raise MeddiffError("threshold 'percentile' needs anomaly maps of healthy images (--healthy PATH)")
        return float(np.percentile(np.concatenate([m.reshape(-1) for m in healthy_maps]), 99.0 if value is None else value))
    return otsu_threshold(maps[masks])


def auto_median(shape: Sequence[int]) -> int:
    """Median window for a slice of ``shape`` (H, W): 5 px per 240 px (5 mm on 1 mm BraTS), odd, 1 = none."""
    return max(1, int(round(5 * min(shape) / 240)) | 1)


def filter_maps(maps: np.ndarray, masks: np.ndarray, median: int | None = None) -> np.ndarray:
    """Post-processing every map gets: median filter (None: ``auto_median``), zero outside the mask. (S, H, W)."""
    median = auto_median(masks.shape[-2:]) if median is None else median
    return np.where(masks, median_filter(np.asarray(maps, np.float32), median), 0.0).astype(np.float32)


def segment(result: Result, threshold: float, min_size: int = 0) -> Result:
    """Binary segmentation: map >= threshold inside the mask, small connected components removed."""
    seg, _ = connected_components((result.anomaly >= threshold) & result.mask, min_size)
    result.segmentation = seg
    return result
