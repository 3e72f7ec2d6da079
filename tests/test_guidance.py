"""Classifier and classifier-free guidance hooks, checked against exact conditional denoisers of a mixture."""

import pytest
import torch

from meddiff.diffusion import (
    VPSDE,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiscreteSchedule,
    FlowSchedule,
    Hook,
    HookChain,
    get_sampler,
    initial_noise,
    make_grid,
)
from meddiff.diffusion.analytic import mixture_2d
from meddiff.errors import MeddiffError

MIXTURE, SCHEDULE = mixture_2d(), VPSDE()


def random_points(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    x0 = MIXTURE.sample(n, g)
    return alpha[:, None] * x0 + sigma[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("label", [0, 3])
def test_classifier_guidance_with_exact_classifier_gives_the_conditional_denoiser(label):
    """E[x0 | x_t] + sigma^2/alpha grad log p(y | x_t) = E[x0 | x_t, y] (Tweedie plus Bayes), at every x_t and t."""
    x, t = random_points()
    labels = torch.full((len(x),), label)
    hook = ClassifierGuidance(MIXTURE.classifier(SCHEDULE), SCHEDULE, labels, scale=1.0)
    guided = hook.denoised(x, MIXTURE.denoiser(SCHEDULE)(x, t), t)
    torch.testing.assert_close(guided, MIXTURE.denoiser(SCHEDULE, component=label)(x, t), atol=1e-8, rtol=1e-6)


def test_classifier_guided_sampling_lands_in_the_requested_mode():
    grid = make_grid(SCHEDULE, 30)
    x = initial_noise(grid, (4000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.full((4000,), 3)  # the rarest mode, weight 0.1
    hook = ClassifierGuidance(MIXTURE.classifier(SCHEDULE), SCHEDULE, labels, scale=1.0)
    samples = get_sampler("dpmpp_2m")(MIXTURE.denoiser(SCHEDULE), x, grid, hook=hook)
    assert float(MIXTURE.mode_weights(samples)[3]) > 0.99
    unguided = get_sampler("dpmpp_2m")(MIXTURE.denoiser(SCHEDULE), x, grid)
    assert float(MIXTURE.mode_weights(unguided)[3]) < 0.15


ZERO_SNR_SCHEDULES = {"flow": FlowSchedule(), "ddpm-zero-terminal-snr": DiscreteSchedule("linear", zero_terminal_snr=True)}
LINEAR_WEIGHTS = torch.tensor([[1.0, 0.5], [-1.0, 0.3], [0.2, -1.0], [0.0, 1.0]], dtype=torch.float64)


def linear_classifier(x, t):
    """Logits W x, ignoring t: its gradient is not zero where alpha_t = 0, unlike an exact noise-aware classifier."""
    return x.double() @ LINEAR_WEIGHTS.T


@pytest.mark.parametrize("schedule_name", sorted(ZERO_SNR_SCHEDULES))
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_classifier_guidance_is_bounded_on_grids_that_start_at_zero_snr(sampler, schedule_name):
    """The grid starts where alpha = 0 (flow t = 1, zero-terminal-SNR t = T-1): sigma^2/alpha is undefined there and
    the correction is skipped. Dividing by alpha clamped at 1e-12 gave samples of 1e6-1e10 (issue 20, item 3)."""
    schedule = ZERO_SNR_SCHEDULES[schedule_name]
    grid = make_grid(schedule, 20)
    assert float(grid.alphas[0]) == 0.0
    x = initial_noise(grid, (500, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hook = ClassifierGuidance(linear_classifier, schedule, torch.full((500,), 3), scale=1.0)
    samples = get_sampler(sampler)(MIXTURE.denoiser(schedule), x, grid, hook=hook, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(samples).all()
    assert float(samples.abs().max()) < 10  # the mixture's samples lie within |x| < 4; measured max 2.6-3.1


def test_classifier_guidance_leaves_x0_unchanged_where_alpha_is_zero():
    """Per sample: rows at alpha = 0 are untouched, rows at alpha > 0 get sigma^2/alpha * grad."""
    schedule = FlowSchedule()
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([1.0, 0.5], dtype=torch.float64)
    hook = ClassifierGuidance(linear_classifier, schedule, torch.tensor([3, 3]), scale=2.0)
    x0 = torch.zeros_like(x)
    guided = hook.denoised(x, x0, t)
    torch.testing.assert_close(guided[0], x0[0])
    torch.testing.assert_close(guided[1:], 2.0 * 0.5**2 / 0.5 * hook.log_prob_gradient(x, t)[1:])


def test_classifier_free_guidance_mixes_conditional_and_unconditional():
    x, t = random_points()
    conditional, unconditional = MIXTURE.denoiser(SCHEDULE, component=1), MIXTURE.denoiser(SCHEDULE)
    c, u = conditional(x, t), unconditional(x, t)
    for scale in (0.0, 1.0, 3.0):
        torch.testing.assert_close(ClassifierFreeGuidance(unconditional, scale).denoised(x, c, t), u + scale * (c - u))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_classifier_free_guidance_sampling(sampler):
    """Scale 1 samples the conditional mode; scale 0 gives back the unconditional mode weights."""
    grid = make_grid(SCHEDULE, 40)
    x = initial_noise(grid, (4000, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    conditional, unconditional = MIXTURE.denoiser(SCHEDULE, component=2), MIXTURE.denoiser(SCHEDULE)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    on = get_sampler(sampler)(conditional, x, grid, hook=ClassifierFreeGuidance(unconditional, 1.0), generator=g())
    assert float(MIXTURE.mode_weights(on)[2]) > 0.99
    off = get_sampler(sampler)(conditional, x, grid, hook=ClassifierFreeGuidance(unconditional, 0.0), generator=g())
    assert MIXTURE.mode_weight_error(off) < 0.04


def test_hook_chain_applies_hooks_in_order():
    x, t = random_points(16)
    x0 = MIXTURE.denoiser(SCHEDULE)(x, t)

    class Add(Hook):
        def __init__(self, value):
            self.value = value

        def denoised(self, x, x0, t):
            return x0 * 2 + self.value

    torch.testing.assert_close(HookChain([Add(1.0), Add(0.0)]).denoised(x, x0, t), (x0 * 2 + 1) * 2)


def test_hook_chain_needs_grad_when_any_of_its_hooks_does():
    """A chain with a DPS hook asks the sampler for a differentiable prediction (no hand-set flag): DDIM runs the
    chain, and the DPS hook sees x0_hat differentiable in x_t (it raises otherwise)."""
    from meddiff.diffusion import ClipDenoised
    from meddiff.diffusion.inverse import PosteriorGradient

    dps = PosteriorGradient(lambda x0: x0[:, :1] - 0.5, 1.0)
    assert not HookChain([]).needs_grad and not HookChain([ClipDenoised(-3.0, 3.0)]).needs_grad
    assert HookChain([ClipDenoised(-3.0, 3.0), dps]).needs_grad and HookChain([dps, Hook()]).needs_grad
    grid = make_grid(SCHEDULE, 5)
    g = torch.Generator().manual_seed(0)
    x = initial_noise(grid, (8, 2), generator=g, dtype=torch.float64)
    out = get_sampler("ddim")(MIXTURE.denoiser(SCHEDULE), x, grid, hook=HookChain([dps, ClipDenoised(-3.0, 3.0)]),
                              generator=g, eta=1.0)
    assert out.shape == (8, 2) and torch.isfinite(out).all() and dps.residual_norms is not None


def test_guidance_rejects_negative_scale():
    with pytest.raises(MeddiffError, match="scale"):
        ClassifierFreeGuidance(MIXTURE.denoiser(SCHEDULE), -1.0)
    with pytest.raises(MeddiffError, match="scale"):
        ClassifierGuidance(MIXTURE.classifier(SCHEDULE), SCHEDULE, torch.zeros(2), scale=-2)


def test_clip_denoised_clamps_every_x0_estimate_and_the_ddim_result():
    from meddiff.diffusion import ClipDenoised, DiscreteSchedule, make_grid, sample_ddim

    schedule = DiscreteSchedule("linear", 100)
    grid = make_grid(schedule, 5, "trailing")
    seen = []

    def overshooting(x, t, **cond):  # an x0 estimate 5x outside the data range
        return torch.full_like(x, 5.0)

    class Record(ClipDenoised):
        def denoised(self, x, x0, t):
            out = super().denoised(x, x0, t)
            seen.append(float(out.abs().max()))
            return out

    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    result = sample_ddim(overshooting, x, grid, hook=Record(-1.0, 1.0))
    assert seen == [1.0] * 5
    torch.testing.assert_close(result, torch.ones_like(x))  # the last DDIM step returns x0_hat
    assert float(sample_ddim(overshooting, x, grid).max()) == 5.0
    with pytest.raises(MeddiffError, match="low < high"):
        ClipDenoised(1.0, -1.0)
