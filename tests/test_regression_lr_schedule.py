"""The decaying learning rate of ``meddiff.training.regression.train_regression`` (``lr_schedule``): the logged rate
against a hand computation of warm-up + cosine, exact resume mid-schedule, the constant default, bad options."""

import csv
import math

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.training.regression import build_regression_unet, train_regression


def pairs(n=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return [{"cond_image": x[i], "image": 2 * x[i]} for i in range(n)]


def logged_lr(run_dir):
    with open(run_dir / "log.csv", newline="") as fh:
        return [float(row["lr"]) for row in csv.DictReader(fh)]


def tiny():
    torch.manual_seed(0)
    return build_regression_unet(1, 1, channels=[4, 4], strides=[2], num_res_units=0)


def test_cosine_rate_matches_hand_computation_and_resumes_exactly(tmp_path):
    kwargs = dict(batch_size=4, lr=1e-2, max_steps=6, lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    whole = tiny()
    train_regression(whole, pairs(), run_dir=tmp_path / "a", **kwargs)
    # steps 0, 1: linear warm-up; steps 2..5: cosine from 1 to 0.1 over max_steps - warmup = 4 steps
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert logged_lr(tmp_path / "a") == pytest.approx([1e-2 * f for f in expected], rel=1e-5)
    # the schedule runs over max_steps: a shorter run decays sooner
    train_regression(tiny(), pairs(), run_dir=tmp_path / "b", **{**kwargs, "max_steps": 4})
    assert logged_lr(tmp_path / "b") == pytest.approx([1e-2 * f for f in [0.5, 1.0, 1.0, 0.55]], rel=1e-5)


def test_resume_mid_schedule_equals_an_uninterrupted_run(tmp_path):
    kwargs = dict(batch_size=4, lr=1e-2, lr_schedule="cosine", warmup_steps=1, min_lr_ratio=0.0)
    whole = tiny()
    train_regression(whole, pairs(), max_steps=6, run_dir=tmp_path / "a", **kwargs)
    # a first sitting stopped by its time limit after one step of the 6-step schedule, then resumed
    first = tiny()
    train_regression(first, pairs(), max_steps=6, max_seconds=1e-9, run_dir=tmp_path / "b", **kwargs)
    resumed = tiny()
    train_regression(resumed, pairs(), max_steps=6, run_dir=tmp_path / "b", resume=True, **kwargs)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert logged_lr(tmp_path / "a") == logged_lr(tmp_path / "b")


def test_constant_default_and_bad_options(tmp_path):
    train_regression(tiny(), pairs(), batch_size=4, lr=3e-3, max_steps=3, run_dir=tmp_path)
    assert logged_lr(tmp_path) == pytest.approx([3e-3] * 3)
    for options, match in [({"lr_schedule": "cosine", "max_seconds": 5.0}, "decays over max_steps"),
                           ({"lr_schedule": "step", "max_steps": 2}, "lr_schedule"),
                           ({"lr_schedule": "cosine", "max_steps": 2, "min_lr_ratio": 2.0}, "min_lr_ratio"),
                           ({"lr_schedule": "cosine", "max_steps": 2, "warmup_steps": -1}, "warmup_steps")]:
        with pytest.raises(MeddiffError, match=match):
            train_regression(tiny(), pairs(), **options)
