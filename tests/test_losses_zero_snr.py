"""min-SNR-gamma weighting where SNR = 0 (zero-terminal-SNR schedules at t = T-1, rectified flow at t = 1).

min(SNR, gamma) / SNR was 0/0 = NaN there for eps and score, which stopped training with a "lower the learning
rate" message (issue 20, item 4). The weights now take their limits as SNR -> 0.
"""

import pytest
import torch
from torch.utils.data import Dataset

from meddiff.diffusion import DiscreteSchedule, FlowSchedule, diffusion_loss, min_snr_weight
from meddiff.diffusion.parametrization import PREDICTIONS
from meddiff.errors import MeddiffError
from meddiff.training import Trainer, resolve_config

GAMMA = 5.0
LIMITS = {"eps": 1.0, "score": 1.0, "v": 0.0, "x0": 0.0}  # of min(SNR, g)/SNR, min(SNR, g)/(SNR + 1), min(SNR, g)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weight_at_zero_snr_is_the_limit(prediction):
    snr = torch.tensor([0.0, 1e-12, 1e-6], dtype=torch.float64)
    weight = min_snr_weight(snr, GAMMA, prediction)
    assert torch.isfinite(weight).all()
    assert float(weight[0]) == LIMITS[prediction]
    torch.testing.assert_close(weight[1:], torch.full((2,), LIMITS[prediction], dtype=torch.float64), atol=2e-6, rtol=0)


ZERO_SNR = {"ddpm-zero-terminal-snr": (DiscreteSchedule("linear", 1000, zero_terminal_snr=True), 999.0),
            "flow": (FlowSchedule(), 1.0)}


@pytest.mark.parametrize("schedule_name", sorted(ZERO_SNR))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_loss_at_zero_snr_is_finite_and_the_limit(prediction, schedule_name):
    """At t where alpha = 0 the weighted loss is the limit weight times the unweighted loss, for every parametrisation."""
    schedule, t_end = ZERO_SNR[schedule_name]
    assert float(schedule.alpha_sigma(t_end)[0]) == 0.0
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.full((4,), t_end)
    model = lambda x, t_: 0.3 * x  # noqa: E731  (a non-oracle model: the unweighted loss is > 0)
    plain = diffusion_loss(model, x0, schedule, prediction, t=t, noise=noise)
    weighted = diffusion_loss(model, x0, schedule, prediction, min_snr_gamma=GAMMA, t=t, noise=noise)
    assert torch.isfinite(plain) and float(plain) > 0
    assert torch.isfinite(weighted)
    torch.testing.assert_close(weighted, LIMITS[prediction] * plain)


class Images(Dataset):
    def __init__(self, n: int = 8) -> None:
        self.images = torch.rand((n, 1, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def zero_snr_config(prediction: str) -> dict:
    return {
        "model": {"channels": [8, 16], "attention_levels": [False, False]},
        "diffusion": {"schedule": {"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 10,
                                   "zero_terminal_snr": True},
                      "prediction": prediction, "min_snr_gamma": GAMMA},
        "schedule": {"warmup_steps": 1},
        "run": {"name": "zero_snr", "steps": 3, "batch_size": 16, "log_every": 1, "checkpoint_every": 3,
                "progress": False},
    }


def test_training_with_min_snr_on_a_zero_terminal_snr_schedule_runs(tmp_path):
    """T = 10 and 16 draws per step: t = T-1 (SNR 0) is drawn and the min-SNR-weighted v loss stays finite."""
    losses = Trainer(zero_snr_config("v"), Images(), run_dir=tmp_path / "run").fit()
    assert [step for step, _ in losses] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in losses)


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_eps_prediction_on_a_zero_terminal_snr_schedule_is_refused_at_config_time(prediction):
    """Before: min-SNR made its loss NaN ("the loss became nan ... Lower optimiser.lr"); with the weight fixed it
    would train but never sample (x0 = (x - sigma eps) / alpha at alpha = 0), so the config refuses it, saying why."""
    with pytest.raises(MeddiffError, match=f"prediction='{prediction}' cannot be sampled.*use prediction 'v' or 'x0'"):
        resolve_config(zero_snr_config(prediction))
