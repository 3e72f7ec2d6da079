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


def train_tiny_checkpoint(root, *, n: int = 16, size: int = 16, steps: int = 2, prediction: str = "v",
                          name: str = "patches.npz"):
    """Train a two-level UNet for ``steps`` steps on ``n`` random ``size`` x ``size`` uint8 patches (seed 0) written to
    ``root/name``; returns the run directory ``root/run`` (a real meddiff checkpoint for the CLI tests)."""
    from pathlib import Path

    import numpy as np

    from meddiff.training import train

    root = Path(root)
    g = np.random.default_rng(0)
    images = (np.clip(g.normal(0.4, 0.3, (n, size, size)), 0, 1) * 255).astype(np.uint8)
    np.savez(root / name, train_images=images, train_labels=np.zeros((n, 1), np.int64))
    config = {"model": {"channels": [8, 8], "attention_levels": [False, False], "num_classes": None},
              "diffusion": {"prediction": prediction},
              "data": {"kind": "medmnist", "path": str(root / name)},
              "run": {"name": "tiny", "steps": steps, "batch_size": 4, "log_every": 1, "checkpoint_every": steps,
                      "progress": False}}
    train(config, run_dir=root / "run")
    return root / "run"
