"""Pre-processing for contrast translation: reading co-registered contrasts into one RAS grid, the brain mask,
the per-volume intensity normalisation (and its inverse), 2 mm down-sampling, and the paired slice dataset the
translation models train on.

Model space: each contrast of a volume is mapped linearly so that the 0.5th / 99.5th percentiles of its brain
voxels become -1 / 1 (clipped), and everything outside the brain mask is -1 (air). Outputs are mapped back to the
target contrast's units with the stats of the training subject (``denormalise``), so a synthetic T2 reads in the
units of the training T2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meddiff.data.transforms import denormalize
from meddiff.errors import MeddiffError

CONTRASTS = ("t1", "t1ce", "t2", "flair")
NORM = {"mode": "percentile", "lower": 0.5, "upper": 99.5, "region": "brain mask", "out": [-1.0, 1.0],
        "background": -1.0}
MASK_FRACTION = 0.05  # brain = voxels above 5 % of the source's 99.5th percentile (skull-stripped data: air ~ 0)
DATA_ROOT = Path("../shared/data")  # the shared data, relative to the repository root (as in the configs)
# file names of the shared data sets per contrast
MS_NAMES = {"t1": "T1", "t1ce": "T1POST", "t2": "T2", "flair": "FLAIR", "lesion": "lesion_gt"}
BRATS_NAMES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "lesion": "seg"}


# ------------------------------------------------------------------------------------------ grids
def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, Z) array on ``affine`` -> (array in RAS axis order, RAS affine, the orientation to undo it with
    ``from_ras``); flips and permutations only (nibabel orientation tools), so it is exact."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return np.ascontiguousarray(ras), new_affine, ornt


def from_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo ``to_ras`` (the array back in the input's axis order)."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, back))


def block_mean(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Area down-sampling by integer ``factors`` per axis (mean over blocks; the last partial block is padded with
    edge values), e.g. 1 mm -> 2 mm with factors (2, 2, 2)."""
    v = np.asarray(volume, dtype=np.float32)
    factors = tuple(int(f) for f in factors)
    pad = [(0, (-s) % f) for s, f in zip(v.shape, factors)]
    v = np.pad(v, pad, mode="edge")
    shape = []
    for s, f in zip(v.shape, factors):
        shape += [s // f, f]
    return v.reshape(shape).mean(axis=tuple(range(1, 2 * v.ndim, 2)))


def scale_affine(affine: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Affine of the grid ``block_mean`` returns: voxel size x factor, origin at the first block's centre."""
    new = np.array(affine, dtype=np.float64, copy=True)
    f = np.asarray(factors, dtype=np.float64)
    new[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((f - 1) / 2)
    new[:3, :3] = affine[:3, :3] * f
    return new


# ------------------------------------------------------------------------------------------ mask + intensities
def brain_mask(volume: np.ndarray, fraction: float = MASK_FRACTION, what: str = "--input") -> np.ndarray:
    """Boolean brain mask of a skull-stripped volume: voxels above ``fraction`` of the 99.5th percentile of the
    positive voxels, holes filled slice by slice (axis 2). Raises ``MeddiffError`` when it is empty."""
    from scipy import ndimage

    v = np.asarray(volume, dtype=np.float32)
    positive = v[v > 0]
    if positive.size == 0:
        raise MeddiffError(f"{what}: empty brain mask (no voxel above 0); give a skull-stripped MR volume with the "
                           "brain brighter than the background")
    mask = v > fraction * float(np.percentile(positive, 99.5))
    if v.ndim == 3:
        for z in range(v.shape[2]):
            mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    if mask.sum() < 10:
        raise MeddiffError(f"{what}: empty brain mask ({int(mask.sum())} voxels above {fraction:g} x the 99.5th "
                           "percentile); give a skull-stripped MR volume with the brain brighter than the background")
    return mask


def normalise(volume: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """Map ``volume`` to model space -> (y float32, stats): the 0.5th / 99.5th percentiles of the voxels in
    ``mask`` -> -1 / 1, clipped; outside the mask -1. ``stats`` are ``meddiff.data.normalize``'s percentile stats,
    so ``denormalise`` (``meddiff.data.transforms.denormalize``) inverts it inside the mask."""
    v = np.asarray(volume, dtype=np.float32)
    vals = v[mask].astype(np.float64)
    if vals.size == 0:
        raise MeddiffError("normalise: empty brain mask")
    lo, hi = (float(q) for q in np.percentile(vals, [NORM["lower"], NORM["upper"]]))
    hi = hi if hi > lo else lo + 1.0
    y = np.clip((v - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
    y[~mask] = -1.0
    return y.astype(np.float32), {"mode": "percentile", "a_min": lo, "a_max": hi, "b_min": -1.0, "b_max": 1.0}


def denormalise(y: np.ndarray, stats: dict, mask: np.ndarray | None = None, background: float = 0.0) -> np.ndarray:
    """Inverse of ``normalise`` (model space -> intensity units of ``stats``); voxels outside ``mask`` get
    ``background``."""
    out = np.asarray(denormalize(np.asarray(y, dtype=np.float32), stats), dtype=np.float32)
    if mask is not None:
        out = np.where(mask, out, np.float32(background))
    return out


# ------------------------------------------------------------------------------------------ subjects
@dataclass
class Subject:
    """One subject's contrasts on a common RAS grid: ``images`` {contrast: (X, Y, Z) model space}, ``stats``
    {contrast: normalisation stats}, ``mask`` (X, Y, Z) bool (from the source contrast), ``lesion`` (X, Y, Z) bool
    or None, ``affine`` RAS 4x4."""

    name: str
    images: dict
    stats: dict
    mask: np.ndarray
    lesion: np.ndarray | None
    affine: np.ndarray


def subject_files(name: str, root: str | Path = DATA_ROOT) -> dict[str, Path]:
    """{contrast or "lesion": path} of a shared-data subject: ``ms:patient07`` / ``ms:patient19`` (Lesjak MS,
    ``root``/ms_lesions_lesjak_mni) or ``brats:TCGA-FG-6692`` (``root``/brats_case_1)."""
    kind, _, sid = name.partition(":")
    if kind == "ms":
        folder, names = Path(root) / "ms_lesions_lesjak_mni", MS_NAMES
    elif kind == "brats":
        folder, names = Path(root) / "brats_case_1", BRATS_NAMES
    else:
        raise MeddiffError(f"subject {name!r}: expected 'ms:<patient>' or 'brats:<case>'")
    files = {c: folder / f"{sid}_{n}.nii.gz" for c, n in names.items()}
    missing = [str(p) for k, p in files.items() if k != "lesion" and not p.is_file()]
    if missing:
        raise MeddiffError(f"subject {name}: missing {', '.join(missing)}")
    return files


def load_subject(name: str, contrasts: Sequence[str], *, source: str = "t1", factor: int = 2,
                 root: str | Path = DATA_ROOT) -> Subject:
    """Read a shared-data subject (``subject_files``), reorient to RAS, area-down-sample by ``factor`` (1 mm ->
    2 mm), brain mask from ``source``, normalise every contrast within that mask."""
    import nibabel as nib

    files = subject_files(name, root)
    images, stats, mask, lesion, affine = {}, {}, None, None, None
    order = [source] + [c for c in contrasts if c != source]
    for c in order:
        img = nib.load(str(files[c]))
        arr, affine, _ = to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        if factor > 1:
            arr = block_mean(arr, (factor,) * 3)
        if mask is None:
            mask = brain_mask(arr, what=str(files[c]))
        images[c], stats[c] = normalise(arr, mask)
    if files["lesion"].is_file():
        img = nib.load(str(files["lesion"]))
        arr, _, _ = to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        arr = (arr > 0).astype(np.float32)
        lesion = (block_mean(arr, (factor,) * 3) >= 0.5) if factor > 1 else arr > 0.5
        lesion &= mask
    if factor > 1:
        affine = scale_affine(affine, (factor,) * 3)
    return Subject(name, images, stats, mask, lesion, affine)


def place(array: np.ndarray, size: Sequence[int], centre: Sequence[float], fill: float) -> np.ndarray:
    """(..., X, Y) -> (..., size[0], size[1]) window centred on ``centre`` (in-plane voxel coordinates), padded with
    ``fill`` where it leaves the array."""
    out = np.full(array.shape[:-2] + tuple(size), fill, dtype=np.float32)
    starts = [int(round(c - s / 2)) for c, s in zip(centre, size)]
    src, dst = [], []
    for start, n, s in zip(starts, array.shape[-2:], size):
        a, b = max(start, 0), min(start + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[(..., dst[0], dst[1])] = array[(..., src[0], src[1])]
    return out


def slice_indices(subject: Subject, min_brain: float = 0.05) -> list[int]:
    """Axial slices (RAS axis 2) with at least ``min_brain`` of their area in the brain mask."""
    area = subject.mask.shape[0] * subject.mask.shape[1]
    return [z for z in range(subject.mask.shape[2]) if subject.mask[..., z].sum() >= min_brain * area]


def slice_stack(subject: Subject, volumes: Sequence[np.ndarray], size: Sequence[int], keep: Sequence[int],
                fill: float = -1.0) -> np.ndarray:
    """Axial slices ``keep`` of volumes (X, Y, Z) -> (N, len(volumes), size[0], size[1]), each in a window centred on
    the brain's in-plane bounding box (the same window for every slice of the subject)."""
    idx = np.argwhere(subject.mask)
    centre = (idx.min(0)[:2] + idx.max(0)[:2] + 1) / 2.0
    vol = np.stack([np.asarray(v, dtype=np.float32) for v in volumes])[..., list(keep)]  # (C, X, Y, N)
    return place(np.moveaxis(vol, -1, 0), size, centre, fill)


def axial_slices(subject: Subject, source: Sequence[str], targets: Sequence[str], size: Sequence[int],
                 min_brain: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial slices of a subject with at least ``min_brain`` of the slice in the brain (``slice_indices``) ->
    (cond (N, len(source), H, W), targets (N, len(targets), H, W), mask (N, 1, H, W)) in ``size`` windows
    (``slice_stack``)."""
    keep = slice_indices(subject, min_brain)
    return (slice_stack(subject, [subject.images[c] for c in source], size, keep),
            slice_stack(subject, [subject.images[c] for c in targets], size, keep),
            slice_stack(subject, [subject.mask], size, keep, fill=0.0))


class PairedSlices(torch.utils.data.Dataset):
    """Paired axial slices of several subjects for training: {"image": (T, H, W) target contrasts,
    "cond_image": (S, H, W) source contrasts}, both in model space; indices >= N give the left-right mirrored
    slice (a deterministic flip augmentation, so an exact resume sees the same batches)."""

    def __init__(self, subjects: Sequence[str], source: Sequence[str] = ("t1",),
                 targets: Sequence[str] = ("t2", "flair"),
                 size: Sequence[int] = (96, 112), factor: int = 2, flip: bool = True) -> None:
        conds, images = [], []
        self.stats = {}
        for name in subjects:
            s = load_subject(name, tuple(source) + tuple(targets), source=source[0], factor=factor)
            c, t, _ = axial_slices(s, source, targets, size)
            conds.append(c)
            images.append(t)
            self.stats[name] = s.stats
        self.cond = torch.from_numpy(np.concatenate(conds))
        self.image = torch.from_numpy(np.concatenate(images))
        self.flip = bool(flip)
        self.source, self.targets, self.subjects = list(source), list(targets), list(subjects)
        self.image_shape = tuple(self.image.shape[1:])

    def __len__(self) -> int:
        return len(self.image) * (2 if self.flip else 1)

    def __getitem__(self, index: int) -> dict:
        n = len(self.image)
        i, mirrored = index % n, index >= n
        image, cond = self.image[i], self.cond[i]
        if mirrored:  # RAS axis 0 = left-right
            image, cond = image.flip(-2), cond.flip(-2)
        return {"image": image.clone(), "cond_image": cond.clone()}
