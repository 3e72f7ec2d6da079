"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from meddiff.diffusion import ModelDenoiser, make_schedule
from meddiff.nets import build_unet
from meddiff.tasks.prior import Prior


def tiny_prior(seed: int = 0) -> Prior:
    """An untrained two-level UNet as an eps-prior on a 1000-step linear discrete schedule (seeded weights, the
    caller's RNG untouched): fast stand-in for a trained one-channel prior in the solver tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_unet({"channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
                          "norm_num_groups": 4})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = make_schedule({"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000})
    return Prior(ModelDenoiser(net, schedule, "eps"), schedule, 2, {"channels": 1})
