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
