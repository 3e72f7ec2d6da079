"""Samplers: plain functions over a denoiser(x, t, **cond) -> x0_hat and a TimeGrid.

Every sampler has the signature ``sample_x(denoiser, x, grid, *, hook=None, generator=None,
callback=None, cond=None, **params) -> x0`` where x (B, ...) is the initial noise at grid.times[0]
(see ``initial_noise``). Notation: at the current time t, x_t = alpha_t x0 + sigma_t eps; s is the
next (less noisy) time of the grid, read from the grid itself.

Hooks plug guidance, data consistency and inpainting into every sampler: ``hook.denoised(x, x0_hat, t)``
may replace the x0 prediction at each evaluation, and ``hook.step(x_next, x0_hat, t_next)`` may correct
the state after each step (t_next = CLEAN_TIME after the last one).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from meddiff.diffusion.noise import NoiseFn
from meddiff.diffusion.parametrization import Denoiser
from meddiff.diffusion.timesteps import TimeGrid
from meddiff.errors import MeddiffError, check_choice


class Hook:
    """Identity hook; subclasses override ``denoised`` and/or ``step``. Tensors t are (B,) schedule times.
    ``needs_grad = True`` asks the sampler to evaluate the denoiser under autograd (see ``_Stepper.x0``)."""

    needs_grad = False

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        return x0

    def step(self, x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
        return x_next


Callback = Callable[[int, Tensor, Tensor], None]  # callback(step index, x after the step, x0_hat)


def initial_noise(grid: TimeGrid, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """x at grid.times[0]: N(0, (alpha^2 + sigma^2) I), the marginal for data of unit second moment.

    Drawn on CPU with ``generator`` and moved, so a seed gives the same start on every device.
    """
    return (torch.randn(shape, generator=generator, dtype=dtype) * grid.prior_std()).to(device)


def _noise_like(x: Tensor, generator: torch.Generator | None, noise_fn: NoiseFn | None = None) -> Tensor:
    """Gaussian noise like x, or ``noise_fn(shape, generator)`` (e.g. simplex noise, meddiff.diffusion.noise)."""
    if noise_fn is not None:
        return noise_fn(tuple(x.shape), generator).to(device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


class _Stepper:
    """Shared plumbing of every sampler: per-step coefficients, hooked denoiser calls, post-step hook."""

    def __init__(self, denoiser: Denoiser, x: Tensor, grid: TimeGrid, hook: Hook | None,
                 callback: Callback | None, cond: dict | None) -> None:
        if not isinstance(grid, TimeGrid):
            raise MeddiffError(f"grid must be a TimeGrid (see meddiff.diffusion.make_grid), got {type(grid).__name__}")
        if x.ndim < 2:
            raise MeddiffError(f"x must have shape (B, ...) with a batch axis, got shape {tuple(x.shape)}")
        self.denoiser, self.grid, self.hook, self.callback = denoiser, grid, hook or Hook(), callback
        self.cond = cond or {}
        self.batch, self.device, self.dtype = x.shape[0], x.device, x.dtype
        self.alphas, self.sigmas = grid.alphas.tolist(), grid.sigmas.tolist()

    def time(self, i: int) -> Tensor:
        return torch.full((self.batch,), float(self.grid.times[i]), device=self.device, dtype=self.dtype)

    def x0(self, x: Tensor, i: int) -> Tensor:
        """Hooked x0 prediction at grid point i. A hook with ``needs_grad = True`` (DPS) gets x as a leaf that
        requires grad and x0_hat with its graph, and must return a detached x0_hat."""
        t = self.time(i)
        if getattr(self.hook, "needs_grad", False):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                return self.hook.denoised(x_in, self.denoiser(x_in, t, **self.cond), t)
        return self.hook.denoised(x, self.denoiser(x, t, **self.cond), t)

    def after_step(self, i: int, x_next: Tensor, x0: Tensor) -> Tensor:
        x_next = self.hook.step(x_next, x0, self.time(i + 1))
        if self.callback is not None:
            self.callback(i, x_next, x0)
        return x_next

    def eps(self, x: Tensor, x0: Tensor, i: int) -> Tensor:
        """eps_hat = (x_t - alpha_t x0_hat) / sigma_t."""
        return (x - self.alphas[i] * x0) / self.sigmas[i]


def sample_ddpm(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, variance: str = "fixed_small",
                hook: Hook | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, cond: dict | None = None,
                noise_fn: NoiseFn | None = None) -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eq. 6-7, Alg. 2).

    With a = alpha_t/alpha_s and b^2 = sigma_t^2 - a^2 sigma_s^2 (= beta_t for adjacent VP steps):
    mean = (alpha_s b^2 / sigma_t^2) x0_hat + (a sigma_s^2 / sigma_t^2) x_t;
    variance "fixed_small" = b^2 sigma_s^2 / sigma_t^2 (beta tilde), "fixed_large" = b^2 (beta).
    No noise is added on the final step to clean data. ``noise_fn(shape, generator)`` replaces the Gaussian
    draws (AnoDDPM's simplex noise, Wyatt et al. 2022, Alg. 2).
    """
    check_choice("variance", variance, ("fixed_small", "fixed_large"))
    run = _Stepper(denoiser, x, grid, hook, callback, cond)
    for i in range(grid.steps):
        (a_t, s_t), (a_s, s_s) = (run.alphas[i], run.sigmas[i]), (run.alphas[i + 1], run.sigmas[i + 1])
        x0 = run.x0(x, i)
        a = a_t / a_s
        b2 = s_t**2 - a**2 * s_s**2
        x_next = (a_s * b2 / s_t**2) * x0 + (a * s_s**2 / s_t**2) * x
        if s_s > 0:
            var = b2 * s_s**2 / s_t**2 if variance == "fixed_small" else b2
            x_next = x_next + math.sqrt(max(var, 1e-20)) * _noise_like(x, generator, noise_fn)
        x = run.after_step(i, x_next, x0)
    return x


def sample_ddim(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, eta: float = 0.0,
                hook: Hook | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, cond: dict | None = None,
                noise_fn: NoiseFn | None = None) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z.

    c = eta * (sigma_s / sigma_t) * sqrt(sigma_t^2 - a^2 sigma_s^2), a = alpha_t / alpha_s (eq. 16);
    eta = 0 is deterministic, eta = 1 matches DDPM's fixed-small variance. With eta = 0 this is also the
    Euler step of the probability-flow ODE in the variables (x/alpha, sigma/alpha) (Karras et al. 2022).
    """
    if eta < 0:
        raise MeddiffError(f"eta={eta} must be >= 0 (0: deterministic DDIM, 1: DDPM-like)")
    run = _Stepper(denoiser, x, grid, hook, callback, cond)
    for i in range(grid.steps):
        (a_t, s_t), (a_s, s_s) = (run.alphas[i], run.sigmas[i]), (run.alphas[i + 1], run.sigmas[i + 1])
        x0 = run.x0(x, i)
        eps = run.eps(x, x0, i)
        c = eta * (s_s / s_t) * math.sqrt(max(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0))
        x_next = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if eta > 0:
            x_next = x_next + c * _noise_like(x, generator, noise_fn)
        x = run.after_step(i, x_next, x0)
    return x


def invert_ddim(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, callback: Callback | None = None,
                cond: dict | None = None) -> Tensor:
    """Deterministic DDIM encoding of clean x (B, ...) to the grid's first time: the eta = 0 step of ``sample_ddim``
    run backwards over the grid (Song et al. 2021, sec. 4.3; Wolleb et al. 2022, eq. 4).

    x is taken as the state at the grid's last model time; each step x_s' = alpha_s' x0_hat + sigma_s' eps_hat
    moves to the next noisier time s'. ``sample_ddim(denoiser, invert_ddim(...), grid)`` reconstructs x up to
    the discretisation error.
    """
    run = _Stepper(denoiser, x, grid, None, callback, cond)
    for n, i in enumerate(range(grid.steps - 1, 0, -1)):  # model times from the least to the most noisy
        x0 = run.x0(x, i)
        x = run.alphas[i - 1] * x0 + run.sigmas[i - 1] * run.eps(x, x0, i)
        if callback is not None:
            callback(n, x, x0)
    return x


def sample_euler(denoiser: Denoiser, x: Tensor, grid: TimeGrid, **kwargs) -> Tensor:
    """Euler on the probability-flow ODE; identical to DDIM with eta = 0.

    For rectified flow (alpha = 1 - t, sigma = t) this is the usual x_s = x_t + (s - t) v_hat with
    velocity v_hat = eps_hat - x0_hat (Liu et al. 2023).
    """
    return sample_ddim(denoiser, x, grid, eta=0.0, **kwargs)


def sample_heun(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, hook: Hook | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                cond: dict | None = None) -> Tensor:
    """Deterministic 2nd-order Heun sampler of Karras et al. 2022 (EDM), Algorithm 1.

    In the scaled variables y = x/alpha, r = sigma/alpha the ODE is dy/dr = eps_hat; each step averages
    the slopes at t and s; the last step (to r = 0) is Euler. 2N - 1 network evaluations for N steps.
    """
    run = _Stepper(denoiser, x, grid, hook, callback, cond)
    if run.alphas[0] <= 0:
        raise MeddiffError("sampler 'heun' needs alpha > 0 at the first time (SNR > 0): start the grid below t_max")
    for i in range(grid.steps):
        (a_t, s_t), (a_s, s_s) = (run.alphas[i], run.sigmas[i]), (run.alphas[i + 1], run.sigmas[i + 1])
        x0 = run.x0(x, i)
        slope = run.eps(x, x0, i)
        dr = s_s / a_s - s_t / a_t
        y_next = x / a_t + dr * slope
        if s_s > 0:
            x0_next = run.x0(a_s * y_next, i + 1)
            slope_next = run.eps(a_s * y_next, x0_next, i + 1)
            y_next = x / a_t + dr * 0.5 * (slope + slope_next)
        x = run.after_step(i, a_s * y_next, x0)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, hook: Hook | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    cond: dict | None = None) -> Tensor:
    """DPM-Solver++(2M), multistep second order in x0 (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    lambda = log(alpha/sigma), h = lambda_s - lambda_t, r = h_prev / h;
    D = (1 + 1/(2r)) x0_hat_t - (1/(2r)) x0_hat_prev (first step: D = x0_hat_t);
    x_s = (sigma_s/sigma_t) x_t - alpha_s (exp(-h) - 1) D. The final step to sigma = 0 is first order
    (x_0 = x0_hat), as diffusers' ``final_sigmas_type="zero"``.
    """
    run = _Stepper(denoiser, x, grid, hook, callback, cond)
    x0_prev, h_prev = None, None
    for i in range(grid.steps):
        (a_t, s_t), (a_s, s_s) = (run.alphas[i], run.sigmas[i]), (run.alphas[i + 1], run.sigmas[i + 1])
        x0 = run.x0(x, i)
        if s_s == 0:
            x_next = x0
        else:
            h = math.log(a_s / s_s) - math.log(a_t / s_t) if a_t > 0 else math.inf
            d = x0
            if x0_prev is not None and math.isfinite(h_prev):
                r = h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            x_next = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        x = run.after_step(i, x_next, x0)
    return x


PREDICTORS = ("reverse_diffusion", "euler_maruyama")


def sample_pc(denoiser: Denoiser, x: Tensor, grid: TimeGrid, *, predictor: str = "reverse_diffusion",
              corrector_steps: int = 1, snr: float = 0.16, hook: Hook | None = None,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              cond: dict | None = None) -> Tensor:
    """Predictor-corrector sampler of score SDEs (Song et al. 2021, Alg. 1-5), for VP, VE and DDPM schedules.

    Score from the denoiser: s = (alpha_t x0_hat - x_t) / sigma_t^2. At each time: ``corrector_steps``
    Langevin steps x += e s + sqrt(2e) z with e = 2 (snr ||z|| / ||s||)^2 (Alg. 4-5, alpha_i = 1, norms
    averaged over the batch), then one predictor step to s:
    - "reverse_diffusion": x_s = (2 - a) x_t + b^2 score + b z, from the discretised forward step
      x_t = a x_s + b z (a = alpha_t/alpha_s, b^2 = sigma_t^2 - a^2 sigma_s^2); eq. 46-47 for VP and VE;
    - "euler_maruyama": x_s = x_t - (f x_t - g^2 score) dt + g sqrt(dt) z with (f, g^2) of the SDE at t.
    The final step to clean data returns x0_hat (the "noise removal" step). NFE = N (1 + corrector_steps).
    """
    check_choice("predictor", predictor, PREDICTORS)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise MeddiffError(f"corrector_steps={corrector_steps!r} must be an integer >= 0")
    if snr <= 0:
        raise MeddiffError(f"snr={snr} must be positive (Song et al. use 0.16 for VE, 0.01-0.27 for VP)")
    run = _Stepper(denoiser, x, grid, hook, callback, cond)
    times = grid.times.tolist()
    for i in range(grid.steps):
        (a_t, s_t), (a_s, s_s) = (run.alphas[i], run.sigmas[i]), (run.alphas[i + 1], run.sigmas[i + 1])
        for _ in range(corrector_steps):
            score = (a_t * run.x0(x, i) - x) / s_t**2
            z = _noise_like(x, generator)
            # Batch-mean norms as in Song et al.'s code: one step size for all samples. A per-sample
            # step size would depend on x and bias the Langevin chain (measured: mode weights off by 0.1).
            z_norm = z.reshape(len(z), -1).norm(dim=1).mean()
            score_norm = score.reshape(len(score), -1).norm(dim=1).mean().clamp(min=1e-12)
            e = float(2 * (snr * z_norm / score_norm) ** 2)
            x = x + e * score + math.sqrt(2 * e) * z
        x0 = run.x0(x, i)
        if s_s == 0:
            x_next = x0
        else:
            score = (a_t * x0 - x) / s_t**2
            z = _noise_like(x, generator)
            if predictor == "reverse_diffusion":
                a = a_t / a_s
                b2 = s_t**2 - a**2 * s_s**2
                x_next = (2 - a) * x + b2 * score + math.sqrt(max(b2, 0.0)) * z
            else:
                f, g2 = (float(v) for v in grid.schedule.sde(times[i]))
                if not (math.isfinite(f) and math.isfinite(g2)):
                    raise MeddiffError(f"predictor='euler_maruyama' needs a finite SDE at t={times[i]} "
                                       "(alpha_t = 0 there); use predictor='reverse_diffusion'")
                dt = times[i] - times[i + 1]
                x_next = x - (f * x - g2 * score) * dt + math.sqrt(g2 * dt) * z
        x = run.after_step(i, x_next, x0)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "pc": sample_pc,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Sampler function by name; raises naming the allowed ones."""
    check_choice("sampler", name, SAMPLERS)
    return SAMPLERS[name]


# Grid per sampler and schedule class, measured by ``python benchmarks/sampler_accuracy.py --grids-only --samples
# 20000`` (benchmarks/README.md): on the 16-D Gaussian at 10, 20 and 50 NFE, the grid whose worst ratio to the best
# grid (over those NFEs and the class's schedules: DDPM linear, scaled_linear and cosine for "discrete") is smallest.
# Errors are exact for the deterministic samplers, Monte Carlo for ddpm and pc; euler is ddim with eta = 0.
_DISCRETE_SPACING = {"ddim": "leading", "euler": "leading", "heun": "leading", "ddpm": "leading", "pc": "trailing"}
_VE_SPACING = {"ddim": "karras", "euler": "karras", "heun": "karras", "pc": "karras"}  # others: as on VP


def recommended_spacing(sampler: str, schedule) -> str:
    """Time grid for ``sampler`` on ``schedule`` with the lowest error measured by benchmarks/sampler_accuracy.py
    (16-D Gaussian, exact denoiser, 10-50 NFE; reproduce with ``--grids-only --samples 20000``). Worst ratios to the
    best grid over those runs:

    - dpmpp_2m: "logsnr" (1.0x on VP, VE, DDPM linear and scaled_linear; 1.9x on DDPM cosine, where trailing wins at
      20-50 NFE but is 25x worse at 10). Where SNR reaches 0 (no log-SNR grid): "trailing" on discrete schedules
      (leading 6x worse), "uniform" on continuous ones.
    - Discrete schedules, zero terminal SNR included: "leading" for ddim/euler (1.22x; trailing 1.47x), heun (2.3x,
      at 9 NFE on DDPM linear; trailing diverges on DDPM cosine, whose first trapezoid starts at alpha = 5e-5) and
      ddpm (1.01x, a tie with trailing); "trailing" for pc (1.0x; leading 10x).
    - Continuous schedules: "uniform"; on VE "karras" for ddim/euler, heun and pc (uniform 1.03x, 2.4x, 2.0x).
    """
    check_choice("sampler", sampler, SAMPLERS)
    zero_snr = schedule.has_zero_terminal_snr
    if sampler == "dpmpp_2m":
        if not zero_snr:
            return "logsnr"
        return "trailing" if schedule.is_discrete else "uniform"
    if schedule.is_discrete:
        return _DISCRETE_SPACING[sampler]
    variance_exploding = float(schedule.alpha_sigma(schedule.t_max)[0]) == 1.0  # alpha = 1 at every t
    return _VE_SPACING.get(sampler, "uniform") if variance_exploding and not zero_snr else "uniform"


def network_evaluations(name: str, steps: int, corrector_steps: int = 1) -> int:
    """Number of denoiser calls a sampler makes for ``steps`` grid steps (without hook calls)."""
    check_choice("sampler", name, SAMPLERS)
    if name == "heun":
        return 2 * steps - 1
    if name == "pc":
        return steps * (1 + corrector_steps)
    return steps
