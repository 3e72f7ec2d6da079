"""Progressive distillation targets (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", Algorithm 2): one student DDIM step from t to t'' must land where two teacher DDIM steps t -> t' -> t'' land.

Notation (x_t = alpha_t x0 + sigma_t eps, any VP or non-VP schedule; s, s' are later, less noisy times):
    DDIM (eta = 0) step t -> s:   z_s = alpha_s x0_hat + (sigma_s / sigma_t) (z_t - alpha_t x0_hat)
    teacher:  z_t' = DDIM(z_t, x0_hat(z_t, t)),   z_t'' = DDIM(z_t', x0_hat(z_t', t'))
    target:   x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)   (Alg. 2)
x_tilde is the x0 prediction with which a single DDIM step from z_t reaches z_t'' exactly; at t'' = CLEAN_TIME
(sigma = 0) it is z_t'' itself. The loss compares the student's x0 estimate (any parametrisation, converted with
``to_x0``) with x_tilde, weighted by w(lambda_t): "truncated_snr" max(SNR, 1) (the paper's choice, sec. 4) or
"snr_plus_one" SNR + 1 (= the v-prediction MSE on VP schedules). Tensors are (B, C, *spatial); times (B,).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from meddiff.diffusion.parametrization import Denoiser, broadcast_to, from_x0, to_x0
from meddiff.diffusion.schedules import NoiseSchedule
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


__all__ = ["WEIGHTINGS", "ddim_step", "distillation_loss", "distillation_weight", "target_in", "two_step_target"]
