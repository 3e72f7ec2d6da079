"""Forward process q(x_t | x_0) and the denoising training loss (L_simple, optional min-SNR-gamma weighting)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from meddiff.diffusion.parametrization import PREDICTIONS, broadcast_to, training_target
from meddiff.diffusion.schedules import NoiseSchedule
from meddiff.errors import MeddiffError, check_choice


def add_noise(x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample q(x_t | x_0): x_t = alpha_t x0 + sigma_t noise (Ho et al. 2020, eq. 4); t has shape (B,)."""
    if noise.shape != x0.shape:
        raise MeddiffError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    alpha, sigma = schedule.alpha_sigma(t.detach().cpu())
    return broadcast_to(alpha, x0) * x0 + broadcast_to(sigma, x0) * noise


def min_snr_weight(snr: Tensor, gamma: float, prediction: str) -> Tensor:
    """Per-sample weight (B,) of Hang et al. 2023 (min-SNR-gamma) for each parametrisation's MSE, at SNR (B,).

    The x0-MSE weight is min(SNR, gamma); an eps-MSE equals SNR * x0-MSE, a v-MSE equals (SNR + 1) * x0-MSE
    (VP), and the score MSE weighted by sigma^2 equals the eps-MSE. Written without 0/0, so SNR = 0 (zero terminal
    SNR, flow at t = 1) gives the limits: eps/score 1, v 0, x0 0.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "x0":
        return snr.clamp(max=gamma)
    if prediction in ("eps", "score"):
        # min(SNR, gamma) / SNR = gamma / max(SNR, gamma): 1 for SNR <= gamma, including SNR = 0 (the limit).
        return gamma / snr.clamp(min=gamma)
    return snr.clamp(max=gamma) / (snr + 1)  # v: denominator >= 1; tends to 0 as SNR -> 0


def focus_training_times(t: Tensor, schedule: NoiseSchedule, below: float, probability: float,
                         generator: torch.Generator | None = None) -> Tensor:
    """Redraw a share ``probability`` of the training times t (B,) uniformly in the lowest ``below`` fraction of the
    schedule's range (integers for discrete schedules): more training where a restoration solver works (it starts
    from an image noised to a small t), in the spirit of EDM's non-uniform training noise (Karras et al. 2022)."""
    u = torch.rand(t.shape, generator=generator, dtype=torch.float64)
    low = schedule.t_min + u * below * (schedule.t_max - schedule.t_min)
    if schedule.is_discrete:
        low = low.floor()
    chosen = torch.rand(t.shape, generator=generator) < probability
    return torch.where(chosen, low.float(), t)


def diffusion_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    *,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Mean over the batch of ||model(x_t, t) - target||^2 averaged over pixels (L_simple, Ho et al. 2020, eq. 14).

    x0: (B, C, *spatial) clean images; t uniform over the schedule; noise drawn with ``generator``
    (on CPU, then moved, so a seed gives the same batch on any device). The score target -noise/sigma
    is weighted by sigma^2 (Song et al. 2021, eq. 7), which makes it the eps loss. Passing ``t`` (B,) and
    ``noise`` (drawn by the caller, e.g. for a global batch split over DDP processes) skips the draws.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if min_snr_gamma is not None and min_snr_gamma <= 0:
        raise MeddiffError(f"min_snr_gamma={min_snr_gamma} must be positive (5 is the paper's value) or None")
    batch = x0.shape[0]
    if t is None:
        t = schedule.sample_training_times(batch, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    noise = noise.to(x0.device)
    alpha, sigma = schedule.alpha_sigma(t)
    a, s = broadcast_to(alpha, x0), broadcast_to(sigma, x0)
    x_t = a * x0 + s * noise
    output = model(x_t, t.to(x0.device), **(cond or {}))
    target = training_target(prediction, x0, noise, a, s)
    error = (output.float() - target.float()) ** 2
    if prediction == "score":
        error = error * s.float() ** 2
    per_sample = error.reshape(batch, -1).mean(dim=1)
    if min_snr_gamma is not None:
        snr = (alpha / sigma) ** 2
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction).to(per_sample)
    return per_sample.mean()
