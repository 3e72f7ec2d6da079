"""Hooks for linear inverse problems y = A x0 (+ noise), over callables: no operator classes, no medicine.

The caller describes the measurement once, on the sampler's tensors x (B, ...):
- ``project(v, alpha) -> v'``: the point of {v : A v = alpha y} closest to v (for the clean image alpha = 1),
  i.e. v - A^+(A v - alpha y); an approximate projection is allowed (then the consistency is approximate too);
- ``residual(x0) -> r``: A x0 - y (any shape and dtype, differentiable), for DPS.
Each hook works with every sampler of ``meddiff.diffusion.samplers``:

- ``Projection``: DDNM range/null-space decomposition of the x0 prediction (Wang et al. 2023, eq. 13);
- ``MeasurementReplacement``: replace the measured part of the state by the (noised) measurement after each step
  (Song et al. 2022, "Solving inverse problems in medical imaging with score-based generative models", eq. 9-10);
- ``PosteriorGradient``: DPS measurement-gradient step (Chung et al. 2023, "Diffusion posterior sampling", Alg. 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from meddiff.diffusion.samplers import Hook
from meddiff.diffusion.schedules import NoiseSchedule
from meddiff.errors import MeddiffError

Project = Callable[[Tensor, float], Tensor]  # project(v, alpha): nearest v' with A v' = alpha y
Residual = Callable[[Tensor], Tensor]  # residual(x0) = A x0 - y


class Projection(Hook):
    """DDNM: x0_hat' = A^+ y + (I - A^+ A) x0_hat = project(x0_hat, 1) (Wang et al. 2023, "Zero-shot image restoration
    using denoising diffusion null-space model", eq. 13): the range space from y, the null space from the prior. The
    sampler's last step returns x0_hat', so the output satisfies A x = y exactly (up to the projection's accuracy)."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        return self.project(x0, 1.0)


class MeasurementReplacement(Hook):
    """After each step to time s: x_s' = P_{alpha_s}(x_s - sigma_s n) + sigma_s n with n ~ N(0, I), so that
    A x_s' = alpha_s y + sigma_s A n, the forward-noised measurement, while the null-space part of x_s is kept
    (Song et al. 2022, eq. 9-10, with their lambda = 1). ``noise=False`` uses the clean scaled measurement
    (n = 0, score-MRI style hard data consistency). At the clean time (sigma = 0) both are the exact projection."""

    def __init__(self, project: Project, schedule: NoiseSchedule, *, noise: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.project, self.schedule, self.noise, self.generator = project, schedule, noise, generator

    def step(self, x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(t_next[:1].detach().cpu().double()))
        if not self.noise or sigma == 0:
            return self.project(x_next, alpha)
        n = torch.randn(x_next.shape, generator=self.generator, dtype=x_next.dtype).to(x_next.device)
        return self.project(x_next - sigma * n, alpha) + sigma * n


class PosteriorGradient(Hook):
    """DPS: after each step x_s' = x_s - zeta grad_{x_t} sum_b ||A x0_hat(x_t)_b - y_b|| (Chung et al. 2023, Alg. 1,
    with their step zeta_i = zeta' / ||y - A x0_hat|| folded in by differentiating the norm, as their code does).

    ``needs_grad = True`` makes the sampler call the denoiser on ``x.requires_grad_()`` under autograd, so the
    gradient through the network costs one backward pass and no extra network evaluation.
    """

    needs_grad = True

    def __init__(self, residual: Residual, zeta: float) -> None:
        if not zeta >= 0:
            raise MeddiffError(f"zeta={zeta!r} must be >= 0 (the DPS step size; 0 ignores the measurement)")
        self.residual, self.zeta = residual, zeta
        self._grad: Tensor | None = None
        self.residual_norms: Tensor | None = None  # ||A x0_hat - y|| per sample at the last evaluation

    def denoised(self, x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        if not x.requires_grad or not x0.requires_grad:
            raise MeddiffError("PosteriorGradient needs x0_hat differentiable in x_t: use it with a meddiff sampler "
                               "(it honours needs_grad) and a differentiable denoiser")
        norms = torch.linalg.vector_norm(self.residual(x0).reshape(len(x0), -1), dim=1)
        self._grad = torch.autograd.grad(norms.sum(), x)[0].detach()
        self.residual_norms = norms.detach()
        return x0.detach()

    def step(self, x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
        grad, self._grad = self._grad, None
        return x_next if grad is None else x_next - self.zeta * grad
