"""Diffusion solvers for CT through the generic hooks of ``meddiff.diffusion.inverse`` and ``reconstruct``, the one
entry point for every CT method.

The prior's variable is v = HU / 1000 (the HU window [-1000, 1000] mapped to [-1, 1], not clipped: bone above
1000 HU is v > 1); a CT prior must be trained on slices normalised that way (``CT_WINDOW``). In water units the
image is x = v + 1, so the sinogram of v is b = y - A 1 and the measurement constraint of a state with signal
scale alpha is A v = alpha b (``CTImageModel``):
- "ddnm": DDIM (eta) with the DDNM projection of every x0 prediction, v - A^+(A v - b) (Wang et al. 2023, eq. 13),
  A^+ by ``cg_iters`` CG iterations on the normal equations A^T A z = A^T r from z = 0 (the minimum-norm solution
  when converged; with few views A^T A is ill-conditioned, so the projection, and hence the consistency of the
  output, is approximate: tests/test_physics_ct.py measures it);
- "dps": DDIM (eta = 1) with the DPS gradient step on ||A v0_hat - b|| (Chung et al. 2023, Alg. 1);
- "pc": predictor-corrector with noised-measurement replacement after each step (Song et al. 2022, eq. 9-10),
  the same CG projection.
- "mbir": DiffusionMBIR for a stack (D, V, Det) (Chung et al. 2023): the D slices are one batch of the 2D prior,
  each x0 prediction followed by one ADMM iteration of data consistency with TV along z (``mbir``); ``lam_z = 0``
  is the same solver without the z term.
Every x0 prediction is first clamped to ``V_RANGE`` (air to 3071 HU: attenuation >= 0). The image is padded with
air (v = -alpha) to the prior's multiple and cropped back. ``start`` < 1 noises an
initial image (``init``: fbp, sirt or tv, the latter with weight ``init_lam``, default
``meddiff.physics.ct.DEFAULTS``) to that fraction of the diffusion time ("come closer, diffuse faster",
Chung et al. 2022). The default prior is the shipped ``ct_chest_prior`` (128 x 128 slices at 2.26 mm, v = HU / 1000;
its README); ``SOLVER_DEFAULTS`` are the settings benchmarks/ct_reconstruction.py chose on its dev block at 30 views
(128 x 128): each solver starts from the TV image (weight ``init_lam``, default that of ``meddiff.physics.ct.DEFAULTS``)
noised to t = 20-50 of 1000 and runs 10 steps. From higher starts (0.15, 0.3) DDNM with the shipped prior lost more
to TV on dev slice 68 (27.4 / 26.9 dB against 28.0 at 0.05, TV 29.3); runs from pure noise (``start`` 1, 50+
steps) were not measured (CPU budget).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.diffusion import ClipDenoised, HookChain, get_sampler, initial_noise, start_grid
from meddiff.diffusion.inverse import MeasurementReplacement, PosteriorGradient, Projection
from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.ct.baselines import BASELINES, baseline
from meddiff.tasks.ct.mbir import MBIR_DEFAULTS, ZTVConsistency
from meddiff.tasks.ct.problem import CTProblem, make_problem
from meddiff.tasks.prior import Reconstruction, load_prior, solver_settings

SOLVERS = ("dps", "ddnm", "pc", "mbir")
METHODS = BASELINES + SOLVERS
INITS = BASELINES
CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to [-1, 1] for the prior: v = HU / 1000
V_RANGE = (-1.0, 3.071)  # x0 predictions clamped to air .. 3071 HU (mu >= 0; the largest stored CT value)
SOLVER_DEFAULTS: dict[str, dict] = {  # dev-tuned at 30 views, 128 x 128 (benchmarks/README.md, CT with the prior)
    "ddnm": {"steps": 10, "samples": 1, "eta": 0.85, "start": 0.02, "init": "tv", "init_lam": None, "cg_iters": 10},
    "dps": {"steps": 10, "samples": 1, "zeta": 0.05, "start": 0.05, "init": "tv", "init_lam": None},
    "pc": {"steps": 10, "samples": 1, "snr": 0.05, "start": 0.05, "init": "tv", "init_lam": None, "cg_iters": 10},
    "mbir": {**MBIR_DEFAULTS, "steps": 10, "start": 0.05, "init": "tv", "lam_z": 0.002},
}
DEFAULT_CT_PRIOR = "reconstruct-ct"  # the default_for entry of the shipped CT prior's card


class CTImageModel:
    """One slice seen from the prior's variable v (B, 1, Hp, Wp): v = HU / 1000 on the centred crop (H, W), air
    (v = -alpha) in the padding; data A v_crop = alpha b with b = y - A 1 (water units)."""

    def __init__(self, problem: CTProblem, index: int, padded: tuple[int, int], cg_iters: int = 30) -> None:
        self.op = problem.op
        h, w = problem.size
        self.padded, self.cg_iters = padded, cg_iters
        top, left = (padded[0] - h) // 2, (padded[1] - w) // 2
        self.crop = (slice(top, top + h), slice(left, left + w))
        y = problem.y[index]
        self.b = y - self.op.A(torch.ones(problem.size, dtype=y.dtype))  # [V,D]

    def inside(self, v: Tensor) -> Tensor:
        return v[:, 0][(slice(None),) + self.crop]  # [B,H,W]

    def embed(self, v_crop: Tensor, alpha: float = 1.0) -> Tensor:
        out = torch.full((v_crop.shape[0], 1) + self.padded, -alpha, dtype=v_crop.dtype, device=v_crop.device)
        out[:, 0][(slice(None),) + self.crop] = v_crop
        return out

    def project(self, v: Tensor, alpha: float) -> Tensor:
        """v - A^+(A v - alpha b) on the crop (CG, ``cg_iters``), air in the padding."""
        vc = self.inside(v)
        r = self.op.A(vc) - alpha * self.b
        return self.embed(vc - self.op.A_dagger(r, maxiter=self.cg_iters, tol=1e-6), alpha)

    def residual(self, v: Tensor) -> Tensor:
        """A v_crop - b (differentiable), for DPS."""
        return self.op.A(self.inside(v)) - self.b

    def to_hu(self, v: Tensor) -> Tensor:
        return 1000.0 * self.inside(v)


def _settings(method: str, steps, samples, params: dict) -> dict:
    check_choice("method", method, SOLVERS)
    settings = solver_settings(SOLVER_DEFAULTS, method, steps, samples, params)
    check_choice("init", settings["init"], INITS)
    return settings


def solve(method: str, problem: CTProblem, prior, *, index: int = 0, steps: int | None = None,
          samples: int | None = None, seed: int = 0, **params) -> tuple[Tensor, int, dict]:
    """Run a diffusion solver on slice ``index``: (HU samples (K, H, W), network evaluations, settings)."""
    settings = _settings(method, steps, samples, params)
    padded = prior.padded_size(problem.size, "CT image")
    model = CTImageModel(problem, index, padded, settings.get("cg_iters", 30))
    schedule, denoiser = prior.schedule, prior.denoiser
    generator = torch.Generator().manual_seed(seed)
    grid = start_grid(schedule, settings["steps"], settings["start"])
    with torch.no_grad():
        x = _initial(settings, grid, model, problem, slice(index, index + 1), settings["samples"], generator)
        clip = ClipDenoised(*V_RANGE)
        if method == "ddnm":
            out = get_sampler("ddim")(denoiser, x, grid, hook=HookChain([clip, Projection(model.project)]),
                                      generator=generator, eta=settings["eta"])
            nfe = grid.steps
        elif method == "dps":
            hook = HookChain([PosteriorGradient(model.residual, settings["zeta"]), clip])
            out = get_sampler("ddim")(denoiser, x, grid, hook=hook, generator=generator, eta=1.0)
            nfe = grid.steps
        else:
            hook = HookChain([clip, MeasurementReplacement(model.project, schedule, noise=True, generator=generator)])
            out = get_sampler("pc")(denoiser, x, grid, hook=hook, generator=generator, snr=settings["snr"])
            nfe = 2 * grid.steps
    settings["padded"] = list(padded)
    return model.to_hu(out), nfe, settings


def _initial(settings: dict, grid, model: CTImageModel, problem: CTProblem, rows: slice, batch: int,
             generator: torch.Generator) -> Tensor:
    """x at the grid's first time (batch, 1, Hp, Wp): noise, or with ``start`` < 1 the ``init`` baseline of slices
    ``rows`` noised to that time (one slice repeated over the samples, or one sample per slice of a stack)."""
    x = initial_noise(grid, (batch, 1) + model.padded, generator=generator)
    if settings["start"] < 1:
        sub = CTProblem(problem.op, problem.y[rows], problem.angles, problem.pixel_size, problem.mu_water)
        extra = {"lam": settings["init_lam"]} if settings["init"] == "tv" and settings.get("init_lam") else {}
        v0 = model.embed(baseline(settings["init"], sub, **extra) / 1000.0)
        x = float(grid.alphas[0]) * v0 + x * (float(grid.sigmas[0]) / grid.prior_std())
    return x


def solve_stack(problem: CTProblem, prior, *, steps: int | None = None, samples: int | None = None, seed: int = 0,
                **params) -> tuple[Tensor, int, dict]:
    """DiffusionMBIR (``mbir``) on the whole stack: (HU (K, D, H, W) for ``samples`` K, network evaluations,
    settings); the D slices are one batch of the prior, z-TV couples them in the consistency step."""
    settings = _settings("mbir", steps, samples, params)
    padded = prior.padded_size(problem.size, "CT image")
    model = CTImageModel(problem, 0, padded)
    model.b = problem.y - problem.op.A(torch.ones(problem.size, dtype=problem.y.dtype))  # [D,V,Det]
    norm_sq = problem.op.norm(torch.zeros(problem.size), iters=15, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    grid = start_grid(prior.schedule, settings["steps"], settings["start"])
    depth, out = len(problem.y), []
    with torch.no_grad():
        for _ in range(settings["samples"]):
            x = _initial(settings, grid, model, problem, slice(None), depth, generator)
            step = ZTVConsistency(model, rho=settings["rho"], lam_z=settings["lam_z"], cg_iters=settings["cg_iters"],
                                  norm_sq=norm_sq)
            hook = HookChain([ClipDenoised(*V_RANGE), Projection(step)])
            v = get_sampler("ddim")(prior.denoiser, x, grid, hook=hook, generator=generator, eta=settings["eta"])
            out.append(model.to_hu(v))
    settings["padded"] = list(padded)
    return torch.stack(out), grid.steps * settings["samples"] * depth, settings


def load_ct_prior(checkpoint, method: str):
    """The prior of a diffusion method: ``checkpoint`` (path, run directory or shipped name) or, when None, the
    shipped CT prior (the checkpoint whose card lists ``DEFAULT_CT_PRIOR``, ``ct_chest_prior``)."""
    if checkpoint is None:
        from meddiff.training.shipped import default_checkpoint

        try:
            checkpoint = default_checkpoint(DEFAULT_CT_PRIOR)
        except MeddiffError:
            raise MeddiffError(f"--method {method}: no shipped CT prior found (reinstall meddiff); pass --checkpoint "
                               "with a one-channel prior trained on CT slices as HU / 1000") from None
    return load_prior(checkpoint)


def reconstruct(sinogram, angles, method: str = "fbp", *, size: tuple[int, int] | None = None,
                pixel_size: float | None = None, dose: float | None = None, checkpoint: str | Path | None = None,
                prior=None, steps: int | None = None, samples: int | None = None, seed: int = 0,
                **params) -> Reconstruction:
    """Sinogram (V, D) or (S, V, D) of post-log line integrals (photon counts with ``dose`` = I0), angles (V,)
    radians -> ``Reconstruction`` with float32 HU images (S, H, W) (the caller squeezes S = 1)."""
    check_choice("method", method, METHODS)
    problem = make_problem(sinogram, angles, size=size, pixel_size=pixel_size, dose=dose)
    start = time.perf_counter()
    if method in BASELINES:
        if steps is not None or samples is not None:
            raise MeddiffError(f"method {method!r} takes no --steps/--samples (diffusion methods: "
                               f"{', '.join(SOLVERS)})")
        image = baseline(method, problem, **params)
        return Reconstruction(image.numpy().astype(np.float32), None, 0, time.perf_counter() - start,
                              {"method": method, **{k: v for k, v in params.items() if v is not None}})
    prior = prior if prior is not None else load_ct_prior(checkpoint, method)
    if method == "mbir":
        hu, nfe, settings = solve_stack(problem, prior, steps=steps, samples=samples, seed=seed, **params)
        std = hu.std(0, unbiased=False) if len(hu) > 1 else torch.zeros_like(hu[0])
        return Reconstruction(hu.mean(0).numpy().astype(np.float32), std.numpy().astype(np.float32), nfe,
                              time.perf_counter() - start, {"method": method, **settings})
    images, stds, nfe, settings = [], [], 0, {}
    for index in range(len(problem.y)):
        hu, n, settings = solve(method, problem, prior, index=index, steps=steps, samples=samples, seed=seed,
                                **params)
        images.append(hu.mean(0))
        stds.append(hu.std(0, unbiased=False) if len(hu) > 1 else torch.zeros_like(hu[0]))
        nfe += n
    return Reconstruction(torch.stack(images).numpy().astype(np.float32), torch.stack(stds).numpy().astype(np.float32),
                          nfe, time.perf_counter() - start, {"method": method, **settings})
