"""Scores of a restored image against the truth: PSNR and SSIM (``meddiff.metrics``) over the whole image, inside a
brain mask and, for inpainting, inside the hole. The data range is the reference's maximum (images are >= 0
magnitudes), the same for every region, so the regions' numbers compare."""

from __future__ import annotations

import numpy as np
import torch

from meddiff.metrics.image import psnr, ssim

FOREGROUND = 0.1  # without a brain mask: pixels above this fraction of the reference's max


def scores(x, ref, brain=None, hole=None) -> dict:
    """{"psnr", "ssim", "psnr_brain", "ssim_brain"[, "psnr_hole"]} of x against ref (H, W). ``brain``: (H, W) bool
    (default: ref > FOREGROUND x max); ``hole``: the inpainted pixels (H, W) bool."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    ref = torch.as_tensor(np.asarray(ref, dtype=np.float32))
    top = float(ref.max())
    brain = ref > FOREGROUND * top if brain is None else torch.as_tensor(np.asarray(brain, dtype=bool))
    out = {"psnr": float(psnr(x, ref, top)), "ssim": float(ssim(x, ref, top)),
           "psnr_brain": float(psnr(x, ref, top, mask=brain)), "ssim_brain": float(ssim(x, ref, top, mask=brain))}
    if hole is not None:
        out["psnr_hole"] = float(psnr(x, ref, top, mask=torch.as_tensor(np.asarray(hole, dtype=bool))))
    return out


def volume_scores(x, ref, missing, brain=None) -> dict:
    """Scores of a volume (H, W, D) inside its ``missing`` slices (indices along the last axis): {"psnr_missing",
    "psnr_missing_brain" (all missing voxels pooled), "ssim_missing", "ssim_missing_brain" (2D SSIM of each missing
    slice, mean over them)}. Data range: the reference volume's max; ``brain`` (H, W, D) bool, default ref >
    FOREGROUND x max."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    missing = np.asarray(missing, dtype=int)
    top = float(ref.max())
    brain = ref > FOREGROUND * top if brain is None else np.asarray(brain, dtype=bool)
    err = (x[..., missing] - ref[..., missing]) ** 2
    inside = brain[..., missing]

    def to_db(mse: float) -> float:
        return float(10 * np.log10(top**2 / max(mse, 1e-30)))

    per_slice = [scores(x[..., z], ref[..., z], brain[..., z]) for z in missing]
    return {"psnr_missing": to_db(float(err.mean())), "psnr_missing_brain": to_db(float(err[inside].mean())),
            "ssim_missing": float(np.mean([s["ssim"] for s in per_slice])),
            "ssim_missing_brain": float(np.mean([s["ssim_brain"] for s in per_slice]))}
