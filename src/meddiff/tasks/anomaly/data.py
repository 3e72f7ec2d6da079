"""Anomaly-detection inputs: MR intensity scaling and brain masks, the training folders, reading volumes, BraTS case
folders and images, and the evaluation subjects (BraTS stacks, PneumoniaMNIST draws)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.errors import MeddiffError

# model channels -> contrasts of a BraTS case folder, in channel order (the shipped BraTS models use 3)
CONTRASTS_BY_CHANNELS = {3: ("t1ce", "t2", "flair"), 4: ("t1", "t1ce", "t2", "flair"), 1: ("flair",)}
# In-plane field of view of the BraTS training slices (``prepare_training_data`` shrinks the whole 240 x 240 grid of
# 1 mm BraTS to the model size: 5 mm pixels at 48 x 48); inputs with a known spacing are resampled to that pixel size
BRATS_FIELD_OF_VIEW_MM = 240.0
MR_SCALE = 3.0  # MR slices: x / (MR_SCALE * median of the brain) -> [0, 1] -> [-1, 1]; tissue lands near -0.3


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Brain mask of a skull-stripped MR slice stack (C, *spatial): any contrast > 0 -> bool (*spatial)."""
    return np.any(np.asarray(image) > 0, axis=0)


def normalise_mr(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-slice, per-contrast robust scaling of (C, H, W) raw MR to [-1, 1]: x / (3 median(x | brain)), clipped.

    The median is dominated by normal tissue even in tumour slices, unlike a 99.5 percentile that lands in a
    bright FLAIR lesion; background maps to -1.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = foreground_mask(image) if mask is None else mask
    out = np.full(image.shape, -1.0, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][mask]
        if values.size:
            scale = MR_SCALE * max(float(np.median(values)), 1e-6)
            out[c] = np.where(mask, 2 * np.clip(image[c] / scale, 0, 1) - 1, -1.0)
    return out


def to_model_size(x: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, *size): area averaging when shrinking, bilinear otherwise."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = all(s <= h for s, h in zip(size, x.shape[-2:]))
    return F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="bilinear",
                                                                                 align_corners=False)


def brain_masks(slices: np.ndarray, mr: bool = True) -> np.ndarray:
    """Masks (S, H, W) of slices (S, C, H, W): the brain of skull-stripped MR, everything for 8-bit images."""
    if not mr:
        return np.ones((len(slices),) + slices.shape[-2:], bool)
    return np.stack([foreground_mask(s) for s in slices])


def model_inputs(slices: np.ndarray, masks: np.ndarray, mr: bool = True) -> np.ndarray:
    """Raw slices (S, C, H, W) -> model space [-1, 1] at their own size: ``normalise_mr`` per slice, or x / 127.5 - 1."""
    return np.stack([normalise_mr(s, m) if mr else s / 127.5 - 1 for s, m in zip(slices, masks)])


def in_plane_spacing(affine: np.ndarray | None) -> tuple[float, float] | None:
    """Pixel spacing (mm) along the first two array axes of a NIfTI affine, or None without one."""
    if affine is None:
        return None
    columns = np.asarray(affine, dtype=np.float64)[:3, :2]
    return float(np.linalg.norm(columns[:, 0])), float(np.linalg.norm(columns[:, 1]))


@dataclass(frozen=True)
class Placement:
    """Where an input slice lies on the model's canvas: resampled to ``shape`` pixels, its corner at ``offset``
    (negative: the slice is larger than the canvas and cropped there)."""

    shape: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def whole(cls, size: Sequence[int]) -> "Placement":
        """The slice resized to fill the canvas (no spacing known: the model's training geometry is assumed)."""
        return cls((int(size[0]), int(size[1])), (0, 0))

    @classmethod
    def at_pixel_size(cls, shape: Sequence[int], spacing: Sequence[float], pixel_mm: float,
                      size: Sequence[int]) -> "Placement":
        """A slice of ``shape`` pixels of ``spacing`` mm resampled to ``pixel_mm`` and centred on a ``size`` canvas:
        the physical scale the model was trained at (e.g. a 2 mm brain crop is not stretched to fill the frame)."""
        rows, cols = (max(1, int(round(n * s / pixel_mm))) for n, s in zip(shape, spacing))
        return cls((rows, cols), ((int(size[0]) - rows) // 2, (int(size[1]) - cols) // 2))

    def _windows(self, size: Sequence[int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(rows, cols) of the resampled slice and of the canvas that overlap."""
        src, dst = [], []
        for n, offset, canvas in zip(self.shape, self.offset, size):
            start, stop = max(0, offset), min(int(canvas), offset + n)
            dst.append(slice(start, stop))
            src.append(slice(start - offset, stop - offset))
        return tuple(src), tuple(dst)

    def to_canvas(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """(B, C, H, W) model-space slices -> (B, C, *size): resampled, background (-1) around, cropped beyond."""
        resampled = to_model_size(x, self.shape)
        if self.shape == tuple(int(s) for s in size) and self.offset == (0, 0):
            return resampled
        canvas = torch.full((*x.shape[:2], *(int(s) for s in size)), -1.0, dtype=x.dtype)
        (sr, sc), (dr, dc) = self._windows(size)
        canvas[..., dr, dc] = resampled[..., sr, sc]
        return canvas

    def from_canvas(self, y: Tensor, size: Sequence[int], out: Sequence[int], fill: float) -> Tensor:
        """Inverse of ``to_canvas`` for maps / reconstructions y (B, C, *size): the slice's region, ``fill`` where it
        was cropped away, resized to ``out`` (the input's H, W)."""
        region = torch.full((*y.shape[:2], *self.shape), float(fill), dtype=y.dtype)
        (sr, sc), (dr, dc) = self._windows(size)
        region[..., sr, sc] = y[..., dr, dc]
        return F.interpolate(region, size=tuple(int(s) for s in out), mode="bilinear", align_corners=False)


def mirror_healthy_half(image: np.ndarray, seg: np.ndarray, centre: float) -> np.ndarray | None:
    """A pseudo-healthy slice: the hemisphere without tumour mirrored across the midline x = ``centre`` onto the
    one with it (image (C, X, Y), seg (X, Y)); None when the tumour crosses the midline."""
    xs = np.nonzero(seg.any(axis=1))[0]
    if xs.size == 0:
        return image.copy()
    width = image.shape[1]
    mirror = np.clip(np.round(2 * centre - np.arange(width)).astype(int), 0, width - 1)
    out = image.copy()
    if xs.max() < centre:       # tumour left of the midline: take the right half
        left = np.arange(width) < centre
        out[:, left] = image[:, mirror[left]]
    elif xs.min() > centre:
        right = np.arange(width) > centre
        out[:, right] = image[:, mirror[right]]
    else:
        return None
    return out


def prepare_training_data(out_dir: str | Path, brats_case: str | Path, pneumonia_npz: str | Path,
                          size: int = 48, min_brain: float = 0.05) -> dict:
    """Write the anomaly training folders (PNG, uint8 = model space [-1, 1] mapped to 0..255) under ``out_dir``:

    - ``brats/0_healthy``: axial slices of the BraTS case without tumour, plus every tumour slice with the
      tumour hemisphere replaced by the mirrored healthy one (so mid-brain anatomy has healthy examples);
    - ``brats/1_diseased``: slices with tumour (label 1). Contrasts ``CONTRASTS_BY_CHANNELS[3]`` as RGB;
    - ``chest/normal``: PneumoniaMNIST training images labelled normal (AnoDDPM trains on healthy only).
    Returns the counts. The split is by subject: this one BraTS case trains, other subjects test.
    """
    from meddiff.data import read_image, read_medmnist
    from meddiff.files import write_png
    from meddiff.data.volumes import discover_subjects

    out = Path(out_dir)
    subjects = discover_subjects(brats_case)
    if len(subjects) != 1:
        raise MeddiffError(f"{brats_case}: expected one BraTS case, found {len(subjects)}")
    name, files = next(iter(subjects.items()))
    contrasts = CONTRASTS_BY_CHANNELS[3]
    volume = np.stack([read_image(files[c], expect_ndim=3)[0].astype(np.float32) for c in contrasts])
    seg = read_image(files["seg"], expect_ndim=3)[0] > 0
    brain = foreground_mask(volume)
    xs = np.nonzero(brain.any(axis=(1, 2)))[0]
    centre = (xs[0] + xs[-1]) / 2
    counts = {"healthy": 0, "mirrored": 0, "diseased": 0, "chest_normal": 0}

    def save(array: np.ndarray, path: Path) -> None:
        x = torch.from_numpy(normalise_mr(array))[None]
        small = to_model_size(x, (size, size))[0].numpy()
        write_png(path, np.round((small + 1) * 127.5).clip(0, 255).astype(np.uint8))

    for z in range(volume.shape[-1]):
        if brain[..., z].mean() < min_brain:
            continue
        image, lesion = volume[..., z], seg[..., z]
        if lesion.any():
            save(image, out / "brats" / "1_diseased" / f"{name}_z{z:03d}.png")
            counts["diseased"] += 1
            healthy = mirror_healthy_half(image, lesion, centre)
            if healthy is not None:
                save(healthy, out / "brats" / "0_healthy" / f"{name}_z{z:03d}m.png")
                counts["mirrored"] += 1
        else:
            save(image, out / "brats" / "0_healthy" / f"{name}_z{z:03d}.png")
            counts["healthy"] += 1
    images, labels = read_medmnist(pneumonia_npz)["train"]
    for i in np.nonzero(labels.reshape(-1) == 0)[0]:
        write_png(out / "chest" / "normal" / f"train_{i:05d}.png", images[i])
        counts["chest_normal"] += 1
    return counts


@dataclass
class Input:
    """One input: image (C, H, W) or volume (C, H, W, Z) as read, whether it is MR, and its NIfTI affine."""

    name: str
    image: np.ndarray
    mr: bool
    affine: np.ndarray | None = None

    @property
    def spacing(self) -> tuple[float, float] | None:
        """In-plane pixel spacing (mm) from the affine; None for images without one (PNG, npy)."""
        return in_plane_spacing(self.affine)


def _contrasts_for(channels: int | None) -> tuple[str, ...]:
    if channels is None:          # the intensity baseline reads FLAIR only
        return ("flair",)
    if channels not in CONTRASTS_BY_CHANNELS:
        raise MeddiffError(f"no BraTS contrast convention for a {channels}-channel model "
                           f"(known: {sorted(CONTRASTS_BY_CHANNELS)} channels)")
    return CONTRASTS_BY_CHANNELS[channels]


def read_case(files: dict[str, Path], name: str, channels: int | None) -> Input:
    """Stack a BraTS case's contrasts in the model's channel order; missing contrasts or shapes that differ raise."""
    from meddiff.data import read_image

    contrasts = _contrasts_for(channels)
    missing = [c for c in contrasts if c not in files]
    if missing:
        raise MeddiffError(f"case {name}: contrast(s) {', '.join(missing)} missing (found "
                           f"{', '.join(sorted(files)) or 'none'}); the checkpoint needs {', '.join(contrasts)} "
                           f"as <case>_<contrast>.nii.gz")
    arrays, metas = zip(*(read_image(files[c], expect_ndim=3) for c in contrasts))
    shapes = {c: a.shape for c, a in zip(contrasts, arrays)}
    if len(set(shapes.values())) > 1:
        raise MeddiffError(f"case {name}: contrasts differ in shape ({', '.join(f'{c} {s}' for c, s in shapes.items())}); "
                           "co-register and resample them to one grid first")
    return Input(name, np.stack(arrays).astype(np.float32), True, metas[0].affine)


def read_inputs(path: str | Path, channels: int | None) -> list[Input]:
    """Inputs from a NIfTI volume, a BraTS case folder (or a folder of them), a 2D image, or a folder of images."""
    from meddiff.data import read_image
    from meddiff.data.datasets import FOLDER_IMAGE_SUFFIXES
    from meddiff.data.io import suffix_of
    from meddiff.data.volumes import discover_subjects

    path = Path(path)
    if not path.exists():
        raise MeddiffError(f"--input {path}: no such file or folder")
    if path.is_dir():
        cases = discover_subjects(path, strict=False)
        if cases:
            return [read_case(files, name, channels) for name, files in sorted(cases.items())]
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and suffix_of(p) in FOLDER_IMAGE_SUFFIXES)
        if not files:
            raise MeddiffError(f"--input {path}: no images (NIfTI, PNG, npy, DICOM) and no BraTS case files found")
        return [item for f in files for item in read_inputs(f, channels)]
    array, meta = read_image(path, expect_ndim=(2, 3))
    stem = path.name[: -len(suffix_of(path))] if suffix_of(path) else path.name
    mr = array.dtype != np.uint8
    if array.ndim == 2:
        return [Input(stem, array[None].astype(np.float32), mr)]
    if meta.channel_axis is not None:
        return [Input(stem, np.moveaxis(array, meta.channel_axis, 0).astype(np.float32), mr)]
    if array.shape[0] <= 4 and meta.format != "nifti":    # npy (C, H, W)
        return [Input(stem, array.astype(np.float32), mr)]
    return [Input(stem, array[None].astype(np.float32), mr, meta.affine)]   # a single-contrast volume


@dataclass
class Subject:
    """Evaluation stack of one subject: raw images (C, H, W, S) in the model's contrast order, pixel labels
    (H, W, S) or None, slice labels (S,) (default: the slice has a labelled pixel) and the in-plane spacing in mm
    (None: unknown)."""

    name: str
    image: np.ndarray
    seg: np.ndarray | None
    mr: bool = True
    slice_labels: np.ndarray | None = None
    spacing: tuple[float, float] | None = None

    def labels_per_slice(self) -> np.ndarray:
        if self.slice_labels is not None:
            return np.asarray(self.slice_labels, bool)
        return self.seg.reshape(-1, self.seg.shape[-1]).any(0)


def brats_npz_subjects(path: str | Path, channels: int = 3) -> list[Subject]:
    """Subjects of a BraTS slice npz (``images`` (N, 4, H, W) with ``channels`` names, ``seg``, ``subject``) as
    stacks; slices are transposed to the NIfTI (x, y) order the models were trained in."""
    from meddiff.data.io import load_npz

    data = load_npz(path)
    names = [str(c) for c in data["channels"]]
    index = [names.index(c) for c in _contrasts_for(channels)]
    out = []
    for subject in dict.fromkeys(str(s) for s in data["subject"]):
        rows = [i for i, s in enumerate(data["subject"]) if str(s) == subject]
        image = np.stack([data["images"][i][index].transpose(0, 2, 1) for i in rows], axis=-1)
        seg = np.stack([data["seg"][i].T > 0 for i in rows], axis=-1)
        out.append(Subject(subject, image.astype(np.float32), seg, spacing=(1.0, 1.0)))   # BraTS: 1 mm
    return out


def brats_case_subject(folder: str | Path, channels: int = 3, slices: Sequence[int] | None = None) -> Subject:
    """A BraTS case folder as an evaluation stack (all slices, or the given axial ``slices``)."""
    from meddiff.data import read_image
    from meddiff.data.volumes import discover_subjects

    (name, files), = discover_subjects(folder).items()
    item = read_case(files, name, channels)
    seg = read_image(files["seg"], expect_ndim=3)[0] > 0
    if slices is not None:
        return Subject(name, item.image[..., list(slices)], seg[..., list(slices)], spacing=item.spacing)
    return Subject(name, item.image, seg, spacing=item.spacing)


def pneumonia_subjects(path: str | Path, split: str = "val", per_class: int = 100, seed: int = 0,
                       development: bool = False) -> list[Subject]:
    """``per_class`` normal and pneumonia images of a PneumoniaMNIST split (random, seeded) as one 8-bit stack
    (no pixel labels: image-level evaluation only). ``development``: ``per_class`` more of each class drawn from the
    images the default draw leaves out, disjoint from it, for choosing settings without touching the evaluation set."""
    from meddiff.data import read_medmnist

    images, labels = read_medmnist(path)[split]
    labels = labels.reshape(-1)
    rng = np.random.default_rng(seed)
    pick = [rng.choice(np.nonzero(labels == c)[0], per_class, replace=False) for c in (0, 1)]
    if development:
        left = [np.setdiff1d(np.nonzero(labels == c)[0], chosen) for c, chosen in zip((0, 1), pick)]
        if min(len(v) for v in left) < per_class:
            raise MeddiffError(f"{path} {split}: fewer than {per_class} images per class left for a development set")
        pick = [rng.choice(v, per_class, replace=False) for v in left]
    pick = np.concatenate(pick)
    stack = np.moveaxis(images[pick][:, None].astype(np.uint8), 0, -1)       # (1, H, W, N)
    name = "pneumoniamnist_" + split + ("_development" if development else "")
    return [Subject(name, stack, None, mr=False, slice_labels=labels[pick] == 1)]
