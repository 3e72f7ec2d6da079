"""meddiff.training.regression: the supervised UNet baseline (loss goes down, exact resume, save/load round trip,
bad arguments)."""

from __future__ import annotations

import csv

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.training.regression import (batch_indices, build_regression_unet, load_regression, save_regression,
                                         train_regression)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"channels": (4, 8), "strides": (2,), "num_res_units": 1}


class Pairs(torch.utils.data.Dataset):
    """input = a smooth random field, target = 2 * input - 0.5 (a map a UNet learns in a few steps)."""

    def __init__(self, n: int = 12, size: int = 8):
        g = torch.Generator().manual_seed(1)
        self.x = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=g), 3, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"cond_image": self.x[i], "image": 2 * self.x[i] - 0.5}


def test_loss_goes_down_and_log_is_written(tmp_path):
    torch.manual_seed(0)
    model = build_regression_unet(1, 1, **TINY)
    data = Pairs()
    x = torch.stack([data[i]["cond_image"] for i in range(len(data))])
    y = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        before = float((model.eval()(x) - y).abs().mean())
    result = train_regression(model, data, batch_size=4, lr=3e-3, max_steps=60, run_dir=tmp_path,
                              checkpoint_every=25)
    with torch.no_grad():
        after = float((model.eval()(x) - y).abs().mean())
    assert result["steps"] == 60 and result["seconds"] > 0
    assert after < 0.5 * before
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    data = Pairs()

    def fresh():
        torch.manual_seed(3)
        return build_regression_unet(1, 1, **TINY)

    whole = fresh()
    train_regression(whole, data, batch_size=5, max_steps=8, seed=7, run_dir=tmp_path / "a")
    part = fresh()
    first = train_regression(part, data, batch_size=5, max_steps=3, seed=7, run_dir=tmp_path / "b")
    assert first["steps"] == 3
    again = fresh()  # a new process: new model object, state from the checkpoint
    result = train_regression(again, data, batch_size=5, max_steps=8, seed=7, run_dir=tmp_path / "b",
                              resume=True)
    assert result["steps"] == 8
    for (name, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))]
    assert steps == list(range(1, 9))


def test_batch_order_is_a_permutation_per_epoch():
    order = [i for step in range(4) for i in batch_indices(step, 6, 3, seed=0)]
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:]) == list(range(6))
    assert batch_indices(5, 6, 3, seed=0) == batch_indices(5, 6, 3, seed=0)


def test_residual_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_regression_unet(1, 1, **TINY, residual=True).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(x) + x)
        save_regression(model, tmp_path / "m", meta={"note": "test"})
        loaded = load_regression(tmp_path / "m")
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.build_args == model.build_args


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "huber"}, "loss"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": -1.0}, "lr"),
    ({"max_steps": None}, "max_steps or max_seconds"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"resume": True}, "run_dir"),
    ({"input_key": "lowres"}, "lowres"),
])
def test_bad_training_arguments(kwargs, match):
    model = build_regression_unet(1, 1, **TINY)
    args = {"max_steps": 1, **kwargs}
    with pytest.raises(MeddiffError, match=match):
        train_regression(model, Pairs(), **args)


def test_bad_build_and_io_arguments(tmp_path):
    with pytest.raises(MeddiffError, match="residual"):
        build_regression_unet(2, 1, **TINY, residual=True)
    with pytest.raises(MeddiffError, match="strides"):
        build_regression_unet(1, 1, channels=(4, 8), strides=(2, 2))
    with pytest.raises(MeddiffError, match="multiple of 2"):
        build_regression_unet(1, 1, **TINY)(torch.zeros(1, 1, 7, 8))
    with pytest.raises(MeddiffError, match="not a regression model"):
        load_regression(tmp_path)
    with pytest.raises(MeddiffError, match="resume"):
        train_regression(build_regression_unet(1, 1, **TINY), Pairs(), max_steps=1, run_dir=tmp_path / "r",
                         resume=True)
    train_regression(build_regression_unet(1, 1, **TINY), Pairs(), max_steps=1, run_dir=tmp_path / "s")
    with pytest.raises(MeddiffError, match="exists"):
        train_regression(build_regression_unet(1, 1, **TINY), Pairs(), max_steps=1, run_dir=tmp_path / "s")
