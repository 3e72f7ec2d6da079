"""Scores of a translated volume against the real target contrast, both in model space ([-1, 1], the real one
normalised within the brain mask as the training targets were): PSNR and SSIM inside the brain mask, FID on
offline slice features, and the lesion contrast-to-noise ratio (real vs synthetic: are the lesions visible?)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from meddiff.errors import MeddiffError
from meddiff.metrics.image import ssim

DATA_RANGE = 2.0  # model space [-1, 1]
MIN_SSIM_VOXELS = 200  # slices with fewer brain voxels are left out of the SSIM mean
RING = 2  # voxels: the normal-appearing tissue around a lesion (dilation radius)


def masked_psnr(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """10 log10(range^2 / MSE) over the voxels of ``mask`` (any shape; the volume's brain voxels together)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise MeddiffError("PSNR: empty brain mask")
    mse = float(np.mean((np.asarray(x, np.float64)[mask] - np.asarray(ref, np.float64)[mask]) ** 2))
    return 10.0 * math.log10(data_range**2 / max(mse, 1e-30))


def masked_ssim(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """SSIM (``meddiff.metrics.ssim``, 11x11 Gaussian window) per slice (N, H, W) inside its brain mask, averaged
    over slices weighted by their brain voxels (slices with < MIN_SSIM_VOXELS left out)."""
    values, weights = [], []
    for a, b, m in zip(x, ref, mask):
        n = int(np.sum(m))
        if n < MIN_SSIM_VOXELS:
            continue
        v = float(ssim(torch.as_tensor(np.asarray(a, np.float32)), torch.as_tensor(np.asarray(b, np.float32)),
                       data_range, mask=torch.as_tensor(np.asarray(m, bool))))
        if math.isfinite(v):
            values.append(v)
            weights.append(n)
    if not values:
        raise MeddiffError(f"SSIM: no slice with at least {MIN_SSIM_VOXELS} brain voxels")
    return float(np.average(values, weights=weights))


def lesion_cnr(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray, ring: int = RING) -> float:
    """Lesion contrast-to-noise ratio (mean_L - mean_N) / sqrt(var_L + var_N): L the lesion voxels, N the
    normal-appearing brain in a ``ring``-voxel shell around them (3D dilation, minus the lesions). Positive: the
    lesions are brighter than their surroundings (T2, FLAIR)."""
    lesion = np.asarray(lesion, dtype=bool) & np.asarray(brain, dtype=bool)
    if not lesion.any():
        raise MeddiffError("lesion CNR: no lesion voxel inside the brain mask")
    shell = ndimage.binary_dilation(lesion, iterations=ring) & ~lesion & np.asarray(brain, dtype=bool)
    a, b = np.asarray(image, np.float64)[lesion], np.asarray(image, np.float64)[shell]
    return float((a.mean() - b.mean()) / math.sqrt(max(a.var() + b.var(), 1e-30)))


def slice_fid(real: np.ndarray, fake: np.ndarray, features: str = "random-cnn") -> float:
    """FID between real and synthetic slices (N, H, W) in [-1, 1] on offline features (``meddiff.metrics``:
    no Inception weights are available; random-cnn features measure texture/intensity statistics, not anatomy)."""
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.metrics.generative import fid

    extractor = get_feature_extractor(features)
    f_real = extractor(torch.as_tensor(np.asarray(real, np.float32))[:, None])
    f_fake = extractor(torch.as_tensor(np.asarray(fake, np.float32))[:, None])
    return float(fid(f_real, f_fake))


def scores(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, lesion: np.ndarray | None = None,
           fid_features: str | None = "random-cnn") -> dict:
    """{"psnr", "ssim"[, "fid"][, "cnr_real", "cnr_synthetic"]} of synthetic slices x (N, H, W) against the real
    ref (N, H, W), both in model space, inside the brain ``mask`` (N, H, W); ``lesion`` (N, H, W) bool."""
    out = {"psnr": masked_psnr(x, ref, mask), "ssim": masked_ssim(x, ref, mask)}
    if fid_features:
        out["fid"] = slice_fid(ref, x, fid_features)
    if lesion is not None and np.any(lesion):
        out["cnr_real"] = lesion_cnr(ref, lesion, mask)
        out["cnr_synthetic"] = lesion_cnr(x, lesion, mask)
    return out
