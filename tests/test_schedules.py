"""Schedules against diffusers, and their invariants (monotone, invertible SNR, zero terminal SNR)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from meddiff.diffusion import CLEAN_TIME, VESDE, VPSDE, DiscreteSchedule, FlowSchedule, add_noise, make_grid, make_schedule
from meddiff.diffusion.timesteps import DISCRETE_SPACINGS
from meddiff.errors import MeddiffError

DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}
# diffusers keeps beta_start/beta_end at the DDPM values for every schedule; we default scaled_linear to LDM's.
LDM_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}


def diffusers_ddpm(name, **kwargs):
    betas = LDM_BETAS if name == "scaled_linear" else {}
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name], **betas, **kwargs)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_NAMES))
def test_alphas_cumprod_match_diffusers(name):
    ours = DiscreteSchedule(name, 1000)
    theirs = diffusers_ddpm(name)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_NAMES))
def test_zero_terminal_snr_matches_diffusers(name):
    ours = DiscreteSchedule(name, 1000, zero_terminal_snr=True)
    theirs = diffusers_ddpm(name, rescale_betas_zero_snr=True)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6, rtol=1e-4)
    assert float(ours.alphas_cumprod[-1]) == 0.0
    assert ours.has_zero_terminal_snr
    assert float(ours.log_snr(999)) == -math.inf


@pytest.mark.parametrize("name", sorted(DIFFUSERS_NAMES))
def test_add_noise_matches_diffusers(name):
    ours = DiscreteSchedule(name, 1000)
    theirs = diffusers_ddpm(name)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(add_noise(x0, noise, t, ours), theirs.add_noise(x0, noise, t), atol=1e-5, rtol=0)


SCHEDULES = [
    DiscreteSchedule("linear"),
    DiscreteSchedule("cosine"),
    DiscreteSchedule("scaled_linear", 100),
    DiscreteSchedule("sigmoid"),
    VPSDE(),
    VESDE(),
    FlowSchedule(),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.to_config()))
def test_log_snr_decreasing_and_invertible(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 257, dtype=torch.float64)
    if schedule.is_discrete:
        t = t.round().unique()
    lam = schedule.log_snr(t)
    finite = torch.isfinite(lam)
    assert bool((lam[finite][1:] < lam[finite][:-1]).all()), "log-SNR must decrease with t"
    back = schedule.time_from_log_snr(lam[finite])
    torch.testing.assert_close(back, t[finite], atol=1e-3 * (schedule.t_max - schedule.t_min), rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s.to_config()))
def test_clean_time_and_config_round_trip(schedule):
    alpha, sigma = schedule.alpha_sigma(CLEAN_TIME)
    assert (float(alpha), float(sigma)) == (1.0, 0.0)
    rebuilt = make_schedule(schedule.to_config())
    t = torch.linspace(schedule.t_min, schedule.t_max, 33, dtype=torch.float64)
    for a, b in zip(schedule.alpha_sigma(t), rebuilt.alpha_sigma(t)):
        torch.testing.assert_close(a, b)


def test_alphas_cumprod_monotone_for_all_beta_schedules():
    for name in DIFFUSERS_NAMES:
        ab = DiscreteSchedule(name).alphas_cumprod
        assert bool((ab[1:] < ab[:-1]).all()) and 0 < float(ab[-1]) < float(ab[0]) < 1


def test_vp_sde_matches_its_discretisation():
    """VP SDE alpha(t) and the generic finite-difference SDE coefficients agree with the analytic beta(t)."""
    sde = VPSDE()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    f, g2 = sde.sde(t)
    f_num, g2_num = super(VPSDE, sde).sde(t)
    torch.testing.assert_close(f, f_num, rtol=1e-5, atol=0)
    torch.testing.assert_close(g2, g2_num, rtol=1e-5, atol=0)
    alpha, sigma = sde.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))


def test_ve_sigma_endpoints():
    sde = VESDE(sigma_min=0.01, sigma_max=50)
    assert math.isclose(float(sde.alpha_sigma(1.0)[1]), 50.0)
    f, g2 = sde.sde(torch.tensor(0.3, dtype=torch.float64))
    f_num, g2_num = super(VESDE, sde).sde(torch.tensor(0.3, dtype=torch.float64))
    assert float(f) == 0 and math.isclose(float(g2), float(g2_num), rel_tol=1e-5)


def test_bad_schedule_arguments_name_the_argument():
    with pytest.raises(MeddiffError, match="beta_schedule='quadratic'.*'linear'"):
        DiscreteSchedule("quadratic")
    with pytest.raises(MeddiffError, match="num_train_steps"):
        DiscreteSchedule("linear", 1)
    with pytest.raises(MeddiffError, match="schedule kind"):
        make_schedule({"kind": "edm"})
    with pytest.raises(MeddiffError, match="bad parameters for the 've' schedule"):
        make_schedule({"kind": "ve", "sigma": 3})
    with pytest.raises(MeddiffError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=10, sigma_max=1)


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
def test_every_step_count_gives_a_valid_grid(spacing):
    """Every N in 1..T gives N strictly decreasing integer-valued times in [0, T-1] (issue 20: trailing failed
    for 62 of them, e.g. N = 61, through a float-step arange that produced a time of -1)."""
    schedule = DiscreteSchedule("linear", 1000)
    for steps in range(1, 1001):
        if spacing in ("logsnr", "karras") and steps > 200:
            break  # continuous-valued spacings: 1..200 covers every regime, the rest only repeats the interpolation
        times = make_grid(schedule, steps, spacing).times[:-1]
        assert times.numel() == steps, (spacing, steps)
        assert bool((times[1:] < times[:-1]).all()), (spacing, steps)
        assert float(times.min()) >= 0 and float(times.max()) <= 999, (spacing, steps)
        if spacing in ("trailing", "leading", "linspace"):
            assert bool((times == times.round()).all()), (spacing, steps)
    if spacing == "trailing":
        assert make_grid(schedule, 61, spacing).times[:3].tolist() == [999.0, 983.0, 966.0]


def test_partial_grid_matches_the_chains_it_replaces():
    """partial_grid is the one helper for chains that start from a partly noised image (AnoDDPM, Wolleb, SDEdit,
    CCDF): discrete times from the start down to 0, rounded and de-duplicated; continuous times linear."""
    from meddiff.diffusion import partial_grid

    discrete = DiscreteSchedule("linear", 1000)
    grid = partial_grid(discrete, 30, 50)
    assert grid.times[:-1].tolist() == list(range(30, -1, -1)) and grid.times[-1] == CLEAN_TIME
    assert partial_grid(discrete, 999, 1000).times[:-1].tolist() == list(range(999, -1, -1))
    assert partial_grid(discrete, 500, 3).times[:-1].tolist() == [500.0, 250.0, 0.0]
    vp = VPSDE()
    times = partial_grid(vp, 0.5, 5).times[:-1]
    assert torch.allclose(times, torch.linspace(0.5, vp.t_min, 5, dtype=torch.float64))
    for bad in (0, -1, 1000.5):
        with pytest.raises(MeddiffError, match="start time"):
            partial_grid(discrete, bad, 10)
    with pytest.raises(MeddiffError, match="steps"):
        partial_grid(discrete, 10, 0)
