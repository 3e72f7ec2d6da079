"""Guidance hooks: classifier guidance and classifier-free guidance, usable with every sampler."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from meddiff.diffusion.parametrization import Denoiser, broadcast_to
from meddiff.diffusion.samplers import Hook
from meddiff.diffusion.schedules import NoiseSchedule
from meddiff.errors import MeddiffError


class ClassifierGuidance(Hook):
    """Shift x0_hat along grad_x log p(y | x_t) (Dhariwal & Nichol 2021, Alg. 1-2, written for x0).

    eps_hat' = eps_hat - scale * sigma_t * grad  is the same as  x0_hat' = x0_hat + scale * sigma_t^2 / alpha_t * grad;
    skipped where alpha_t = 0 (SNR 0), where x_t says nothing about y (see ``denoised``).
    ``classifier(x_t, t) -> logits (B, K)`` is noise-aware; ``labels`` (B,) are the target classes.
    """

    def __init__(self, classifier: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                 labels: Tensor, scale: float = 1.0) -> None:
        if scale < 0:
            raise MeddiffError(f"guidance scale={scale} must be >= 0")
        self.classifier, self.schedule, self.labels, self.scale = classifier, schedule, labels, scale

    def log_prob_gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p(labels | x_t), computed on a detached copy of x."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x_in, t), dim=-1)
            if log_probs.shape[0] != x.shape[0]:
                raise MeddiffError(f"classifier returned {log_probs.shape[0]} rows for a batch of {x.shape[0]}")
            chosen = log_probs.gather(1, self.labels.to(x.device).long().view(-1, 1)).sum()
            return torch.autograd.grad(chosen, x_in)[0]

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        if self.scale == 0:
            return x0
        alpha, sigma = self.schedule.alpha_sigma(t.detach().cpu())
        # Where alpha_t = 0 (rectified flow at t = 1, zero-terminal-SNR schedules at t = T-1) sigma^2/alpha is
        # undefined and the correction is skipped (factor 0). There x_t = sigma_t eps carries no information about
        # x0 or y, so p(y | x_t) = p(y) and a consistent noise-aware classifier has grad_x log p(y | x_t) = 0: the
        # guided score equals the unguided one (eps' = eps - scale sigma grad = eps). Any gradient a classifier
        # returns there is its own error (e.g. a classifier trained without t ~ T), which a division by
        # alpha -> 0 amplified to ~1e9 in the sample. The Bayes limit of the x0 shift, E[x0 | y] - E[x0], is not
        # computable from the gradient; guidance acts from the next grid point on, where alpha > 0.
        informative = alpha > 0
        if not bool(informative.any()):
            return x0
        factor = torch.where(informative, self.scale * sigma**2 / torch.where(informative, alpha, 1.0), 0.0)
        return x0 + broadcast_to(factor, x) * self.log_prob_gradient(x, t)


class ClassifierFreeGuidance(Hook):
    """Mix conditional and unconditional predictions: x0' = x0_u + scale (x0_c - x0_u) (Ho & Salimans 2022).

    The sampler's own denoiser is the conditional one; ``unconditional(x, t)`` is called here. scale = 1
    gives the conditional model, 0 the unconditional one; mixing x0 equals mixing eps at fixed x_t.
    """

    def __init__(self, unconditional: Denoiser, scale: float) -> None:
        if scale < 0:
            raise MeddiffError(f"guidance scale={scale} must be >= 0")
        self.unconditional, self.scale = unconditional, scale

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        if self.scale == 1:
            return x0
        x0_uncond = self.unconditional(x, t)
        return x0_uncond + self.scale * (x0 - x0_uncond)


class ClipDenoised(Hook):
    """Clamp x0_hat to the data range [low, high] at every step ("clip_denoised" of Ho et al. 2020's code and
    diffusers' ``clip_sample``): keeps pixel-space samples in range when the network's x0 estimate overshoots."""

    def __init__(self, low: float = -1.0, high: float = 1.0) -> None:
        if not low < high:
            raise MeddiffError(f"ClipDenoised needs low < high, got {low}, {high}")
        self.low, self.high = low, high

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        return x0.clamp(self.low, self.high)


class HookChain(Hook):
    """Apply several hooks in order (e.g. guidance, then data consistency)."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    @property
    def needs_grad(self) -> bool:
        """True when any hook of the chain differentiates through the denoiser (e.g. DPS's ``PosteriorGradient``)."""
        return any(getattr(hook, "needs_grad", False) for hook in self.hooks)

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        for hook in self.hooks:
            x0 = hook.denoised(x, x0, t)
        return x0

    def step(self, x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
        for hook in self.hooks:
            x_next = hook.step(x_next, x0, t_next)
        return x_next
