"""Cut one data set into simulated sites by subject (never by slice): each site's data spec is the config's
``data:`` mapping with its own ``split_file`` whose ``train`` list holds that site's subjects only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from meddiff.errors import MeddiffError
from meddiff.files import write_text


def dataset_subjects(dataset) -> list[str]:
    """Subject ids of a dataset's items (folder and volume/slice datasets), in item order, repeated per item."""
    if hasattr(dataset, "items") and dataset.items and len(dataset.items[0]) == 3:  # FolderDataset (path, label, subject)
        return [s for _, _, s in dataset.items]
    if hasattr(dataset, "index") and getattr(dataset, "subjects", None):  # SliceDataset (subject, slice)
        return [s for s, _ in dataset.index]
    if getattr(dataset, "subjects", None):
        return list(dataset.subjects)
    raise MeddiffError(f"{type(dataset).__name__} has no subject ids, so it cannot be split into sites by subject; "
                       "give each site its own data with `meddiff federated client --data`")


def assign_subjects(subjects: Sequence[str], sites: int, *, seed: int = 0,
                    weights: Sequence[float] | None = None) -> list[list[str]]:
    """Shuffle the unique subjects with ``seed`` and cut them into ``sites`` groups (sizes proportional to
    ``weights``; equal when None), each with at least one subject."""
    unique = sorted(set(subjects))
    if sites < 1 or len(unique) < sites:
        raise MeddiffError(f"--sites {sites}: the training split has {len(unique)} subject(s); use 1..{len(unique)} "
                           "sites (sites are split by subject)")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    w = np.ones(sites) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != sites or (w <= 0).any():
        raise MeddiffError(f"site weights {list(w)} must be {sites} positive numbers")
    extra = len(unique) - sites  # one subject each, the rest by weight
    counts = 1 + np.floor(w / w.sum() * extra).astype(int)
    for i in np.argsort(-w)[: len(unique) - counts.sum()]:
        counts[i] += 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [sorted(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def write_site_specs(data: dict, out: str | Path, sites: int, *, seed: int = 0,
                     weights: Sequence[float] | None = None, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``out/<site>/split.json`` and ``out/<site>/data.yaml`` for each site; returns {site: data.yaml}.

    The config's own train/val/test split is kept: only its training subjects are shared out, and every site's
    split file lists the held-out subjects under val/test as before (the other sites' subjects go to test)."""
    from meddiff.data import build_dataset

    train = dataset_subjects(build_dataset(data, split="train"))
    everyone = set(dataset_subjects(build_dataset(data, split="all")))
    try:
        val = set(dataset_subjects(build_dataset(data, split="val")))
    except MeddiffError:  # an empty validation split
        val = set()
    groups = assign_subjects(train, sites, seed=seed, weights=weights)
    names = list(names) if names is not None else [f"site{i + 1}" for i in range(sites)]
    specs = {}
    for name, group in zip(names, groups):
        folder = Path(out) / name
        parts = {"train": group, "val": sorted(val), "test": sorted(everyone - set(group) - val)}
        write_text(folder / "split.json", json.dumps(parts, indent=1) + "\n")
        spec = {**data, "split_file": str((folder / "split.json").resolve())}
        specs[name] = write_text(folder / "data.yaml", yaml.safe_dump({"data": spec}, sort_keys=False))
    return specs
