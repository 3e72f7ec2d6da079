"""Restoration (meddiff.tasks.restore): operators, baselines against trivial ones, zero-shot solvers' consistency,
seeding, std maps and the failure paths. Tiny phantoms and a tiny untrained prior; one test uses the shipped prior."""

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.physics import Downsampling, Inpainting
from meddiff.tasks import restore as R

from helpers import tiny_prior


def phantom(h=32, w=32):
    """A smooth blob plus a disc plus a bar: a brain-like magnitude image >= 0."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.exp(-((yy - h / 2) ** 2 + (xx - 0.45 * w) ** 2) / (0.06 * h * w))
    img += 0.5 * (((yy - 0.3 * h) ** 2 + (xx - 0.6 * w) ** 2) < 0.03 * h * w)
    img[int(0.65 * h):int(0.72 * h), int(0.2 * w):int(0.7 * w)] += 0.3
    return img.astype(np.float32)


# ------------------------------------------------------------------------------------------------- operators
@pytest.mark.parametrize("kernel", R.KERNELS)
@pytest.mark.parametrize("scale", [2, 4])
def test_degradation_operators_adjoint_and_constants(kernel, scale):
    op = R.degradation_operator(scale, kernel)
    x = torch.zeros(2, 1, 16, 24)
    assert op.adjointness_test(x, generator=torch.Generator().manual_seed(0)) < 1e-5
    ones = torch.ones(16, 24)
    torch.testing.assert_close(op.A(ones), torch.ones(16 // scale, 24 // scale))  # both kernels keep constants
    y = torch.randn(16 // scale, 24 // scale, generator=torch.Generator().manual_seed(1))
    projected = op.project(torch.randn(16, 24, generator=torch.Generator().manual_seed(2)), y)
    torch.testing.assert_close(op.A(projected), y, atol=1e-4, rtol=0)  # exact (area) / CG (gaussian)


def test_area_default_is_the_block_mean_of_downsampling():
    x = torch.arange(16.0).reshape(4, 4)
    assert isinstance(R.degradation_operator(2), Downsampling)
    torch.testing.assert_close(R.degrade_sr(x, 2), torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    up = Downsampling(2).A_dagger(R.degrade_sr(x, 2))
    torch.testing.assert_close(R.degrade_sr(up, 2), R.degrade_sr(x, 2))  # A A^+ = I
    known = torch.ones(4, 4)
    known[1:3, 1:3] = 0
    op = Inpainting(known)
    torch.testing.assert_close(op.project(torch.zeros(4, 4), x * known) * known, x * known)


def test_masks_and_noise():
    box = R.box_mask((40, 60), 0.25)
    assert box.dtype == torch.bool and abs(float(box.float().mean()) - 0.25) < 0.03
    strokes = R.stroke_mask((40, 60), seed=3)
    assert 0.02 < float(strokes.float().mean()) < 0.6
    assert torch.equal(strokes, R.stroke_mask((40, 60), seed=3)) and not torch.equal(strokes, R.stroke_mask((40, 60)))
    x = torch.full((64, 64), 2.0)
    g = R.add_noise(x, 0.1, seed=0)
    assert abs(float((g - x).std()) - 0.1) < 0.01
    assert torch.equal(g, R.add_noise(x, 0.1, seed=0))
    rician = R.add_noise(torch.zeros(64, 64), 0.1, "rician")
    assert float(rician.min()) >= 0 and abs(float(rician.mean()) - 0.1 * np.sqrt(np.pi / 2)) < 0.01  # Rayleigh
    assert abs(R.estimate_sigma(R.add_noise(torch.from_numpy(phantom(64, 64)), 0.05)) - 0.05) < 0.01


# ------------------------------------------------------------------------------------------------- baselines
def test_super_resolution_baselines_beat_nearest():
    truth = phantom()
    low = R.degrade_sr(truth, 2).numpy()
    psnr = {m: R.scores(R.restore(low, "super-resolution", m, scale=2).image, truth)["psnr"]
            for m in ("nearest", "bicubic", "lanczos", "tv")}
    assert psnr["bicubic"] > psnr["nearest"] + 1 and psnr["lanczos"] > psnr["nearest"] + 1
    assert psnr["tv"] > psnr["nearest"] + 1
    assert R.restore(low, "super-resolution", "bicubic", scale=2).image.shape == (32, 32)


def test_inpainting_baselines_beat_mean_fill():
    truth = phantom()
    hole = R.box_mask(truth.shape, 0.1).numpy()
    fill = np.where(hole, truth[~hole].mean(), truth)
    base = R.scores(fill, truth, hole=hole)["psnr_hole"]
    for method in ("biharmonic", "tv"):
        out = R.restore(truth, "inpaint", method, mask=hole).image
        assert R.scores(out, truth, hole=hole)["psnr_hole"] > base + 5, method
        np.testing.assert_allclose(out[~hole], truth[~hole], atol=0.05)


@pytest.mark.parametrize("noise", R.NOISES)
def test_tv_denoising_beats_the_noisy_input(noise):
    truth = phantom()
    noisy = R.add_noise(truth, 0.08, noise, seed=1).numpy()
    out = R.restore(noisy, "denoise", "tv", sigma=0.08, noise=noise).image
    assert R.scores(out, truth)["psnr"] > R.scores(noisy, truth)["psnr"] + 2


def test_bm3d_denoising_beats_the_noisy_input():
    pytest.importorskip("bm3d", reason="optional package bm3d (pip install 'meddiff[restore]') is not installed")
    truth = phantom()
    noisy = R.add_noise(truth, 0.08, seed=1).numpy()
    out = R.restore(noisy, "denoise", "bm3d", sigma=0.08).image
    assert R.scores(out, truth)["psnr"] > R.scores(noisy, truth)["psnr"] + 2


def test_bm3d_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # import fails
    with pytest.raises(MeddiffError, match=r"meddiff\[restore\]"):
        R.restore(phantom(), "denoise", "bm3d", sigma=0.1)


# ------------------------------------------------------------------------------------------ zero-shot solvers
@pytest.mark.parametrize("kernel", ["area", "gaussian"])
def test_ddnm_super_resolution_is_consistent_with_the_measurement(kernel):
    truth = phantom(16, 14)
    low = R.degrade_sr(truth, 2, kernel).numpy()
    out = R.restore(low, "super-resolution", "ddnm", scale=2, kernel=kernel, prior=tiny_prior(), steps=3,
                    samples=2)
    assert out.image.shape == out.std.shape == (16, 14) and out.nfe == 3
    tol = 1e-4 if kernel == "area" else 1e-2  # closed-form projection / 50 CG steps
    np.testing.assert_allclose(R.degrade_sr(out.image, 2, kernel).numpy(), low, atol=tol * low.max())


@pytest.mark.parametrize("method", ["ddnm", "repaint"])
def test_inpainting_keeps_the_known_pixels(method):
    truth = phantom(16, 16)
    hole = R.box_mask((16, 16), 0.2).numpy()
    corrupted = np.where(hole, 100.0, truth)  # values in the hole are ignored
    out = R.restore(corrupted, "inpaint", method, mask=hole, prior=tiny_prior(), steps=4, samples=2,
                    jump=2, resample=2) if method == "repaint" else \
        R.restore(corrupted, "inpaint", method, mask=hole, prior=tiny_prior(), steps=4, samples=2)
    np.testing.assert_allclose(out.image[~hole], truth[~hole], atol=1e-5)
    assert out.std.shape == (16, 16) and np.all(out.std[~hole] < 1e-5) and out.std[hole].mean() > 0
    if method == "repaint":
        assert out.nfe == sum(b > a for a, b in zip(R.repaint_schedule(4, 2, 2), R.repaint_schedule(4, 2, 2)[1:]))


def test_repaint_schedule_is_lugmayrs():
    """jump 2, resample 2 over 6 steps: back two steps after steps 3 and 5 (their t = 2 and 0), once each."""
    assert R.repaint_schedule(6, 2, 2) == [0, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6]
    assert R.repaint_schedule(5, 5, 3) == list(range(6))  # no jump fits: plain ancestral sampling
    with pytest.raises(MeddiffError, match="jump"):
        R.repaint_schedule(5, 0, 2)


@pytest.mark.parametrize("task,method,kwargs", [
    ("super-resolution", "dps", {"scale": 2}),
    ("inpaint", "ddnm", {"mask": R.box_mask((12, 12), 0.2).numpy()}),
    ("denoise", "diffusion", {"sigma": 0.05}),
])
def test_zero_shot_is_seeded_and_gives_a_std_map(task, method, kwargs):
    image = phantom(12, 12) if task != "super-resolution" else R.degrade_sr(phantom(12, 12), 2).numpy()
    prior = tiny_prior()
    a = R.restore(image, task, method, prior=prior, steps=3, samples=3, seed=5, **kwargs)
    b = R.restore(image, task, method, prior=prior, steps=3, samples=3, seed=5, **kwargs)
    c = R.restore(image, task, method, prior=prior, steps=3, samples=3, seed=6, **kwargs)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.std.shape == a.image.shape == (12, 12) and np.isfinite(a.std).all() and a.std.max() > 0
    one = R.restore(image, task, method, prior=prior, steps=3, samples=1, seed=5, **kwargs)
    assert np.all(one.std == 0)


def test_denoising_starts_at_the_matched_noise_level():
    prior = tiny_prior()
    noisy = R.add_noise(phantom(12, 12), 0.05).numpy()
    out = R.restore(noisy, "denoise", "diffusion", sigma=0.05, prior=prior, steps=2, samples=1)
    alpha, sigma = (float(v) for v in prior.schedule.alpha_sigma(torch.tensor(out.settings["t_start"])))
    assert sigma / alpha == pytest.approx(out.settings["sigma_model"], rel=1e-3)
    assert out.settings["sigma_model"] == pytest.approx(2 * 0.05 / out.settings["scale"])


def test_volume_runs_slice_by_slice():
    vol = np.stack([phantom(8, 8), 2 * phantom(8, 8)], -1)
    out = R.restore(vol, "super-resolution", "bicubic", scale=2)
    assert out.image.shape == (16, 16, 2)
    np.testing.assert_allclose(out.image[..., 1], 2 * out.image[..., 0], rtol=1e-5, atol=1e-6)
    hole = R.box_mask((8, 8), 0.2).numpy()
    same = R.restore(vol, "inpaint", "biharmonic", mask=hole).image  # one (H, W) mask for every slice
    per_slice = R.restore(vol, "inpaint", "biharmonic", mask=np.stack([hole, hole], -1)).image
    np.testing.assert_array_equal(same, per_slice)
    np.testing.assert_allclose(same[~hole], vol[~hole], atol=1e-6)
    with pytest.raises(MeddiffError, match="--mask has shape"):
        R.restore(vol, "inpaint", "biharmonic", mask=np.stack([hole] * 3, -1))


def test_shipped_prior_on_a_tiny_image():
    """The default prior (shipped, for restore else reconstruct) runs DDNM on a tiny SR problem, consistently."""
    low = R.degrade_sr(phantom(16, 16), 2).numpy()
    out = R.restore(low, "super-resolution", "ddnm", scale=2, steps=2, samples=1)
    np.testing.assert_allclose(R.degrade_sr(out.image, 2).numpy(), low, atol=1e-4)
    assert R.default_prior().name in ("brain_t1_ixi", "brain_mri_prior") or R.default_prior().is_dir()


# ------------------------------------------------------------------------------------------- failure paths
@pytest.mark.parametrize("call,match", [
    (lambda: R.degrade_sr(np.zeros((10, 10)), 4), "--scale 4 does not divide"),
    (lambda: R.restore(np.zeros((8, 8)), "super-resolution", "bicubic", scale=1), "--scale"),
    (lambda: R.restore(np.zeros((8, 8)), "inpaint", "biharmonic", mask=np.zeros((8, 9))), "--mask has shape"),
    (lambda: R.restore(np.zeros((8, 8)), "inpaint", "biharmonic", mask=np.ones((8, 8))), "--mask marks every"),
    (lambda: R.restore(np.ones((8, 8)), "denoise", "tv", sigma=0.0), "--sigma"),
    (lambda: R.restore(np.ones((8, 8)), "denoise", "tv", sigma=-1.0), "--sigma"),
    (lambda: R.restore(np.full((8, 8), np.nan), "denoise", "tv", sigma=0.1), "--input contains"),
    (lambda: R.restore(np.zeros((2, 4, 4, 2)), "denoise", "tv", sigma=0.1), "--input: a 4D"),
    (lambda: R.restore(np.zeros((8, 8)), "super-resolution", "repaint", scale=2), "--method 'repaint' is not"),
    (lambda: R.restore(np.zeros((8, 8)), "denoise", "tv", sigma=0.1, scale=2), "--scale applies"),
    (lambda: R.restore(np.zeros((8, 8)), "super-resolution", "tv", scale=2, mask=np.zeros((8, 8))), "--mask applies"),
    (lambda: R.restore(np.zeros((8, 8)), "super-resolution", "bicubic"), "--scale is required"),
    (lambda: R.restore(np.zeros((8, 8)), "super-resolution", "bicubic", scale=2, kernel="box"), "--kernel"),
])
def test_bad_input_is_a_one_line_error(call, match):
    with pytest.raises(MeddiffError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_solver_parameters():
    low = R.degrade_sr(phantom(8, 8), 2).numpy()
    with pytest.raises(MeddiffError, match="unknown parameter"):
        R.restore(low, "super-resolution", "ddnm", scale=2, prior=tiny_prior(), jump=3)
    with pytest.raises(MeddiffError, match="--samples"):
        R.restore(low, "super-resolution", "ddnm", scale=2, prior=tiny_prior(), samples=0)
    with pytest.raises(MeddiffError, match="takes no parameters"):
        R.restore(low, "super-resolution", "bicubic", scale=2, lam=0.1)
