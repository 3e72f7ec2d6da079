"""The measurement model of one slice: validated data, the multi-coil (SENSE, ESPIRiT maps from the sampled centre)
or single-coil operator, the low-resolution phase, the output coil combination and the classical baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.physics import (MultiCoilMRI, SingleCoilMRI, centre_block, cg_sense, cs_tv, cs_wavelet,
                             estimate_sensitivity_maps, ifft2c, rss, zero_filled_rss)
from meddiff.physics.coils import calibration_block
from meddiff.tasks.mri.data import check_inputs

BASELINES = ("zero-filled", "sense", "cs-wavelet", "cs-tv")
COMBINES = ("sense", "rss")  # how the complex image becomes the output magnitude (``combine_coils``)
PHASE_ACS = 24  # low-resolution phase from at most this centred block (Hann window)


@dataclass
class MRIProblem:
    """Operator, masked data y (B=1 leading axis), coil maps (multi-coil) and the CG-SENSE start."""

    op: object
    y: Tensor  # (1, C, H, W) or (1, H, W)
    mask: Tensor  # (H, W)
    maps: Tensor | None
    calibration_seconds: float


def make_problem(kspace, mask, *, maps: Tensor | None = None, calibrate: bool = True) -> MRIProblem:
    """Validate inputs, zero k-space outside the mask, calibrate ESPIRiT maps from the sampled centre
    (``calibration_block`` of the mask, kernel ``auto_kernel``: robust down to 6-9 ACS lines) unless ``calibrate``
    is False (zero-filled RSS needs no maps)."""
    k, m = check_inputs(kspace, mask)
    y = (k * m)[None]
    start = time.perf_counter()
    if k.ndim == 2 or (maps is None and not calibrate):
        return MRIProblem(SingleCoilMRI(m), y, m, None, 0.0)
    if maps is None:
        acs = calibration_block(m)
        if min(acs) < 6:
            raise MeddiffError(f"mask: the fully sampled centre is only {acs} (needs at least 6 x 6 for coil "
                               "calibration); sample a larger calibration region")
        # ESPIRiT with its kernel adapted to the block (auto_kernel: 4 x 6 for 9 ACS lines); benchmarks/coil_maps.py
        maps = estimate_sensitivity_maps(k * m, acs=acs)
        if not bool((maps.abs() > 0).any()):
            raise MeddiffError("kspace: coil calibration from the sampled centre gave empty sensitivity maps; "
                               "check that the k-space is centred (DC in the middle) and the mask samples the centre")
    return MRIProblem(MultiCoilMRI(maps, m), y, m, maps, time.perf_counter() - start)


def low_resolution_phase(problem: MRIProblem) -> Tensor:
    """exp(i phi) (H, W) of the Hann-windowed data centre (at most PHASE_ACS x PHASE_ACS), combined by the maps."""
    m = problem.mask
    ay, ax = (min(a, PHASE_ACS) for a in centre_block(m))
    ay, ax = max(ay, 2), max(ax, 2)
    h, w = m.shape
    window = torch.zeros(h, w)
    y0, x0 = h // 2 - ay // 2, w // 2 - ax // 2
    window[y0:y0 + ay, x0:x0 + ax] = torch.outer(torch.hann_window(ay, periodic=False),
                                                 torch.hann_window(ax, periodic=False))
    low = ifft2c(problem.y[0] * window * m)
    if problem.maps is not None:
        low = (problem.maps.conj() * low).sum(-3)
    return torch.exp(1j * torch.angle(low)).to(torch.complex64)


def combine_coils(problem: MRIProblem, image: Tensor, combine: str = "sense") -> Tensor:
    """Output magnitudes (B, H, W) of complex images (B, H, W). "sense": |x|, the SENSE-model image itself (coil
    noise averaged by the maps). "rss": root-sum-of-squares of the data-consistent coil images
    F^H((1 - M) F S_c x + M y_c), the combination of the fully sampled reference (and of fastMRI's multi-coil
    targets): it keeps every coil's measured noise, so the background has the reference's noise floor.
    Single-coil data: |x| or |F^H((1 - M) F x + M y)|."""
    check_choice("combine", combine, COMBINES)
    if combine == "sense":
        return image.abs()
    if problem.maps is None:  # single coil: x - A^H(A x - y) = F^H((1 - M) F x + M y)
        return problem.op.dc_step(image, problem.y, 1.0).abs()
    return rss(problem.op.project_coils(problem.op.coils.A(image), problem.y))


def baseline(method: str, problem: MRIProblem, combine: str = "sense") -> Tensor:
    """Magnitude (H, W) of a classical reconstruction (``combine_coils``; zero-filled is always the RSS)."""
    if method == "zero-filled":
        return zero_filled_rss(problem.y[0] if problem.y.ndim == 4 else problem.y)  # single coil: C = 1
    fn = {"sense": cg_sense, "cs-wavelet": cs_wavelet, "cs-tv": cs_tv}[method]
    return combine_coils(problem, fn(problem.op, problem.y), combine)[0]

