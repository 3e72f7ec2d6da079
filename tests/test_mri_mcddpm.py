"""MC-DDPM solver option (``meddiff.tasks.mri.mcddpm``): the measured k-space is kept exactly, the unmeasured part is
sampled (exactly the Gaussian posterior on a linear toy problem), the std of the samples tracks the error, seeded
reproducibility, size-mismatch errors naming both sizes, and ``meddiff reconstruct --method mc-ddpm``."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiff.cli.main import main
from meddiff.data.assets import asset_path
from meddiff.diffusion import VPSDE, initial_noise, make_grid
from meddiff.errors import MeddiffError
from meddiff.metrics.image import psnr
from meddiff.physics import ifft2c, make_mask, rss
from meddiff.physics.simulate import simulate_kspace
from meddiff.tasks import mri
from meddiff.tasks.mri import mcddpm, solvers

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_prior, train_tiny_checkpoint  # noqa: E402
from test_mri_solvers import aligned_problem, make_project, phantom  # noqa: E402


def test_linear_toy_keeps_the_measurement_in_every_state_and_samples_the_exact_posterior():
    """y = A x0 with a Gaussian prior whose null space is independent of the range: every MC-DDPM state has A x = y
    (the measured part never carries noise), and the samples have the closed-form posterior mean and covariance."""
    prior, a, y, post_mean, post_cov = aligned_problem()
    schedule = VPSDE()
    grid = make_grid(schedule, 100)
    g = torch.Generator().manual_seed(3)
    x = initial_noise(grid, (4000, 6), generator=g, dtype=torch.float64)
    seen = []
    out = mcddpm.sample_mcddpm(prior.denoiser(schedule), x, grid, make_project(a, y), schedule, generator=g,
                               callback=lambda i, state, x0: seen.append(float((state @ a.T - y).abs().max())))
    assert max(seen) < 1e-10 and float((out @ a.T - y).abs().max()) < 1e-10
    scale = float(post_cov.diagonal().sum().sqrt())
    assert float((out.mean(0) - post_mean).norm()) / scale < 0.05
    cov = torch.cov(out.T)
    assert float((cov - post_cov).norm() / post_cov.norm()) < 0.1


def test_denoiser_input_has_the_measured_part_noised_to_the_current_time():
    """The network sees A x_in = alpha_t y + sigma_t A n: the clean measurement of the state noised like the rest."""
    _, a, y, *_ = aligned_problem()
    schedule = VPSDE()
    project = make_project(a, y)
    seen = {}

    def spy(x, t):
        seen["x"] = x
        return torch.zeros_like(x)

    wrapped = mcddpm.MeasuredNoiseDenoiser(spy, project, schedule, torch.Generator().manual_seed(0))
    state = project(torch.randn(2000, 6, dtype=torch.float64), 1.0)
    t = torch.full((2000,), 0.5, dtype=torch.float64)
    wrapped(state, t)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor([0.5], dtype=torch.float64)))
    measured = seen["x"] @ a.T  # (B, 2)
    pinv = torch.linalg.pinv(a)
    null = torch.eye(6, dtype=torch.float64) - pinv @ a
    torch.testing.assert_close(seen["x"] @ null.T, state @ null.T)  # unmeasured part passed as it is
    torch.testing.assert_close(measured.mean(0), alpha * y, atol=0.1 * sigma, rtol=0)
    expected = sigma ** 2 * (a @ a.T)  # covariance of sigma A n
    assert float((torch.cov(measured.T) - expected).norm() / expected.norm()) < 0.1


def slice_case(accel=4, size=(90, 120)):
    """An embedded 2 mm IXI T1 slice as 8-coil k-space (noise 0.5 % of max), a gaussian line mask and the RSS."""
    image = np.load(asset_path("brain_mr_slices") / "ixi_t1_axial.npz")["images"][1]
    kspace, _ = simulate_kspace(image[:size[0], :size[1]], 8, 0.005, seed=0)
    mask = make_mask(tuple(kspace.shape[-2:]), accel, "gaussian", acs_fraction=0.12, seed=100, axis=-2)
    return kspace, mask, rss(ifft2c(kspace))


def test_measured_lines_of_every_sample_are_the_data_and_the_unmeasured_ones_spread():
    k, _, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    problem = mri.make_problem(k, mask, maps=maps)
    phase, scale, _ = solvers._start(problem, "sense")
    model = mri.RealImageModel(problem, phase, scale, (30, 22))
    prior = tiny_prior()
    grid = make_grid(prior.schedule, 4)
    g = torch.Generator().manual_seed(0)
    v = mcddpm.sample_mcddpm(prior.denoiser, initial_noise(grid, (3, 1, 30, 22), generator=g), grid, model.project,
                             prior.schedule, generator=g)
    full = mcddpm.measured_kspace(problem, model.to_image(v))  # (3, C, H, W)
    measured = mask.bool()
    assert torch.equal(full[:, :, measured], problem.y.expand_as(full)[:, :, measured])
    spread = full.abs().std(0)
    assert float(spread[:, measured].max()) == 0.0
    assert float(spread[:, ~measured].mean()) > 0.0
    # the output with combine="rss" is the RSS of such a k-space
    out = mri.reconstruct(k, mask, "mc-ddpm", prior=prior, maps=maps, steps=3, samples=2, combine="rss")
    assert out.image.shape == (30, 21) and np.isfinite(out.image).all()


def test_mcddpm_beats_zero_filled_and_its_std_tracks_the_error():
    """Shipped prior on an embedded IXI slice at 4x: better than zero-filled, a std map that is positive on the
    foreground and correlates positively with the real error."""
    kspace, mask, ref = slice_case()
    maps = mri.make_problem(kspace, mask).maps
    top = float(ref.max())
    fg = ref > 0.1 * top
    prior = mri.load_prior()
    zf = mri.reconstruct(kspace, mask, "zero-filled")
    out = mri.reconstruct(kspace, mask, "mc-ddpm", prior=prior, maps=maps, steps=5, samples=4, seed=0)
    gain = float(psnr(torch.from_numpy(out.image), ref, top, mask=fg) - psnr(torch.from_numpy(zf.image), ref, top,
                                                                              mask=fg))
    assert gain > 1.0, gain
    std = out.std[fg.numpy()]
    assert float(std.min()) >= 0 and float(std.mean()) > 1e-3 * top
    error = np.abs(out.image - ref.numpy())[fg.numpy()]
    assert np.corrcoef(std, error)[0, 1] > 0.1
    assert out.nfe == 5 and out.settings["method"] == "mc-ddpm"


def test_seeded_and_reproducible():
    k, _, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    prior = tiny_prior()
    run = lambda seed: mri.reconstruct(k, mask, "mc-ddpm", prior=prior, maps=maps, steps=3, samples=2, seed=seed)
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.std, b.std)
    assert not np.array_equal(a.image, c.image)


def test_defaults_follow_the_acceleration_and_explicit_values_win():
    """Below HIGH_ACCELERATION the mc-ddpm defaults are SOLVER_DEFAULTS; from it on the later start and longer grid
    replace them; a value the caller passes beats both; other solvers have one set of defaults."""
    k, _, maps = phantom(h=30, w=21)
    low = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    high = make_mask((30, 21), 8, "equispaced", acs_fraction=0.1, seed=0, axis=-2)
    assert mri.method_defaults("mc-ddpm", low)["mc-ddpm"] == mri.SOLVER_DEFAULTS["mc-ddpm"]
    at_high = mri.method_defaults("mc-ddpm", high)["mc-ddpm"]
    assert at_high == {**mri.SOLVER_DEFAULTS["mc-ddpm"], **mri.HIGH_ACCELERATION_DEFAULTS["mc-ddpm"]}
    assert at_high["start"] > mri.SOLVER_DEFAULTS["mc-ddpm"]["start"]
    assert mri.method_defaults("ddnm", high)["ddnm"] == mri.SOLVER_DEFAULTS["ddnm"]
    prior = tiny_prior()
    out = mri.reconstruct(k, high, "mc-ddpm", prior=prior, maps=maps, samples=2, seed=0)
    assert out.settings["start"] == at_high["start"] and out.nfe == at_high["steps"]
    out = mri.reconstruct(k, high, "mc-ddpm", prior=prior, maps=maps, steps=3, samples=2, seed=0, start=0.05)
    assert out.settings["start"] == 0.05 and out.nfe == 3


def test_bad_parameters_and_sizes_are_named():
    k, _, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    prior = tiny_prior()
    with pytest.raises(MeddiffError, match="unknown parameter"):
        mri.reconstruct(k, mask, "mc-ddpm", prior=prior, maps=maps, eta=0.5)
    with pytest.raises(MeddiffError, match="start"):
        mri.reconstruct(k, mask, "mc-ddpm", prior=prior, maps=maps, start=1.5)
    fixed = mri.Prior(prior.denoiser, prior.schedule, prior.multiple, {"image_size": [16, 16]}, (16, 16))
    with pytest.raises(MeddiffError, match=r"30x21.*16x16"):
        mri.reconstruct(k, mask, "mc-ddpm", prior=fixed, maps=maps, steps=2, samples=1)

    class FixedLinear(torch.nn.Module):  # a network that only runs at one size (like a fixed position embedding)
        def forward(self, x, t):
            if tuple(x.shape[-2:]) != (16, 16):
                raise RuntimeError(f"expected 16x16 input, got {tuple(x.shape[-2:])}")
            return x

    broken = mri.Prior(lambda x, t: FixedLinear()(x, t), prior.schedule, 2, {"image_size": [16, 16]})
    with pytest.raises(MeddiffError, match=r"30x21 \(padded to 30x22\).*trained at 16x16"):
        mri.reconstruct(k, mask, "ddnm", prior=broken, maps=maps, steps=2, samples=1)
    bad_multiple = mri.Prior(prior.denoiser, prior.schedule, 0, {})
    with pytest.raises(MeddiffError, match="30x21"):
        mri.reconstruct(k, mask, "mc-ddpm", prior=bad_multiple, maps=maps, steps=2, samples=1)


def test_fixed_size_prior_pads_a_smaller_k_space():
    k, _, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    prior = tiny_prior()
    fixed = mri.Prior(prior.denoiser, prior.schedule, prior.multiple, {}, (32, 24))
    out = mri.reconstruct(k, mask, "mc-ddpm", prior=fixed, maps=maps, steps=2, samples=2)
    assert out.image.shape == (30, 21) and out.settings["padded"] == [32, 24]


def test_cli_method_mc_ddpm(tmp_path, capsys):
    train_tiny_checkpoint(tmp_path)
    k, _, _ = phantom(h=24, w=20)
    mask = make_mask((24, 20), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-1)[0]
    np.save(tmp_path / "k.npy", k.numpy())
    np.save(tmp_path / "mask.npy", mask.numpy())
    code = main(["reconstruct", "--kspace", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--method", "mc-ddpm", "--steps", "3", "--samples", "2", "--start", "0.5", "--checkpoint",
                 str(tmp_path / "run"), "--out", str(tmp_path / "x.npy"), "--std-out", str(tmp_path / "std.npy")])
    assert code == 0
    assert "mc-ddpm 24x20" in capsys.readouterr().out
    image, std = np.load(tmp_path / "x.npy"), np.load(tmp_path / "std.npy")
    assert image.shape == std.shape == (24, 20) and np.isfinite(image).all() and float(std.max()) > 0
    assert "mc-ddpm" in mri.METHODS
