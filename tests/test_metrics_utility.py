"""Class AUROC against a brute-force pair count; train-synthetic-test-real on real chest X-rays (tiny nets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiff.data import asset_path, read_medmnist
from meddiff.errors import MeddiffError
from meddiff.metrics.utility import class_auroc as auroc, train_classifier, train_synthetic_test_real


def _pairs_auroc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def test_auroc_equals_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 60)
        scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes ties
        assert auroc(scores, labels) == pytest.approx(_pairs_auroc(scores, labels), abs=1e-12)
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    two_column = np.stack([1 - np.arange(6) / 6, np.arange(6) / 6], 1)
    assert auroc(two_column, [0, 0, 1, 0, 1, 1]) == auroc(np.arange(6) / 6, [0, 0, 1, 0, 1, 1])
    scores3 = rng.random((90, 3))
    labels3 = rng.integers(0, 3, 90)
    macro = np.mean([_pairs_auroc(scores3[:, k], (labels3 == k).astype(int)) for k in range(3)])
    assert auroc(scores3, labels3) == pytest.approx(macro, abs=1e-12)
    with pytest.raises(MeddiffError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def _data():
    d = read_medmnist(asset_path("pneumoniamnist") / "pneumoniamnist_small.npz")
    conv = lambda s: (torch.from_numpy(d[s][0]).float()[:, None] / 127.5 - 1,  # noqa: E731
                      torch.from_numpy(d[s][1].reshape(-1).astype(np.int64)))
    return conv("train"), conv("val")


TINY = {"widths": (4, 8, 8), "steps": 80, "batch_size": 32, "lr": 5e-3}


def test_train_synthetic_test_real_tells_useful_from_useless_synthetic_data():
    (x, y), test = _data()
    real, good = (x[::2], y[::2]), (x[1::2], y[1::2])  # "synthetic" = other real images with their labels
    shuffled = (good[0], good[1][torch.randperm(len(good[1]), generator=torch.Generator().manual_seed(0))])
    useful = train_synthetic_test_real(good, real, test, **TINY)
    useless = train_synthetic_test_real(shuffled, real, test, **TINY)
    assert set(useful) == {"synthetic", "real", "real+synthetic"}
    assert useful["real+synthetic"]["n_train"] == 600 and useful["synthetic"]["n"] == 200
    assert useful["real"]["auroc"] > 0.8 and useful["synthetic"]["auroc"] > 0.8
    assert 0.3 < useless["synthetic"]["auroc"] < 0.7, "labels unrelated to the images teach nothing"
    assert useless["real"] == useful["real"], "the real-only arm does not depend on the synthetic data (seeded)"


def test_training_is_seeded_and_checks_inputs():
    (x, y), _ = _data()
    a = train_classifier(x[::9], y[::9], widths=(4, 4, 4), steps=20, seed=3)
    b = train_classifier(x[::9], y[::9], widths=(4, 4, 4), steps=20, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(MeddiffError, match="single class"):
        train_classifier(x[:8], torch.zeros(8, dtype=torch.long), steps=20)
    with pytest.raises(MeddiffError, match="one label per image"):
        train_classifier(x[:8], y[:7], steps=20)
    with pytest.raises(MeddiffError, match="differ in shape"):
        train_synthetic_test_real((x[:8, :, :20, :20], y[:8]), (x[:8], y[:8]), (x[:8], y[:8]))


def test_volumes_are_classified_from_their_three_central_planes():
    """2.5D utility: a class visible only in the central sagittal plane is learnt; shuffled labels teach nothing."""
    from meddiff.metrics.utility import classifier_input

    g = torch.Generator().manual_seed(0)

    def volumes(n):
        x = torch.rand(n, 1, 12, 12, 12, generator=g) * 0.2 - 1
        y = torch.arange(n) % 2
        x[y == 1, :, 3:9, 3:9, 6] = 1.0  # a bright square in the central W plane only
        return x, y

    x = volumes(4)[0]
    planes = classifier_input(x)
    assert planes.shape == (4, 3, 28, 28)
    assert planes[1, 2].max() > 0.5 and planes[0, 2].max() < -0.7  # the W plane shows it, class 0 has none
    real, test = volumes(48), volumes(40)
    shuffled = (real[0], real[1][torch.randperm(48, generator=g)])
    useful = train_synthetic_test_real(volumes(48), real, test, **TINY)
    useless = train_synthetic_test_real(shuffled, real, test, **TINY)
    assert useful["synthetic"]["auroc"] > 0.95 and useful["real"]["accuracy"] > 0.9
    assert useless["synthetic"]["auroc"] < 0.8
