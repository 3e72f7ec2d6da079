"""Subject-level train/val/test splits (never by slice), deterministic from a seed and saved as JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from meddiff.errors import MeddiffError, check_choice

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = SPLITS + ("all",)
# File stems like "IXI012-HH-1211_T1_slice042" or "case7_z10" keep the part before the slice suffix.
DEFAULT_SUBJECT_PATTERN = r"^(.+?)(?:[_\-](?:slice|sl|z|s)\d+)?$"


def subject_of(name: str, pattern: str | None = None) -> str:
    """Subject id of a file stem: group 1 (or the whole match) of ``pattern``; the stem when it does not match."""
    rx = re.compile(pattern or DEFAULT_SUBJECT_PATTERN)
    m = rx.search(name)
    if not m:
        return name
    return m.group(1) if m.groups() else m.group(0)


def split_subjects(subjects: Sequence[str], *, val_fraction: float = 0.1, test_fraction: float = 0.0,
                   seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the unique subjects with ``seed`` and cut them into train/val/test (at least one val subject
    when val_fraction > 0 and there are two or more subjects)."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise MeddiffError(f"{name}={f} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise MeddiffError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training subjects")
    unique = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n = len(shuffled)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test:n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val:]),
    }


def load_or_make_split(subjects: Sequence[str], split_file: str | Path | None, **kwargs) -> dict[str, list[str]]:
    """The saved split in ``split_file`` if it exists (checked against ``subjects``), else a new one,
    written there atomically. Without a file the split is recomputed (deterministic from the seed)."""
    unique = set(subjects)
    if split_file is not None and Path(split_file).exists():
        path = Path(split_file)
        try:
            saved = json.loads(path.read_text())
            parts = {s: list(saved[s]) for s in SPLITS}
        except Exception as error:
            raise MeddiffError(f"{path}: not a split file (JSON with train/val/test subject lists): {error}") from error
        listed = set().union(*map(set, parts.values()))
        missing = sorted(unique - listed)
        if missing:
            raise MeddiffError(f"{path}: split file does not list subject(s) {missing[:5]}; delete it to make a new split")
        return parts
    parts = split_subjects(sorted(unique), **kwargs)
    if split_file is not None:
        from meddiff.data.io import atomic_path

        with atomic_path(split_file) as tmp:
            tmp.write_text(json.dumps(parts, indent=1) + "\n")
    return parts


def select(split: str, parts: dict[str, list[str]]) -> set[str] | None:
    """Subjects in ``split`` (None means all)."""
    check_choice("split", split, SPLIT_CHOICES)
    return None if split == "all" else set(parts[split])
