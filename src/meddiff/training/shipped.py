"""Shipped checkpoints: small models trained by ``scripts/train_shipped.py`` and kept in the package.

Each lives in ``src/meddiff/assets/checkpoints/<name>/``: ``ema.safetensors`` (EMA weights, fp16 to halve the
size; loading casts back to the network's dtype), ``meta.json`` (the trainer's meta plus a ``shipped`` card),
``config.yaml``, ``log.csv``, ``environment.json``, ``command.txt``, ``samples.png`` and a ``README.md``.
Every ``--checkpoint`` option accepts such a name as well as a path (see `resolve_checkpoint`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from meddiff.data.assets import ASSETS_DIR
from meddiff.errors import MeddiffError
from meddiff.files import atomic_path
from meddiff.training.checkpoint import training_steps

SHIPPED_DIR = ASSETS_DIR / "checkpoints"
SHIPPED_FILES = ("ema.safetensors", "meta.json")


def shipped_path(name: str) -> Path | None:
    """Directory of the shipped checkpoint ``name``, or None when there is none of that name."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = SHIPPED_DIR / name
    return path if all((path / f).is_file() for f in SHIPPED_FILES) else None


def list_shipped() -> list[dict]:
    """One card per shipped checkpoint: name, task, description, what it was trained on, default_for, image size,
    classes, size in MB."""
    if not SHIPPED_DIR.is_dir():
        return []
    cards = []
    for path in sorted(SHIPPED_DIR.iterdir()):
        if shipped_path(path.name) is None:
            continue
        meta = json.loads((path / "meta.json").read_text())
        card = meta.get("shipped", {})
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
        cards.append({
            "name": path.name,
            "task": meta.get("task"),
            "description": card.get("description", ""),
            "trained_on": card.get("trained_on", ""),
            "default_for": card.get("default_for", []),
            "image_size": meta.get("image_size"),
            "channels": meta.get("channels"),
            "num_classes": meta.get("num_classes"),
            "parameters": card.get("parameters"),
            "steps": training_steps(meta),
            "size_mb": round(size, 2),
            "path": str(path),
        })
        if (path / "labels.json").is_file():  # segmentation checkpoints: class ids, names, DLMUSE ids
            cards[-1]["labels"] = json.loads((path / "labels.json").read_text()).get("classes", [])
    return cards


def default_checkpoint(command: str) -> Path:
    """The shipped checkpoint a command uses when ``--checkpoint`` is left out (its card lists the command)."""
    for card in list_shipped():
        if command in card["default_for"]:
            return Path(card["path"])
    raise MeddiffError(f"no shipped checkpoint is the default for {command!r}; pass --checkpoint PATH "
                       "(see `meddiff checkpoints list`)")


def export_checkpoint(checkpoint: str | Path, name: str, *, command: str, description: str,
                      default_for: list[str] = (), trained_on: str = "", dtype: torch.dtype = torch.float16,
                      extra_files: dict[str, Path] | None = None) -> Path:
    """Copy a trainer checkpoint's EMA weights (cast to ``dtype``) and provenance into ``SHIPPED_DIR/name``.

    The run directory (two levels above the checkpoint) supplies config.yaml, log.csv and environment.json.
    Written to a temporary directory and renamed, so a shipped model is never half-written. ``trained_on``: one line
    naming the data (and split) for `meddiff checkpoints list`.
    """
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    meta = json.loads((checkpoint / "meta.json").read_text())
    weights = load_file(checkpoint / "ema.safetensors")
    parameters = sum(v.numel() for v in weights.values() if v.is_floating_point())
    weights = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    meta["shipped"] = {"name": name, "description": description, "trained_on": trained_on,
                       "default_for": list(default_for),
                       "parameters": parameters, "weights_dtype": str(dtype).replace("torch.", "")}
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    final = SHIPPED_DIR / name
    with atomic_path(final, directory=True) as tmp:
        save_file(weights, tmp / "ema.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        (tmp / "command.txt").write_text(command.rstrip() + "\n")
        for file in ("config.yaml", "log.csv", "environment.json"):
            if (run_dir / file).is_file():
                shutil.copy2(run_dir / file, tmp / file)
        samples = sorted((run_dir / "samples").glob("*.png")) if (run_dir / "samples").is_dir() else []
        if samples:
            shutil.copy2(samples[-1], tmp / "samples.png")
        for target, source in (extra_files or {}).items():
            shutil.copy2(source, tmp / target)
        if (final / "README.md").is_file() and not (tmp / "README.md").exists():  # the hand-written model card stays
            shutil.copy2(final / "README.md", tmp / "README.md")
    return final
