"""CT slices in HU for training a CT prior: contiguous slice blocks of one series as train / val / test, each slice
averaged down to ``size`` and scaled to the variable the CT solvers use, v = HU / 1000 (``meddiff.tasks.ct``).

One patient cannot be split by subject, so the split is by contiguous blocks of sorted slices with gaps between them
(default: train 0-59, val 62-74, test 77-98, the blocks of ``benchmarks/ct_reconstruction.py``). HU are clipped to
``hu_range`` (default [-1000, 3071]: air .. the largest stored CT value) before scaling, so v lies in [-1, 3.071].

Augmentation (train only, its own seeded RNG), meant for a few dozen slices of one patient:
- ``flip_prob``: left-right mirror (never up-down: the patient lies on the table the same way in every scan);
- ``shift``: a whole-pixel translation of up to that many pixels in each axis, air (v = -1) entering at the edge;
- ``rotate_degrees`` with ``rotate_prob``: a small in-plane rotation (bilinear, air outside);
- ``scale``: attenuation scaled by a factor in [1 - scale, 1 + scale] in water units (v + 1), so air stays air and
  soft tissue moves by at most ``1000 scale`` HU (a different kVp / calibration, not a contrast stretch).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meddiff.data.datasets import IMAGE_KEY, _Base, register_dataset
from meddiff.errors import MeddiffError, check_choice

CT_BLOCKS = {"train": (0, 60), "val": (62, 75), "test": (77, 99)}  # [start, stop) in sorted slice order
AUGMENT_KEYS = ("flip_prob", "shift", "rotate_degrees", "rotate_prob", "scale")


def read_ct_volume(path: str | Path) -> tuple[np.ndarray, float]:
    """A CT series as HU float32 (D, H, W) sorted inferior to superior and its in-plane pixel size (mm): a DICOM
    folder (``read_dicom_series``) or an .npz with ``hu`` (D, H, W) and ``spacing_zyx_mm``."""
    from meddiff.data.io import read_dicom_series

    path = Path(path)
    if path.is_dir():
        volume, meta = read_dicom_series(path)
        return np.asarray(volume, dtype=np.float32), float(meta.spacing[-1])
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "hu" not in data:
                raise MeddiffError(f"{path}: no 'hu' array; a CT .npz holds hu (D, H, W) and spacing_zyx_mm")
            spacing = float(data["spacing_zyx_mm"][-1]) if "spacing_zyx_mm" in data else 1.0
            return data["hu"].astype(np.float32), spacing
    raise MeddiffError(f"{path}: not a DICOM series folder or a .npz with 'hu'; give the CT series folder")


def ct_slices_scaled(volume_hu: np.ndarray, size: int | None, hu_range: Sequence[float]) -> torch.Tensor:
    """HU (D, H, W) -> v = clip(HU, hu_range) / 1000 (D, size, size), averaged over k x k pixels (k = H / size)
    after clipping (as the benchmark averages 512 -> 256)."""
    hu = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32)).clamp(*hu_range)
    if size is not None and size != hu.shape[-1]:
        if hu.shape[-1] % size or hu.shape[-2] % size:
            raise MeddiffError(f"size={size} must divide the slice size {tuple(hu.shape[-2:])} (k x k averaging)")
        hu = torch.nn.functional.avg_pool2d(hu[:, None], hu.shape[-1] // size)[:, 0]
    return hu / 1000.0


def shift_slice(x: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """(..., H, W) moved by whole pixels (dy down, dx right), ``fill`` entering at the edges."""
    h, w = x.shape[-2:]
    moved = torch.full_like(x, fill)
    moved[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return moved


def augment_slice(v: torch.Tensor, rng: np.random.Generator, *, flip_prob: float = 0.0, shift: int = 0,
                  rotate_degrees: float = 0.0, rotate_prob: float = 0.0, scale: float = 0.0) -> torch.Tensor:
    """One random draw of the augmentations above on v (1, H, W); works in water units x = v + 1 so that the zero
    fill of shifts and rotations is air."""
    x = v + 1.0
    if flip_prob > 0 and rng.random() < flip_prob:
        x = x.flip(-1)
    if rotate_prob > 0 and rotate_degrees > 0 and rng.random() < rotate_prob:
        angle = math.radians(rng.uniform(-rotate_degrees, rotate_degrees))
        c, s = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=x.dtype)
        grid = torch.nn.functional.affine_grid(theta, (1,) + tuple(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros",
                                            align_corners=False)[0]
    if shift > 0:
        dy, dx = (int(d) for d in rng.integers(-shift, shift + 1, size=2))
        x = shift_slice(x, dy, dx)
    if scale > 0:
        x = x * float(rng.uniform(1.0 - scale, 1.0 + scale))
    return x - 1.0


class CTSliceDataset(_Base):
    """Slices of one CT series (DICOM folder or HU .npz) in the block of ``split`` -> {"image": (1, size, size)
    float32 v = HU / 1000}. ``blocks``: {split: [start, stop)} in sorted slice order (default ``CT_BLOCKS``);
    ``augment``: the keys of ``AUGMENT_KEYS`` (train split only)."""

    def __init__(self, path: str | Path, split: str = "train", size: int | None = 256,
                 blocks: dict | None = None, hu_range: Sequence[float] = (-1000.0, 3071.0),
                 augment: dict | None = None, seed: int = 0) -> None:
        blocks = {**CT_BLOCKS, **(blocks or {})}
        check_choice("split", split, tuple(blocks) + ("all",))
        unknown = sorted(set(augment or {}) - set(AUGMENT_KEYS))
        if unknown:
            raise MeddiffError(f"ct_slices augment: unknown key(s) {unknown}; allowed: {list(AUGMENT_KEYS)}")
        if len(hu_range) != 2 or not hu_range[0] < hu_range[1]:
            raise MeddiffError(f"hu_range={list(hu_range)} must be [low, high] HU with low < high")
        volume, self.pixel_mm = read_ct_volume(path)
        if split == "all":
            index = list(range(len(volume)))
        else:
            start, stop = blocks[split]
            if not 0 <= start < stop <= len(volume):
                raise MeddiffError(f"blocks.{split}={[start, stop]} is outside the {len(volume)} slices of {path}")
            index = list(range(start, stop))
        self.slice_index = index
        self.v = ct_slices_scaled(volume[index], size, hu_range)[:, None]  # (N, 1, size, size)
        if size is not None:
            self.pixel_mm *= volume.shape[-1] / size
        self.image_shape = tuple(self.v.shape[1:])
        self.augment = dict(augment or {}) if split == "train" else {}
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.v)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        v = self.v[index]
        if self.augment:
            v = augment_slice(v, self._rng, **self.augment)
        return {IMAGE_KEY: v.float().contiguous()}


register_dataset("ct_slices", CTSliceDataset)
