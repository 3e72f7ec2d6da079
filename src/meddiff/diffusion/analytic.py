"""Distributions whose exact denoiser E[x0 | x_t] is closed-form, to measure sampler error without training.

For x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps:
    E[x0 | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x_t - alpha mu),
and for a mixture the component denoisers are weighted by the posterior responsibilities
p(k | x_t) ~ pi_k N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I).
Samples are (B, D) float tensors; times t are (B,) in the given schedule's units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.diffusion.schedules import NoiseSchedule


class GaussianMixture:
    """Mixture of K Gaussians in D dimensions (K = 1 for a single Gaussian); float64 internally."""

    def __init__(self, weights, means, covariances) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)  # (K, D, D)
        self.weights = self.weights / self.weights.sum()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covariances)  # (K, D), (K, D, D)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        mu = self.mean()
        centred = self.means - mu
        second = self.covariances + centred[:, :, None] * centred[:, None, :]
        return (self.weights[:, None, None] * second).sum(0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, (n, D) float64."""
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        roots = self.eigenvectors * self.eigenvalues.clamp(min=0).sqrt()[:, None, :]  # Sigma^1/2 = U sqrt(L)
        return self.means[components] + torch.einsum("nij,nj->ni", roots[components], z)

    def _component_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component denoised x0 (n, K, D) and log responsibilities (n, K) at (alpha, sigma) (n, 1)."""
        x = x.double()
        u = self.eigenvectors  # (K, D, D)
        lam = self.eigenvalues  # (K, D)
        centred = x[:, None, :] - alpha[:, :, None] * self.means[None]  # (n, K, D)
        proj = torch.einsum("kdj,nkd->nkj", u, centred)  # coordinates in each eigenbasis
        var = alpha[:, :, None] ** 2 * lam[None] + sigma[:, :, None] ** 2  # (n, K, D)
        gain = alpha[:, :, None] * lam[None] / var
        x0 = self.means[None] + torch.einsum("kdj,nkj->nkd", u, gain * proj)
        if len(self.weights) == 1:  # a single Gaussian: responsibilities are 1
            return x0, torch.zeros(x.shape[0], 1, dtype=torch.float64, device=x.device)
        log_density = -0.5 * (proj**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        log_resp = torch.log_softmax(self.weights.log()[None] + log_density, dim=1)
        return x0, log_resp

    def denoise(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x_t] for x (n, D) at per-sample alpha, sigma (n,); returned in x's dtype."""
        alpha, sigma = alpha.double().reshape(-1, 1).to(x.device), sigma.double().reshape(-1, 1).to(x.device)
        x0, log_resp = self._component_terms(x, alpha, sigma)
        return (log_resp.exp()[:, :, None] * x0).sum(1).to(x.dtype)

    def denoiser(self, schedule: NoiseSchedule, component: int | None = None):
        """The exact denoiser(x, t) under ``schedule``; ``component`` restricts to one mixture component."""
        target = self if component is None else GaussianMixture(
            [1.0], self.means[component : component + 1], self.covariances[component : component + 1]
        )

        def denoiser(x: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = schedule.alpha_sigma(t.detach().cpu())
            return target.denoise(x, alpha, sigma)

        return denoiser

    def log_responsibilities(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log p(k | x_t), (n, K): the exact noise-aware classifier over components."""
        alpha, sigma = alpha.double().reshape(-1, 1), sigma.double().reshape(-1, 1)
        return self._component_terms(x, alpha, sigma)[1]

    def classifier(self, schedule: NoiseSchedule):
        """classifier(x_t, t) -> logits (n, K) = log p(k | x_t), differentiable in x_t."""

        def classifier(x: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = schedule.alpha_sigma(t.detach().cpu())
            return self.log_responsibilities(x, alpha, sigma)

        return classifier

    def mode_weights(self, samples: Tensor) -> Tensor:
        """Fraction of samples assigned to each component (argmax of p(k | x0)), (K,)."""
        ones = torch.ones(samples.shape[0], dtype=torch.float64)
        labels = self.log_responsibilities(samples, ones, ones * 0).argmax(1)
        return torch.bincount(labels, minlength=len(self.weights)).double() / samples.shape[0]

    def mode_weight_error(self, samples: Tensor) -> float:
        """Total-variation distance between sampled and true mode weights: 0.5 sum_k |w_hat_k - pi_k|."""
        return float(0.5 * (self.mode_weights(samples) - self.weights).abs().sum())


def anisotropic_gaussian(dim: int = 16, eig_min: float = 0.01, eig_max: float = 4.0, seed: int = 0) -> GaussianMixture:
    """N(mu, Sigma) with eigenvalues log-spaced over [eig_min, eig_max] in a random rotation (DESIGN.md)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.logspace(math.log10(eig_min), math.log10(eig_max), dim, dtype=torch.float64)
    cov = (q * eig) @ q.T
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return GaussianMixture([1.0], mean[None], cov[None])


def mixture_2d() -> GaussianMixture:
    """Four unequal, well separated, anisotropic 2D modes (weights 0.4, 0.3, 0.2, 0.1) on a ring of radius 2."""
    angles = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64) * math.pi
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    covs = []
    for k, angle in enumerate(angles):
        rot = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]], dtype=torch.float64)
        covs.append(rot @ torch.diag(torch.tensor([0.08, 0.01 * (k + 1)], dtype=torch.float64)) @ rot.T)
    return GaussianMixture([0.4, 0.3, 0.2, 0.1], means, torch.stack(covs))
