"""What the registration training scripts share (``scripts/train_registration.py``: VoxelMorph-style,
``scripts/train_ddm.py``: DDM): one optimiser step with the EMA update, the mean loss terms of a log.csv row, and the
text files a trained checkpoint folder carries beside its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def optimiser_step(net: nn.Module, opt: torch.optim.Optimizer, averager, loss: torch.Tensor, step: int) -> int:
    """Backpropagate ``loss``, clip the gradient norm to 1, step ``opt`` and update the EMA ``averager``
    (``meddiff.training.ema.EMA``) of ``net``; returns the new step count."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    step += 1
    averager.update(net, step)
    return step


def mean_row(step: int, seconds: float, running: list[tuple], columns: dict[str, int]) -> dict:
    """A log.csv row: the step, the seconds so far (0.1 s) and the mean over the steps since the last row of each loss
    term (``running``: one tuple a step, in the order of ``columns``), rounded to ``columns[name]`` decimals."""
    mean = np.mean(running, axis=0)
    return {"step": step, "seconds": round(seconds, 1),
            **{name: round(float(m), digits) for (name, digits), m in zip(columns.items(), mean)}}


def checkpoint_files(out: str | Path, network: dict, args, rows: list[dict], command: str) -> dict[str, str]:
    """The text files of a checkpoint folder ``out``: config.yaml (the ``network`` settings and the script's
    arguments), log.csv (``rows``), command.txt, and the model card README.md already in ``out`` (kept)."""
    from meddiff.files import csv_text
    from meddiff.training.config import dump_yaml

    files = {"config.yaml": dump_yaml({"network": network, "train": vars(args)}), "log.csv": csv_text(rows),
             "command.txt": command + "\n"}
    readme = Path(out) / "README.md"
    if readme.is_file():
        files["README.md"] = readme.read_text()
    return files
