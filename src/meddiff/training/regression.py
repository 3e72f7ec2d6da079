"""Supervised image-to-image regression: a MONAI UNet trained with an L1 or L2 loss on (input, target) pairs.

The "regression" baseline that conditional diffusion models (SR3, Saharia et al. 2021; Palette, Saharia et al. 2022)
compare to: the same pairs, one deterministic prediction (the conditional mean under L2, the median under L1).

- ``build_regression_unet``: a 2D ``monai.networks.nets.UNet`` (residual units, strided convolutions; the spatial size
  must be divisible by the product of the strides); ``residual=True`` predicts target - input (channels must match), the
  usual trick for super-resolution where the input is already the upsampled image (Kim et al. 2016, VDSR).
- ``train_regression``: Adam at a constant rate, or (``lr_schedule`` "cosine" / "linear") a linear warm-up over
  ``warmup_steps`` then a decay to ``min_lr_ratio`` x lr at ``max_steps`` (``trainer.lr_factor``, the diffusion
  Trainer's schedule; the rate is a function of the step, so resume stays exact); batch i of step s holds the items of a
  random permutation of the dataset drawn from (seed, epoch) alone, so the data order is a function of the step and a
  resumed run (``resume``: model, optimiser, step, elapsed seconds and the torch RNG from ``run_dir/checkpoint.pt``)
  continues exactly as an uninterrupted one. ``max_seconds`` counts the training time of all sittings together.
- ``save_regression`` / ``load_regression``: weights (safetensors) + ``regression.json`` (the build arguments and any
  metadata), so a model is rebuilt from its folder alone.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from meddiff.errors import MeddiffError, check_choice
from meddiff.files import atomic_path, write_text
from meddiff.training.trainer import lr_factor

LOSSES = ("l1", "l2")
LR_SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "regression.json"
LOG_FIELDS = ("step", "loss", "seconds", "lr")


class RegressionUNet(nn.Module):
    """MONAI UNet (B, Cin, H, W) -> (B, Cout, H, W), plus the input when ``residual`` (Cin == Cout).
    ``build_args`` holds the arguments of ``build_regression_unet`` (saved next to the weights)."""

    def __init__(self, net: nn.Module, build_args: dict):
        super().__init__()
        self.net = net
        self.build_args = dict(build_args)
        self.residual = bool(build_args.get("residual", False))
        self.multiple = math.prod(build_args["strides"])

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise MeddiffError(f"regression UNet input of size {h}x{w}: pad it to a multiple of {self.multiple} "
                               "(the product of the strides)")
        out = self.net(x)
        return out + x if self.residual else out


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MeddiffError(f"{name}={value!r} must be a positive integer")
    return value


def build_regression_unet(in_channels: int, out_channels: int, channels=(32, 64, 128, 256), strides=(2, 2, 2),
                          num_res_units: int = 2, *, residual: bool = False) -> RegressionUNet:
    """A 2D MONAI ``UNet`` with ``len(channels)`` levels (``strides`` has one entry fewer), instance norm, PReLU;
    ``residual``: output = input + UNet(input) (needs ``in_channels == out_channels``)."""
    from monai.networks.nets import UNet

    _positive_int("in_channels", in_channels)
    _positive_int("out_channels", out_channels)
    channels, strides = [int(c) for c in channels], [int(s) for s in strides]
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise MeddiffError(f"channels={channels} and strides={strides}: give at least 2 channel counts and one "
                           "stride fewer than channels")
    if any(c < 1 for c in channels) or any(s < 1 for s in strides):
        raise MeddiffError(f"channels={channels} and strides={strides} must be positive")
    if isinstance(num_res_units, bool) or not isinstance(num_res_units, int) or num_res_units < 0:
        raise MeddiffError(f"num_res_units={num_res_units!r} must be an integer >= 0")
    if residual and in_channels != out_channels:
        raise MeddiffError(f"residual=True needs in_channels == out_channels (got {in_channels} and {out_channels})")
    args = {"in_channels": in_channels, "out_channels": out_channels, "channels": channels, "strides": strides,
            "num_res_units": num_res_units, "residual": bool(residual)}
    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=channels,
               strides=strides, num_res_units=num_res_units)
    return RegressionUNet(net, args)


def _loss_fn(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    check_choice("loss", loss, LOSSES)
    return F.l1_loss if loss == "l1" else F.mse_loss


def batch_indices(step: int, size: int, batch_size: int, seed: int) -> list[int]:
    """Dataset indices of training step ``step`` (0-based): consecutive slices of per-epoch permutations, each drawn
    from a generator seeded with (seed, epoch), so the order depends on the step alone (exact resume)."""
    out, position = [], step * batch_size
    perms: dict[int, Tensor] = {}
    for p in range(position, position + batch_size):
        epoch, i = divmod(p, size)
        if epoch not in perms:
            perms[epoch] = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][i]))
    return out


def _collate(dataset, indices: list[int], input_key: str, target_key: str) -> tuple[Tensor, Tensor]:
    items = [dataset[i] for i in indices]
    for key in (input_key, target_key):
        if key not in items[0]:
            raise MeddiffError(f"dataset items have keys {sorted(items[0])}; the regression needs {key!r} "
                               "(set input_key/target_key)")
    return (torch.stack([torch.as_tensor(it[input_key]) for it in items]).float(),
            torch.stack([torch.as_tensor(it[target_key]) for it in items]).float())


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def train_regression(model: nn.Module, dataset, *, loss: str = "l1", batch_size: int = 16, lr: float = 1e-3,
                     max_steps: int | None = None, max_seconds: float | None = None, seed: int = 0, run_dir=None,
                     checkpoint_every: int = 100, resume: bool = False, input_key: str = "cond_image",
                     target_key: str = "image", log: Callable[[str], None] | None = None,
                     lr_schedule: str = "constant", warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> dict:
    """Train ``model`` to map item[input_key] (Cin, H, W) to item[target_key] (Cout, H, W) of ``dataset``.

    Stops after ``max_steps`` steps in all or ``max_seconds`` seconds of training in all (every sitting counted),
    whichever comes first (at least one is needed); a decaying ``lr_schedule`` runs over ``max_steps`` (needed). With
    ``run_dir``: ``checkpoint.pt`` (model, optimiser, step, seconds, RNG; written atomically every ``checkpoint_every``
    steps and at the end) and ``log.csv`` (step, loss, seconds, lr per step); ``resume=True`` continues from the
    checkpoint exactly. Returns {"steps", "seconds", "final_loss"} (final_loss: the mean loss of the last up to 20
    steps; nan when no step ran)."""
    loss_fn = _loss_fn(loss)
    _positive_int("batch_size", batch_size)
    _positive_int("checkpoint_every", checkpoint_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise MeddiffError(f"lr={lr!r} must be a positive number")
    if max_steps is None and max_seconds is None:
        raise MeddiffError("give max_steps or max_seconds (or both): the training needs a stopping rule")
    if max_steps is not None:
        _positive_int("max_steps", max_steps)
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise MeddiffError(f"max_seconds={max_seconds!r} must be a positive number")
    check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    if lr_schedule != "constant" and max_steps is None:
        raise MeddiffError(f"lr_schedule={lr_schedule!r} decays over max_steps: give max_steps (max_seconds may "
                           "still stop it earlier)")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise MeddiffError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, (int, float)) or not 0 <= min_lr_ratio <= 1:
        raise MeddiffError(f"min_lr_ratio={min_lr_ratio!r} must be a number in [0, 1]")
    if resume and run_dir is None:
        raise MeddiffError("resume=True needs run_dir (the folder with checkpoint.pt)")
    try:
        size = len(dataset)
    except TypeError as error:
        raise MeddiffError("dataset must have a length (a map-style dataset of dicts)") from error
    if size == 0:
        raise MeddiffError("dataset is empty")
    say = log or (lambda _msg: None)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    step, seconds = 0, 0.0
    run_dir = None if run_dir is None else Path(run_dir)
    rows: list[dict] = []
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = run_dir / CHECKPOINT_FILE
        if resume:
            if not checkpoint.is_file():
                raise MeddiffError(f"{checkpoint}: no checkpoint to resume from; drop resume or fix run_dir")
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            step, seconds = int(state["step"]), float(state["seconds"])
            torch.set_rng_state(state["rng"])
            rows = _read_log(run_dir / "log.csv", step)
            say(f"resumed at step {step} ({seconds:.0f} s trained)")
        elif checkpoint.is_file():
            raise MeddiffError(f"{checkpoint} exists; pass resume=True to continue or use a new run_dir")

    def save() -> None:
        if run_dir is None:
            return
        state = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                 "optimiser": optimiser.state_dict(), "step": step, "seconds": seconds,
                 "rng": torch.get_rng_state(), "seed": seed, "batch_size": batch_size, "loss": loss}
        with atomic_path(run_dir / CHECKPOINT_FILE) as tmp:
            torch.save(state, tmp)
        _write_log(run_dir / "log.csv", rows)

    model.train()
    recent: list[float] = []
    while (max_steps is None or step < max_steps) and (max_seconds is None or seconds < max_seconds):
        start = time.perf_counter()
        rate = lr * lr_factor(step, warmup_steps, max_steps or 1, lr_schedule, min_lr_ratio)
        for group in optimiser.param_groups:
            group["lr"] = rate
        x, y = _collate(dataset, batch_indices(step, size, batch_size, seed), input_key, target_key)
        value = loss_fn(model(x), y)
        scalar = float(value.detach())
        if not math.isfinite(scalar):
            raise MeddiffError(f"regression training diverged at step {step + 1} (loss {scalar}); lower lr")
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        step += 1
        seconds += time.perf_counter() - start
        recent = (recent + [scalar])[-20:]
        rows.append({"step": step, "loss": f"{scalar:.6g}", "seconds": f"{seconds:.2f}", "lr": f"{rate:.6g}"})
        if step % checkpoint_every == 0:
            save()
            say(f"step {step}: loss {sum(recent) / len(recent):.5f}, {seconds:.0f} s")
    save()
    model.eval()
    return {"steps": step, "seconds": seconds, "final_loss": sum(recent) / len(recent) if recent else float("nan")}


def save_regression(model: RegressionUNet, directory, *, meta: dict | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write ``directory/model.safetensors`` (weights cast to ``dtype``, e.g. float16 to ship) and
    ``directory/regression.json`` ({"build": build arguments, "meta": meta}) atomically; returns the folder."""
    if not isinstance(model, RegressionUNet):
        raise MeddiffError("save_regression needs a model from build_regression_unet")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(weights, tmp)
    write_text(directory / CONFIG_FILE, json.dumps({"build": model.build_args, "meta": meta or {}}, indent=1,
                                                   default=str))
    return directory


def read_regression_config(directory) -> dict:
    """{"build": ..., "meta": ...} of a saved regression model; ``MeddiffError`` naming the folder when missing."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise MeddiffError(f"{directory}: not a regression model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                           "write one with save_regression)")
    return json.loads((directory / CONFIG_FILE).read_text())


def load_regression(directory) -> RegressionUNet:
    """The model saved by ``save_regression`` in ``directory`` (float32, eval mode)."""
    config = read_regression_config(directory)
    model = build_regression_unet(**config["build"])
    weights = load_file(Path(directory) / WEIGHTS_FILE)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    return model.eval()
