"""Degradation models of the restoration tasks: y = A x (+ noise) on real images (..., H, W).

- Super-resolution (``degradation_operator``): "area" (the default) is ``meddiff.physics.Downsampling``, the mean
  over scale x scale blocks, what a lower-resolution acquisition of the same field of view gives (each low-resolution
  pixel integrates the signal of its block); "gaussian" blurs with a Gaussian of sd ``scale / 2`` pixels before
  sampling at the block centres (``GaussianDownsampling``; a smoother point
  spread function, e.g. of a 2D acquisition with a wide slice profile). The low-resolution pixel (i, j) sits at the
  centre of the high-resolution block (i s .. i s + s - 1, j s .. j s + s - 1) for both kernels, the pixel-centre
  convention of ``torch.nn.functional.interpolate(..., align_corners=False)``.
- Inpainting: ``meddiff.physics.Inpainting`` with mask 1 = known pixel; the user-facing masks (``box_mask``,
  ``stroke_mask``, ``--mask``) mark the HOLE (1 = missing, to be filled), as OpenCV and scikit-image do.
- Denoising: ``Identity``; Gaussian noise y = x + sigma n, or Rician noise y = |x + sigma (n1 + i n2)| (a magnitude
  image of complex Gaussian data, Gudbjartsson & Patz 1995).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.physics import Downsampling, Inpainting
from meddiff.physics.fft import check_finite
from meddiff.physics.operators import LinearOperator

TASKS = ("super-resolution", "inpaint", "denoise")
KERNELS = ("area", "gaussian")
NOISES = ("gaussian", "rician")


class Identity(LinearOperator):
    """A = I (denoising): A^H = A^+ = I, the projection onto {A x = y} is y."""

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y

    def A_dagger(self, y: Tensor, **_) -> Tensor:
        return y

    def project(self, x: Tensor, y: Tensor, **_) -> Tensor:
        return y + 0 * x


class GaussianDownsampling(LinearOperator):
    """Gaussian blur (sd ``scale / 2`` pixels) sampled at the block centres: (..., H, W) -> (..., H/s, W/s), real.
    Separable: A x = D_H x D_W^T with D (n/s, n) rows of Gaussian weights centred at i s + (s - 1) / 2, each row
    normalised to sum 1 over the pixels inside the image (so constants are kept up to the border); A^H y = D_H^T y D_W.
    No closed-form pseudo-inverse: ``project`` is the CG default of ``LinearOperator``."""

    def __init__(self, factor: int) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise MeddiffError(f"factor={factor!r} must be a positive integer (the decimation)")
        self.factor = factor

    def matrix(self, n: int, dtype=torch.float32, device=None) -> Tensor:
        """D (n / s, n) of one axis."""
        f = self.factor
        centres = torch.arange(n // f, dtype=torch.float64) * f + (f - 1) / 2
        d = torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float64)[None] - centres[:, None]) / (f / 2)) ** 2)
        return (d / d.sum(1, keepdim=True)).to(dtype=dtype, device=device)

    def A(self, x: Tensor) -> Tensor:
        check_finite("x", x)
        f, (h, w) = self.factor, x.shape[-2:]
        if h % f or w % f:
            raise MeddiffError(f"x has spatial size {(h, w)}, not divisible by scale {f}; crop or pad it first")
        return self.matrix(h, x.dtype, x.device) @ x @ self.matrix(w, x.dtype, x.device).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        check_finite("y", y)
        f, (h, w) = self.factor, y.shape[-2:]
        return self.matrix(h * f, y.dtype, y.device).T @ y @ self.matrix(w * f, y.dtype, y.device)


def check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise MeddiffError(f"--scale {scale!r} must be an integer >= 2 (the in-plane super-resolution factor)")
    return int(scale)


def check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise MeddiffError(f"--sigma {sigma!r} must be a positive number (the noise sd in the input's intensity units)")
    return float(sigma)


def degradation_operator(scale: int, kernel: str = "area") -> LinearOperator:
    """The super-resolution forward model for ``scale``: "area" = ``Downsampling`` (block mean), "gaussian" =
    ``GaussianDownsampling`` (see the module docstring)."""
    check_choice("--kernel", kernel, KERNELS)
    scale = check_scale(scale)
    return Downsampling(scale) if kernel == "area" else GaussianDownsampling(scale)


@dataclass
class Problem:
    """One 2D restoration problem: ``op`` maps the restored image (H, W) to the measurement ``y`` (float32 tensor);
    ``known`` (H, W) bool (inpainting: 1 = known pixel), ``sigma`` the noise sd (denoising) in y's units; ``start``
    an optional first estimate (H, W) for the solvers' ``start`` < 1 (default: ``baselines.start_image``)."""

    task: str
    op: LinearOperator
    y: Tensor
    shape: tuple[int, int]
    scale: int = 1
    kernel: str = "area"
    known: Tensor | None = None
    sigma: float | None = None
    noise: str = "gaussian"
    start: Tensor | None = None


def make_problem(task: str, y, *, scale: int | None = None, kernel: str = "area", mask=None,
                 sigma: float | None = None, noise: str = "gaussian") -> Problem:
    """The problem of a measured 2D image ``y``: super-resolution (y low-resolution, output scale x its size),
    inpainting (``mask`` (H, W), 1 = missing pixel; values of y there are ignored) or denoising (noise sd ``sigma``).
    Raises ``MeddiffError`` naming the argument for a bad scale, mask or sigma."""
    check_choice("--task", task, TASKS)
    y = torch.as_tensor(np.asarray(y, dtype=np.float32))
    if y.ndim != 2:
        raise MeddiffError(f"--input: a problem is one 2D slice, got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise MeddiffError("--input contains NaN/Inf values; clean the image first")
    h, w = y.shape
    if task != "super-resolution" and scale not in (None, 1):
        raise MeddiffError(f"--scale applies to --task super-resolution only (got --scale {scale} for {task})")
    if task != "inpaint" and mask is not None:
        raise MeddiffError(f"--mask applies to --task inpaint only (got a mask for {task})")
    if task != "denoise" and sigma is not None:
        raise MeddiffError(f"--sigma applies to --task denoise only (got --sigma {sigma} for {task})")
    if task == "super-resolution":
        if scale is None:
            raise MeddiffError("--scale is required for --task super-resolution (e.g. 2 or 4)")
        scale = check_scale(scale)
        op = degradation_operator(scale, kernel)
        return Problem(task, op, y, (h * scale, w * scale), scale, kernel)
    if task == "inpaint":
        if mask is None:
            raise MeddiffError("--mask is required for --task inpaint (1 = missing pixel to fill)")
        hole = check_mask(mask, (h, w))
        known = ~hole
        if not bool(known.any()):
            raise MeddiffError("--mask marks every pixel as missing; nothing is known to inpaint from")
        y = torch.where(known, y, torch.zeros_like(y))
        return Problem(task, Inpainting(known.float()), y, (h, w), known=known)
    check_choice("--noise", noise, NOISES)
    if sigma is None:
        sigma = estimate_sigma(y)
    return Problem(task, Identity(), y, (h, w), sigma=check_sigma(sigma), noise=noise)


def check_mask(mask, shape: tuple[int, int]) -> Tensor:
    """Hole mask (H, W) bool from 0/1 or bool data; ``MeddiffError`` naming --mask for another shape or values."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise MeddiffError(f"--mask has shape {m.shape}; the input slice has shape {tuple(shape)}")
    if m.dtype.kind in "fc" and not np.isfinite(m).all():
        raise MeddiffError("--mask contains NaN/Inf values; use 0 (known) and 1 (missing)")
    values = np.unique(m)
    if not np.isin(values, (0, 1)).all():
        raise MeddiffError(f"--mask must hold 0 (known) and 1 (missing) only, got values {values[:6].tolist()}")
    return torch.from_numpy(m.astype(bool))


def estimate_sigma(y: Tensor) -> float:
    """Gaussian noise sd from the finest diagonal Haar detail: median(|HH|) / 0.6745 (Donoho & Johnstone 1994)."""
    h, w = (s - s % 2 for s in y.shape[-2:])
    a = y[..., :h, :w].double()
    hh = (a[..., 0::2, 0::2] - a[..., 0::2, 1::2] - a[..., 1::2, 0::2] + a[..., 1::2, 1::2]) / 2
    sigma = float(hh.abs().median()) / 0.6745
    if not sigma > 0:
        raise MeddiffError("--sigma: the noise level cannot be estimated from this image (no noise found); pass "
                           "--sigma S")
    return sigma


# ----------------------------------------------------------------------------------------------- simulation
def degrade_sr(x, scale: int, kernel: str = "area") -> Tensor:
    """Low-resolution image A x of a high-resolution (..., H, W); H and W must be divisible by ``scale``."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    scale = check_scale(scale)
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise MeddiffError(f"--scale {scale} does not divide the image size {h}x{w}; crop or pad it to a multiple")
    return degradation_operator(scale, kernel).A(x)


def add_noise(x, sigma: float, noise: str = "gaussian", *, seed: int = 0) -> Tensor:
    """x + sigma n (Gaussian) or |x + sigma (n1 + i n2)| (Rician), n from a generator seeded with ``seed``."""
    check_choice("--noise", noise, NOISES)
    sigma = check_sigma(sigma)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    g = torch.Generator().manual_seed(seed)
    n1 = torch.randn(x.shape, generator=g)
    if noise == "gaussian":
        return x + sigma * n1
    n2 = torch.randn(x.shape, generator=g)
    return torch.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)


def box_mask(shape: tuple[int, int], fraction: float = 0.25, *, seed: int | None = None) -> Tensor:
    """Hole mask (H, W) bool: one axis-aligned box of about ``fraction`` of the area, centred (seed None) or at a
    random position drawn with ``seed``."""
    if not 0 < fraction < 1:
        raise MeddiffError(f"fraction={fraction!r} must be in (0, 1)")
    h, w = shape
    bh, bw = max(1, round(h * math.sqrt(fraction))), max(1, round(w * math.sqrt(fraction)))
    if seed is None:
        top, left = (h - bh) // 2, (w - bw) // 2
    else:
        g = torch.Generator().manual_seed(seed)
        top = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=g))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top:top + bh, left:left + bw] = True
    return mask


def stroke_mask(shape: tuple[int, int], *, strokes: int = 6, width: float | None = None, length: float = 0.5,
                seed: int = 0) -> Tensor:
    """Hole mask (H, W) bool of ``strokes`` random brush strokes (free-form masks after Yu et al. 2019, "Free-form
    image inpainting with gated convolution", Alg. 1): each a random walk of 4-8 straight segments of total length
    about ``length`` x the image side, drawn as discs of diameter ``width`` (default 4 % of the side, >= 2 px)."""
    h, w = shape
    side = min(h, w)
    width = max(2.0, 0.04 * side) if width is None else float(width)
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(strokes):
        y, x = g.uniform(0, h), g.uniform(0, w)
        segments = int(g.integers(4, 9))
        angle = g.uniform(0, 2 * np.pi)
        for _ in range(segments):
            angle += g.uniform(-np.pi / 3, np.pi / 3)
            step = length * side / segments
            for t in np.linspace(0, 1, max(2, int(step))):
                cy, cx = y + t * step * np.sin(angle), x + t * step * np.cos(angle)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (width / 2) ** 2
            y = float(np.clip(y + step * np.sin(angle), 0, h - 1))
            x = float(np.clip(x + step * np.cos(angle), 0, w - 1))
    return torch.from_numpy(mask)


def missing_slices_mask(shape: tuple[int, ...], *, every: int | None = None, fraction: float | None = None,
                        axis: int = -1, offset: int = 1, seed: int = 0) -> Tensor:
    """Hole mask of a volume ``shape`` (bool, 1 = missing) where whole slices along ``axis`` are missing: every
    ``every``-th slice (indices offset, offset + every, ...; offset 1 keeps the first slice), or a random ``fraction``
    of the inner slices (drawn with ``seed``; the first and last slice stay known, so every gap has two sides)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise MeddiffError(f"missing slices need a 3D volume shape, got {shape}")
    if (every is None) == (fraction is None):
        raise MeddiffError("missing_slices_mask: give exactly one of every=k or fraction=f")
    axis = axis % 3
    n = shape[axis]
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 2:
            raise MeddiffError(f"every={every!r} must be an integer >= 2 (every k-th slice missing)")
        if not 0 <= offset < every:
            raise MeddiffError(f"offset={offset!r} must be in [0, every)")
        missing = np.arange(offset, n, every)
    else:
        if not 0 < fraction < 1:
            raise MeddiffError(f"fraction={fraction!r} must be in (0, 1)")
        inner = np.arange(1, n - 1)
        count = int(round(fraction * len(inner)))
        missing = np.sort(np.random.default_rng(seed).choice(inner, size=count, replace=False))
    if len(missing) >= n:
        raise MeddiffError(f"every slice of {n} along axis {axis} would be missing")
    mask = np.zeros(shape, dtype=bool)
    index = [slice(None)] * 3
    index[axis] = missing
    mask[tuple(index)] = True
    return torch.from_numpy(mask)
