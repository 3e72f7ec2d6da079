"""Contrast translation (issue 24): grids, normalisation round trip, histogram matching against scikit-image,
Palette / SDEdit sampling shapes and seeding with tiny untrained networks, the evaluation scores by hand, and the
shipped model against histogram matching and its own untrained network on a real held-out slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.nets import build_network
from meddiff.tasks.translate import data as D
from meddiff.tasks.translate import evaluation as E
from meddiff.tasks.translate import methods as M

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom(shape=(20, 24, 6), seed=0):
    """A bright textured ellipsoid 'brain' in air (0)."""
    g = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = x**2 / 0.7 + y**2 / 0.7 + z**2 / 2 < 1
    return np.where(inside, 100 + 30 * np.sin(5 * x) + g.normal(0, 5, shape), 0).astype(np.float32), inside


# ------------------------------------------------------------------------------------------ data
def test_normalise_round_trip_and_background():
    vol, inside = phantom()
    mask = D.brain_mask(vol)
    assert (mask == inside).mean() > 0.98
    y, stats = D.normalise(vol, mask)
    assert y[~mask].max() == -1.0 and -1 <= y.min() and y.max() <= 1
    lo, hi = np.percentile(vol[mask], [0.5, 99.5])
    assert stats["a_min"] == pytest.approx(lo) and stats["a_max"] == pytest.approx(hi)
    back = D.denormalise(y, stats, mask)
    within = mask & (vol >= lo) & (vol <= hi)  # clipped voxels come back at the percentile
    np.testing.assert_allclose(back[within], vol[within], rtol=1e-5, atol=1e-3)
    assert (back[~mask] == 0).all()
    np.testing.assert_allclose(back[mask & (vol > hi)], hi, rtol=1e-5)


def test_empty_brain_mask_is_an_error():
    with pytest.raises(MeddiffError, match="empty brain mask"):
        D.brain_mask(np.zeros((8, 8, 3), np.float32))


def test_ras_round_trip_and_block_mean_by_hand():
    a = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 3, -5], [0, 1.5, 0, 2], [0, 0, 0, 1]])  # L, S, A axes
    ras, new_affine, ornt = D.to_ras(a, affine)
    assert ras.shape == (4, 2, 6)
    # the voxel at RAS index i maps to the same world point as its source voxel
    src = np.array([1, 4, 1, 1.0])
    world = affine @ src
    idx = np.linalg.solve(new_affine, world)[:3].round().astype(int)
    assert ras[tuple(idx)] == a[1, 4, 1]
    np.testing.assert_array_equal(D.from_ras(ras, ornt), a)
    b = D.block_mean(a, (2, 2, 1))
    assert b.shape == (2, 3, 2)
    assert b[1, 2, 0] == pytest.approx(a[2:4, 4:6, 0].mean())
    # the coarse voxel centre sits at the centre of its 2 x 2 block
    aff2 = D.scale_affine(affine, (2, 2, 1))
    np.testing.assert_allclose(aff2 @ [0, 0, 0, 1], affine @ [0.5, 0.5, 0, 1])


# ------------------------------------------------------------------------------------------ histogram matching
def test_histogram_matching_agrees_with_scikit_image():
    from skimage.exposure import match_histograms

    g = np.random.default_rng(1)
    src = g.gamma(2.0, 1.0, (40, 50)).astype(np.float32)
    mask = np.zeros_like(src, bool)
    mask[5:35, 5:45] = True
    template = g.normal(0.2, 0.3, 5000)
    out = M.histogram_match(src, mask, M.quantiles(template))
    ref = match_histograms(src[mask], template)
    diff = np.abs(out[mask] - ref)  # 257 quantiles vs scikit-image's exact template CDF: close except in the tails
    assert np.quantile(diff, 0.99) < 0.02 and diff.mean() < 0.005 and diff.max() < 0.15
    assert (out[~mask] == -1).all()
    # the matched histogram is the target's: its quantiles agree with the template's
    np.testing.assert_allclose(np.quantile(out[mask], [0.1, 0.5, 0.9]), np.quantile(template, [0.1, 0.5, 0.9]),
                               atol=0.03)
    # monotone: the order of the source voxels is kept
    order = np.argsort(src[mask], kind="stable")
    assert (np.diff(out[mask][order]) >= -1e-6).all()


# ------------------------------------------------------------------------------------------ diffusion methods
def tiny_palette(seed=0):
    from meddiff.diffusion import make_schedule

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network({"kind": "unet", "in_channels": 2, "cond_channels": 1, "channels": [8, 8],
                             "attention_levels": [False, False], "num_res_blocks": 1, "norm_num_groups": 4})
        for p in net.parameters():  # MONAI zero-initialises the output layer: give it weights so seeds matter
            p.data.normal_(0, 0.05)
    schedule = make_schedule({"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000})
    return net.eval(), schedule


def test_palette_shapes_seeding_and_std():
    net, schedule = tiny_palette()
    cond = torch.rand(3, 1, 10, 13) * 2 - 1  # odd size: padded to the multiple and cropped back
    mean, std, nfe = M.palette(net, schedule, "v", cond, 2, steps=3, samples=2, seed=5, multiple=2)
    assert mean.shape == std.shape == (3, 2, 10, 13) and nfe == 3
    assert mean.abs().max() <= 1 and (std >= 0).all() and std.max() > 0
    again, _, _ = M.palette(net, schedule, "v", cond, 2, steps=3, samples=2, seed=5, multiple=2)
    other, _, _ = M.palette(net, schedule, "v", cond, 2, steps=3, samples=2, seed=6, multiple=2)
    torch.testing.assert_close(mean, again)
    assert not torch.allclose(mean, other)
    one_mean, one_std, _ = M.palette(net, schedule, "v", cond, 2, steps=3, samples=1, seed=5, multiple=2)
    assert (one_std == 0).all()
    # the source matters: another source gives another translation
    shifted, _, _ = M.palette(net, schedule, "v", -cond, 2, steps=3, samples=1, seed=5, multiple=2)
    assert not torch.allclose(one_mean, shifted)


def test_sdedit_starts_from_the_guide_and_seeds():
    from helpers import tiny_prior

    prior = tiny_prior()
    guide = torch.rand(2, 1, 8, 8) * 2 - 1
    mean, std, nfe = M.sdedit(prior, guide, t0=0.3, steps=4, samples=2, seed=1)
    assert mean.shape == std.shape == guide.shape and 1 <= nfe <= 4
    again, _, _ = M.sdedit(prior, guide, t0=0.3, steps=4, samples=2, seed=1)
    torch.testing.assert_close(mean, again)
    # a low start keeps the guide: closer to it than a start from (almost) pure noise
    low, _, _ = M.sdedit(prior, guide, t0=0.02, steps=4, samples=2, seed=1)
    high, _, _ = M.sdedit(prior, guide, t0=1.0, steps=4, samples=2, seed=1)
    assert (low - guide).abs().mean() < (high - guide).abs().mean()
    with pytest.raises(MeddiffError, match="t0"):
        M.sdedit(prior, guide, t0=1.5)


# ------------------------------------------------------------------------------------------ evaluation
def test_scores_by_hand():
    ref = np.zeros((2, 12, 12), np.float32)
    x = ref.copy()
    mask = np.zeros_like(ref, bool)
    mask[:, 2:10, 2:10] = True
    x[mask] = 0.1  # MSE 0.01 inside the mask, errors outside ignored
    x[~mask] = 5.0
    assert E.masked_psnr(x, ref, mask) == pytest.approx(10 * np.log10(4 / 0.01))
    # lesion CNR: lesion 1.0 (+-0), shell 0 +- 0 -> large; shell with spread -> (1 - m) / sqrt(var)
    img = np.zeros((9, 9, 9))
    lesion = np.zeros_like(img, bool)
    lesion[4, 4, 4] = True
    img[lesion] = 1.0
    shell = np.zeros_like(img, bool)
    shell[3:6, 3:6, 3:6] = True
    shell[lesion] = False
    img[shell] = np.where(np.arange(shell.sum()) % 2, 0.1, -0.1)
    brain = np.ones_like(img, bool)
    expected = (1.0 - img[shell].mean()) / np.sqrt(img[shell].var())
    assert E.lesion_cnr(img, lesion, brain, ring=1) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ shipped model
@pytest.fixture(scope="module")
def held_out_slice(shared_data):
    subject = D.load_subject("ms:patient19", ("t1", "t2", "flair"), root=shared_data)
    keep = [int(np.argmax(subject.mask.sum((0, 1))))]  # the axial slice with the most brain
    cond = torch.from_numpy(D.slice_stack(subject, [subject.images["t1"]], (96, 112), keep))
    real = D.slice_stack(subject, [subject.images["t2"], subject.images["flair"]], (96, 112), keep)
    mask = D.slice_stack(subject, [subject.mask], (96, 112), keep, fill=0.0)[:, 0] > 0.5
    return cond, real, mask


def test_shipped_model_beats_histogram_matching_untrained_does_not(held_out_slice):
    """MS patient19 (never trained on), the axial slice with the most brain, Palette with 10 DDIM steps x 2 samples.
    Measured (seeds 0 and 1): PSNR T2 / FLAIR histogram matching 9.38 / 14.20 dB, shipped Palette 14.0-14.2 /
    16.3 dB, the same network untrained 9.5-9.6 / 9.5 dB (on T2 a flat image is as good as matching T1's histogram,
    so the control is 'not better by the margin'). Margin 1.5 dB: about 2/3 of the smaller measured gain."""
    from meddiff.tasks.translate.pipeline import load_translator, translate_slices

    try:
        translator = load_translator("t1_to_t2_flair")
    except MeddiffError:
        pytest.skip("t1_to_t2_flair is not shipped in this checkout")
    cond, real, mask = held_out_slice
    hist, _, _, _ = translate_slices(translator, cond, mask, "histogram")
    pal, _, _, _ = translate_slices(translator, cond, mask, "palette", steps=10, samples=2)
    random = type(translator)(**{**translator.__dict__, "net": M.untrained_copy(translator.net)})
    rnd, _, _, _ = translate_slices(random, cond, mask, "palette", steps=10, samples=2)
    for i, target in enumerate(translator.targets):
        p_hist = E.masked_psnr(hist[:, i].numpy(), real[:, i], mask)
        p_pal = E.masked_psnr(pal[:, i].numpy(), real[:, i], mask)
        p_rnd = E.masked_psnr(rnd[:, i].numpy(), real[:, i], mask)
        assert p_pal > p_hist + 1.5, (target, p_pal, p_hist)
        assert p_rnd < p_hist + 1.5 and p_rnd < p_pal - 3.0, (target, p_rnd, p_hist, p_pal)
