"""Zero-shot diffusion restoration: an unconditional one-channel prior (``meddiff.tasks.prior.Prior``) run through the
samplers and inverse-problem hooks of ``meddiff.diffusion``.

- "ddnm" (super-resolution, inpainting): DDIM (eta) with the DDNM range/null-space projection of every x0
  prediction, x0' = A^+ y + (I - A^+ A) x0 (Wang et al. 2023, eq. 13; ``diffusion.inverse.Projection``): the output
  satisfies A x = y exactly for area downsampling and inpainting (closed-form projections), up to the CG tolerance
  for the Gaussian kernel.
- "dps" (super-resolution, inpainting): DDIM (eta = 1) with the DPS gradient step on ||A x0_hat - y|| (Chung et al.
  2023, Alg. 1; ``PosteriorGradient``): approximately consistent.
- "repaint" (inpainting): Lugmayr et al. 2022, Alg. 1: ancestral steps whose known region is replaced by the
  forward-noised measurement (``MeasurementReplacement``), with resampling: every ``jump`` steps the state is
  noised back ``jump`` steps and re-denoised, ``resample`` times in all (their j and r; the jump schedule of
  their code, ``repaint_schedule``). The known pixels of the output equal y.
- "diffusion" (denoising): the noisy image is a sample of the forward process at the time t* where sigma/alpha
  equals the noise sd in model units (x_t* = alpha_t* y), so the reverse process starts there (DDIM with eta, default
  1, to t = 0), as in DDRM/DDNM's denoising and "SDEdit" at the matched level. Rician data are bias-corrected first.

Intensities: the image is divided by s = ``magnitude_scale`` of the measurement (the 99.5th percentile of the pixels
above 10 % of the max; the prior's training slices were scaled the same way) and mapped to the model's v = 2 x / s -
1 (zero intensity = air = -1), so the measurement of v is y_v = (2 / s) y - A 1. The prior is fully convolutional:
the image is padded with air (v = -1, known) to the prior's multiple and cropped back. K samples run as one batch;
the output is their mean, the uncertainty map their per-pixel std (0 for K = 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.data.transforms import magnitude_scale
from meddiff.diffusion import get_sampler, initial_noise, start_grid
from meddiff.diffusion.inverse import MeasurementReplacement, PosteriorGradient, Projection
from meddiff.diffusion.timesteps import TimeGrid
from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.prior import Prior, solver_settings
from meddiff.tasks.restore.baselines import denoising_input, start_image
from meddiff.tasks.restore.problems import Problem

ZERO_SHOT = {
    "super-resolution": ("ddnm", "dps"),
    "inpaint": ("ddnm", "dps", "repaint"),
    "denoise": ("diffusion",),
}
SOLVERS = ("ddnm", "dps", "repaint", "diffusion")
# First values, not tuned on a benchmark yet (benchmarks/restoration.py runs them; tune on val subjects only).
# start < 1: the classical start image (``baselines.start_image``) noised to that fraction of T ("come closer,
# diffuse faster", Chung et al. 2022). dps zeta: with 20 steps the DPS step of the paper (zeta ~ 1 over 1000 steps)
# barely moves the sample; on one IXI val slice (IXI056, 4x SR, brain_t1_ixi at step 300, K = 1) zeta 1 / 10 / 30 /
# 100 scored about 14 / 18.3 / 21.1 / 19.9 dB (bicubic 21.8 dB): 30 until a real tuning run.
SOLVER_DEFAULTS: dict[str, dict] = {
    "ddnm": {"steps": 20, "samples": 4, "eta": 0.85, "start": 1.0},
    "dps": {"steps": 20, "samples": 4, "zeta": 30.0, "start": 1.0},
    "repaint": {"steps": 20, "samples": 4, "jump": 5, "resample": 3},
    "diffusion": {"steps": 10, "samples": 4, "eta": 1.0},
}


class ModelSpace:
    """The problem seen from the prior's variable v (B, 1, Hp, Wp): image x = s (v_c + 1) / 2 on the centre crop
    v_c (H, W); the rest is padding, air (v = -alpha) at every time."""

    def __init__(self, problem: Problem, scale: float, padded: tuple[int, int]):
        self.problem, self.scale, self.padded = problem, scale, padded
        h, w = problem.shape
        top, left = (padded[0] - h) // 2, (padded[1] - w) // 2
        self.crop = (Ellipsis, slice(top, top + h), slice(left, left + w))
        self.y = (2.0 / scale) * problem.y - problem.op.A(torch.ones(problem.shape))  # A v = y_v

    def project(self, v: Tensor, alpha: float) -> Tensor:
        """Closest v' to v with A v'_c = alpha y_v, air (-alpha) in the padding (``op.project``)."""
        out = torch.full_like(v, -alpha)
        out[self.crop] = self.problem.op.project(v[self.crop], alpha * self.y)
        return out

    def residual(self, v: Tensor) -> Tensor:
        """A v_c - y_v (differentiable), for DPS."""
        return self.problem.op.A(v[self.crop]) - self.y

    def to_image(self, v: Tensor) -> Tensor:
        """(B, 1, Hp, Wp) -> (B, H, W) in the input's units."""
        return 0.5 * self.scale * (v[self.crop][:, 0] + 1)

    def from_image(self, x: Tensor) -> Tensor:
        """(H, W) image -> (1, 1, Hp, Wp) v with air padding."""
        v = torch.full((1, 1) + self.padded, -1.0)
        v[self.crop] = (2.0 / self.scale) * x - 1
        return v


def repaint_schedule(steps: int, jump: int, resample: int) -> list[int]:
    """Grid indices visited by RePaint (Lugmayr et al. 2022, ``get_schedule_jump`` of their code with t_T = steps,
    jump_length = jump, jump_n_sample = resample): 0 = the first (noisiest) model time, ``steps`` = clean. A step to a
    larger index is a reverse (denoising) step, to a smaller one a forward (noising) step."""
    for name, value in (("steps", steps), ("jump", jump), ("resample", resample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MeddiffError(f"{name}={value!r} must be a positive integer")
    jumps = {j: resample - 1 for j in range(0, steps - jump, jump)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump):
                t += 1
                ts.append(t)
    ts.append(-1)
    return [steps - 1 - t for t in ts]  # their time t (T-1 .. -1) -> grid index


def sample_repaint(denoiser, x: Tensor, grid: TimeGrid, project, *, jump: int, resample: int,
                   generator: torch.Generator) -> tuple[Tensor, int]:
    """RePaint over ``grid`` (x at grid.times[0]) -> (clean x, network evaluations). Reverse step i -> i + 1: DDPM
    posterior q(x_s | x_t, x0_hat) (fixed-small variance, ``sample_ddpm``'s formula), then the known region replaced by
    alpha_s y + sigma_s n (``MeasurementReplacement``; exact at the clean time); forward step i + 1 -> i:
    x_t = a x_s + b n with a = alpha_t / alpha_s, b^2 = sigma_t^2 - a^2 sigma_s^2 (Lugmayr et al. 2022, Alg. 1)."""
    alphas, sigmas = grid.alphas.tolist(), grid.sigmas.tolist()
    replace = MeasurementReplacement(project, grid.schedule, noise=True, generator=generator)
    path = repaint_schedule(grid.steps, jump, resample)
    nfe = 0
    for i, j in zip(path[:-1], path[1:]):
        (a_t, s_t), (a_s, s_s) = (alphas[min(i, j)], sigmas[min(i, j)]), (alphas[max(i, j)], sigmas[max(i, j)])
        a = a_t / a_s
        b2 = max(s_t**2 - a**2 * s_s**2, 0.0)
        if j > i:  # reverse step (Ho et al. 2020, eq. 7)
            t = torch.full((x.shape[0],), float(grid.times[i]))
            x0 = denoiser(x, t)
            nfe += 1
            x_next = (a_s * b2 / s_t**2) * x0 + (a * s_s**2 / s_t**2) * x
            if s_s > 0:
                noise = torch.randn(x.shape, generator=generator)
                x_next = x_next + math.sqrt(max(b2 * s_s**2 / s_t**2, 1e-20)) * noise
            x = replace.step(x_next, x0, grid.times[j:j + 1])
        else:  # forward jump back to the noisier time
            x = a * x + math.sqrt(b2) * torch.randn(x.shape, generator=generator)
    return x, nfe


def matched_time(schedule, sigma_v: float) -> float:
    """The time t* with sigma_t / alpha_t = sigma_v (clamped to the schedule's range)."""
    log_snr = torch.tensor([-2.0 * math.log(sigma_v)], dtype=torch.float64)
    lo, hi = float(schedule.log_snr(schedule.t_max)), float(schedule.log_snr(schedule.t_min))
    if float(log_snr) >= hi:
        return float(schedule.t_min)
    if float(log_snr) <= lo:
        return float(schedule.t_max)
    return float(schedule.time_from_log_snr(log_snr)[0])


def solve(method: str, problem: Problem, prior: Prior, *, steps: int | None = None, samples: int | None = None,
          seed: int = 0, **params) -> tuple[Tensor, int, dict]:
    """Run a zero-shot solver -> (images (K, H, W) in the input's units, network evaluations, settings)."""
    check_choice(f"--method (for --task {problem.task})", method, ZERO_SHOT[problem.task])
    settings = solver_settings(SOLVER_DEFAULTS, method, steps, samples, params, label=f"--method {method}")
    n_steps, k = settings["steps"], settings["samples"]
    padded = prior.padded_size(problem.shape, what="image")
    y_seen = denoising_input(problem) if problem.task == "denoise" else problem.y
    known = y_seen if problem.known is None else y_seen[problem.known]
    scale = magnitude_scale(known)
    space = ModelSpace(problem, scale, padded)
    schedule, denoiser = prior.schedule, prior.denoiser
    generator = torch.Generator().manual_seed(seed)
    shape = (k, 1) + padded
    with torch.no_grad():
        if method == "diffusion":
            sigma_v = 2.0 * problem.sigma / scale
            t_star = matched_time(schedule, sigma_v)
            times = torch.linspace(t_star, float(schedule.t_min), n_steps, dtype=torch.float64)
            grid = TimeGrid.from_times(schedule, times.unique().flip(0))
            a0, s0 = float(grid.alphas[0]), float(grid.sigmas[0])
            v = space.from_image(y_seen).expand(shape).clone()
            noise = torch.randn(shape, generator=generator)
            air = torch.ones(shape, dtype=torch.bool)
            air[space.crop] = False
            x = a0 * v + torch.where(air, s0 * noise, torch.zeros_like(noise))  # the data carry their own noise
            out = get_sampler("ddim")(denoiser, x, grid, generator=generator, eta=settings["eta"])
            nfe = grid.steps
            settings.update({"t_start": t_star, "sigma_model": sigma_v})
        else:
            grid = start_grid(schedule, n_steps, settings.get("start", 1.0))
            x = initial_noise(grid, shape, generator=generator)
            if settings.get("start", 1.0) < 1:  # noise the classical start image to the grid's first time
                v = space.from_image(start_image(problem))
                x = float(grid.alphas[0]) * v + x * (float(grid.sigmas[0]) / grid.prior_std())
            if method == "ddnm":
                out = get_sampler("ddim")(denoiser, x, grid, hook=Projection(space.project), generator=generator,
                                          eta=settings["eta"])
                nfe = grid.steps
            elif method == "dps":
                out = get_sampler("ddim")(denoiser, x, grid, hook=PosteriorGradient(space.residual, settings["zeta"]),
                                          generator=generator, eta=1.0)
                nfe = grid.steps
            else:
                out, nfe = sample_repaint(denoiser, x, grid, space.project, jump=settings["jump"],
                                          resample=settings["resample"], generator=generator)
    images = space.to_image(out)
    settings.update({"scale": scale, "padded": list(padded)})
    return images, nfe, settings
