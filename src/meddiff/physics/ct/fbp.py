"""Filtered back-projection for parallel-beam sinograms (Kak & Slaney, "Principles of Computerized Tomographic
Imaging", 1988, ch. 3.3, eq. 61 and 70), in torch, batched.

f(x, y) = dtheta / tau * sum_i Q_i(x cos theta_i + y sin theta_i), Q_i = p_i * h: each view p_i (D detectors,
spacing tau pixels) is zero-padded to P = max(64, 2^ceil(log2(2 D))) samples and filtered in the Fourier domain
with the ramp built from its band-limited spatial kernel h(0) = 1/4, h(n) = -1/(pi n)^2 for odd n, 0 for even n
(Kak & Slaney eq. 61; this avoids the DC offset of a sampled |w|), optionally windowed:
- "ramp": no window (Ram-Lak);
- "shepp-logan": times sinc(f) = sin(pi f) / (pi f), f in cycles per sample;
- "hann": times the Hann window centred at f = 0 (0 at the Nyquist frequency).
The back-projection is pixel-driven: each pixel reads Q_i at s = X cos theta + Y sin theta by linear interpolation
(zero outside the detector). These are scikit-image ``iradon``'s choices, so the two agree to interpolation
accuracy (tests/test_physics_ct.py). dtheta (the angular weight of one view) is min(pi / V, the median spacing of
the sorted angles): pi / V for V views spread over 180 or 360 degrees, the spacing for a limited arc.
Fan-beam data need rebinning first (not implemented): use the iterative baselines with ``FanBeamCT``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.physics.ct.projectors import as_angles, implied_size

FILTERS = ("ramp", "shepp-logan", "hann")


def fourier_filter(size: int, name: str = "ramp", dtype=torch.float64) -> Tensor:
    """The real frequency response (size,) in FFT order (Kak & Slaney eq. 61, windowed by ``name``)."""
    check_choice("filter", name, FILTERS)
    n = torch.arange(size, dtype=torch.float64)
    n = torch.minimum(n, size - n)  # circular distance
    h = torch.where(n % 2 == 1, -1.0 / (math.pi * n.clamp_min(1)) ** 2, torch.zeros(()))
    h[0] = 0.25
    response = 2 * torch.fft.fft(h).real  # 2 x: the two half-planes of theta in [0, pi)
    f = torch.fft.fftfreq(size, dtype=torch.float64)  # cycles per sample, [-1/2, 1/2)
    if name == "shepp-logan":
        response = response * torch.sinc(f)  # sin(pi f) / (pi f)
    elif name == "hann":
        response = response * 0.5 * (1 + torch.cos(2 * math.pi * f))
    return response.to(dtype)


def angular_weight(angles: Tensor) -> float:
    """dtheta of one view: min(pi / V, median spacing of the sorted angles) (module docstring)."""
    v = len(angles)
    if v == 1:
        return math.pi
    spacing = float(torch.median(torch.diff(torch.sort(angles).values)))
    return min(math.pi / v, spacing) if spacing > 0 else math.pi / v


def fbp(sinogram: Tensor, angles, image_size=None, *, filter: str = "ramp", detector_spacing: float = 1.0) -> Tensor:
    """Sinogram (..., V, D) of parallel-beam line integrals (pixel units), angles (V,) radians -> image (..., H, W)
    on the grid of ``ParallelBeamCT`` (default: the square ``implied_size(D)``)."""
    check_choice("filter", filter, FILTERS)
    theta = as_angles(angles)
    if not isinstance(sinogram, Tensor) or not sinogram.is_floating_point() or sinogram.ndim < 2:
        raise MeddiffError("sinogram must be a real floating-point tensor (..., views, detectors)")
    v, d = sinogram.shape[-2:]
    if v != len(theta):
        raise MeddiffError(f"angles has {len(theta)} entries but the sinogram has {v} views (shape "
                           f"{tuple(sinogram.shape)}); give one angle per view")
    h, w = (implied_size(d),) * 2 if image_size is None else \
        ((image_size,) * 2 if isinstance(image_size, int) else tuple(image_size))
    dtype, device = sinogram.dtype, sinogram.device
    size = max(64, 2 ** math.ceil(math.log2(2 * d)))
    lead = sinogram.shape[:-2]
    p = sinogram.reshape(-1, v, d)
    spectrum = torch.fft.rfft(p, n=size, dim=-1) * fourier_filter(size, filter, dtype).to(device)[: size // 2 + 1]
    q = torch.fft.irfft(spectrum, n=size, dim=-1)[..., :d]  # [B,V,D] filtered views
    ys = (h - 1) / 2 - torch.arange(h, dtype=dtype, device=device)
    xs = torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    out = torch.zeros(p.shape[0], h * w, dtype=dtype, device=device)
    cos, sin = torch.cos(theta).to(dtype).to(device), torch.sin(theta).to(dtype).to(device)
    chunk = max(1, 4_000_000 // max(1, h * w * p.shape[0]))
    qpad = torch.nn.functional.pad(q, (1, 1))  # zero outside the detector: index 0 and D + 1
    for start in range(0, v, chunk):
        c, s_ = cos[start:start + chunk, None], sin[start:start + chunk, None]
        k = (xx[None] * c + yy[None] * s_) / detector_spacing + (d - 1) / 2 + 1  # [Vc,HW] index into qpad
        k = k.clamp(0, d + 1)
        k0 = torch.floor(k).clamp(max=d).long()
        f = k - k0
        views = qpad[:, start:start + chunk]  # [B,Vc,D+2]
        g0 = torch.gather(views, 2, k0[None].expand(p.shape[0], -1, -1))
        g1 = torch.gather(views, 2, (k0 + 1)[None].expand(p.shape[0], -1, -1))
        out += ((1 - f) * g0 + f * g1).sum(1)
    scale = angular_weight(theta) / (2 * detector_spacing)  # the filter carries the factor 2 of Kak & Slaney
    return (out * scale).reshape(*lead, h, w)
