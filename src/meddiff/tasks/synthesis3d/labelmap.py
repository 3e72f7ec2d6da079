"""Label maps a user gives ``meddiff sample --label-map``: raw DLMUSE parcellations (as stored in
``../shared/data/ixi_t1_2mm_dlmuse/dlmuse_seg``) or maps already merged to the 10 classes of
``meddiff.tasks.segment.labels``; read, checked against the training grid, merged, reoriented to RAS and padded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError


@dataclass
class LabelMap:
    """A label map on the model grid: merged labels (RAS, padded to the head grid) int64, the file's affine and
    shape (to write samples back on its grid), and whether the file held raw DLMUSE ids."""

    labels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, ...]
    raw_dlmuse: bool
    source: str


def merge_any(ids: np.ndarray, source: str, num_classes: int) -> tuple[np.ndarray, bool]:
    """Merged class ids from a merged map (every id < ``num_classes``) or a raw DLMUSE one (any id larger; merged
    with the documented table, whose error names unknown ids). A map whose ids all lie in 0..9 is taken as merged."""
    from meddiff.tasks.segment.labels import merge_labels

    a = np.asarray(ids)
    if a.size and not np.all(np.isfinite(a)):
        raise MeddiffError(f"{source}: label map contains NaN or infinite values")
    r = np.rint(a).astype(np.int64)
    if r.size and not np.array_equal(r, a):
        raise MeddiffError(f"{source}: label map has non-integer values; give integer class or DLMUSE ids")
    if r.size and r.min() < 0:
        raise MeddiffError(f"{source}: unknown label id(s) {sorted(set(r[r < 0].tolist()))[:10]} (negative)")
    if r.size == 0 or r.max() < num_classes:
        return r, False
    return merge_labels(r, source), True


def read_label_map(path: str | Path, ras_shape, grid, spacing=(2.0, 2.0, 2.0), num_classes: int = 10,
                   option: str = "--label-map") -> LabelMap:
    """Read a 3D label NIfTI; it must be on the training grid: ``ras_shape`` voxels in RAS (90 x 120 x 120 for the
    2 mm IXI heads) at ``spacing`` mm. Returns it merged and padded to ``grid`` (one-line errors otherwise)."""
    from meddiff.data.heads import pad_volume
    from meddiff.data.io import read_nifti_input
    from meddiff.data.transforms import to_canonical

    source = f"{option} {path}"
    array, meta = read_nifti_input(path, option)
    if array.ndim != 3:
        raise MeddiffError(f"{source}: expected a 3D label map, got shape {tuple(array.shape)}")
    ras, _ = to_canonical(np.asarray(array, dtype=np.float32)[None], meta)
    ras = np.asarray(ras)[0]
    file_spacing = tuple(float(s) for s in (meta.spacing or ()))
    if tuple(ras.shape) != tuple(ras_shape) or (file_spacing and not np.allclose(sorted(file_spacing), sorted(spacing),
                                                                                 atol=0.05)):
        raise MeddiffError(f"{source}: grid {tuple(array.shape)} at {file_spacing or '?'} mm is not the training "
                           f"grid ({tuple(ras_shape)} voxels in RAS at {tuple(spacing)} mm, the 2 mm IXI heads); "
                           "resample the map to that grid (nearest neighbour)")
    merged, raw = merge_any(ras, source, num_classes)
    return LabelMap(pad_volume(merged, grid, 0, source), np.asarray(meta.affine, dtype=np.float64),
                    tuple(array.shape), raw, str(path))


def from_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo the RAS reorientation of ``to_canonical`` on a (X, Y, Z) volume, for writing on ``affine``'s grid."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(volume, back))


def condition_from_labels(labels: np.ndarray, num_classes: int, factor: int) -> torch.Tensor:
    """Merged labels (*grid) -> the latent UNet's conditioning (1, num_classes, *grid / factor)."""
    from meddiff.data.heads import one_hot_latent

    return one_hot_latent(torch.from_numpy(np.asarray(labels, dtype=np.int64))[None], num_classes, factor)
