"""Full-reference image metrics on real 2D images (..., H, W): PSNR, SSIM and NMSE, one value per image.

``data_range`` defaults to max(ref) - min(ref) per image (state it when reporting). Complex inputs are refused:
pass magnitudes (``x.abs()``) explicitly. ``mask`` (H, W) bool restricts the average to a region (e.g. the
foreground ref > 0.1 max), for SSIM to the windows centred in it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.errors import MeddiffError


def _check(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, Tensor) or t.is_complex() or t.ndim < 2:
            raise MeddiffError(f"{name} must be a real tensor (..., H, W); for complex images pass .abs()")
        if not bool(torch.isfinite(t).all()):
            raise MeddiffError(f"{name} contains NaN/infinite values")
    if x.shape != ref.shape:
        raise MeddiffError(f"x has shape {tuple(x.shape)} but ref has {tuple(ref.shape)}; they must match")
    return x.double(), ref.double()


def _range(ref: Tensor, data_range: float | None) -> Tensor:
    if data_range is not None:
        return torch.full(ref.shape[:-2], float(data_range), dtype=torch.float64)
    return ref.amax((-2, -1)) - ref.amin((-2, -1))


def _weights(mask: Tensor | None, shape: torch.Size) -> Tensor:
    if mask is None:
        return torch.ones(shape[-2:], dtype=torch.float64)
    if tuple(mask.shape) != tuple(shape[-2:]) or not bool(mask.any()):
        raise MeddiffError(f"mask must be a non-empty (H, W) = {tuple(shape[-2:])} region, got {tuple(mask.shape)}")
    return mask.to(torch.float64)


def nmse(x: Tensor, ref: Tensor, mask: Tensor | None = None) -> Tensor:
    """Normalised mean squared error ||x - ref||^2 / ||ref||^2 (fastMRI NMSE)."""
    x, ref = _check(x, ref)
    w = _weights(mask, x.shape)
    return (w * (x - ref) ** 2).sum((-2, -1)) / (w * ref**2).sum((-2, -1)).clamp_min(1e-30)


def psnr(x: Tensor, ref: Tensor, data_range: float | None = None, mask: Tensor | None = None) -> Tensor:
    """Peak SNR in dB: 10 log10(data_range^2 / MSE)."""
    x, ref = _check(x, ref)
    w = _weights(mask, x.shape)
    mse = (w * (x - ref) ** 2).sum((-2, -1)) / w.sum()
    return 10 * torch.log10(_range(ref, data_range) ** 2 / mse.clamp_min(1e-30))


def ssim(x: Tensor, ref: Tensor, data_range: float | None = None, *, mask: Tensor | None = None,
         sigma: float = 1.5, size: int = 11, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 13:600, 2004, eq. 13) with an 11 x 11 Gaussian window
    (sigma 1.5), C1 = (k1 L)^2, C2 = (k2 L)^2, averaged over all window positions fully inside the image."""
    x, ref = _check(x, ref)
    w = _weights(mask, x.shape)
    if min(x.shape[-2:]) < size:
        raise MeddiffError(f"images of size {tuple(x.shape[-2:])} are smaller than the SSIM window ({size})")
    lead = x.shape[:-2]
    L = _range(ref, data_range).reshape(-1, 1, 1, 1)
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / sigma) ** 2)
    g = g / g.sum()
    win = torch.outer(g, g)[None, None]
    a, b = x.reshape(-1, 1, *x.shape[-2:]), ref.reshape(-1, 1, *x.shape[-2:])
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    half = size // 2
    w = w[half: w.shape[0] - half, half: w.shape[1] - half]  # window centres of the "valid" positions
    if not bool(w.any()):
        raise MeddiffError("mask has no pixel at least size // 2 from the border; SSIM has no window there")
    value = (s * w).sum((-3, -2, -1)) / w.sum()
    return value.reshape(lead) if lead else value.reshape(())


def db(value: float) -> float:
    """10 log10(value), for NMSE in dB."""
    return 10 * math.log10(max(value, 1e-30))
