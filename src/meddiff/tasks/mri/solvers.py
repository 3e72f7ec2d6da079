"""The diffusion solvers: the real-valued prior variable seen through the measurement (``RealImageModel``), the four
samplers with their data-consistency hooks (``solve``) and ``reconstruct``, the one entry point for every method.
See the package docstring for the choices and benchmarks/README.md for their measurements."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.data.transforms import magnitude_scale
from meddiff.diffusion import get_sampler, initial_noise, start_grid
from meddiff.diffusion.inverse import MeasurementReplacement, PosteriorGradient, Projection
from meddiff.errors import MeddiffError, check_choice
from meddiff.physics import acceleration_of, cg_sense, cs_wavelet
from meddiff.tasks.mri.mcddpm import sample_mcddpm
from meddiff.tasks.prior import Prior, Reconstruction, load_prior, solver_settings
from meddiff.tasks.mri.problem import (BASELINES, COMBINES, MRIProblem, baseline, combine_coils, low_resolution_phase,
                                       make_problem)

SOLVERS = ("pc", "dps", "ddnm", "coarse-to-fine", "mc-ddpm")
METHODS = BASELINES + SOLVERS
INITS = ("sense", "cs-wavelet")  # the image a solver with start < 1 noises and refines
# Per-solver defaults. The shipped prior is weak at this 1 mm scale: from noise (start = 1) the solvers are 2.5-5.5 dB
# below L1-wavelet CS, so they refine the CS image noised to a small start time ("come closer, diffuse faster", Chung
# et al. 2022). Whether the prior then matters is measured against the same network untrained (``untrained_prior``;
# benchmarks/README.md, rows "<solver>-untrained").
# - ddnm: ``python benchmarks/mri_reconstruction.py --tune ddnm`` on development mask seed 100 (gaussian 4x and
#   equispaced 8x; the test seeds are 0-2): 3 % of T with 4 steps is the highest-scoring grid entry at which the
#   trained prior beats the untrained one by >= 0.5 dB (+1.0 dB foreground, +0.6 dB whole image; +0.04 dB foreground
#   over CS). The previous default, 1 % of T with 3 steps, scored 0.07 dB higher but only 0.2 dB above the untrained
#   prior: CS plus the final data-consistency step (+0.05 dB).
# - dps: kept. ``--tune dps`` scores it 0.14 dB (foreground) above the untrained prior, a CS refinement; the entry
#   where the prior matters (3 % of T: +1.0 dB) is 0.34 dB below CS, and zeta = 3 scores 0.07 dB higher than these
#   defaults (not adopted: its test-mask rows were not run).
# - pc, coarse-to-fine: values of earlier sessions, not re-tuned (``--tune`` has them in its grid). On the test masks
#   (seed 0) an untrained prior costs pc 1.8-4.8 dB and coarse-to-fine 0.5-1.2 dB (whole image; their added noise
#   is not removed); dps scores 0.1-0.9 dB higher with it on the whole image, 0.1-0.35 dB lower on the foreground.
# - mc-ddpm (mcddpm.py): ``benchmarks/mri_uncertainty.py`` on 9 IXI validation slices (gaussian 4x, equispaced 8x,
#   brain_t1_ixi prior at step 200): 10 % of T with 8 steps has the highest Pearson(std, |error|) over the foreground
#   (0.115; ddnm's default 0.081) at no PSNR cost against CS (+0.02 dB); 5 % of T scores 0.16 dB higher with Pearson
#   0.105; 30 % and 100 % (the paper's start from noise) cost 0.5 and 1.2 dB for no better correlation. No start
#   reaches the 0.5 of issue 21: the error is nearly white, the exact std would reach only ~0.42 (mcddpm docstring).
#   Raising ddnm's start to 20 % moves its Pearson from 0.081 to 0.101 for -0.87 dB: ddnm keeps its default.
# mc-ddpm averages 8 samples (session 13, brain_t1_ixi step 1400, `benchmarks/mri_ixi_tune.py` on 3 val slices): 4 / 8 /
#   16 samples +0.63 / +0.91 / +1.00 dB over CS at Gaussian 4x, +0.79 / +0.96 dB at equispaced 8x; 8 keeps a slice
#   well inside the 30 s on this CPU, 16 does not.
# mc-ddpm steps and start by acceleration (session 20, brain_t1_ixi step 2200, 6 IXI val slices, dev mask seed 100, 8
#   samples; `benchmarks/mri_ixi_tune.py --slices 2 --settings gaussian:4 equispaced:4 gaussian:8 equispaced:8 --only
#   21 22 23 24 25 26`): a finer grid pays at every acceleration and a later
#   start at 8x, where the CS start image is further from the truth. Gain over CS (dB) at 4x Gaussian / equispaced:
#   8 steps from 10 % +0.85 / +0.88, 16 steps +0.94 / +0.98, 24 steps +0.96 / -, 16 samples +0.97 / -; at 8x
#   equispaced / Gaussian: 8 steps from 10 % +0.89 / +0.58, 12 from 15 % +1.09 / +0.77, 16 from 20 % +1.19 / +0.90,
#   20 from 25 % +1.25 / +0.97, 24 from 30 % +1.25 / +0.99. Chosen: 16 steps from 10 % below 6x (16 s / slice on one
#   loaded thread), 20 steps from 25 % from 6x on (21 s); both inside the 30 s.
#   Out of domain (the real 1 mm slice) the later 8x start costs 0.28 dB at Gaussian 8x (benchmarks/README.md);
#   `start=0.1, steps=8` restores the old grid.
# mc-ddpm averages 16 samples from 6x on (session 21, brain_t1_ixi step 3200, the same 6 val slices and dev masks;
#   `benchmarks/mri_ixi_tune.py --slices 2 --settings gaussian:8 equispaced:8 --only 30 27 28 29`): gain over CS at
#   Gaussian / equispaced 8x with 20 steps from 25 %: 8 samples (then entry 25) +1.05 / +1.39, 16 samples +1.18 /
#   +1.49 (2.2x the time); at the cost of 8 x 20: 12 samples x 14 steps +1.05 / +1.35, 16 x 10 +1.11 / +1.38. At 8x
#   the posterior is wider, so its mean needs more samples; 22.6 s per slice on two threads with the chunked
#   denoiser (benchmarks/mri_slice_seconds.py), inside the 30 s. Below 6x 8 stay: at Gaussian 4x 16 samples (8 steps) scored +0.97
#   against the 16-step default's +0.94 (session 20), not worth twice the time.
SOLVER_DEFAULTS: dict[str, dict] = {
    "pc": {"steps": 3, "samples": 4, "snr": 0.05, "start": 0.01, "init": "cs-wavelet"},
    "dps": {"steps": 3, "samples": 4, "zeta": 1.0, "start": 0.01, "init": "cs-wavelet"},
    "ddnm": {"steps": 4, "samples": 4, "eta": 0.85, "start": 0.03, "init": "cs-wavelet"},
    "coarse-to-fine": {"steps": 3, "samples": 4, "start": 0.02, "init": "cs-wavelet", "refine_steps": 2,
                       "refine_start": 0.01},
    "mc-ddpm": {"steps": 16, "samples": 8, "start": 0.1, "init": "cs-wavelet"},
}
HIGH_ACCELERATION = 6.0  # realised acceleration (``acceleration_of`` the mask) from which HIGH_ACCELERATION_DEFAULTS apply
HIGH_ACCELERATION_DEFAULTS: dict[str, dict] = {"mc-ddpm": {"steps": 20, "start": 0.25, "samples": 16}}


def method_defaults(method: str, mask: Tensor) -> dict[str, dict]:
    """``SOLVER_DEFAULTS`` for ``method`` at this mask's acceleration: from ``HIGH_ACCELERATION`` on, the
    high-acceleration values replace the others (a later start and more steps for mc-ddpm, comment above)."""
    defaults = dict(SOLVER_DEFAULTS[method])
    if acceleration_of(mask) >= HIGH_ACCELERATION:
        defaults.update(HIGH_ACCELERATION_DEFAULTS.get(method, {}))
    return {method: defaults}


SCALE_PERCENTILE = 99.5


class RealImageModel:
    """The measurement seen from the prior's variable v (B, 1, Hp, Wp): image z = s (v_c + alpha) / 2 exp(i phi) on
    the centre crop v_c (H, W) (alpha: the state's signal scale; 1 for clean images), data y = A z."""

    def __init__(self, problem: MRIProblem, phase: Tensor, scale: float, padded: tuple[int, int]):
        self.problem, self.phase, self.scale = problem, phase, scale
        h, w = problem.mask.shape
        self.padded = padded
        self.top, self.left = (padded[0] - h) // 2, (padded[1] - w) // 2
        self.crop = (slice(self.top, self.top + h), slice(self.left, self.left + w))
        # air (v = -alpha) outside the coil support and in the padding: a known part of the image (SENSE support)
        air = torch.ones(padded, dtype=torch.bool)
        air[self.crop] = False if problem.maps is None else (problem.maps.abs() ** 2).sum(0) == 0
        self.air = air

    def to_image(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        """(B, 1, Hp, Wp) real -> complex (B, H, W)."""
        return (0.5 * self.scale) * (v[:, 0][(slice(None),) + self.crop] + alpha) * self.phase

    def residual(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        """A z(v) - alpha y, divided by s/2 so that it is in the prior's units (differentiable)."""
        return (self.problem.op.A(self.to_image(v, alpha)) - alpha * self.problem.y) / (0.5 * self.scale)

    def consistent(self, z: Tensor, alpha: float = 1.0) -> Tensor:
        """Data consistency of complex images (B, H, W): measured k-space replaced by alpha y, coil by coil for
        multi-coil data (S^H F^H((1 - M) F S z + M alpha y), the score-MRI step; ``op.dc_step`` with step 1)."""
        return self.problem.op.dc_step(z, alpha * self.problem.y, 1.0)

    def project(self, v: Tensor, alpha: float) -> Tensor:
        """v with its image made consistent with alpha y (``consistent``), back in the real phase frame; v = -alpha
        (air) outside the coil support and in the padding."""
        z = self.consistent(self.to_image(v, alpha), alpha)
        out = v.clone()
        out[:, 0][(slice(None),) + self.crop] = (2.0 / self.scale) * (z * self.phase.conj()).real - alpha
        return torch.where(self.air, torch.full_like(out, -alpha), out)

    def finish(self, v: Tensor, combine: str = "sense") -> Tensor:
        """Output magnitudes (B, H, W) by ``combine_coils``; "sense" first makes the image consistent with the data
        (so the phase comes from the data), "rss" does that coil by coil itself."""
        z = self.to_image(v)
        return combine_coils(self.problem, z if combine == "rss" else self.consistent(z), combine)


def _start(problem: MRIProblem, init: str = "sense") -> tuple[Tensor, float, Tensor]:
    """exp(i phi) (the phase of the initial image; the low-resolution phase where it is 0), the scale s (the 99.5th
    percentile of the initial magnitude over pixels above 10 % of its max) and the initial image (H, W) complex:
    CG-SENSE (``init="sense"``) or L1-wavelet CS (``"cs-wavelet"``)."""
    check_choice("init", init, INITS)
    sense = (cg_sense if init == "sense" else cs_wavelet)(problem.op, problem.y)[0]
    mag = sense.abs()
    scale = magnitude_scale(mag, SCALE_PERCENTILE)  # the training slices' scale (normalize mode "scale")
    phase = torch.where(mag > 0, sense / mag.clamp_min(1e-30), low_resolution_phase(problem)).to(torch.complex64)
    return phase, scale, sense


def solve(method: str, problem: MRIProblem, prior: Prior, *, steps: int | None = None, samples: int | None = None,
          seed: int = 0, combine: str = "sense", **params) -> tuple[Tensor, Tensor, int, dict]:
    """Run a diffusion solver: (magnitudes (K, H, W) of the K samples, image (H, W), network evaluations, settings)."""
    check_choice("method", method, SOLVERS)
    settings = solver_settings(method_defaults(method, problem.mask), method, steps, samples, params)
    n_steps, k = settings["steps"], settings["samples"]
    padded = prior.padded_size(tuple(problem.mask.shape), "k-space")  # MeddiffError naming both sizes if no match
    phase, scale, sense = _start(problem, settings["init"])
    model = RealImageModel(problem, phase, scale, padded)
    schedule, denoiser = prior.schedule, prior.denoiser
    generator = torch.Generator().manual_seed(seed)
    shape = (k, 1) + padded
    with torch.no_grad():
        start = settings["start"]
        grid = start_grid(schedule, n_steps, start)
        x = initial_noise(grid, shape, generator=generator)
        if start < 1:  # come closer, diffuse faster (Chung et al. 2022): noise the initial image to the start
            v = torch.full((1, 1) + padded, -1.0)
            v[:, 0][(slice(None),) + model.crop] = (2 * (sense * phase.conj()).real / scale - 1)[None]
            x = float(grid.alphas[0]) * v + x * (float(grid.sigmas[0]) / grid.prior_std())
        if method == "coarse-to-fine":
            hook = MeasurementReplacement(model.project, schedule, noise=True, generator=generator)
            coarse = get_sampler("ddpm")(denoiser, x, grid, hook=hook, generator=generator)
            mags = model.finish(coarse, combine)
            mean_v = coarse.mean(0, keepdim=True)
            refine = start_grid(schedule, settings["refine_steps"], settings["refine_start"])
            a0, s0 = float(refine.alphas[0]), float(refine.sigmas[0])
            x = a0 * mean_v + s0 * torch.randn(mean_v.shape, generator=generator)
            final = get_sampler("ddim")(denoiser, x, refine, hook=Projection(model.project), generator=generator,
                                        eta=0.0)
            image = model.finish(final, combine)[0]
            nfe = grid.steps + refine.steps
        else:
            if method == "mc-ddpm":  # measured lines kept equal to the data, the unmeasured ones diffused (mcddpm.py)
                out = sample_mcddpm(denoiser, x, grid, model.project, schedule, generator=generator)
                nfe = grid.steps
            elif method == "pc":
                hook = MeasurementReplacement(model.project, schedule, noise=True, generator=generator)
                out = get_sampler("pc")(denoiser, x, grid, hook=hook, generator=generator, snr=settings["snr"])
                nfe = 2 * grid.steps
            elif method == "dps":
                hook = PosteriorGradient(model.residual, settings["zeta"])
                out = get_sampler("ddim")(denoiser, x, grid, hook=hook, generator=generator, eta=1.0)
                nfe = grid.steps
            else:
                out = get_sampler("ddim")(denoiser, x, grid, hook=Projection(model.project), generator=generator,
                                          eta=settings["eta"])
                nfe = grid.steps
            mags = model.finish(out, combine)
            image = mags.mean(0)
    settings.update({"scale": scale, "padded": list(padded)})
    return mags, image, nfe, settings


def reconstruct(kspace, mask, method: str = "ddnm", *, samples: int | None = None, steps: int | None = None,
                seed: int = 0, checkpoint: str | Path | None = None, prior: Prior | None = None,
                maps: Tensor | None = None, combine: str = "sense", **params) -> Reconstruction:
    """Reconstruct one slice: kspace (C, H, W) or (H, W) complex (centred; values outside ``mask`` are ignored),
    mask (H, W) or (W,) of 0/1 -> ``Reconstruction`` with the float32 (H, W) magnitude on the RSS scale and, for
    the diffusion solvers, the per-pixel std over ``samples`` posterior samples. ``combine``: "sense" or "rss"
    (``combine_coils``)."""
    check_choice("method", method, METHODS)
    check_choice("combine", combine, COMBINES)
    problem = make_problem(kspace, mask, maps=maps, calibrate=method != "zero-filled")
    start = time.perf_counter()
    if method in BASELINES:
        if params:
            raise MeddiffError(f"method {method!r} takes no solver parameters (got {sorted(params)})")
        image = baseline(method, problem, combine)
        return Reconstruction(image.numpy().astype(np.float32), None, 0, time.perf_counter() - start,
                              {"method": method, "combine": combine})
    prior = prior if prior is not None else load_prior(checkpoint)
    mags, image, nfe, settings = solve(method, problem, prior, steps=steps, samples=samples, seed=seed,
                                       combine=combine, **params)
    std = mags.std(0, unbiased=False) if len(mags) > 1 else torch.zeros_like(image)
    return Reconstruction(image.numpy().astype(np.float32), std.numpy().astype(np.float32), nfe,
                          time.perf_counter() - start, {"method": method, "combine": combine, **settings})

