"""Whole 3D heads with their merged parcellations, and cached latents, for latent diffusion (issue 27).

A head is the IXI DLMUSE T1 in RAS (90 x 120 x 120 at 2 mm), scaled by its own ``magnitude_scale`` (the 99.5th
percentile of the voxels above 10 % of the max -> 1, air -> -1, not clipped) and padded symmetrically with air to
``HEAD_GRID`` = 96 x 128 x 128 (a multiple of 4 for the 4x autoencoder and of 8 for the latent UNet: latents
24 x 32 x 32). Labels are merged to the 10 classes of ``meddiff.tasks.segment.labels`` and padded with background.

``meddiff.tasks.synthesis3d.cache.build_head_cache`` reads the subjects once into an .npz (images float16, labels
uint8; it lives with the task because the labels come from ``meddiff.tasks.segment``), which the dataset kinds
``heads`` (whole heads or random patches, for the autoencoder) and ``latents`` (scaled latents + the one-hot label
map pooled to the latent grid, for the latent UNet) read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meddiff.data.datasets import COND_KEY, IMAGE_KEY, SUBJECT_KEY, _Base, register_dataset
from meddiff.errors import MeddiffError

HEAD_GRID = (96, 128, 128)
HEAD_NORMALIZE = {"mode": "scale", "upper": 99.5, "clip": False}


def pad_offsets(shape: Sequence[int], grid: Sequence[int] = HEAD_GRID, what: str = "volume") -> tuple[int, ...]:
    """Start of a volume of ``shape`` centred in ``grid`` (floor of half the margin); raises when it does not fit."""
    if len(shape) != len(grid) or any(s > g for s, g in zip(shape, grid)):
        raise MeddiffError(f"{what}: a RAS volume of {tuple(shape)} voxels does not fit the model grid {tuple(grid)} "
                           "(the 2 mm IXI grid is 90 x 120 x 120 in RAS); resample it to 2 mm and crop it to the head")
    return tuple((g - s) // 2 for s, g in zip(shape, grid))


def pad_volume(volume: np.ndarray, grid: Sequence[int] = HEAD_GRID, value: float = -1.0, what: str = "volume"):
    """(X, Y, Z) -> ``grid``, centred, the margin filled with ``value``."""
    start = pad_offsets(volume.shape, grid, what)
    out = np.full(tuple(grid), value, dtype=volume.dtype)
    out[tuple(slice(a, a + s) for a, s in zip(start, volume.shape))] = volume
    return out


def unpad_volume(volume, shape: Sequence[int], grid: Sequence[int] = HEAD_GRID):
    """Inverse of ``pad_volume`` on the last three axes."""
    start = pad_offsets(shape, grid)
    return volume[(...,) + tuple(slice(a, a + s) for a, s in zip(start, shape))]


def normalize_head(image: np.ndarray) -> np.ndarray:
    """Raw T1 (X, Y, Z) -> model range (air -1, bright tissue about 1), float32."""
    from meddiff.data.transforms import normalize

    y, _ = normalize(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), HEAD_NORMALIZE)
    return np.asarray(y, dtype=np.float32)


def one_hot_latent(labels: torch.Tensor, num_classes: int, factor: int) -> torch.Tensor:
    """Merged labels (B, *spatial) int -> class fractions on the latent grid (B, K, *spatial / factor): the one-hot
    map average-pooled by ``factor`` (Med-DDPM's label conditioning, Dorjsembe et al. 2024, moved to latent space)."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise MeddiffError(f"label ids must lie in [0, {num_classes - 1}], got [{int(labels.min())}, "
                           f"{int(labels.max())}]")
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()
    pool = F.avg_pool3d if labels.ndim == 4 else F.avg_pool2d
    return pool(onehot, factor) if factor > 1 else onehot


def _read_cache(path: str | Path, keys: Sequence[str]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{path}: cache not found; build it with scripts/train_brain3d.py cache-heads "
                           "(or cache-latents)")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise MeddiffError(f"{path}: not a head/latent cache (missing {missing})")
        return {k: data[k] for k in data.files}


def _split_indices(subjects: np.ndarray, split_file: str | Path | None, split: str) -> list[int]:
    if split == "all" or split_file is None:
        return list(range(len(subjects)))
    from meddiff.data.splits import load_or_make_split, select

    wanted = select(split, load_or_make_split([str(s) for s in subjects], split_file))
    return [i for i, s in enumerate(subjects) if str(s) in wanted]


class HeadDataset(_Base):
    """Items {"image": (1, *patch) float32, "subject"} from a head cache: whole heads, or random ``patch_size``
    crops (drawn with torch's global RNG, which the trainer saves, so a resumed run repeats them)."""

    def __init__(self, path: str | Path, split: str = "train", split_file: str | Path | None = None,
                 patch_size: Sequence[int] | None = None) -> None:
        data = _read_cache(path, ("images", "subjects"))
        keep = _split_indices(data["subjects"], split_file, split)
        if not keep:
            raise MeddiffError(f"{path}: no subjects of split {split!r} in the cache")
        self.images = data["images"][keep]
        self.subjects = [str(s) for s in data["subjects"][keep]]
        self.patch = None if patch_size is None else tuple(int(p) for p in patch_size)
        if self.patch is not None and (len(self.patch) != self.images.ndim - 1
                                       or any(p > s for p, s in zip(self.patch, self.images.shape[1:]))):
            raise MeddiffError(f"patch_size {self.patch} must have {self.images.ndim - 1} sides no larger than the "
                               f"heads {tuple(self.images.shape[1:])}")
        self.image_shape = (1,) + (self.patch or tuple(self.images.shape[1:]))
        self.normalisation = {"model_range": [-1.0, 1.0], "per_volume": HEAD_NORMALIZE}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        volume = self.images[index]
        if self.patch is not None:
            start = [int(torch.randint(0, s - p + 1, ())) for s, p in zip(volume.shape, self.patch)]
            volume = volume[tuple(slice(a, a + p) for a, p in zip(start, self.patch))]
        return {IMAGE_KEY: torch.from_numpy(np.asarray(volume, dtype=np.float32))[None],
                SUBJECT_KEY: self.subjects[index]}


class LatentDataset(_Base):
    """Items {"image": scaled latent (C, *latent grid), "cond_image": class fractions (K, *latent grid)} from a
    latent cache (``latents`` already multiplied by the scale factor, ``cond`` the pooled one-hot labels)."""

    def __init__(self, path: str | Path, split: str = "train", split_file: str | Path | None = None) -> None:
        data = _read_cache(path, ("latents", "cond", "subjects"))
        keep = _split_indices(data["subjects"], split_file, split)
        if not keep:
            raise MeddiffError(f"{path}: no subjects of split {split!r} in the cache")
        self.latents = torch.from_numpy(data["latents"][keep].astype(np.float32))
        self.cond = torch.from_numpy(data["cond"][keep].astype(np.float32))
        self.subjects = [str(s) for s in data["subjects"][keep]]
        self.image_shape = tuple(self.latents.shape[1:])
        self.normalisation = {"model_range": None, "scale_factor": float(data.get("scale_factor", 1.0))}

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        return {IMAGE_KEY: self.latents[index], COND_KEY: self.cond[index], SUBJECT_KEY: self.subjects[index]}


register_dataset("heads", HeadDataset)
register_dataset("latents", LatentDataset)
