"""Distillation targets: progressive distillation (Salimans & Ho 2022), guided distillation (Meng et al. 2023) and
consistency distillation (Song et al. 2023).

Progressive distillation targets (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", Algorithm 2): one student DDIM step from t to t'' must land where two teacher DDIM steps t -> t' -> t'' land.

Notation (x_t = alpha_t x0 + sigma_t eps, any VP or non-VP schedule; s, s' are later, less noisy times):
    DDIM (eta = 0) step t -> s:   z_s = alpha_s x0_hat + (sigma_s / sigma_t) (z_t - alpha_t x0_hat)
    teacher:  z_t' = DDIM(z_t, x0_hat(z_t, t)),   z_t'' = DDIM(z_t', x0_hat(z_t', t'))
    target:   x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)   (Alg. 2)
x_tilde is the x0 prediction with which a single DDIM step from z_t reaches z_t'' exactly; at t'' = CLEAN_TIME
(sigma = 0) it is z_t'' itself. The loss compares the student's x0 estimate (any parametrisation, converted with
``to_x0``) with x_tilde, weighted by w(lambda_t): "truncated_snr" max(SNR, 1) (the paper's choice, sec. 4) or
"snr_plus_one" SNR + 1 (= the v-prediction MSE on VP schedules). Tensors are (B, C, *spatial); times (B,).

Guided distillation (Meng, Rombach, Gao, Kingma, Ermon, Ho & Salimans 2023, "On Distillation of Guided Diffusion
Models", stage one, eq. 6 written for x0): a student that takes the guidance scale s as an input learns the teacher's
classifier-free-guided estimate x0_u + s (x0_c - x0_u) (``guided_x0``) with the same weighted x0 loss; stage two is
progressive distillation with s an input of teacher and student alike.

Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Alg. 2 and 3): a consistency
function f(x_t, t) maps any point of a probability-flow ODE trajectory to its start x0. It is parametrised as
    f(x_t, t) = c_skip(t) x_t / alpha_t + c_out(t) x0_theta(x_t, t),
    c_skip = s_b^2 / (s^2 + s_b^2),  c_out = s / sqrt(s^2 + s_b^2),  s = sigma_t / alpha_t (the EDM noise level),
with x0_theta the network's x0 estimate (any parametrisation, ``to_x0``), so f(x, CLEAN_TIME) = x exactly (s = 0:
the boundary condition). The paper's forms use s_b = sigma_data = 0.5 on a raw network output with the boundary at
s = 0.002; here, as in latent consistency models (Luo et al. 2023), the boundary scale s_b (default 0.002, the
paper's epsilon) is far below the noise level of every grid time, so f starts as the teacher's denoiser when the
student starts from the teacher's weights. Training pairs are adjacent times t_n > t_{n+1} of an N-step grid
(t_{n+1} may be CLEAN_TIME); x_hat = one teacher DDIM step t_n -> t_{n+1} (the Euler step of the probability-flow
ODE); the loss is ||f_theta(x_{t_n}, t_n) - f_target(x_hat, t_{n+1})||^2 (pixel mean; lambda = 1) with the target
network an EMA of the student and no gradient through it. Sampling (Alg. 1): x0 = f(x_T, T), then for each later
grid time tau: x_tau = alpha_tau x0 + sigma_tau z (fresh noise), x0 = f(x_tau, tau).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from meddiff.diffusion.parametrization import Denoiser, broadcast_to, from_x0, to_x0
from meddiff.diffusion.schedules import CLEAN_TIME, NoiseSchedule
from meddiff.diffusion.timesteps import TimeGrid
from meddiff.errors import check_choice

WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def ddim_step(x: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """Deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0) from z_t = x to time s given x0_hat = x0;
    alpha/sigma broadcast over x. Same update as ``sample_ddim``: alpha_s x0 + sigma_s eps_hat."""
    return alpha_s * x0 + (sigma_s / sigma_t) * (x - alpha_t * x0)


def two_step_target(teacher: Denoiser, x: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, schedule: NoiseSchedule,
                    *, cond: dict | None = None, clip: tuple[float, float] | None = None) -> Tensor:
    """x_tilde (B, ...) of Salimans & Ho 2022, Alg. 2: the x0 that takes z_t = x (at times t, (B,)) in ONE DDIM step
    to where TWO teacher DDIM steps t -> t_mid -> t_next take it. t_next may be CLEAN_TIME (then x_tilde = z_t'').
    ``clip`` clamps each teacher x0_hat, as `ClipDenoised` does when sampling the teacher."""
    cond = cond or {}
    (a_t, s_t), (a_m, s_m), (a_n, s_n) = (
        tuple(broadcast_to(v, x) for v in schedule.alpha_sigma(time.detach().cpu())) for time in (t, t_mid, t_next))

    def x0_hat(z: Tensor, time: Tensor) -> Tensor:
        x0 = teacher(z, time, **cond)
        return x0.clamp(*clip) if clip is not None else x0

    z_mid = ddim_step(x, x0_hat(x, t), a_t, s_t, a_m, s_m)
    z_next = ddim_step(z_mid, x0_hat(z_mid, t_mid), a_m, s_m, a_n, s_n)
    ratio = s_n / s_t
    return (z_next - ratio * x) / (a_n - ratio * a_t)


def guided_x0(teacher: Denoiser, x: Tensor, t: Tensor, scales: Tensor, *, cond: dict) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) at per-sample scales (B,): x0_u + s (x0_c - x0_u) (B, ...), the
    conditional estimate from ``teacher(x, t, **cond)``, the unconditional one from ``teacher(x, t)`` (no condition:
    the null class), as `ClassifierFreeGuidance` mixes them at one scale."""
    x0_c = teacher(x, t, **cond)
    x0_u = teacher(x, t)
    return x0_u + broadcast_to(scales.to(x0_c), x0_c) * (x0_c - x0_u)


def distillation_weight(alpha: Tensor, sigma: Tensor, weighting: str = "truncated_snr") -> Tensor:
    """Per-sample weight (B,) of the x-space error: max(SNR, 1) or SNR + 1 with SNR = alpha^2 / sigma^2 (sec. 4)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    snr = (alpha / sigma) ** 2
    return snr.clamp(min=1.0) if weighting == "truncated_snr" else snr + 1


def target_in(prediction: str, x_tilde: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x_tilde expressed as the regression target of a ``prediction`` network (eps, x0, v, score) at z_t = x."""
    return from_x0(x_tilde, prediction, x, broadcast_to(alpha, x), broadcast_to(sigma, x))


def distillation_loss(student: Callable[..., Tensor], x: Tensor, t: Tensor, x_tilde: Tensor, schedule: NoiseSchedule,
                      prediction: str, *, weighting: str = "truncated_snr", cond: dict | None = None) -> Tensor:
    """Batch mean of w(lambda_t) ||x0_student(z_t) - x_tilde||^2 (pixel mean), the student's raw output converted
    to x0 by its parametrisation. With "snr_plus_one" on a VP schedule this equals the v-space MSE against
    ``target_in("v", x_tilde, ...)`` (x0 error = sigma * v error, SNR + 1 = 1 / sigma^2)."""
    alpha, sigma = schedule.alpha_sigma(t.detach().cpu())
    output = student(x, t.to(x.device), **(cond or {}))
    x0 = to_x0(output.float(), prediction, x.float(), broadcast_to(alpha, x).float(), broadcast_to(sigma, x).float())
    per_sample = ((x0 - x_tilde.float()) ** 2).reshape(x.shape[0], -1).mean(1)
    return (per_sample * distillation_weight(alpha, sigma, weighting).to(per_sample)).mean()


BOUNDARY_SIGMA = 0.002  # s_b: the paper's boundary noise level epsilon (EDM sigma_min)
CONSISTENCY_SAMPLER = "consistency"


def consistency_coefficients(alpha: Tensor, sigma: Tensor, boundary_sigma: float = BOUNDARY_SIGMA
                             ) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at (alpha, sigma) (any shape): c_skip = 1, c_out = 0 at sigma = 0 (CLEAN_TIME)."""
    s = sigma / alpha
    c_skip = boundary_sigma**2 / (s**2 + boundary_sigma**2)
    return c_skip, s / (s**2 + boundary_sigma**2).sqrt()


class ConsistencyFunction:
    """f(x_t, t) (B, ...) = c_skip x_t / alpha_t + c_out x0_theta(x_t, t) from an x0-denoiser ``denoiser(x, t, **cond)``
    (e.g. `ModelDenoiser` of the student network); times (B,), CLEAN_TIME allowed (f = x there)."""

    def __init__(self, denoiser: Denoiser, schedule: NoiseSchedule, boundary_sigma: float = BOUNDARY_SIGMA) -> None:
        self.denoiser, self.schedule, self.boundary_sigma = denoiser, schedule, boundary_sigma

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.detach().cpu())
        c_skip, c_out = consistency_coefficients(alpha, sigma, self.boundary_sigma)
        x0 = self.denoiser(x, t, **cond)
        scaled = x / broadcast_to(alpha, x).to(x)
        return broadcast_to(c_skip, x).to(x0) * scaled + broadcast_to(c_out, x).to(x0) * x0


def consistency_target(teacher: Denoiser, target: Denoiser, x: Tensor, t: Tensor, t_next: Tensor,
                       schedule: NoiseSchedule, *, cond: dict | None = None,
                       clip: tuple[float, float] | None = None) -> Tensor:
    """f_target(x_hat, t_next) (B, ...): x_hat = one teacher DDIM step from z_t = x at t (B,) to t_next (B,), the
    teacher's x0 estimate clamped to ``clip`` as when sampling; ``target`` is the EMA target consistency function."""
    cond = cond or {}
    (a_t, s_t), (a_n, s_n) = (tuple(broadcast_to(v, x) for v in schedule.alpha_sigma(time.detach().cpu()))
                              for time in (t, t_next))
    x0 = teacher(x, t, **cond)
    x0 = x0.clamp(*clip) if clip is not None else x0
    x_hat = ddim_step(x, x0, a_t.to(x), s_t.to(x), a_n.to(x), s_n.to(x))
    return target(x_hat, t_next, **cond)


def consistency_loss(student: ConsistencyFunction, x: Tensor, t: Tensor, target: Tensor, *,
                     cond: dict | None = None) -> Tensor:
    """Batch mean of ||f_student(x, t) - target||^2 (pixel mean, lambda(t) = 1; Song et al. 2023, eq. 7 with d = L2)."""
    f = student(x, t, **(cond or {}))
    return ((f.float() - target.float()) ** 2).reshape(x.shape[0], -1).mean(1).mean()


def sample_consistency(consistency: Denoiser, x: Tensor, grid: TimeGrid, *, hook=None,
                       generator: torch.Generator | None = None, callback=None, cond: dict | None = None,
                       **_) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) on ``grid`` (its model-evaluation times, decreasing):
    x0 = f(x, t_0); then for each later time x = alpha x0 + sigma z, x0 = f(x, t). One call of f per grid time; x at
    grid.times[0] (B, ...); returns x0 (B, ...). ``hook.denoised`` (e.g. `ClipDenoised`) is applied to every f."""
    cond = cond or {}
    x0 = x
    for i in range(grid.steps):
        t = torch.full((x.shape[0],), float(grid.times[i]), device=x.device, dtype=x.dtype)
        if i > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = float(grid.alphas[i]) * x0 + float(grid.sigmas[i]) * noise
        x0 = consistency(x, t, **cond)
        if hook is not None:
            x0 = hook.denoised(x, x0, t)
        if callback is not None:
            callback(i, x0, x0)
    return x0


__all__ = ["BOUNDARY_SIGMA", "CONSISTENCY_SAMPLER", "ConsistencyFunction", "WEIGHTINGS", "consistency_coefficients",
           "consistency_loss", "consistency_target", "ddim_step", "distillation_loss", "distillation_weight", "guided_x0",
           "sample_consistency", "target_in", "two_step_target"]
