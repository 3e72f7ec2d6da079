"""Nearest neighbours and the near-copy test: copies of training images are flagged, fresh real images are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiff.data import asset_path, read_medmnist
from meddiff.errors import MeddiffError
from meddiff.metrics.memorisation import memorisation, nearest_neighbours, pairwise_distances


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(50, 7, generator=g), torch.randn(80, 7, generator=g)
    brute = ((q[:, None, :].double() - r[None].double()) ** 2).sum(-1).sqrt()
    d, i = nearest_neighbours(q, r, k=3)
    assert d.shape == i.shape == (50, 3) and d.dtype == torch.float64 and i.dtype == torch.int64
    expected_d, expected_i = brute.sort(dim=1)
    assert torch.equal(i, expected_i[:, :3])
    assert torch.allclose(d, expected_d[:, :3], rtol=0, atol=1e-12)
    assert torch.allclose(pairwise_distances(q, r), brute, atol=1e-12)
    d, i = nearest_neighbours(r[:5] * 1000, r * 1000)  # exact copies: distance exactly 0 despite large norms
    assert d.flatten().tolist() == [0.0] * 5 and i.flatten().tolist() == list(range(5))
    assert nearest_neighbours(np.ones((2, 3)), np.zeros((4, 3)), k=4)[0].shape == (2, 4)


def test_nearest_neighbours_errors():
    with pytest.raises(MeddiffError, match="k=5"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 3), k=5)
    with pytest.raises(MeddiffError, match="features per row"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 2))
    with pytest.raises(MeddiffError, match=r"\(N, D\)"):
        nearest_neighbours(torch.zeros(2, 3, 3), torch.zeros(4, 9))


def _pixels():
    data = read_medmnist(asset_path("pneumoniamnist") / "pneumoniamnist_small.npz")
    flat = lambda a: torch.from_numpy(a.reshape(len(a), -1)).double() / 127.5 - 1  # noqa: E731
    return flat(data["train"][0]), flat(data["val"][0])


def test_copies_of_training_images_are_flagged_and_fresh_images_are_not():
    train, val = _pixels()
    holdout, fresh = val[:100], val[100:]  # calibration and unseen real images, disjoint
    g = torch.Generator().manual_seed(0)
    copies = train[:40] + 0.01 * torch.randn(40, train.shape[1], generator=g, dtype=torch.float64)  # ~1 grey level
    fake = torch.cat([copies, fresh])
    result = memorisation(fake, train, holdout, quantile=0.01)
    assert result["flagged"][:40].all(), "every near-copy is flagged"
    assert torch.equal(result["index"][:40], torch.arange(40)), "and matched to the image it copies"
    assert float(result["flagged"][40:].double().mean()) <= 0.05, "fresh real images are flagged at ~chance"
    s = result["summary"]
    assert s["flagged"] == int(result["flagged"].sum()) and s["n_fake"] == 140 and s["n_holdout"] == 100
    assert float(result["ratio"][:40].max()) < 0.1 < float(result["ratio"][40:].median())
    exact = memorisation(train[:10], train, holdout)["summary"]
    assert exact["exact_copies"] == 10 and exact["flagged_fraction"] == 1.0


def test_memorisation_errors():
    x = torch.zeros(5, 3)
    with pytest.raises(MeddiffError, match="quantile"):
        memorisation(x, x, x, quantile=0.7)
    with pytest.raises(MeddiffError, match="at least 2"):
        memorisation(x, x[:1], x)
