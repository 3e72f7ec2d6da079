"""Distribution metrics on feature vectors (N, D): FID, KID and k-NN precision / recall.

Features come from `meddiff.metrics.features` (the extractor's name must be reported with every number: FID
values from different feature networks are not comparable, and none here is the Inception network of the
original papers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.metrics.distributions import frechet_distance, sample_moments
from meddiff.metrics.memorisation import _as_matrix, nearest_neighbours, pairwise_distances

DEFAULT_K = 3


def _pair(real, fake, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    real, fake = _as_matrix("real features", real), _as_matrix("fake features", fake)
    if real.shape[1] != fake.shape[1]:
        raise MeddiffError(f"real features have {real.shape[1]} dimensions but fake ones {fake.shape[1]}; "
                           "compute both with the same feature extractor")
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] < min_rows:
            raise MeddiffError(f"need at least {min_rows} {name} images, got {x.shape[0]}")
    return real, fake


def fid(real, fake) -> float:
    """Frechet distance between Gaussians fitted to real (N, D) and fake (M, D) features (Heusel et al. 2017).
    Biased upwards by O(D / N) for finite samples: compare values computed with the same N."""
    real, fake = _pair(real, fake)
    return frechet_distance(*sample_moments(real), *sample_moments(fake))


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x, y) = (x.y / D + 1)^3, the KID kernel (Binkowski et al. 2018), (N, D), (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the cubic polynomial kernel between samples x (m, D),
    y (n, D): mean of k(x_i, x_j) over i != j + the same for y - 2 mean of k(x_i, y_j)."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real, fake, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and standard deviation of the unbiased MMD^2 over
    ``subsets`` random subsets of min(subset_size, N, M) real and fake rows each (drawn without replacement)."""
    real, fake = _pair(real, fake)
    if subsets < 1 or subset_size < 2:
        raise MeddiffError(f"kid needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([mmd2_unbiased(real[torch.randperm(real.shape[0], generator=g)[:size]],
                                         fake[torch.randperm(fake.shape[0], generator=g)[:size]])
                           for _ in range(subsets)], dtype=torch.float64)
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


def knn_radii(x: Tensor, k: int = DEFAULT_K) -> Tensor:
    """Distance (N,) from each row of x (N, D) to its k-th nearest other row (the k-NN ball radius)."""
    x = _as_matrix("features", x)
    if x.shape[0] < k + 1:
        raise MeddiffError(f"k-NN radii with k={k} need at least k + 1 = {k + 1} images, got {x.shape[0]}")
    return nearest_neighbours(x, x, k=k + 1)[0][:, k]  # column 0 is the point itself (distance 0)


def _coverage(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of points inside at least one ball (centres[i], radii[i]), closed balls."""
    inside = torch.cat([(pairwise_distances(points[s:s + 1024], centres) <= radii).any(1)
                        for s in range(0, points.shape[0], 1024)])
    return float(inside.double().mean())


def precision_recall(real, fake, k: int = DEFAULT_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the fraction of fake
    features inside the union of real k-NN balls, recall the fraction of real features inside the fake ones."""
    real, fake = _pair(real, fake, min_rows=k + 1)
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


__all__ = ["DEFAULT_K", "fid", "kid", "knn_radii", "mmd2_unbiased", "polynomial_kernel", "precision_recall"]
