"""Training pairs for missing-slice inpainting (issue 22): known axial slices around slice z -> slice z, and the one
intensity mapping that training and inference (``tasks.restore.slices_learned``) share.

Neighbours (``neighbours``: 2 or 4): 2 = (z-1, z+1); 4 = (z-3, z-1, z+1, z+3), the slices that are known when every
second slice is missing. Where z-3 (z+3) lies outside the volume, the nearest known slice on that side, z-1 (z+1), is
repeated in its place (the same rule as at inference, where the second known slice on a side may not exist);
``edge_replicate`` > 0 also does so at random inside the volume (each side with that probability, drawn from (seed,
index)), so the network sees the repeated channel as often as the 25-slice benchmark blocks give it.

Model space (``neighbour_condition``): the neighbours are divided by s = ``magnitude_scale`` of the two nearest (z-1,
z+1) together (the scale of the axial prior's slices and of the ``slices3d`` refinements, computed from known slices
alone) and mapped to v = 2 x / s - 1 (zero = air = -1); the condition is the (N, H, W) stack from bottom to top,
Palette-style channel concatenation (Saharia et al. 2022). The target is the residual ``residual_scale`` x (v_z -
(v_{z-1} + v_{z+1}) / 2): the detail the linear interpolation misses (SRDiff-style, Li et al. 2022), so a network that
outputs zero reproduces the linear fill; ``residual_fill`` maps a prediction back.

``SliceTriplets``: every slice z of each subject's volume (RAS, in-plane centre crop ``crop_to``) with z-1 and z+1
inside the volume and a foreground fraction >= ``min_foreground``, cut into ``patches_per_slice`` ``patch`` x
``patch`` windows (on the scale s of the whole neighbour slices) at positions drawn from (seed, index) alone (training
is then a function of the step: exact resume); ``patch`` None gives whole slices. Volumes are read once and cached as
float16 under ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from meddiff.data.datasets import COND_KEY, IMAGE_KEY, register_dataset
from meddiff.data.transforms import foreground_fraction, magnitude_scale
from meddiff.errors import MeddiffError


NEIGHBOURS = (2, 4)


def check_neighbours(neighbours) -> int:
    """``neighbours`` as an int in ``NEIGHBOURS``; ``MeddiffError`` otherwise."""
    if isinstance(neighbours, bool) or neighbours not in NEIGHBOURS:
        raise MeddiffError(f"neighbours={neighbours!r}: choose 2 (z-1, z+1) or 4 (z-3, z-1, z+1, z+3)")
    return int(neighbours)


def neighbour_condition(*slices) -> tuple[Tensor, float]:
    """Known slices (H, W) from bottom to top -- (z-1, z+1) or (z-3, z-1, z+1, z+3) -- in any intensity units ->
    (condition (N, H, W) = 2 x / s - 1, s) with s = ``magnitude_scale`` of the middle two (z-1, z+1); a predicted v
    maps back to intensities as x = s (v + 1) / 2."""
    stack = torch.stack([torch.as_tensor(x).float() for x in slices])
    if stack.ndim != 3 or len(slices) not in NEIGHBOURS:
        raise MeddiffError(f"neighbour_condition: expected 2 or 4 2D slices, got {len(slices)} of shape "
                           f"{tuple(stack.shape[1:])}")
    mid = len(slices) // 2
    s = magnitude_scale(stack[mid - 1:mid + 1])
    return (2.0 / s) * stack - 1.0, s


def residual_fill(cond: Tensor, out: Tensor, residual_scale: float) -> Tensor:
    """Condition (..., N, H, W) and predicted residual (..., 1, H, W) -> v of the missing slice (..., 1, H, W): the
    mean of the middle two channels (z-1, z+1) plus out / ``residual_scale``."""
    mid = cond.shape[-3] // 2
    return cond[..., mid - 1:mid + 1, :, :].mean(dim=-3, keepdim=True) + out / residual_scale


def neighbour_slices(depth: int, z: int, neighbours: int = 2, replicate=(False, False)) -> list[int]:
    """Indices of the neighbours of slice z (1 <= z <= depth - 2) from bottom to top: (z-1, z+1) or (z-3, z-1, z+1,
    z+3), z-3 (z+3) replaced by z-1 (z+1) when outside [0, depth) or when ``replicate`` (below, above) says so."""
    if neighbours == 2:
        return [z - 1, z + 1]
    low = z - 1 if z - 3 < 0 or replicate[0] else z - 3
    high = z + 1 if z + 3 >= depth or replicate[1] else z + 3
    return [low, z - 1, z + 1, high]


def triplet_item(volume: np.ndarray | Tensor, z: int, residual_scale: float, neighbours: int = 2,
                 replicate=(False, False)) -> dict[str, Tensor]:
    """{"image": residual target (1, H, W), "cond_image": neighbours (N, H, W)} of slice z of ``volume`` (H, W, D)
    (``neighbour_slices`` chooses them)."""
    vol = torch.as_tensor(volume)
    cond, s = neighbour_condition(*(vol[..., k] for k in neighbour_slices(vol.shape[-1], z, neighbours, replicate)))
    target = (2.0 / s) * vol[..., z].float()[None] - 1.0
    return {IMAGE_KEY: residual_scale * (target - residual_fill(cond, torch.zeros_like(target), 1.0)), COND_KEY: cond}


def _subjects(path: Path, split: str, split_file: str | Path) -> list[str]:
    parts = json.loads(Path(split_file).read_text())
    if split not in parts:
        raise MeddiffError(f"{split_file}: no {split!r} subjects (has {', '.join(parts)})")
    return sorted(parts[split])


def load_volumes(path: str | Path, subjects: Sequence[str], crop_to: Sequence[int], cache_dir=None) -> list[np.ndarray]:
    """T1 volumes (H, W, D) of ``subjects`` from ``path``/t1/<subject>_T1.nii.gz, RAS, centre-cropped in-plane to
    ``crop_to``, divided by their ``magnitude_scale`` (float16; cached as one .npy per subject under ``cache_dir``)."""
    from meddiff.data.volumes import load_subject
    from meddiff.files import write_npy

    out = []
    for subject in subjects:
        cached = None
        if cache_dir is not None:
            key = hashlib.sha1(f"{Path(path).resolve()}:{subject}:{tuple(crop_to)}".encode()).hexdigest()[:12]
            cached = Path(cache_dir) / f"{subject}_{key}.npy"
            if cached.is_file():
                out.append(np.load(cached))
                continue
        file = Path(path) / "t1" / f"{subject}_T1.nii.gz"
        if not file.is_file():
            raise MeddiffError(f"{file}: no such file (the data folder needs t1/<subject>_T1.nii.gz)")
        vol, _, _ = load_subject({"t1": file}, ["t1"], with_seg=False, normalize_cfg="none", canonical=True,
                                 spacing=None)
        h, w = crop_to
        top, left = (vol.shape[1] - h) // 2, (vol.shape[2] - w) // 2
        if top < 0 or left < 0:
            raise MeddiffError(f"{file}: in-plane size {vol.shape[1:3]} is smaller than crop_to {tuple(crop_to)}")
        v = vol[0, top:top + h, left:left + w]
        v = (v / magnitude_scale(v)).astype(np.float16)
        if cached is not None:
            write_npy(cached, v)
        out.append(v)
    return out


class SliceTriplets(Dataset):
    """Missing-slice pairs (module docstring): {"image": residual (1, P, P), "cond_image": neighbours (N, P, P)} with
    N = ``neighbours``."""

    def __init__(self, path, split: str = "train", *, split_file, crop_to: Sequence[int] = (88, 120),
                 patch: int | None = 64, patches_per_slice: int = 1, min_foreground: float = 0.15,
                 residual_scale: float = 4.0, seed: int = 0, cache_dir=None, subjects: Sequence[str] | None = None,
                 volumes: Sequence[np.ndarray] | None = None, neighbours: int = 2,
                 edge_replicate: float = 0.0) -> None:
        if not residual_scale > 0:
            raise MeddiffError(f"residual_scale={residual_scale!r} must be a positive number")
        if isinstance(edge_replicate, bool) or not isinstance(edge_replicate, (int, float)) \
                or not 0 <= edge_replicate <= 1:
            raise MeddiffError(f"edge_replicate={edge_replicate!r} must be a probability in [0, 1]")
        self.neighbours, self.edge_replicate = check_neighbours(neighbours), float(edge_replicate)
        self.residual_scale, self.seed, self.patch = float(residual_scale), int(seed), patch
        self.patches_per_slice = int(patches_per_slice)
        if volumes is None:
            subjects = list(subjects) if subjects is not None else _subjects(Path(path), split, split_file)
            volumes = load_volumes(path, subjects, crop_to, cache_dir)
        self.volumes = [np.asarray(v) for v in volumes]
        h, w = self.volumes[0].shape[:2]
        if patch is not None and (patch > h or patch > w):
            raise MeddiffError(f"patch={patch} is larger than the slices ({h} x {w})")
        self.index = [(i, z) for i, v in enumerate(self.volumes) for z in range(1, v.shape[-1] - 1)
                      if foreground_fraction(v[..., z].astype(np.float32), 0.05) >= min_foreground]
        if not self.index:
            raise MeddiffError(f"no slices with a foreground fraction >= {min_foreground} (lower min_foreground)")
        self.image_shape = tuple(self[0][IMAGE_KEY].shape)

    def __len__(self) -> int:
        return len(self.index) * self.patches_per_slice

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, z = self.index[index // self.patches_per_slice]
        vol = self.volumes[i]
        g = np.random.default_rng([self.seed, index])
        replicate = (False, False)
        if self.neighbours == 4 and self.edge_replicate > 0:
            replicate = tuple(bool(u < self.edge_replicate) for u in g.random(2))
        lo, hi = max(z - 3, 0), min(z + 4, vol.shape[-1])  # only the slices the item reads
        item = triplet_item(torch.from_numpy(vol[..., lo:hi].astype(np.float32)), z - lo, self.residual_scale,
                            self.neighbours, replicate)
        if self.patch is not None:  # the scale s is that of the whole neighbour slices, as at inference
            h, w = vol.shape[:2]
            top, left = int(g.integers(0, h - self.patch + 1)), int(g.integers(0, w - self.patch + 1))
            window = (Ellipsis, slice(top, top + self.patch), slice(left, left + self.patch))
            item = {k: v[window] for k, v in item.items()}
        return item


register_dataset("slice_triplets", SliceTriplets)
