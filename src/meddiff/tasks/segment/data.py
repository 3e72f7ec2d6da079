"""Aligned (T1 slice, merged label slice) pairs of the IXI DLMUSE set, and any T1 volume cut into the prior's slices.

The preprocessing is the shipped brain prior's (``brain_t1_ixi``: its meta.json ``data``): reorient to RAS
(``meddiff.data.volumes.load_subject`` / ``to_canonical``), cut axial slices (axis 2), scale each slice by its own
``magnitude_scale`` (normalize mode "scale": [0, 99.5th percentile of the pixels above 10 % of the max] -> [-1, 1],
not clipped) and pad it with air (-1) to the prior's 96 x 120 (the IXI slice is 90 x 120: 3 columns each side, as
``fit_to_multiple``'s symmetric padding of the training slices). Labels are padded with background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddiff.errors import MeddiffError

DLMUSE_SET = "ixi_t1_2mm_dlmuse"


@dataclass
class SlicePrep:
    """How a volume becomes model slices: slice ``axis`` (after RAS reorientation), per-slice ``normalize`` config,
    padded slice size ``image_size`` (H, W)."""

    axis: int = 2
    normalize: dict = field(default_factory=lambda: {"mode": "scale", "upper": 99.5, "clip": False})
    image_size: tuple[int, int] = (96, 120)

    @classmethod
    def from_prior_meta(cls, meta: dict) -> "SlicePrep":
        data = meta.get("data") or {}
        if not data.get("per_slice", False) or data.get("size") is not None:
            raise MeddiffError("prior: segmentation needs a prior trained on per-slice normalised, padded slices "
                               f"(data.per_slice true, no resize); this one has data {data}")
        return cls(axis=int(data.get("axis", 2)), normalize=dict(data["normalize"]),
                   image_size=tuple(int(s) for s in meta["image_size"]))

    def to_dict(self) -> dict:
        return {"axis": self.axis, "normalize": self.normalize, "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "SlicePrep":
        return cls(axis=int(d["axis"]), normalize=dict(d["normalize"]), image_size=tuple(d["image_size"]))


def pad_offsets(shape: tuple[int, int], prep: SlicePrep, what: str = "image") -> tuple[int, int]:
    """Top/left offsets of an (h, w) slice inside the padded (H, W) one; raises when it does not fit."""
    h, w = shape
    H, W = prep.image_size
    if h > H or w > W:
        raise MeddiffError(f"{what}: axial slices of {h} x {w} voxels (RAS order) do not fit the model, which needs "
                           f"at most {H} x {W} (the 2 mm IXI grid: 90 x 120 x 120 voxels in RAS); resample the "
                           "volume to 2 mm and crop it to the head")
    return (H - h) // 2, (W - w) // 2


def volume_slices(volume: np.ndarray, prep: SlicePrep, indices=None, what: str = "image") -> np.ndarray:
    """A RAS volume (X, Y, Z) -> model slices (S, 1, H, W) float32 along ``prep.axis`` (all, or ``indices``),
    each normalised on its own and padded with air (-1) to ``prep.image_size``."""
    import torch

    from meddiff.data.transforms import NormConfig, normalize

    v = np.moveaxis(np.asarray(volume, dtype=np.float32), prep.axis, -1)
    idx = range(v.shape[-1]) if indices is None else indices
    top, left = pad_offsets(v.shape[:2], prep, what)
    cfg = NormConfig.from_dict(prep.normalize)
    out = np.full((len(idx), 1) + tuple(prep.image_size), -1.0, dtype=np.float32)
    for n, i in enumerate(idx):
        y, _ = normalize(torch.from_numpy(np.ascontiguousarray(v[..., i])), cfg)
        out[n, 0, top:top + v.shape[0], left:left + v.shape[1]] = np.asarray(y)
    return out


def label_slices(labels: np.ndarray, prep: SlicePrep, indices=None) -> np.ndarray:
    """Merged labels (X, Y, Z) -> (S, H, W) int64 slices padded with background, as ``volume_slices``."""
    v = np.moveaxis(np.asarray(labels), prep.axis, -1)
    idx = range(v.shape[-1]) if indices is None else indices
    top, left = pad_offsets(v.shape[:2], prep, "labels")
    out = np.zeros((len(idx),) + tuple(prep.image_size), dtype=np.int64)
    for n, i in enumerate(idx):
        out[n, top:top + v.shape[0], left:left + v.shape[1]] = v[..., i]
    return out


def unpad(slices: np.ndarray, shape: tuple[int, int], prep: SlicePrep) -> np.ndarray:
    """Padded slices (S, ..., H, W) -> (S, ..., h, w): the inverse of the padding of ``volume_slices``."""
    top, left = pad_offsets(shape, prep)
    return slices[..., top:top + shape[0], left:left + shape[1]]


def subject_files(root: str | Path, subject: str) -> dict[str, Path]:
    """The T1 and DLMUSE files of an IXI DLMUSE subject; missing ones raise naming the path."""
    root = Path(root)
    files = {"t1": root / "t1" / f"{subject}_T1.nii.gz", "seg": root / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"}
    for f in files.values():
        if not f.is_file():
            raise MeddiffError(f"{f}: not found (expected the {DLMUSE_SET} layout t1/<ID>_T1.nii.gz, "
                               "dlmuse_seg/<ID>_T1_DLMUSE.nii.gz)")
    return files


@dataclass
class Subject:
    """One labelled subject in RAS: raw T1 (X, Y, Z) float32, merged labels (X, Y, Z) int64, voxel spacing (mm)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]

    def brain_slices(self, prep: SlicePrep, min_brain: float = 0.01) -> list[int]:
        """Indices along ``prep.axis`` whose non-background fraction is at least ``min_brain``."""
        frac = np.moveaxis(self.labels > 0, prep.axis, -1).mean(axis=(0, 1))
        return [int(i) for i in np.flatnonzero(frac >= min_brain)]


def load_labelled(root: str | Path, subject: str) -> Subject:
    """A subject's T1 and merged DLMUSE labels, reoriented to RAS by the loader of the slice datasets."""
    from meddiff.data.io import read_nifti
    from meddiff.data.volumes import load_subject
    from meddiff.tasks.segment.labels import merge_labels

    files = subject_files(root, subject)
    vol, seg, _ = load_subject(files, ["t1"], with_seg=True, normalize_cfg="none", canonical=True, spacing=None)
    _, meta = read_nifti(files["t1"])
    spacing = tuple(float(s) for s in (meta.spacing or (1.0, 1.0, 1.0)))
    order = np.argsort(np.abs(np.asarray(meta.affine)[:3, :3]).argmax(axis=0))  # RAS axis -> source axis
    spacing = tuple(spacing[int(i)] for i in order)
    return Subject(subject, vol[0], merge_labels(seg[0], str(files["seg"])), spacing)


def load_split(split_file: str | Path) -> dict[str, list[str]]:
    """{"train": [...], "val": [...], "test": [...]} subject lists of a split file."""
    path = Path(split_file)
    try:
        parts = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MeddiffError(f"{path}: cannot read the split file ({error})") from None
    missing = [k for k in ("train", "val", "test") if k not in parts]
    if missing:
        raise MeddiffError(f"{path}: split file lacks {missing}")
    return parts
