"""FID, KID and k-NN precision/recall against closed forms, brute-force formulas and constructed point sets."""

from __future__ import annotations

import itertools

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.metrics.generative import fid, kid, knn_radii, mmd2_unbiased, polynomial_kernel, precision_recall


def _gauss(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(mean, dtype=torch.float64) + torch.as_tensor(std, dtype=torch.float64) * torch.randn(
        n, len(mean), generator=g, dtype=torch.float64)


def test_fid_of_gaussian_samples_matches_closed_form():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with s the standard deviations.
    m1, s1 = [0.0, 1.0, -1.0, 2.0], [1.0, 0.5, 2.0, 1.0]
    m2, s2 = [0.5, 1.0, 0.0, 2.0], [1.0, 1.5, 1.0, 0.25]
    exact = sum((a - b) ** 2 for a, b in zip(m1, m2)) + sum((a - b) ** 2 for a, b in zip(s1, s2))
    value = fid(_gauss(40000, m1, s1, 0), _gauss(40000, m2, s2, 1))
    assert value == pytest.approx(exact, rel=0.02)
    assert fid(_gauss(40000, m1, s1, 2), _gauss(40000, m1, s1, 3)) < 0.01  # same law: ~0 (bias O(D/N))


def _mmd2_brute(x, y):
    k = lambda a, b: (float(a @ b) / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_unbiased_estimator_equals_brute_force_and_is_zero_in_mean():
    x, y = _gauss(9, [0.0] * 3, [1.0] * 3, 0), _gauss(7, [0.3] * 3, [1.0] * 3, 1)
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_brute(x, y), rel=1e-12)
    assert polynomial_kernel(x, y).shape == (9, 7)
    same = kid(_gauss(2000, [0.0] * 8, [1.0] * 8, 2), _gauss(2000, [0.0] * 8, [1.0] * 8, 3), subsets=50,
               subset_size=500)
    shifted = kid(_gauss(2000, [0.0] * 8, [1.0] * 8, 2), _gauss(2000, [0.5] * 8, [1.0] * 8, 3), subsets=50,
                  subset_size=500)
    assert abs(same[0]) < 3 * same[1] / 50**0.5 + 1e-3, "unbiased: the mean over subsets is ~0 for one law"
    assert shifted[0] > 20 * max(abs(same[0]), same[1] / 50**0.5)
    assert kid(*(_gauss(300, [0.0] * 4, [1.0] * 4, s) for s in (4, 5)), seed=7) == kid(
        *(_gauss(300, [0.0] * 4, [1.0] * 4, s) for s in (4, 5)), seed=7), "seeded"


def test_kid_single_subset_is_the_plain_estimator():
    x, y = _gauss(6, [0.0] * 3, [1.0] * 3, 0), _gauss(6, [1.0] * 3, [1.0] * 3, 1)
    mean, std = kid(x, y, subsets=1, subset_size=6)  # all rows, shuffled: the estimator is order-invariant
    assert mean == pytest.approx(_mmd2_brute(x, y), rel=1e-12) and std == 0.0


def test_precision_recall_on_constructed_sets():
    real = _gauss(400, [0.0, 0.0], [1.0, 1.0], 0)
    p, r = precision_recall(real, real[:100])
    assert p == 1.0, "a subset of the real points lies in the real manifold"
    assert r < 1.0
    p, r = precision_recall(real, real)
    assert (p, r) == (1.0, 1.0)
    far = _gauss(300, [50.0, 50.0], [1.0, 1.0], 1)
    assert precision_recall(real, far) == (0.0, 0.0)
    # Fake covers only half of the real support (x > 0): precision stays high, recall drops to about a half.
    half = real[real[:, 0] > 0]
    p, r = precision_recall(real, half)
    assert p == 1.0 and 0.4 < r < 0.75


def test_knn_radius_is_kth_neighbour_excluding_self():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]


def test_errors_name_the_problem():
    with pytest.raises(MeddiffError, match="same feature extractor"):
        fid(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(MeddiffError, match="at least 4 fake"):
        precision_recall(torch.randn(10, 2), torch.randn(3, 2))
    with pytest.raises(MeddiffError, match="NaN"):
        kid(torch.full((4, 2), float("nan")), torch.zeros(4, 2))


# ------------------------------------------------------------------------------------------ feature extractors
def test_prepare_images_resizes_and_handles_channels():
    from meddiff.metrics.features import prepare_images

    x = torch.rand(2, 3, 56, 84) * 2 - 1  # 2 x 2 and 2 x 3 blocks
    mean = prepare_images(x)
    assert mean.shape == (2, 1, 28, 28)
    assert torch.allclose(mean.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5), "area averaging keeps the mean"
    assert prepare_images(x, channels="each").shape == (6, 1, 28, 28)
    same = torch.rand(4, 1, 28, 28)
    assert torch.equal(prepare_images(same), same)
    with pytest.raises(MeddiffError, match="2D images"):
        prepare_images(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(MeddiffError, match="channels"):
        prepare_images(x, channels="first")


def test_random_cnn_is_seeded_and_batch_independent():
    from meddiff.metrics.features import get_feature_extractor

    x = torch.rand(6, 1, 32, 32) * 2 - 1
    a, b = get_feature_extractor("random-cnn"), get_feature_extractor("random-cnn")
    fa = a(x)
    assert fa.shape == (6, 128) and fa.dtype == torch.float64
    assert torch.equal(fa, b(x)), "same seed, same weights"
    assert torch.allclose(a(x[2:3]), fa[2:3], atol=1e-6), "GroupNorm: no dependence on the other images"
    assert a.card()["name"] == "random-cnn" and "weaker" in a.card()["description"]
    assert get_feature_extractor("random-cnn", channels="each")(x.repeat(1, 3, 1, 1)).shape == (6, 384)
    with pytest.raises(MeddiffError, match="features='inception'"):
        get_feature_extractor("inception")


def test_volume_features_are_the_three_central_planes_concatenated():
    from meddiff.metrics.features import get_feature_extractor

    extractor = get_feature_extractor("random-cnn")
    volumes = torch.rand(4, 1, 10, 12, 14, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features = extractor(volumes)
    assert features.shape == (4, 3 * 128)
    planes = [volumes[:, :, 5], volumes[:, :, :, 6], volumes[:, :, :, :, 7]]
    for i, plane in enumerate(planes):
        torch.testing.assert_close(features[:, i * 128:(i + 1) * 128], extractor(plane))
    changed = volumes.clone()
    changed[:, :, 0] = 1.0  # an off-centre slice in every axis but one: only the two other planes see it
    moved = extractor(changed)
    torch.testing.assert_close(moved[:, :128], features[:, :128])
    assert not torch.allclose(moved[:, 128:], features[:, 128:])


def test_pneumonia_cnn_features_separate_the_classes():
    import numpy as np

    from meddiff.data import asset_path, read_medmnist
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.metrics.utility import class_auroc as auroc

    extractor = get_feature_extractor("pneumonia-cnn")
    card = extractor.card()
    assert card["name"] == "pneumonia-cnn" and card["val_accuracy"] > 0.85 and card["val_auroc"] > 0.9
    images, labels = read_medmnist(asset_path("pneumoniamnist") / "pneumoniamnist_small.npz")["val"]
    x = torch.from_numpy(images).float()[:, None] / 127.5 - 1
    probs = extractor.net(x).softmax(-1)[:, 1].detach()  # the shipped classifier head on held-out images
    assert auroc(probs.numpy(), labels.reshape(-1)) > 0.9
    f = extractor(x)
    y = labels.reshape(-1).astype(bool)
    # Class means of the features are far apart relative to the spread: FID(normal, pneumonia) >> FID(normal, normal)
    normal = f[np.flatnonzero(~y)]
    assert fid(normal[:50], f[np.flatnonzero(y)][:50]) > 5 * fid(normal[:50], normal[50:])
