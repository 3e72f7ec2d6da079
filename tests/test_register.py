"""Registration building blocks (issue 26): warping, scaling and squaring, Jacobians, affine and demons registration,
the VoxelMorph-style network and its checkpoints, scores; each against a hand computation or a round trip."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.register import (AffineSettings, VelocityNet, VoxelMorphConfig, affine_coords, apply_matrix,
                                    folding_percent, from_ras, identity_grid, integrate_velocity, jacobian_determinant,
                                    load_voxelmorph, pad_to_multiple, pair_scores, predict_ddf, register_affine,
                                    register_arrays, sample, save_voxelmorph, to_ras, warp, warp_pair, world_matrix)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(shape, centres, sigma=2.5) -> np.ndarray:
    """A smooth phantom: Gaussian blobs of different heights at ``centres`` (voxels)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).astype(np.float64)
    out = np.zeros(shape)
    for k, c in enumerate(centres):
        d2 = sum((grid[i] - c[i]) ** 2 for i in range(len(shape)))
        out += (1 + 0.5 * k) * np.exp(-d2 / (2 * sigma ** 2))
    return out.astype(np.float32)


@pytest.mark.parametrize("shape, shift", [((20, 24), (3, -2)), ((12, 16, 14), (2, 0, -3))])
def test_warp_by_a_constant_shift_is_the_hand_made_translation(shape, shift):
    n = len(shape)
    centre = [s // 2 for s in shape]
    image = blobs(shape, [centre])
    ddf = torch.tensor(shift, dtype=torch.float32).reshape((1, n) + (1,) * n).expand((1, n) + shape).contiguous()
    out = warp(torch.from_numpy(image)[None, None], ddf, padding="zeros")[0, 0].numpy()
    # warped(p) = image(p + s): the blob moves by -s; compare with slicing where both are defined
    src = tuple(slice(max(s, 0), dim + min(s, 0)) for s, dim in zip(shift, shape))
    dst = tuple(slice(max(-s, 0), dim - max(s, 0)) for s, dim in zip(shift, shape))
    np.testing.assert_allclose(out[dst], image[src], atol=1e-5)
    peak = np.unravel_index(out.argmax(), shape)
    assert tuple(int(p) for p in peak) == tuple(c - s for c, s in zip(centre, shift))
    # sample() at identity + ddf is the same warp on the same grid
    coords = identity_grid(shape)[None] + ddf
    np.testing.assert_allclose(sample(torch.from_numpy(image)[None, None], coords)[0, 0].numpy(), out, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_scaling_and_squaring_of_zero_and_constant_velocities(n):
    shape = (1, n) + (10,) * n
    assert torch.count_nonzero(integrate_velocity(torch.zeros(shape))) == 0
    # exp of a constant velocity c is the translation by c (exactly, since the field is constant)
    c = torch.tensor([1.5, -0.75, 0.5][:n]).reshape((1, n) + (1,) * n)
    ddf = integrate_velocity(c.expand(shape).contiguous(), steps=6)
    np.testing.assert_allclose(ddf.numpy(), c.expand(shape).numpy(), atol=1e-5)


def test_jacobian_of_a_known_affine_field_and_folding():
    shape = (8, 9, 10)
    grid = identity_grid(shape, dtype=torch.float64).numpy()
    a = np.array([[1.2, 0.1, 0.0], [0.05, 0.9, 0.2], [0.0, -0.1, 1.1]])
    u = np.einsum("ij,j...->i...", a - np.eye(3), grid) + np.array([1.0, -2.0, 0.5]).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(jacobian_determinant(u), np.linalg.det(a), rtol=1e-10)
    assert folding_percent(u) == 0.0
    flip = np.diag([-1.0, 1.0, 1.0])  # p -> flip p: det -1 everywhere, all folded
    assert folding_percent(np.einsum("ij,j...->i...", flip - np.eye(3), grid)) == 100.0
    # 2D, batch of one
    g2 = identity_grid((6, 7), dtype=torch.float64).numpy()
    a2 = np.array([[0.8, 0.3], [-0.2, 1.4]])
    u2 = np.einsum("ij,j...->i...", a2 - np.eye(2), g2)[None]
    np.testing.assert_allclose(jacobian_determinant(u2), np.linalg.det(a2), rtol=1e-10)
    with pytest.raises(MeddiffError, match="expected a field"):
        jacobian_determinant(np.zeros((3, 4, 4)))


def test_affine_registration_recovers_a_known_translation():
    shape = (28, 32, 30)
    fixed = blobs(shape, [(10, 12, 15), (18, 20, 12), (14, 10, 20), (16, 22, 19)], sigma=3.0)
    truth = np.eye(4)
    truth[:3, 3] = (2.5, -1.5, 1.0)  # fixed voxel p -> moving voxel p + t
    moving = apply_matrix(fixed, np.linalg.inv(truth), shape)  # moving(q) = fixed(q - t)
    found = register_affine(moving, fixed, settings=AffineSettings(factors=(2, 1), iterations=(150, 60), lr=0.01))
    np.testing.assert_allclose(found[:3, 3], truth[:3, 3], atol=0.3)
    np.testing.assert_allclose(found[:3, :3], np.eye(3), atol=0.03)
    with pytest.raises(MeddiffError, match="same dimensionality|2D or both 3D"):
        register_affine(moving[..., 0], fixed)


def test_world_matrix_refuses_singular_affines_and_composes():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    b = np.diag([1.0, 1.0, 1.0, 1.0])
    b[:3, 3] = (4, 0, 0)
    np.testing.assert_allclose(world_matrix(a, b) @ [0, 0, 0, 1], [2, 0, 0, 1])  # fixed voxel 0 = world x 4
    singular = a.copy()
    singular[:, 1] = 0
    with pytest.raises(MeddiffError, match="not invertible"):
        world_matrix(singular, b)


def test_labels_stay_integer_after_nearest_warping():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (10, 12, 8)).astype(np.float32) * 3
    ddf = torch.from_numpy(rng.normal(0, 1.5, (1, 3, 10, 12, 8)).astype(np.float32))
    out = warp(torch.from_numpy(labels)[None, None], ddf, mode="nearest")[0, 0].numpy()
    assert set(np.unique(out)) <= set(np.unique(labels))
    out2 = apply_matrix(labels, np.array([[0.9, 0.1, 0, 0.3], [0, 1.1, 0, -0.7], [0, 0, 1, 0.2], [0, 0, 0, 1]]),
                        (9, 11, 7), mode="nearest")
    assert set(np.unique(out2)) <= set(np.unique(labels)) | {0.0}


def test_ras_round_trip_and_world_alignment_of_a_flipped_copy():
    rng = np.random.default_rng(1)
    fixed = blobs((14, 16, 12), [(5, 6, 6), (9, 10, 5)]) + 0.01 * rng.random((14, 16, 12)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 30], [-2.0, 0, 0, 20], [0, 2.0, 0, -10], [0, 0, 0, 1]])  # PSR-like
    ras, ras_affine = to_ras(fixed, affine)
    np.testing.assert_array_equal(from_ras(ras, affine), fixed)
    assert np.allclose(np.abs(np.diag(ras_affine[:3, :3])), 2.0)  # a diagonal (RAS) affine
    # the moving image is the same voxels stored flipped along axis 0, with the affine that says so
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, fixed.shape[0] - 1
    moving, moving_affine = fixed[::-1].copy(), affine @ flip
    result = register_arrays(moving, moving_affine, fixed, affine, "affine",
                             labels=(moving > 0.5).astype(np.int16), affine_settings=AffineSettings(
                                 factors=(2, 1), iterations=(20, 10)))
    assert result.warped.shape == fixed.shape
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(result.warped[inner], fixed[inner], atol=0.05)
    assert result.labels.dtype == np.int16 and set(np.unique(result.labels)) <= {0, 1}
    assert np.abs(result.displacement).max() < 0.5  # mm: the world positions agree
    assert result.folding_percent == 0.0


def test_register_arrays_bad_input():
    vol = blobs((8, 8, 8), [(4, 4, 4)])
    eye = np.eye(4)
    with pytest.raises(MeddiffError, match="--moving is 2D .* --fixed is 3D"):
        register_arrays(vol[..., 0], eye, vol, eye)
    with pytest.raises(MeddiffError, match="--labels: on another grid"):
        register_arrays(vol, eye, vol, eye, labels=np.zeros((8, 8, 7), np.int16))
    with pytest.raises(MeddiffError, match="--method"):
        register_arrays(vol, eye, vol, eye, "diffusemorph")
    with pytest.raises(MeddiffError, match="empty or constant"):
        register_arrays(np.ones((8, 8, 8)), eye, vol, eye)


def test_demons_moves_a_shifted_phantom_back():
    pytest.importorskip("SimpleITK")
    from meddiff.tasks.register import DemonsSettings, demons

    shape = (24, 26, 22)
    fixed = blobs(shape, [(10, 12, 11), (15, 14, 10)], sigma=3.0)
    moving = blobs(shape, [(11, 12, 11), (16, 14, 10)], sigma=3.0)  # shifted by +1 along axis 0
    u = demons(moving, fixed, DemonsSettings(factors=(2, 1), iterations=(30, 20)))
    assert u.shape == (3,) + shape
    warped = warp(torch.from_numpy(moving)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()
    assert np.abs(warped - fixed).mean() < 0.3 * np.abs(moving - fixed).mean()
    near = fixed > 0.5 * fixed.max()
    assert abs(float(u[0][near].mean()) - 1.0) < 0.3  # warped(p) = moving(p + 1 e0)
    assert folding_percent(u) < 0.5


def test_classical_without_simpleitk_names_the_extra(monkeypatch):
    from meddiff.tasks.register.classical import demons

    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(MeddiffError, match=r"meddiff\[register\]"):
        demons(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))


def test_velocity_net_starts_near_identity_and_checkpoint_round_trip(tmp_path):
    config = VoxelMorphConfig(channels=(4, 8), strides=(2,), features=4, downsample=2)
    torch.manual_seed(0)
    net = VelocityNet(config)
    m, f = torch.rand(1, 1, 12, 16, 8), torch.rand(1, 1, 12, 16, 8)
    ddf = net(m, f)
    assert ddf.shape == (1, 3, 12, 16, 8) and ddf.abs().max() < 1e-2
    warped, target, low = warp_pair(net, m, f)
    assert warped.shape == target.shape == (1, 1, 6, 8, 4) and low.shape == (1, 3, 6, 8, 4)
    padded, crop = pad_to_multiple(torch.rand(1, 1, 11, 13, 7), config.multiple)
    assert padded.shape[2:] == (12, 16, 8) and padded[tuple(crop)].shape == (1, 1, 11, 13, 7)
    with torch.no_grad():
        for p in net.flow.parameters():
            p.normal_(0, 0.1)
    folder = save_voxelmorph(tmp_path / "vm", net, {"spacing_mm": [2.0, 2.0, 2.0]})
    loaded = load_voxelmorph(folder)
    vol = np.random.default_rng(0).random((11, 13, 7)).astype(np.float32)
    a, b = predict_ddf(net, vol, vol[::-1].copy()), predict_ddf(loaded.net, vol, vol[::-1].copy())
    assert a.shape == (3, 11, 13, 7) and np.abs(a).max() > 1e-3
    np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(a).max() + 1e-5)  # fp16 weights
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"task": "segmentation"}')
    with pytest.raises(MeddiffError, match="not a voxelmorph registration checkpoint"):
        load_voxelmorph(tmp_path / "other")
    with pytest.raises(MeddiffError, match="no voxelmorph registration checkpoint there"):
        load_voxelmorph(tmp_path / "missing")


def test_pair_scores_of_identical_and_shifted_labels():
    labels = np.zeros((12, 12, 12), np.int64)
    labels[2:6, 2:6, 2:6] = 1
    labels[7:11, 3:9, 4:10] = 2
    same = pair_scores(labels, labels, np.zeros((3, 12, 12, 12)), 3, spacing=(2.0, 2.0, 2.0), seconds=1.0)
    assert same["mean_dice"] == 1.0 and same["mean_hd95"] == 0.0 and same["folding_percent"] == 0.0
    shifted = np.roll(labels, 1, axis=0)
    s = pair_scores(shifted, labels, None, 3, spacing=(2.0, 2.0, 2.0))
    assert s["dice"][0] == pytest.approx(2 * 48 / 128)  # 4x4x4 cube shifted by one: overlap 3x4x4
    assert s["hd95"][0] == pytest.approx(2.0)  # one voxel of 2 mm


def test_affine_coords_match_matrix_product():
    m = np.array([[1.1, 0.2, 3.0], [-0.1, 0.9, -1.0], [0, 0, 1]])
    c = affine_coords(m, (3, 4))[0].numpy()
    np.testing.assert_allclose(c[:, 2, 3], (m @ [2, 3, 1])[:2], rtol=1e-6)
