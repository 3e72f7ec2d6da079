"""Full-reference image metrics on real images (..., H, W): PSNR, SSIM, MS-SSIM and NMSE, one value per image;
SSIM and MS-SSIM also on volumes (..., D, H, W) with ``spatial_dims=3``.

``data_range`` defaults to max(ref) - min(ref) per image (state it when reporting). Complex inputs are refused:
pass magnitudes (``x.abs()``) explicitly. ``mask`` (H, W) bool restricts the average to a region (e.g. the
foreground ref > 0.1 max), for SSIM to the windows centred in it (same shape as the image's spatial axes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.errors import MeddiffError


def _check(x: Tensor, ref: Tensor, dims: int = 2) -> tuple[Tensor, Tensor]:
    if dims not in (2, 3):
        raise MeddiffError(f"spatial_dims={dims!r} must be 2 (..., H, W) or 3 (..., D, H, W)")
    axes = "(..., H, W)" if dims == 2 else "(..., D, H, W)"
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, Tensor) or t.is_complex() or t.ndim < dims:
            raise MeddiffError(f"{name} must be a real tensor {axes}; for complex images pass .abs()")
        if not bool(torch.isfinite(t).all()):
            raise MeddiffError(f"{name} contains NaN/infinite values")
    if x.shape != ref.shape:
        raise MeddiffError(f"x has shape {tuple(x.shape)} but ref has {tuple(ref.shape)}; they must match")
    return x.double(), ref.double()


def _range(ref: Tensor, data_range: float | None, dims: int = 2) -> Tensor:
    axes = tuple(range(-dims, 0))
    if data_range is not None:
        return torch.full(ref.shape[:-dims], float(data_range), dtype=torch.float64)
    return ref.amax(axes) - ref.amin(axes)


def _weights(mask: Tensor | None, shape: torch.Size, dims: int = 2) -> Tensor:
    if mask is None:
        return torch.ones(shape[-dims:], dtype=torch.float64)
    if tuple(mask.shape) != tuple(shape[-dims:]) or not bool(mask.any()):
        raise MeddiffError(f"mask must be a non-empty spatial region of shape {tuple(shape[-dims:])}, "
                           f"got {tuple(mask.shape)}")
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


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # exponents of Wang, Simoncelli & Bovik 2003


def _blur(a: Tensor, g: Tensor, dims: int) -> Tensor:
    """Separable Gaussian filter of a (B, 1, *spatial), "valid" positions only (no padding)."""
    conv = F.conv2d if dims == 2 else F.conv3d
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = g.numel()
        a = conv(a, g.reshape(shape))
    return a


def _ssim_cs(a: Tensor, b: Tensor, L: Tensor, dims: int, size: int, sigma: float, k1: float, k2: float):
    """SSIM and contrast-structure maps (Wang et al. 2004, eq. 13 and the s * c factor of eq. 12) of a, b
    (B, 1, *spatial) float64 with per-image data range L (B,), over window centres fully inside the image."""
    L = L.reshape(-1, *([1] * (dims + 1)))
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / sigma) ** 2)
    g = g / g.sum()
    mu_a, mu_b = _blur(a, g, dims), _blur(b, g, dims)
    var_a = _blur(a * a, g, dims) - mu_a**2
    var_b = _blur(b * b, g, dims) - mu_b**2
    cov = _blur(a * b, g, dims) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    return (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs, cs


def _valid_weights(w: Tensor, size: int, dims: int) -> Tensor:
    half = size // 2
    w = w[tuple(slice(half, n - half) for n in w.shape)]  # window centres of the "valid" positions
    if not bool(w.any()):
        raise MeddiffError("mask has no pixel at least size // 2 from the border; SSIM has no window there")
    return w


def ssim(x: Tensor, ref: Tensor, data_range: float | None = None, *, mask: Tensor | None = None,
         sigma: float = 1.5, size: int = 11, k1: float = 0.01, k2: float = 0.03, spatial_dims: int = 2) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 13:600, 2004, eq. 13) with an 11 x 11 (x 11 in 3D) Gaussian
    window (sigma 1.5), C1 = (k1 L)^2, C2 = (k2 L)^2, averaged over all window positions fully inside the image.
    x, ref (..., H, W), or (..., D, H, W) with spatial_dims=3 -> (...)."""
    dims = spatial_dims
    x, ref = _check(x, ref, dims)
    w = _weights(mask, x.shape, dims)
    if min(x.shape[-dims:]) < size:
        raise MeddiffError(f"images of size {tuple(x.shape[-dims:])} are smaller than the SSIM window ({size})")
    lead = x.shape[:-dims]
    a, b = x.reshape(-1, 1, *x.shape[-dims:]), ref.reshape(-1, 1, *x.shape[-dims:])
    s, _ = _ssim_cs(a, b, _range(ref, data_range, dims).reshape(-1), dims, size, sigma, k1, k2)
    w = _valid_weights(w, size, dims)
    value = (s * w).sum(tuple(range(-dims - 1, 0))) / w.sum()
    return value.reshape(lead) if lead else value.reshape(())


def ms_ssim(x: Tensor, ref: Tensor, data_range: float | None = None, *, weights=MS_SSIM_WEIGHTS,
            sigma: float = 1.5, size: int = 11, k1: float = 0.01, k2: float = 0.03, spatial_dims: int = 2) -> Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik, Asilomar 2003, eq. 7): prod_j cs_j^w_j at scales 1..M-1 times
    SSIM^w_M at the coarsest, halving with 2 x 2 (x 2) average pooling; negative factors are clipped to 0 (as in
    MONAI). x, ref (..., H, W) or (..., D, H, W) with spatial_dims=3 -> (...). The data range L (default
    max - min of ref) is that of the full-resolution image at every scale. Coarsest side must be >= size."""
    dims = spatial_dims
    x, ref = _check(x, ref, dims)
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    scales = weights.numel()
    if scales < 1 or bool((weights < 0).any()):
        raise MeddiffError(f"weights={weights.tolist()} must be one or more non-negative exponents, one per scale")
    if min(x.shape[-dims:]) // 2 ** (scales - 1) < size:
        need = size * 2 ** (scales - 1)
        raise MeddiffError(f"images of size {tuple(x.shape[-dims:])} are too small for {scales} MS-SSIM scales with "
                           f"window {size} (need sides >= {need}); pass fewer weights= or a smaller size=")
    lead = x.shape[:-dims]
    a, b = x.reshape(-1, 1, *x.shape[-dims:]), ref.reshape(-1, 1, *x.shape[-dims:])
    L = _range(ref, data_range, dims).reshape(-1)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    value = torch.ones(a.shape[0], dtype=torch.float64)
    for j in range(scales):
        s, cs = _ssim_cs(a, b, L, dims, size, sigma, k1, k2)
        factor = (s if j == scales - 1 else cs).mean(tuple(range(1, dims + 2)))
        value = value * factor.clamp_min(0) ** weights[j]
        a, b = pool(a, 2), pool(b, 2)
    return value.reshape(lead) if lead else value.reshape(())


def db(value: float) -> float:
    """10 log10(value), for NMSE in dB."""
    return 10 * math.log10(max(value, 1e-30))
