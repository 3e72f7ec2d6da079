"""Distances between distributions from their first two moments (the core of FID)."""

from __future__ import annotations

import torch
from torch import Tensor


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the 2-Wasserstein distance^2 of two Gaussians
    (Dowson & Landau 1982; FID, Heusel et al. 2017). Float64, symmetric square roots by eigendecomposition."""
    mean1, mean2, cov1, cov2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mean1, mean2, cov1, cov2))
    root1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(root1 @ cov2 @ root1)
    return float(((mean1 - mean2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross))


def sample_moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of samples (N, D), float64."""
    samples = samples.double().reshape(samples.shape[0], -1)
    return samples.mean(0), torch.cov(samples.T).reshape(samples.shape[1], samples.shape[1])
