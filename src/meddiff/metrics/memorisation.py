"""Memorisation: how close each synthetic image is to its nearest training image, against real images.

A generator that copies patients' training images leaks them (Carlini et al. 2023, "Extracting training data
from diffusion models"). For each synthetic image we take the Euclidean distance d1 to its nearest training
image; the reference is the same distance for real held-out images (which the model never saw). A synthetic
image is flagged as a near-copy when d1 is at or below the ``quantile`` (default 1 %) of the held-out
distances: without memorisation about ``quantile`` of the synthetic images are flagged by chance, so a flagged
fraction well above it (or any d1 ~ 0) points to copying. The ratio d1 / d2 to the second-nearest training
image is reported too (a copy of one image has d1 / d2 << 1).
Distances are computed in float64 on whatever vectors are passed (flattened pixels or features).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError

DEFAULT_QUANTILE = 0.01
_CHUNK = 1024  # query rows per distance block: (1024, M) float64


def _as_matrix(name: str, x) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu().double()
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MeddiffError(f"{name} must be a non-empty (N, D) array of vectors, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise MeddiffError(f"{name} contains NaN/infinite values")
    return x


def pairwise_distances(query: Tensor, reference: Tensor) -> Tensor:
    """Euclidean distances (N, M) between rows of query (N, D) and reference (M, D), float64 (exact 0 for copies)."""
    q, r = _as_matrix("query", query), _as_matrix("reference", reference)
    if q.shape[1] != r.shape[1]:
        raise MeddiffError(f"query has {q.shape[1]} features per row but reference has {r.shape[1]}")
    r2 = (r * r).sum(1)
    blocks = []
    for start in range(0, q.shape[0], _CHUNK):
        block = q[start:start + _CHUNK]
        d2 = (block * block).sum(1, keepdim=True) + r2 - 2 * block @ r.T  # ||a||^2 + ||b||^2 - 2 a.b
        blocks.append(d2.clamp_min_(0).sqrt_())
    return torch.cat(blocks)


def nearest_neighbours(query: Tensor, reference: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """The k nearest rows of reference (M, D) to each row of query (N, D): distances (N, k) float64, ascending,
    and their indices (N, k) int64. Euclidean; pass the same array twice and take column 1 to skip self-matches."""
    q, r = _as_matrix("query", query), _as_matrix("reference", reference)
    if not isinstance(k, int) or not 1 <= k <= r.shape[0]:
        raise MeddiffError(f"k={k!r} must be an integer from 1 to the number of reference rows ({r.shape[0]})")
    if q.shape[1] != r.shape[1]:
        raise MeddiffError(f"query has {q.shape[1]} features per row but reference has {r.shape[1]}")
    distances, indices = [], []
    for start in range(0, q.shape[0], _CHUNK):
        block = q[start:start + _CHUNK]
        _, i = torch.topk(pairwise_distances(block, r), k, dim=1, largest=False, sorted=True)
        rows = max(1, 2**22 // (k * r.shape[1]))  # bound the (rows, k, D) difference block
        d = torch.cat([(block[j:j + rows, None, :] - r[i[j:j + rows]]).norm(dim=-1)  # direct: exactly 0 for a copy
                       for j in range(0, block.shape[0], rows)])
        d, order = d.sort(dim=1)
        distances.append(d)
        indices.append(i.gather(1, order))
    return torch.cat(distances), torch.cat(indices)


def memorisation(fake, train, holdout, *, quantile: float = DEFAULT_QUANTILE) -> dict:
    """Near-copy test of synthetic vectors fake (N, D) against the training set train (M, D), calibrated on real
    held-out vectors holdout (H, D) that the model never saw (see the module docstring).

    Returns {"distance" (N,), "index" (N,) nearest training row, "ratio" d1/d2 (N,), "flagged" (N,) bool,
    "holdout_distance" (H,), "summary" {threshold, flagged_fraction, expected_fraction, medians, ...}}.
    """
    if not 0 < quantile < 0.5:
        raise MeddiffError(f"quantile={quantile!r} must be in (0, 0.5), e.g. 0.01 (flag below the 1st percentile)")
    train = _as_matrix("train", train)
    if train.shape[0] < 2:
        raise MeddiffError("train needs at least 2 images (the d1/d2 ratio uses the two nearest)")
    d_fake, i_fake = nearest_neighbours(fake, train, k=2)
    d_real = nearest_neighbours(holdout, train, k=1)[0][:, 0]
    threshold = float(torch.quantile(d_real, quantile))
    d1, d2 = d_fake[:, 0], d_fake[:, 1]
    flagged = d1 <= threshold
    ratio = d1 / d2.clamp_min(1e-300)
    summary = {
        "rule": f"flag when the distance to the nearest training image <= the {quantile:g} quantile of held-out "
                "real-to-train distances",
        "quantile": quantile,
        "threshold": threshold,
        "flagged": int(flagged.sum()),
        "flagged_fraction": float(flagged.double().mean()),
        "expected_fraction": quantile,  # chance level: what an exchangeable (non-memorising) sample would give
        "exact_copies": int((d1 <= 1e-6 * float(d_real.median())).sum()),  # identical up to rounding
        "median_fake_to_train": float(d1.median()),
        "median_holdout_to_train": float(d_real.median()),
        "median_ratio_d1_d2": float(ratio.median()),
        "n_fake": int(d1.shape[0]),
        "n_train": int(train.shape[0]),
        "n_holdout": int(d_real.shape[0]),
    }
    return {"distance": d1, "index": i_fake[:, 0], "ratio": ratio, "flagged": flagged, "holdout_distance": d_real,
            "summary": summary}
