"""Our DDPM, DDIM and DPM-Solver++ agree with diffusers' schedulers given identical model outputs and noise.

Both run in float64, with diffusers' alphas_cumprod replaced by our float64 ones: diffusers accumulates
alphas_cumprod in float32, and that rounding alone moves a 1000-step DDPM result by ~4e-3 and a cosine-schedule
DDIM start (alpha_999 ~ 6e-3, x0 = x / alpha) by far more, which would hide a wrong coefficient rather than test it.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from meddiff.diffusion import (
    DiscreteSchedule,
    ModelDenoiser,
    TimeGrid,
    make_grid,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)


_LINEAR_AB = DiscreteSchedule("linear", 1000).alphas_cumprod


def eps_model(x, t):
    """A fixed nonlinear 'network' (both libraries see identical outputs for identical inputs): the exact eps of
    N(0, 0.25 I) data under the linear schedule plus a nonlinear term, so states stay O(1) as with a trained net."""
    t = torch.as_tensor(t, dtype=torch.float64)
    ab = _LINEAR_AB[t.round().long().clamp(0, 999)]
    ab = ab.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else ab
    exact = (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab)
    return exact + 0.1 * torch.tanh(0.7 * x + 0.3 * torch.sin(x.flip(-1)))


def start(seed=0, shape=(4, 2, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def in_float64(scheduler, schedule):
    """Give a diffusers scheduler our float64 alphas_cumprod (and everything it derives from them)."""
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1 - schedule.betas
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "lambda_t"):
        scheduler.alpha_t = scheduler.alphas_cumprod.sqrt()
        scheduler.sigma_t = (1 - scheduler.alphas_cumprod).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    return scheduler


def run_diffusers(scheduler, x, steps, **step_kwargs):
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "sigmas"):  # DPM-Solver stores its sigma grid in float32: recompute in float64
        ab = scheduler.alphas_cumprod[scheduler.timesteps]
        scheduler.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
    for t in scheduler.timesteps:
        x = scheduler.step(eps_model(x, t.float()), t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_matches_diffusers(variance, steps):
    schedule = DiscreteSchedule("linear", 1000)
    theirs = in_float64(DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type=variance), schedule)
    expected = run_diffusers(theirs, start(), steps, generator=torch.Generator().manual_seed(1))
    grid = make_grid(schedule, steps, "leading")
    assert grid.times[:-1].long().tolist() == theirs.timesteps.tolist()
    ours = sample_ddpm(ModelDenoiser(eps_model, schedule), start(), grid, variance=variance,
                       generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_ddim_matches_diffusers(spacing, eta, beta_schedule):
    """rtol 1e-7 on top of atol 1e-5: at t = 999 of the cosine schedule alpha = 5e-5, so x0 = x / alpha and the
    states reach ~4e3, where float64 rounding alone differs by ~6e-4 (1.4e-7 relative) between two correct implementations."""
    steps = 50
    diffusers_name = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[beta_schedule]
    schedule = DiscreteSchedule(beta_schedule, 1000)
    theirs = in_float64(DDIMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, clip_sample=False,
                                      set_alpha_to_one=True, timestep_spacing=spacing), schedule)
    expected = run_diffusers(theirs, start(), steps, eta=eta, generator=torch.Generator().manual_seed(2))
    grid = make_grid(schedule, steps, spacing)
    assert grid.times[:-1].long().tolist() == theirs.timesteps.tolist()
    ours = sample_ddim(ModelDenoiser(eps_model, schedule), start(), grid, eta=eta,
                       generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_dpmpp_2m_matches_diffusers(steps, beta_schedule):
    betas = {"beta_start": 0.00085, "beta_end": 0.012} if beta_schedule == "scaled_linear" else {}
    schedule = DiscreteSchedule(beta_schedule, 1000)
    theirs = in_float64(DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, **betas,
                                                    algorithm_type="dpmsolver++", solver_order=2,
                                                    final_sigmas_type="zero"), schedule)
    expected = run_diffusers(theirs, start(), steps)
    # diffusers' DPM-Solver grid is linspace(0, T-1, N+1) without its last point: we pass the same times.
    grid = TimeGrid.from_times(schedule, theirs.timesteps.double())
    ours = sample_dpmpp_2m(ModelDenoiser(eps_model, schedule), start(), grid)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_trailing_grid_where_diffusers_stride_is_wrong():
    """With 3 trailing steps the grid is 999, 666, 332. diffusers' DDIM steps from 666 to 666 - 1000//3 = 333,
    a timestep not on its own list; we step to 332, the next entry of the grid. The results therefore differ,
    and ours equals a hand-written DDIM over the list."""
    schedule = DiscreteSchedule("linear", 1000)
    grid = make_grid(schedule, 3, "trailing")
    assert grid.times.tolist() == [999.0, 666.0, 332.0, -1.0]
    theirs = in_float64(DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True,
                                      timestep_spacing="trailing"), schedule)
    expected_theirs = run_diffusers(theirs, start(), 3)
    ours = sample_ddim(ModelDenoiser(eps_model, schedule), start(), grid)
    assert (ours - expected_theirs).abs().max() > 1e-4  # 10x the agreement tolerance above

    x, ab = start(), schedule.alphas_cumprod
    for t, prev in [(999, 666), (666, 332), (332, None)]:
        eps = eps_model(x, torch.tensor(float(t), dtype=torch.float64))
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        ab_prev = ab[prev] if prev is not None else torch.tensor(1.0, dtype=torch.float64)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


def test_linspace_grid_list_matches_diffusers_but_not_its_stride():
    """For 'linspace', diffusers' DDIM list is round(linspace(T-1, 0, N)) but it steps by T//N, which is off
    the list for every N < T (e.g. N = 91: 999 -> 989 instead of 988). Our lists equal theirs; our steps
    follow the list, so the samples differ while each step is the exact DDIM step between listed times."""
    schedule = DiscreteSchedule("linear", 1000)
    theirs = in_float64(DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True,
                                      timestep_spacing="linspace"), schedule)
    for steps in (7, 50, 91):
        theirs.set_timesteps(steps)
        assert make_grid(schedule, steps, "linspace").times[:-1].long().tolist() == theirs.timesteps.tolist()
    grid = make_grid(schedule, 91, "linspace")
    ours = sample_ddim(ModelDenoiser(eps_model, schedule), start(), grid)
    assert (ours - run_diffusers(theirs, start(), 91)).abs().max() > 1e-4
    # a hand-written DDIM that steps along the list gives our result
    x = start()
    times = grid.times[:-1].long().tolist()
    for t, prev in zip(times, times[1:] + [-1]):
        ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[prev] if prev >= 0 else 1.0
        eps = eps_model(x, torch.tensor(float(t), dtype=torch.float64))
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)
