"""Inverse-problem hooks (DDNM projection, measurement replacement, DPS) against closed-form Gaussian posteriors,
and the MRI reconstruction task on small synthetic problems (no trained model needed)."""

import numpy as np
import pytest
import torch

from meddiff.diffusion import VPSDE, Hook, get_sampler, initial_noise, make_grid
from meddiff.diffusion.analytic import GaussianMixture
from meddiff.diffusion.inverse import MeasurementReplacement, PosteriorGradient, Projection
from meddiff.errors import MeddiffError
from meddiff.physics import fft2c, ifft2c, make_mask, rss
from meddiff.tasks import mri

from helpers import tiny_prior

SCHEDULE = VPSDE()


def aligned_problem(dim=6, seed=0):
    """Gaussian prior whose covariance has the range of A^T as an invariant subspace, so that the exact posterior
    is y on the range of A^+ and the prior on the null space: the case where DDNM / replacement are exact."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    cov = (q * eig) @ q.T
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    prior = GaussianMixture([1.0], mean[None], cov[None])
    a = torch.randn(2, 2, generator=g, dtype=torch.float64) @ q[:, [1, 4]].T  # (2, 6)
    y = a @ prior.sample(1, g)[0]
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T)
    post_mean, post_cov = mean + gain @ (y - a @ mean), cov - gain @ a @ cov
    return prior, a, y, post_mean, post_cov


def make_project(a, y):
    pinv = torch.linalg.pinv(a)
    return lambda v, alpha: v - (v @ a.T - alpha * y) @ pinv.T


def run(hook, sampler, n=4000, steps=100, seed=3, **kw):
    prior, a, y, post_mean, post_cov = aligned_problem()
    grid = make_grid(SCHEDULE, steps)
    g = torch.Generator().manual_seed(seed)
    x = initial_noise(grid, (n, 6), generator=g, dtype=torch.float64)
    return get_sampler(sampler)(prior.denoiser(SCHEDULE), x, grid, hook=hook, generator=g, **kw)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "heun", "pc"])
def test_ddnm_projection_gives_exact_measurement_consistency_with_every_sampler(sampler):
    prior, a, y, *_ = aligned_problem()
    out = run(Projection(make_project(a, y)), sampler, n=64, steps=12)
    assert float((out @ a.T - y).abs().max()) < 1e-10


def test_ddnm_keeps_the_null_space_of_the_last_x0_prediction():
    """Range space from y, null space from the prior: out = A^+ y + (I - A^+ A) x0_hat at the last step."""
    prior, a, y, *_ = aligned_problem()
    pinv = torch.linalg.pinv(a)
    seen = []

    class Spy(Projection):
        def denoised(self, x, x0, t):
            seen.append(x0)
            return super().denoised(x, x0, t)

    out = run(Spy(make_project(a, y)), "ddim", n=32, steps=8)
    null = torch.eye(6, dtype=torch.float64) - pinv @ a
    torch.testing.assert_close(out @ null.T, seen[-1] @ null.T)
    torch.testing.assert_close(out - out @ null.T, (pinv @ y).expand_as(out))


@pytest.mark.parametrize("hook_kind, sampler", [("ddnm", "ddpm"), ("replace", "ddpm"), ("replace", "pc")])
def test_posterior_samples_match_the_closed_form_gaussian_posterior(hook_kind, sampler):
    prior, a, y, post_mean, post_cov = aligned_problem()
    project = make_project(a, y)
    hook = Projection(project) if hook_kind == "ddnm" else \
        MeasurementReplacement(project, SCHEDULE, generator=torch.Generator().manual_seed(5))
    out = run(hook, sampler, **({"snr": 0.1} if sampler == "pc" else {}))
    mean_err = float((out.mean(0) - post_mean).norm() / post_cov.diagonal().sum().sqrt())
    cov_err = float((torch.cov(out.T) - post_cov).norm() / post_cov.norm())
    assert mean_err < 0.04  # measured 0.016 (ddpm), 0.012 (pc)
    assert cov_err < 0.12  # measured 0.078 (ddpm, 100 steps), 0.029 (pc); 4000 samples


def test_measurement_replacement_puts_the_forward_noised_measurement_in_the_range():
    prior, a, y, *_ = aligned_problem()
    hook = MeasurementReplacement(make_project(a, y), SCHEDULE, generator=torch.Generator().manual_seed(7))
    x = torch.randn(5, 6, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    out = hook.step(x, x, t)
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor([0.4], dtype=torch.float64)))
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(out @ a.T, alpha * y + sigma * n @ a.T)
    null = torch.eye(6, dtype=torch.float64) - torch.linalg.pinv(a) @ a
    torch.testing.assert_close(out @ null.T, x @ null.T)
    clean = MeasurementReplacement(make_project(a, y), SCHEDULE, noise=False).step(x, x, t)
    torch.testing.assert_close(clean @ a.T, (alpha * y).expand(5, 2))


def test_dps_pulls_samples_to_the_data_and_to_the_posterior_mean():
    prior, a, y, post_mean, post_cov = aligned_problem()
    residual = lambda x0: x0 @ a.T - y  # noqa: E731
    guided = run(PosteriorGradient(residual, zeta=0.3), "ddim", n=2000, steps=300, eta=1.0)
    free = run(PosteriorGradient(residual, zeta=0.0), "ddim", n=2000, steps=300, eta=1.0)
    unhooked = run(None, "ddim", n=2000, steps=300, eta=1.0)
    torch.testing.assert_close(free, unhooked)  # zeta = 0 and the autograd path change nothing
    r_guided = float((guided @ a.T - y).norm(dim=1).mean())
    r_free = float((free @ a.T - y).norm(dim=1).mean())
    assert r_guided < 0.6 * r_free  # measured 0.28 vs 0.50: DPS is approximate, no exact consistency
    scale = post_cov.diagonal().sum().sqrt()
    assert float((guided.mean(0) - post_mean).norm() / scale) < 0.05  # measured 0.020 (prior alone: 0.20)
    assert float((torch.cov(guided.T) - post_cov).norm() / post_cov.norm()) < 0.1  # measured 0.042


def test_needs_grad_hook_sees_a_differentiable_prediction_and_other_hooks_do_not():
    prior, *_ = aligned_problem()
    flags = []

    class Probe(Hook):
        needs_grad = True

        def denoised(self, x, x0, t):
            flags.append((x.requires_grad, x0.requires_grad))
            return x0.detach()

    grid = make_grid(SCHEDULE, 3)
    x = initial_noise(grid, (4, 6), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        get_sampler("ddim")(prior.denoiser(SCHEDULE), x, grid, hook=Probe())
    assert flags == [(True, True)] * 3

    class Plain(Hook):
        def denoised(self, x, x0, t):
            flags.append((x.requires_grad, x0.requires_grad))
            return x0

    flags.clear()
    get_sampler("ddim")(prior.denoiser(SCHEDULE), x, grid, hook=Plain())
    assert flags == [(False, False)] * 3


def test_dps_errors():
    with pytest.raises(MeddiffError, match="zeta"):
        PosteriorGradient(lambda x: x, zeta=-1)
    hook = PosteriorGradient(lambda x: x, zeta=1)
    with pytest.raises(MeddiffError, match="differentiable"):
        hook.denoised(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1))


# ----------------------------------------------------------------------------------------------- MRI task
def phantom(h=32, w=24, coils=4, seed=0):
    """Smooth-phase complex phantom, normalised smooth coil maps and fully sampled centred k-space (C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = ((xx**2 / 0.6 + yy**2 / 0.8) < 1).float() * (1 + 0.5 * (yy > 0.1).float()) * 50
    image = image * torch.exp(1j * 0.5 * (xx + yy))
    maps = torch.stack([torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2)) * torch.exp(1j * torch.tensor(float(c)))
                        for c, (cx, cy) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)][:coils])])
    maps = (maps / rss(maps)).to(torch.complex64)
    noise = 0.05 * torch.complex(torch.randn(coils, h, w, generator=g), torch.randn(coils, h, w, generator=g))
    return fft2c(maps * image) + noise, image, maps


def test_zero_filled_and_sense_are_on_the_rss_scale():
    k, image, maps = phantom()
    full = torch.ones(k.shape[-2:])
    zf = mri.reconstruct(k, full, "zero-filled").image
    np.testing.assert_allclose(zf, rss(ifft2c(k)).numpy(), rtol=1e-5, atol=1e-4)
    sense = mri.reconstruct(k, full, "sense", maps=maps).image
    inside = (rss(maps) > 0).numpy() & (image.abs() > 0).numpy()
    assert np.abs(sense - zf)[inside].mean() / zf[inside].mean() < 0.01


@pytest.mark.parametrize("method", ["sense", "cs-wavelet", "ddnm"])
def test_rss_combination_of_fully_sampled_data_is_the_rss_reference(method):
    """combine="rss": RSS of the data-consistent coil images; with every sample measured that is the RSS of the
    data whatever the method's image ("sense" is not: its noise floor is lower); zero-filled is the RSS either way."""
    k, image, maps = phantom()
    full = torch.ones(k.shape[-2:])
    reference = rss(ifft2c(k)).numpy()
    solver = {"prior": tiny_prior(), "steps": 2, "samples": 2} if method in mri.SOLVERS else {}
    out = mri.reconstruct(k, full, method, maps=maps, combine="rss", **solver)
    np.testing.assert_allclose(out.image, reference, rtol=1e-4, atol=1e-3)
    assert out.settings["combine"] == "rss"
    if method == "sense":  # |S^H y| averages the coil noise: a lower background floor than the RSS
        background = (image.abs() == 0).numpy()
        sense = mri.reconstruct(k, full, method, maps=maps).image
        assert sense[background].mean() < 0.8 * reference[background].mean()
    mask = make_mask(tuple(k.shape[-2:]), 2, "equispaced", acs_fraction=0.3, seed=0, axis=-2)
    assert np.array_equal(mri.reconstruct(k, mask, "zero-filled", combine="rss").image,
                          mri.reconstruct(k, mask, "zero-filled").image)
    single = mri.reconstruct(k[0], full, "sense", combine="rss").image
    np.testing.assert_allclose(single, ifft2c(k[0]).abs().numpy(), rtol=1e-4, atol=1e-3)
    with pytest.raises(MeddiffError, match="combine"):
        mri.reconstruct(k, full, "sense", maps=maps, combine="mean")


def test_k_space_outside_the_mask_is_ignored():
    k, _, maps = phantom()
    mask = make_mask(tuple(k.shape[-2:]), 2, "equispaced", acs_fraction=0.3, seed=0, axis=-2)
    garbage = k + (1 - mask) * 1e3
    for method in ("zero-filled", "sense"):
        a = mri.reconstruct(k, mask, method, maps=maps).image
        b = mri.reconstruct(garbage, mask, method, maps=maps).image
        np.testing.assert_allclose(a, b)


def test_real_image_model_data_consistency():
    """Single coil: measured k-space equals alpha y after the step; multi-coil: the true image with noiseless data
    is a fixed point; air (-alpha) outside the coil support and in the padding."""
    k, image, maps = phantom()
    mask = make_mask(tuple(k.shape[-2:]), 2, "random", acs_fraction=0.3, seed=1, axis=-2)
    single = mri.make_problem(k[0], mask)
    model = mri.RealImageModel(single, mri.low_resolution_phase(single), 60.0, (32, 24))
    z = torch.randn(2, 32, 24, dtype=torch.complex64)
    torch.testing.assert_close(mask * fft2c(model.consistent(z, 0.7)), 0.7 * single.y.expand(2, -1, -1), atol=1e-4,
                               rtol=1e-4)
    clean = fft2c(maps * image)
    multi = mri.make_problem(clean, mask, maps=maps)
    model = mri.RealImageModel(multi, mri.low_resolution_phase(multi), 60.0, (34, 24))
    inside = rss(maps) > 0
    torch.testing.assert_close(model.consistent(image[None])[0][inside], image[inside], atol=1e-3, rtol=1e-4)
    v = torch.randn(2, 1, 34, 24)
    out = model.project(v, 0.6)
    assert bool((out[:, 0][:, model.air] == -0.6).all()) and bool(model.air[0].all()) and bool(model.air[-1].all())
    assert model.finish(v).shape == (2, 32, 24)


@pytest.mark.parametrize("method", mri.SOLVERS)
def test_solvers_run_on_odd_shapes_and_give_images_and_std(method):
    k, image, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    prior = tiny_prior()
    result = mri.reconstruct(k, mask, method, prior=prior, maps=maps, steps=3, samples=2, seed=0)
    assert result.image.shape == (30, 21) and result.image.dtype == np.float32
    assert result.std.shape == (30, 21) and np.isfinite(result.std).all() and np.isfinite(result.image).all()
    assert result.settings["padded"] == [30, 22]
    refine = result.settings.get("refine_steps", 0)
    assert result.nfe == {"pc": 6, "dps": 3, "ddnm": 3, "coarse-to-fine": 3 + refine, "mc-ddpm": 3}[method]
    again = mri.reconstruct(k, mask, method, prior=prior, maps=maps, steps=3, samples=2, seed=0)
    np.testing.assert_array_equal(result.image, again.image)  # seeded


def test_solvers_leave_the_global_rng_alone():
    """Every draw takes the solver's own torch.Generator (seeded by ``seed``): the caller's global RNG is neither
    reseeded nor advanced, and its state does not change the result."""
    k, _, maps = phantom(h=30, w=21)
    mask = make_mask((30, 21), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-2)
    prior = tiny_prior()
    for method in mri.SOLVERS:
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        first = mri.reconstruct(k, mask, method, prior=prior, maps=maps, steps=2, samples=2, seed=1).image
        assert torch.equal(torch.random.get_rng_state(), state), method
        torch.manual_seed(456)
        np.testing.assert_array_equal(first, mri.reconstruct(k, mask, method, prior=prior, maps=maps, steps=2,
                                                             samples=2, seed=1).image)


def test_single_coil_reconstruction():
    k, image, maps = phantom(coils=1)
    k1 = k[0]
    mask = make_mask(tuple(k1.shape), 2, "equispaced", acs_fraction=0.3, seed=0, axis=-2)
    result = mri.reconstruct(k1, mask, "ddnm", prior=tiny_prior(), steps=2, samples=1)
    assert result.image.shape == tuple(k1.shape) and np.isfinite(result.image).all()


@pytest.mark.parametrize("bad, match", [
    ("real", "kspace must be complex"), ("nan", "NaN"), ("mask_shape", "mask has shape"),
    ("empty", "mask is empty"), ("mask_values", "only 0 and 1"), ("ndim", "kspace must have shape"),
])
def test_bad_inputs_name_the_argument(bad, match):
    k, _, _ = phantom()
    mask = torch.ones(k.shape[-2:])
    if bad == "real":
        k = k.abs()
    elif bad == "nan":
        k = k.clone()
        k[0, 0, 0] = float("nan")
    elif bad == "mask_shape":
        mask = torch.ones(5, 5)
    elif bad == "empty":
        mask = torch.zeros(k.shape[-2:])
    elif bad == "mask_values":
        mask = mask * 0.5
    elif bad == "ndim":
        k = k[None, None]
    with pytest.raises(MeddiffError, match=match):
        mri.reconstruct(k, mask, "zero-filled")


def test_line_mask_broadcasts_over_rows():
    k, _, _ = phantom()
    line = (torch.arange(k.shape[-1]) % 2 == 0).float()
    a = mri.reconstruct(k, line, "zero-filled").image
    b = mri.reconstruct(k, line[None].expand(k.shape[-2:]), "zero-filled").image
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_report_section_on_the_embedded_k_space(tmp_path):
    """The demo figure: images, error maps, std and calibration plot; DDNM output near CS on the brain slice."""
    section = mri.report_section(tmp_path, steps=2, samples=2, log=lambda *_: None)
    assert section["figure"].is_file() and {"title", "text", "table"} <= set(section)
    psnr = {row["method"]: row["psnr_db"] for row in section["table"]}
    assert psnr["ddnm"] > psnr["zero-filled"] + 5  # measured 32.1 vs 25.5 dB (CS 33.0)
    assert "ddnm untrained" in psnr and "what the trained prior adds" in section["text"].lower()


def test_the_trained_prior_matters_at_the_ddnm_defaults():
    """On the development mask (seed 100, gaussian 4x; never a test seed) of the embedded 8-coil slice (~1 mm),
    DDNM at its default start with the ~1 mm prior brain_mri_prior (named: the default prior is now the 2 mm
    in-domain brain_t1_ixi) must owe at least 0.5 dB (foreground and whole image) to the trained prior: the same network
    untrained scores lower. Guards against defaults that only refine the CS image (DDNM from 1 % of T: +0.2 dB)."""
    from meddiff.data.assets import asset_path
    from meddiff.metrics.image import psnr

    folder = asset_path("kspace_brain_8ch")
    kspace, reference = np.load(folder / "kspace.npy"), torch.from_numpy(np.load(folder / "rss_reference.npy"))
    mask = make_mask(tuple(kspace.shape[-2:]), 4, "gaussian", acs_fraction=0.08, seed=100, axis=-2)
    problem = mri.make_problem(kspace, mask)
    shipped = mri.load_prior("brain_mri_prior")
    top = float(reference.max())
    fg = reference > 0.1 * top
    scores = {}
    for name, prior in (("shipped", shipped), ("untrained", mri.untrained_prior(shipped))):
        image = torch.from_numpy(mri.reconstruct(kspace, mask, "ddnm", prior=prior, maps=problem.maps).image)
        scores[name] = (float(psnr(image, reference, top, mask=fg)), float(psnr(image, reference, top)))
    gain_fg, gain = (a - b for a, b in zip(scores["shipped"], scores["untrained"]))
    # measured: foreground 31.21 vs 29.94 dB (+1.27), whole image 31.14 vs 30.49 dB (+0.65); CS 31.27 / 31.82
    assert gain_fg > 0.5 and gain > 0.5, scores


def test_prior_patches_are_uint8_crops_split_by_subject(tmp_path):
    from meddiff.data import io

    g = np.random.default_rng(0)
    for n in range(4):
        vol = np.zeros((40, 48, 60), np.float32)
        vol[5:35, 6:42, :] = g.uniform(100, 1000, (30, 36, 60))
        io.write_nifti(tmp_path / f"IXI00{n}-HH-1_T1.nii.gz", vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = mri.make_prior_patches(tmp_path / "p.npz", tmp_path, per_subject=8, patch=16)
    data = np.load(out)
    assert data["train_images"].shape == (16, 16, 16) and data["val_images"].shape == (4, 16, 16)
    assert data["train_images"].dtype == np.uint8 and data["train_images"].max() > 200
    again = np.load(mri.make_prior_patches(tmp_path / "q.npz", tmp_path, per_subject=8, patch=16))
    np.testing.assert_array_equal(data["train_images"], again["train_images"])  # seeded
    # extra 1 mm volumes: appended to train only, the IXI crops unchanged, brain rescaled to a median of 0.3-0.5
    one_mm = tmp_path / "one_mm" / "t1.nii.gz"
    vol = np.zeros((48, 48, 20), np.float32)
    vol[4:44, 4:44] = g.uniform(400, 600, (40, 40, 20))
    io.write_nifti(one_mm, vol, np.eye(4))
    mixed = np.load(mri.make_prior_patches(tmp_path / "m.npz", tmp_path, per_subject=8, patch=16,
                                           one_mm=((one_mm, 1.0),), per_one_mm=6))
    assert mixed["train_images"].shape == (22, 16, 16) and mixed["val_images"].shape == (4, 16, 16)
    np.testing.assert_array_equal(mixed["train_images"][:16], data["train_images"])
    extra = mixed["train_images"][16:].astype(float) / 255
    assert 0.25 < np.median(extra[extra > 0.1]) < 0.55  # raw median / p99.5 would be ~0.84
    with pytest.raises(MeddiffError, match="missing.nii.gz: 1 mm T1 volume for the prior not found"):
        mri.make_prior_patches(tmp_path / "x.npz", tmp_path, per_subject=8, patch=16,
                               one_mm=((tmp_path / "missing.nii.gz", 1.0),))
