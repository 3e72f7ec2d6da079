"""Centred orthonormal 2D FFT, coil combination and input checks for complex MR data.

Conventions: complex64 images (B, H, W) or (H, W); multi-coil images and k-space (B, C, H, W) or (C, H, W)
(coils at axis -3); k-space is centred (DC at index (H // 2, W // 2)) and the FFT is unitary over the last
two axes, so ||fft2c(x)|| = ||x|| and ifft2c is its exact inverse and adjoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiff.errors import MeddiffError

_AXES = (-2, -1)


def fft2c(x: Tensor) -> Tensor:
    """Centred unitary 2D DFT over the last two axes: fftshift(fft2(ifftshift(x), norm="ortho"))."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_AXES), norm="ortho"), dim=_AXES)


def ifft2c(k: Tensor) -> Tensor:
    """Inverse (= adjoint) of ``fft2c``: fftshift(ifft2(ifftshift(k), norm="ortho"))."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_AXES), norm="ortho"), dim=_AXES)


def rss(coil_images: Tensor, dim: int = -3) -> Tensor:
    """Root-sum-of-squares coil combination sqrt(sum_c |x_c|^2): (..., C, H, W) -> (..., H, W), real."""
    return torch.sqrt((coil_images.real**2 + coil_images.imag**2).sum(dim) if coil_images.is_complex()
                      else (coil_images**2).sum(dim))


def sense_combine(coil_images: Tensor, maps: Tensor) -> Tensor:
    """Sensitivity-weighted (Roemer / SENSE R=1) combination sum_c conj(S_c) x_c / sum_c |S_c|^2.

    (..., C, H, W) coil images and maps -> (..., H, W) complex; pixels where sum |S|^2 = 0 give 0.
    """
    norm = (maps.abs() ** 2).sum(-3)
    num = (maps.conj() * coil_images).sum(-3)
    return torch.where(norm > 0, num / norm.clamp_min(1e-12), torch.zeros_like(num))


def to_channels(x: Tensor) -> Tensor:
    """Complex (B, H, W) -> real (B, 2, H, W) (real, imaginary) for a network; inverse of ``from_channels``."""
    check_complex("x", x)
    return torch.stack((x.real, x.imag), dim=-3)


def from_channels(x: Tensor) -> Tensor:
    """Real (B, 2, H, W) (real, imaginary) -> complex64 (B, H, W)."""
    if x.is_complex() or x.ndim < 3 or x.shape[-3] != 2:
        raise MeddiffError(f"x must be real with 2 channels (real, imag) at axis -3, got {x.dtype} "
                           f"shape {tuple(x.shape)}")
    return torch.complex(x[..., 0, :, :].float(), x[..., 1, :, :].float())


def check_complex(name: str, x: Tensor) -> None:
    """Raise MeddiffError unless ``x`` is a complex tensor with finite values."""
    if not isinstance(x, Tensor):
        raise MeddiffError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_complex():
        raise MeddiffError(f"{name} must be complex (torch.complex64), got {x.dtype}; MR images and k-space are "
                           f"complex: build one with torch.complex(real, imag) or meddiff.physics.from_channels")
    check_finite(name, x)


def check_finite(name: str, x: Tensor) -> None:
    """Raise MeddiffError naming ``name`` if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise MeddiffError(f"{name} contains {bad} NaN/infinite value(s); clean or mask them before reconstruction")


def check_mask(name: str, mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Validate a sampling/inpainting mask against data of ``shape`` (last two axes must match, leading
    axes must broadcast); return it as float32 0/1 on the same device. Raises on NaNs, non-binary values
    or an empty mask."""
    if not isinstance(mask, Tensor):
        raise MeddiffError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise MeddiffError(f"{name} must be real (0/1 or bool), got {mask.dtype}")
    if mask.ndim < 2 or tuple(mask.shape[-2:]) != tuple(shape[-2:]):
        raise MeddiffError(f"{name} has shape {tuple(mask.shape)} but the data is {tuple(shape)}: the mask's last "
                           f"two axes must be {tuple(shape[-2:])} (H, W)")
    try:
        torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        raise MeddiffError(f"{name} of shape {tuple(mask.shape)} does not broadcast to the data shape "
                           f"{tuple(shape)}") from None
    mask = mask.float()
    check_finite(name, mask)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise MeddiffError(f"{name} must hold only 0 and 1 (sampled = 1)")
    if not bool(mask.any()):
        raise MeddiffError(f"{name} is empty (no sampled point); nothing is measured")
    return mask
