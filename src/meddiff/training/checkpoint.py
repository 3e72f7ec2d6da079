"""Checkpoints: a directory of model.safetensors, ema.safetensors, state.pt and meta.json, written atomically.

state.pt holds only tensors and plain containers (optimiser, LR scheduler, RNG states, step) so that it
loads with ``torch.load(weights_only=True)``. Any command rebuilds the network from meta.json alone.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from meddiff.errors import MeddiffError
from meddiff.files import atomic_path

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "ema.safetensors", "state.pt", "meta.json")


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(directory: str | Path, step: int, model: nn.Module, ema: nn.Module, state: dict, meta: dict,
                    keep: int | None = None) -> Path:
    """Write ``directory/step_<step>/`` via a temporary directory renamed when complete; keep the last ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    with atomic_path(final, directory=True) as tmp:  # re-saving a step after a resume replaces the old one
        save_file(_tensors(model), tmp / "model.safetensors")
        save_file(_tensors(ema), tmp / "ema.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if keep:
        for stale in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(stale)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary directories are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found) if all((p / f).is_file() for f in FILES)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory, a checkpoints/ directory (latest one) or the name
    of a shipped checkpoint (`meddiff checkpoints list`)."""
    from meddiff.training.shipped import list_shipped, shipped_path

    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.exists() and (shipped := shipped_path(str(path))) is not None:
        return shipped
    for candidate in (path / "checkpoints", path):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    names = ", ".join(card["name"] for card in list_shipped()) or "none"
    raise MeddiffError(f"no checkpoint found at {path}: expected a directory with {', '.join(FILES)}, "
                       f"a run directory with checkpoints/step_*/, or a shipped name ({names})")


def read_meta(path: str | Path) -> dict:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def training_steps(meta: dict) -> int | None:
    """Steps the weights trained in all: a warm-started run's ``total_steps`` (its source's steps plus its own), else
    its ``step``."""
    return meta.get("total_steps", meta.get("step"))


def load_state(path: str | Path) -> dict:
    """Trainer state (optimiser, scheduler, RNG, step), loaded with weights_only=True."""
    return torch.load(resolve_checkpoint(path) / "state.pt", map_location="cpu", weights_only=True)


def load_weights(module: nn.Module, path: str | Path, which: str = "ema") -> nn.Module:
    """Load ``which`` ("model" or "ema") weights of a checkpoint into ``module``."""
    file = resolve_checkpoint(path) / f"{which}.safetensors"
    module.load_state_dict(load_file(file))
    return module


def load_checkpoint(path: str | Path, *, which: str = "ema", device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """(network with the EMA (default) or raw weights, in eval mode, meta dict) from meta.json alone."""
    from meddiff.nets import build_network

    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    if "network" not in meta:
        raise MeddiffError(f"{checkpoint / 'meta.json'} has no 'network' entry; it was not written by meddiff train")
    model = build_network(meta["network"])
    load_weights(model, checkpoint, which)
    return model.to(device).eval(), meta
