"""Simplex noise (AnoDDPM): statistics, spatial correlation at the chosen frequency, seeding, and its use in the
trainer and the samplers."""

from __future__ import annotations

import math

import pytest
import torch

from meddiff.diffusion import make_grid, make_schedule
from meddiff.diffusion.analytic import anisotropic_gaussian
from meddiff.diffusion.noise import (
    _OCTAVE_STD,
    make_noise,
    resolve_noise_config,
    simplex_noise,
    simplex_octave,
)
from meddiff.diffusion.samplers import invert_ddim, sample_ddim, sample_ddpm
from meddiff.errors import MeddiffError


def lag_correlation(x: torch.Tensor, lag: int) -> float:
    """Correlation between pixels ``lag`` apart along the last axis, pooled over all fields."""
    a, b = x[..., :-lag].reshape(-1).double(), x[..., lag:].reshape(-1).double()
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


@pytest.mark.parametrize("dims", [2, 3])
def test_one_octave_std_matches_the_normalising_constant(dims):
    g = torch.Generator().manual_seed(1)
    perm = torch.argsort(torch.rand(64, 256, generator=g), dim=1)
    points = torch.rand(64, 4000, dims, generator=g, dtype=torch.float64) * 256
    values = simplex_octave(points, perm)
    assert abs(float(values.mean())) < 0.03 * _OCTAVE_STD[dims]
    assert float(values.std()) == pytest.approx(_OCTAVE_STD[dims], rel=0.03)


@pytest.mark.parametrize("shape, octaves", [((128, 2, 32, 32), 1), ((128, 2, 32, 32), 6), ((16, 1, 16, 16, 16), 3)])
def test_zero_mean_unit_variance_over_draws(shape, octaves):
    x = simplex_noise(shape, octaves=octaves, persistence=0.8, frequency=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == shape and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.06
    assert float(x.var()) == pytest.approx(1.0, abs=0.1)
    # each pixel position has unit variance over draws (stationary field): check the corner and the centre
    for pixel in (x[:, :, 0, 0], x[:, :, shape[2] // 2, shape[3] // 2]):
        assert float(pixel.var()) == pytest.approx(1.0, abs=0.25)


def test_spatial_correlation_follows_the_frequency():
    """One octave of period P pixels: strongly correlated within P/8, exactly uncorrelated beyond the kernel
    support 2 sqrt(0.5) P (two points share no simplex corner); white Gaussian noise is uncorrelated at lag 1."""
    g = torch.Generator().manual_seed(0)
    period = 16
    x = simplex_noise((64, 1, 64, 64), octaves=1, frequency=period, generator=g)
    assert lag_correlation(x, 2) > 0.8
    assert abs(lag_correlation(x, int(math.ceil(2 * math.sqrt(0.5) * period)) + 1)) < 0.03
    assert lag_correlation(x, 4) > lag_correlation(simplex_noise((64, 1, 64, 64), octaves=1, frequency=4,
                                                                 generator=g), 4) + 0.3
    assert abs(lag_correlation(torch.randn(64, 1, 64, 64, generator=g), 1)) < 0.02
    # more octaves with persistence < 1 add fine detail: lower correlation at short lags than one octave
    assert lag_correlation(simplex_noise((64, 1, 64, 64), octaves=6, frequency=period, generator=g), 2) < \
        lag_correlation(x, 2)


def test_seeded_and_independent_fields():
    a = simplex_noise((4, 2, 16, 16), generator=torch.Generator().manual_seed(5), frequency=8)
    b = simplex_noise((4, 2, 16, 16), generator=torch.Generator().manual_seed(5), frequency=8)
    c = simplex_noise((4, 2, 16, 16), generator=torch.Generator().manual_seed(6), frequency=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    many = simplex_noise((400, 2, 8, 8), frequency=8, generator=torch.Generator().manual_seed(0))
    cross = torch.corrcoef(torch.stack([many[:, 0].reshape(-1), many[:, 1].reshape(-1)]))[0, 1]
    assert abs(float(cross)) < 0.05   # channels (and batch items) are independent fields


def test_bad_parameters_and_configs_raise():
    for kwargs in ({"octaves": 0}, {"persistence": 0.0}, {"persistence": 1.5}, {"frequency": -1}):
        with pytest.raises(MeddiffError, match="simplex"):
            simplex_noise((1, 1, 8, 8), **kwargs)
    with pytest.raises(MeddiffError, match=r"\(B, C, H, W\)"):
        simplex_noise((8, 8))
    with pytest.raises(MeddiffError, match="diffusion.noise.kind"):
        resolve_noise_config({"kind": "pink"})
    with pytest.raises(MeddiffError, match="unknown key"):
        resolve_noise_config({"kind": "simplex", "octave": 3})
    assert resolve_noise_config({"kind": "simplex", "frequency": 12}) == {
        "kind": "simplex", "octaves": 6, "persistence": 0.8, "frequency": 12}
    assert resolve_noise_config(None) is None


def test_gaussian_noise_is_the_trainers_old_randn_draw():
    assert torch.equal(make_noise(None)((3, 1, 4, 4), torch.Generator().manual_seed(2)),
                       torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(2)))


def test_trainer_draws_simplex_noise_and_resumes_bit_for_bit(tmp_path):
    from meddiff.training import Trainer

    class TinyDataset(torch.utils.data.Dataset):
        images = torch.rand((8, 1, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
        image_shape = (1, 16, 16)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return {"image": self.images[i]}

    def config():
        return {"model": {"channels": [8, 16], "attention_levels": [False, False]},
                "diffusion": {"noise": {"kind": "simplex", "octaves": 2, "frequency": 8}},
                "optimiser": {"lr": 1e-3}, "schedule": {"warmup_steps": 1},
                "run": {"name": "tiny", "steps": 4, "batch_size": 4, "checkpoint_every": 2, "progress": False}}

    trainer = Trainer(config(), TinyDataset(), run_dir=tmp_path / "full")
    assert trainer.config["diffusion"]["noise"] == {"kind": "simplex", "octaves": 2, "persistence": 0.8, "frequency": 8}
    _, noise, _ = trainer._draws(32)
    assert lag_correlation(noise, 1) > 0.5          # spatially correlated, unlike Gaussian draws
    full = Trainer(config(), TinyDataset(), run_dir=tmp_path / "a").fit()

    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), TinyDataset(), run_dir=tmp_path / "b").fit(on_step=stop)
    assert Trainer(config(), TinyDataset(), run_dir=tmp_path / "b").fit(resume=True) == full[2:]


def test_samplers_noise_fn_replaces_the_gaussian_draws():
    target = anisotropic_gaussian(dim=4)
    schedule = make_schedule("linear")
    grid = make_grid(schedule, 10)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den = target.denoiser(schedule)
    randn = lambda shape, g: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    for sampler, kw in ((sample_ddpm, {}), (sample_ddim, {"eta": 1.0})):
        plain = sampler(den, x, grid, generator=torch.Generator().manual_seed(1), **kw)
        same = sampler(den, x, grid, generator=torch.Generator().manual_seed(1), noise_fn=randn, **kw)
        assert torch.equal(plain, same)
        calls = []
        zero = sampler(den, x, grid, noise_fn=lambda shape, g: calls.append(shape) or torch.zeros(shape), **kw)
        assert calls and all(c == (8, 4) for c in calls) and not torch.equal(zero, plain)


def test_invert_ddim_then_ddim_reconstructs_with_the_exact_denoiser():
    """DDIM is the Euler step of the probability-flow ODE: encoding and decoding over a fine grid is nearly the
    identity for the exact denoiser of an anisotropic Gaussian (Song et al. 2021, sec. 4.3)."""
    target = anisotropic_gaussian(dim=16)
    schedule = make_schedule("linear")
    den = target.denoiser(schedule)
    x0 = target.sample(32, torch.Generator().manual_seed(0))
    from meddiff.diffusion import partial_grid

    errors = []
    for steps in (25, 200):
        grid = partial_grid(schedule, 500, steps)
        latent = invert_ddim(den, x0, grid)
        errors.append(float((sample_ddim(den, latent, grid) - x0).abs().max()))
    assert errors[1] < 0.05 * float(x0.abs().max()) and errors[1] < errors[0]
    # the encoding really moves to the noise level: the latent is far from the data
    assert float((latent - x0).abs().mean()) > 0.3
