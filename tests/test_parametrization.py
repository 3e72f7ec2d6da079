"""Parametrisation conversions, the training loss and its min-SNR weighting, and the network denoiser wrapper."""

import pytest
import torch

from meddiff.diffusion import (
    PREDICTIONS,
    VESDE,
    DiscreteSchedule,
    ModelDenoiser,
    add_noise,
    diffusion_loss,
    from_x0,
    min_snr_weight,
    to_x0,
)
from meddiff.diffusion.parametrization import training_target
from meddiff.errors import MeddiffError


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.43), (0.05, 0.998), (1.0, 30.0)])
def test_conversions_round_trip_and_match_training_targets(kind, alpha, sigma):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    x = a * x0 + s * noise
    target = training_target(kind, x0, noise, a, s)
    torch.testing.assert_close(from_x0(x0, kind, x, a, s), target)  # the exact prediction is the target
    torch.testing.assert_close(to_x0(target, kind, x, a, s), x0)


def test_model_denoiser_recovers_x0_from_perfect_eps_and_v_models():
    schedule = DiscreteSchedule("cosine")
    x0 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 10, 200, 500, 800, 990])
    x = add_noise(x0, noise, t, schedule)
    alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    for kind, output in [("eps", noise), ("v", alpha * noise - sigma * x0), ("x0", x0)]:
        denoised = ModelDenoiser(lambda x_, t_: output, schedule, kind)(x, t)
        torch.testing.assert_close(denoised, x0, atol=2e-3 if kind == "eps" else 1e-5, rtol=1e-4)


def test_cpu_chunks_give_the_whole_batch_result_and_gradient():
    """cpu_chunk_pixels splits the batch (and per-sample t and conditioning) into network calls of a few samples: the
    output and the gradient equal the single call's; a scalar t and non-batch conditioning pass through unchanged."""
    schedule = DiscreteSchedule("linear")
    net = torch.nn.Conv2d(2, 1, 3, padding=1)
    calls = []

    def model(x, t, cond=None, scale=1.0):
        calls.append(x.shape[0])
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return scale * net(torch.cat([x, cond], 1)) + t.view(-1, 1, 1, 1) / 1000

    x = torch.randn(7, 1, 6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cond = torch.randn(7, 1, 6, 5, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(10, 900, 7)
    whole = ModelDenoiser(model, schedule, "v")(x, t, cond=cond, scale=2.0)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), x)
    calls.clear()
    chunked = ModelDenoiser(model, schedule, "v", cpu_chunk_pixels=2 * 30)(x, t, cond=cond, scale=2.0)
    assert calls == [2, 2, 2, 1]
    (grad_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(grad_chunked, grad_whole)
    scalar_t = ModelDenoiser(model, schedule, "v", cpu_chunk_pixels=1)(x, torch.tensor(500.0), cond=cond)
    torch.testing.assert_close(scalar_t, ModelDenoiser(model, schedule, "v")(x, torch.tensor(500.0), cond=cond))


def test_eps_prediction_refused_with_zero_terminal_snr():
    with pytest.raises(MeddiffError, match="zero terminal SNR"):
        ModelDenoiser(lambda x, t: x, DiscreteSchedule("linear", zero_terminal_snr=True), "eps")
    ModelDenoiser(lambda x, t: x, DiscreteSchedule("linear", zero_terminal_snr=True), "v")


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_loss_is_zero_for_the_oracle_and_positive_otherwise(kind):
    """A model that returns the exact target (it sees x_t and can be told the noise) has zero loss."""
    schedule = DiscreteSchedule("linear", 100)
    x0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    g_seed = 11

    # replay the loss's draws to build the oracle
    g = torch.Generator().manual_seed(g_seed)
    t = schedule.sample_training_times(8, g)
    noise = torch.randn(x0.shape, generator=g)
    alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))

    def oracle(x_t, t_):
        return training_target(kind, x0, noise, alpha, sigma)

    assert float(diffusion_loss(oracle, x0, schedule, kind, generator=torch.Generator().manual_seed(g_seed))) < 1e-10
    zero = float(diffusion_loss(lambda x_t, t_: torch.zeros_like(x_t), x0, schedule, kind,
                                generator=torch.Generator().manual_seed(g_seed)))
    assert zero > 0.1


def test_min_snr_weights_follow_hang_et_al():
    snr = torch.tensor([0.1, 1.0, 5.0, 100.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 101]))


def test_min_snr_changes_the_loss_and_same_seed_repeats():
    schedule = VESDE()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: 0.1 * x  # noqa: E731
    plain = diffusion_loss(model, x0, schedule, "eps", generator=torch.Generator().manual_seed(5))
    again = diffusion_loss(model, x0, schedule, "eps", generator=torch.Generator().manual_seed(5))
    weighted = diffusion_loss(model, x0, schedule, "eps", min_snr_gamma=5.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain, again) and not torch.allclose(plain, weighted)
    with pytest.raises(MeddiffError, match="min_snr_gamma"):
        diffusion_loss(model, x0, schedule, "eps", min_snr_gamma=0)
    with pytest.raises(MeddiffError, match="prediction='noise'"):
        diffusion_loss(model, x0, schedule, "noise")
