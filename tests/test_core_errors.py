"""Bad input to the diffusion core: each error names the argument and the allowed values."""

import pytest
import torch

from meddiff.diffusion import DiscreteSchedule, FlowSchedule, TimeGrid, VPSDE, add_noise, get_sampler, make_grid, network_evaluations, sample_ddim, sample_heun, sample_pc
from meddiff.errors import MeddiffError

SCHEDULE = DiscreteSchedule("linear", 1000)


def identity(x, t):
    return x


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_must_be_positive_integers(steps):
    with pytest.raises(MeddiffError, match="steps="):
        make_grid(SCHEDULE, steps)


def test_steps_beyond_training_steps():
    with pytest.raises(MeddiffError, match="steps=1001 exceeds the 1000 training steps"):
        make_grid(SCHEDULE, 1001)
    assert make_grid(SCHEDULE, 1000).steps == 1000


def test_unknown_names_list_the_allowed_values():
    with pytest.raises(MeddiffError, match="sampler='euler_a'.*'ddpm'.*'dpmpp_2m'"):
        get_sampler("euler_a")
    with pytest.raises(MeddiffError, match="spacing='uniform'.*'trailing'"):
        make_grid(SCHEDULE, 10, "uniform")
    with pytest.raises(MeddiffError, match="spacing='leading'.*'logsnr'"):
        make_grid(VPSDE(), 10, "leading")
    with pytest.raises(MeddiffError, match="variance='learned'"):
        get_sampler("ddpm")(identity, torch.zeros(2, 3), make_grid(SCHEDULE, 5), variance="learned")
    with pytest.raises(MeddiffError, match="predictor='ode'"):
        sample_pc(identity, torch.zeros(2, 3), make_grid(SCHEDULE, 5), predictor="ode")
    with pytest.raises(MeddiffError, match="sampler='x'"):
        network_evaluations("x", 3)


def test_bad_shapes_and_grids():
    with pytest.raises(MeddiffError, match=r"x must have shape \(B, ...\)"):
        sample_ddim(identity, torch.zeros(5), make_grid(SCHEDULE, 5))
    with pytest.raises(MeddiffError, match="grid must be a TimeGrid"):
        sample_ddim(identity, torch.zeros(2, 5), [999, 500, 0])
    with pytest.raises(MeddiffError, match="strictly decreasing"):
        TimeGrid.from_times(SCHEDULE, [10, 500, 999])
    with pytest.raises(MeddiffError, match=r"lie in \[0.0, 999.0\]"):
        TimeGrid.from_times(SCHEDULE, [1500, 10])
    with pytest.raises(MeddiffError, match="noise shape"):
        add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), SCHEDULE)


def test_bad_sampler_parameters():
    grid = make_grid(SCHEDULE, 5)
    with pytest.raises(MeddiffError, match="eta=-0.5"):
        sample_ddim(identity, torch.zeros(2, 3), grid, eta=-0.5)
    with pytest.raises(MeddiffError, match="corrector_steps"):
        sample_pc(identity, torch.zeros(2, 3), grid, corrector_steps=-1)
    with pytest.raises(MeddiffError, match="snr=0"):
        sample_pc(identity, torch.zeros(2, 3), grid, snr=0)
    flow_grid = make_grid(FlowSchedule(), 5, "uniform")
    with pytest.raises(MeddiffError, match="heun.*alpha > 0"):
        sample_heun(identity, torch.zeros(2, 3), flow_grid)
    with pytest.raises(MeddiffError, match="euler_maruyama.*reverse_diffusion"):
        sample_pc(identity, torch.zeros(2, 3), flow_grid, predictor="euler_maruyama")
    with pytest.raises(MeddiffError, match="finite SNR at t_max"):
        make_grid(FlowSchedule(), 5, "logsnr")
