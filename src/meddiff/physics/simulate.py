"""Multi-coil k-space simulation from a magnitude image: analytic birdcage coil maps, a smooth random image phase
and complex Gaussian k-space noise.

Model (SENSE, Pruessmann et al. 1999), one slice: y_c = F(S_c * x) + n_c, c = 1..C, where x = image * exp(i phi)
(H, W), S_c the coil sensitivities, F the centred orthonormal 2D FFT (``fft2c``) and n_c complex white Gaussian
noise. Because the maps satisfy sum_c |S_c|^2 = 1 at every pixel, the root-sum-of-squares of the noiseless coil
images ifft2c(y_c) equals |image| exactly, and ``MultiCoilMRI(maps, mask=ones).A(x) == y`` (noise 0).

Coil maps follow the idea of the classic "birdcage" simulation (as in SigPy's ``sigpy.mri.birdcage_maps``,
Ong & Lustig; written anew here): C coils equally spaced on a circle of radius ``radius`` (in units of the
half field of view, so > 1 puts the coils outside the image), coil c at angle 2 pi c / C; the raw sensitivity at
pixel r is exp(i (atan2(dx, -dy) - 2 pi c / C)) / |r - r_c| (magnitude falling as 1 / distance, phase turning
with the angle around the coil), then every pixel is divided by the root-sum-of-squares over coils.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.fft import fft2c


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise MeddiffError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MeddiffError(f"seed={seed!r} must be an integer (or pass generator=torch.Generator())")
    return torch.Generator().manual_seed(int(seed))


def _check_coils(coils: object) -> int:
    if isinstance(coils, bool) or not isinstance(coils, (int, np.integer)) or coils < 1:
        raise MeddiffError(f"coils={coils!r} must be an integer >= 1 (the number of receive coils)")
    return int(coils)


def _grid(shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Normalised pixel coordinates (y, x), each about [-1, 1) across the field of view, float64 (H, W)."""
    h, w = shape
    y = (torch.arange(h, dtype=torch.float64) - h / 2.0) / (h / 2.0)
    x = (torch.arange(w, dtype=torch.float64) - w / 2.0) / (w / 2.0)
    return torch.meshgrid(y, x, indexing="ij")


def birdcage_maps(shape: tuple[int, int], coils: int = 8, *, radius: float = 1.5) -> Tensor:
    """Analytic birdcage coil sensitivities (coils, H, W) complex64 with sum_c |S_c|^2 = 1 at every pixel.

    shape: (H, W) image size; coils: number of coils, placed evenly on a circle of ``radius`` half-FOVs around
    the image centre (radius > 1: outside the field of view). Magnitude ~ 1 / distance to the coil, phase = the
    angle around the coil minus the coil's own angle; then normalised by the root-sum-of-squares over coils.
    Dimensionless (relative sensitivities). The idea of SigPy's ``birdcage_maps``.
    """
    coils = _check_coils(coils)
    if len(tuple(shape)) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise MeddiffError(f"shape={tuple(shape)!r} must be two positive integers (H, W)")
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 1.0):
        raise MeddiffError(f"radius={radius!r} must be a finite number > 1 (coils outside the field of view)")
    y, x = _grid((int(shape[0]), int(shape[1])))
    angle = 2.0 * math.pi * torch.arange(coils, dtype=torch.float64) / coils  # [C]
    dx = x[None] - radius * torch.cos(angle)[:, None, None]  # [C,H,W]
    dy = y[None] - radius * torch.sin(angle)[:, None, None]
    dist = torch.sqrt(dx**2 + dy**2)
    phase = torch.atan2(dx, -dy) - angle[:, None, None]
    raw = torch.polar(1.0 / dist, phase)
    norm = torch.sqrt((raw.abs() ** 2).sum(0))
    return (raw / norm).to(torch.complex64)


def smooth_phase(shape: tuple[int, int], *, seed: int | None = 0, generator: torch.Generator | None = None,
                 max_phase: float = math.pi / 2) -> Tensor:
    """Smooth low-order random phase map (H, W) float32 in radians: a 2D quadratic polynomial
    a0 + a1 y + a2 x + a3 x y + a4 y^2 + a5 x^2 on normalised coordinates in [-1, 1), coefficients uniform in
    [-max_phase / 2, max_phase / 2] (6 draws from the generator), mimicking B0 / receive phase of a real scan."""
    g = _generator(seed, generator)
    y, x = _grid((int(shape[0]), int(shape[1])))
    a = (torch.rand(6, generator=g, dtype=torch.float64) - 0.5) * max_phase
    return (a[0] + a[1] * y + a[2] * x + a[3] * x * y + a[4] * y**2 + a[5] * x**2).float()


def simulate_kspace(image, coils: int | None = None, noise_sd: float = 0.0, *, seed: int | None = 0,
                    generator: torch.Generator | None = None, maps: Tensor | None = None, phase: bool = True,
                    radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """Simulate fully sampled multi-coil centred k-space from a real magnitude image.

    image: (H, W) real (numpy or torch), any intensity units; coils: number of birdcage coils (default 8; taken
    from ``maps`` when maps are given); maps: optional (C, H, W) complex sensitivities used as given (not
    renormalised; RSS = |image| only holds when sum_c |S_c|^2 = 1); phase: multiply the image by
    exp(i ``smooth_phase``) (True) or keep it real (False); radius: coil circle radius in half-FOVs.

    Noise / SNR convention: noise_sd is RELATIVE to the image maximum: every k-space sample of every coil gets
    complex Gaussian noise with standard deviation sigma = noise_sd * max|image| in each of its real and imaginary
    parts, independent across samples and coils. As the FFT is orthonormal, each coil image then carries white
    noise of the same sigma per real component, so a pixel with |S_c| = 1 at the image maximum has a single-coil
    SNR of 1 / noise_sd, and the RSS of the noisy coil images deviates from |image| by at most
    sqrt(sum_c |n_c|^2) (about sigma where the signal is strong; noise floor ~ sigma sqrt(2 C) in the background).

    Randomness: the generator (or ``torch.Generator().manual_seed(seed)``) draws the phase first (as
    ``smooth_phase(shape, generator=g)``), then the noise (real parts of all samples, then imaginary parts), so
    equal seeds give equal outputs. Returns (kspace (C, H, W) complex64, maps (C, H, W) complex64).
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image))
    if not isinstance(image, Tensor):
        raise MeddiffError(f"image must be a numpy array or torch.Tensor, got {type(image).__name__}")
    if image.is_complex():
        raise MeddiffError(f"image must be real (a magnitude image), got {image.dtype}; pass its magnitude "
                           f"(abs) and let phase=True add a smooth phase")
    if image.ndim != 2:
        raise MeddiffError(f"image must be 2D (H, W), got shape {tuple(image.shape)}; pick one slice of a volume")
    image = image.to(torch.float32)
    if not bool(torch.isfinite(image).all()):
        bad = int((~torch.isfinite(image)).sum())
        raise MeddiffError(f"image contains {bad} NaN/infinite value(s); clean or mask them before simulating")
    if not (isinstance(noise_sd, (int, float, np.floating)) and not isinstance(noise_sd, bool)
            and math.isfinite(noise_sd) and noise_sd >= 0):
        raise MeddiffError(f"noise_sd={noise_sd!r} must be a finite number >= 0 (noise std relative to the image max)")
    shape = tuple(image.shape)
    if maps is None:
        maps = birdcage_maps(shape, 8 if coils is None else coils, radius=radius)
    else:
        if not isinstance(maps, Tensor) or not maps.is_complex() or maps.ndim != 3 or tuple(maps.shape[-2:]) != shape:
            got = f"{getattr(maps, 'dtype', type(maps).__name__)} shape {tuple(getattr(maps, 'shape', ()))}"
            raise MeddiffError(f"maps must be a complex tensor (C, H, W) with (H, W) = {shape}, got {got}")
        if coils is not None and _check_coils(coils) != maps.shape[0]:
            raise MeddiffError(f"coils={coils} does not match maps with {maps.shape[0]} coils; leave coils unset")
        if not bool(torch.isfinite(torch.view_as_real(maps)).all()):
            raise MeddiffError("maps contains NaN/infinite values")
        maps = maps.to(torch.complex64)
    g = _generator(seed, generator)
    phi = smooth_phase(shape, generator=g) if phase else torch.zeros(shape)
    x = image * torch.polar(torch.ones_like(phi), phi)  # [H,W] complex64
    kspace = fft2c(maps * x)  # [C,H,W]
    if noise_sd > 0:
        sigma = float(noise_sd) * float(image.abs().max())
        real = torch.randn(kspace.shape, generator=g)
        imag = torch.randn(kspace.shape, generator=g)
        kspace = kspace + sigma * torch.complex(real, imag)
    return kspace.to(torch.complex64), maps
