"""HU <-> attenuation and the low-dose (noisy) CT measurement model.

Attenuation from HU (the definition of the Hounsfield scale): mu = mu_water (1 + HU / 1000), clamped at 0, with
``MU_WATER`` = 0.0193 / mm, water's linear attenuation at about 70 keV (NIST XCOM: 0.193 cm^2/g), a common
effective energy for 120 kVp scans. HU = 1000 (mu / mu_water - 1).

Measurement (Beer-Lambert with photon and electronic noise; the simulation model of e.g. Yu et al., "Development and
validation of a practical lower-dose simulation tool", Med. Phys. 39:2012), per ray:
- line integral p = int mu dl = pixel_size * (A mu) (A in pixel lengths, mu per mm, pixel_size in mm);
- photon counts N = Poisson(I0 exp(-p)) + e, e ~ N(0, sigma_e^2) electronic noise (default sigma_e^2 = 10 counts^2,
  Yu et al.'s measured variance); I0 is the incident flux per ray (1e5 ~ full dose, 1e4 / 5e3 low dose);
- post-log sinogram p_hat = -log(max(N, 1) / I0): counts below 1 (possible with electronic noise) are clamped to
  1 count before the log, so p_hat <= log(I0).
E[N] = I0 exp(-p) exactly (the electronic noise has zero mean); Var[p_hat] ~ 1 / (I0 exp(-p)) for large counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.operators import LinearOperator

MU_WATER = 0.0193  # 1/mm, water at ~70 keV
ELECTRONIC_VARIANCE = 10.0  # counts^2
MIN_COUNTS = 1.0  # counts are clamped to this before the log


def hu_to_mu(hu: Tensor, mu_water: float = MU_WATER) -> Tensor:
    """Linear attenuation (1/mm) of an HU image: mu_water (1 + HU / 1000), clamped at 0."""
    return (mu_water * (1 + hu / 1000.0)).clamp_min(0)


def mu_to_hu(mu: Tensor, mu_water: float = MU_WATER) -> Tensor:
    """HU of attenuation values (1/mm): 1000 (mu / mu_water - 1)."""
    return 1000.0 * (mu / mu_water - 1)


def counts_to_line_integrals(counts: Tensor, i0: float) -> Tensor:
    """Post-log sinogram -log(max(N, 1) / I0) of photon counts N."""
    _check_flux(i0)
    return -torch.log(counts.clamp_min(MIN_COUNTS) / i0)


def _check_flux(i0: float) -> None:
    if isinstance(i0, bool) or not isinstance(i0, (int, float)) or not (math.isfinite(i0) and i0 > MIN_COUNTS):
        raise MeddiffError(f"dose I0={i0!r} must be a finite number of photons per ray > {MIN_COUNTS:g}")


def simulate_sinogram(hu: Tensor, op: LinearOperator, *, pixel_size: float = 1.0, i0: float | None = None,
                      electronic_variance: float = ELECTRONIC_VARIANCE, mu_water: float = MU_WATER,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """HU image (..., H, W) -> (post-log sinogram (..., V, D), photon counts or None). ``pixel_size`` in mm;
    ``i0`` None: noiseless line integrals. Noise is drawn on the CPU from ``generator`` (same numbers on every
    device)."""
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise MeddiffError(f"pixel_size={pixel_size!r} must be a positive number (mm)")
    if not (math.isfinite(electronic_variance) and electronic_variance >= 0):
        raise MeddiffError(f"electronic_variance={electronic_variance!r} must be >= 0 (counts^2)")
    p = pixel_size * op.A(hu_to_mu(hu, mu_water))
    if i0 is None:
        return p, None
    _check_flux(i0)
    mean = (i0 * torch.exp(-p.double())).cpu()
    counts = torch.poisson(mean, generator=generator)
    if electronic_variance > 0:
        counts = counts + math.sqrt(electronic_variance) * torch.randn(mean.shape, generator=generator,
                                                                        dtype=mean.dtype)
    counts = counts.to(p.device)
    return counts_to_line_integrals(counts, i0).to(p.dtype), counts.to(p.dtype)
