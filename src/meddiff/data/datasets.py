"""Datasets for training: items are dicts of tensors keyed by the module constants below.

``build_dataset({"kind": ..., ...}, split)`` builds one from a YAML-style config. Every dataset exposes
``image_shape`` (C, H, W) or (C, D, H, W) and ``num_classes`` (0 when it has no labels), so the trainer
can build a model from them. Images are float32 in model space [-1, 1] (unless a zscore normalisation
is asked for); labels are int64 scalars.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from meddiff.data import io
from meddiff.data.assets import resolve_path
from meddiff.data.splits import SPLIT_CHOICES, load_or_make_split, select, subject_of
from meddiff.data.transforms import (
    NormConfig,
    build_augment,
    default_norm_for,
    normalize,
    resize,
)
from meddiff.errors import MeddiffError, check_choice

IMAGE_KEY = "image"
LABEL_KEY = "label"
SEG_KEY = "seg"
COND_KEY = "cond_image"  # the trainer reads image conditioning from this key
SUBJECT_KEY = "subject"
KSPACE_KEY = "kspace"
MASK_KEY = "mask"
TARGET_KEY = "target"

FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".nii", ".nii.gz", ".dcm")


def _size_tuple(size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size),) * spatial_dims
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims:
        raise MeddiffError(f"size={list(size)} has {len(size)} values but the images are {spatial_dims}D")
    return size


class _Base(Dataset):
    """Shared bits: augmentation with its own seeded RNG, resize, and the model attributes."""

    image_shape: tuple[int, ...]
    num_classes: int = 0
    class_names: list[str] | None = None

    def _setup_augment(self, augment: dict | None, spatial_dims: int, seed: int) -> None:
        self._augment = build_augment(augment, spatial_dims, seed=seed)

    def _finish(self, x: torch.Tensor, size: tuple[int, ...] | None) -> torch.Tensor:
        if size is not None and tuple(x.shape[1:]) != size:
            x = resize(x, size)
        if getattr(self, "_augment", None) is not None:
            x = self._augment(x)
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.float().contiguous()


# ------------------------------------------------------------------------------------------ MedMNIST
class MedMNISTDataset(_Base):
    """MedMNIST npz (``{split}_images`` uint8 (N, H, W), (N, H, W, 3) or 3D (N, D, H, W); ``{split}_labels``
    (N, 1) or multi-label (N, K)) -> {"image": (C, H, W) or (1, D, H, W) in [-1, 1], "label": int64}."""

    # uint8 0..255 -> [-1, 1] for every image: the stats `denormalize` needs to write samples back as 0..255
    normalisation = {"mode": "fixed", "a_min": 0.0, "a_max": 255.0, "b_min": -1.0, "b_max": 1.0}

    def __init__(self, path: str | Path, split: str = "train", size: int | Sequence[int] | None = None,
                 augment: dict | None = None, seed: int = 0, max_items: int | None = None) -> None:
        check_choice("split", split, SPLIT_CHOICES)
        self.path = Path(path)
        data = io.read_medmnist(self.path)
        splits = list(data) if split == "all" else [split]
        missing = [s for s in splits if s not in data]
        if missing:
            raise MeddiffError(f"{self.path}: no {missing[0]}_images in this MedMNIST file; available splits: "
                               f"{', '.join(data)}")
        images = np.concatenate([data[s][0] for s in splits])
        labels = np.concatenate([data[s][1] for s in splits])
        if max_items is not None:
            images, labels = images[:max_items], labels[:max_items]
        if images.ndim == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
            self._layout, c = "rgb", 3
        elif images.ndim == 4:
            self._layout, c = "3d", 1
        elif images.ndim == 3:
            self._layout, c = "gray", 1
        else:
            raise MeddiffError(f"{self.path}: MedMNIST images must be (N, H, W), (N, H, W, 3) or (N, D, H, W); got {images.shape}")
        if images.dtype != np.uint8:
            raise MeddiffError(f"{self.path}: MedMNIST images must be uint8 (0..255), got {images.dtype}")
        self.images, self.labels = images, labels.reshape(len(labels), -1).astype(np.int64)
        spatial = images.shape[1:3] if self._layout == "rgb" else images.shape[1:]
        self.size = _size_tuple(size, len(spatial))
        self.image_shape = (c,) + (self.size or tuple(int(s) for s in spatial))
        all_labels = np.concatenate([v[1].reshape(len(v[1]), -1) for v in data.values()])
        self.multilabel = all_labels.shape[1] > 1
        self.num_classes = int(all_labels.shape[1]) if self.multilabel else int(all_labels.max()) + 1
        self._setup_augment(augment, len(self.image_shape) - 1, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img = torch.from_numpy(np.asarray(self.images[index]))
        if self._layout == "rgb":
            img = img.permute(2, 0, 1)
        else:
            img = img.unsqueeze(0)
        x = img.float() / 127.5 - 1.0
        x = self._finish(x, self.size)
        lab = torch.from_numpy(self.labels[index]) if self.multilabel else torch.tensor(int(self.labels[index, 0]))
        return {IMAGE_KEY: x, LABEL_KEY: lab}


# ------------------------------------------------------------------------------------------ image folders
def _is_image_file(p: Path, suffixes: Sequence[str]) -> bool:
    return p.is_file() and not p.name.startswith(".") and io.suffix_of(p) in suffixes


def _to_channels(arr: np.ndarray, meta, channels: int | None, path: Path) -> np.ndarray:
    """(H, W) -> (1, H, W); colour stays (3, H, W); convert to ``channels`` (1 or 3) when asked."""
    if meta.channel_axis is not None and arr.ndim >= 3:
        arr = np.moveaxis(arr, meta.channel_axis, 0)
    else:
        arr = arr[None]
    if channels is not None and arr.shape[0] != channels:
        if channels == 1 and arr.shape[0] == 3:
            arr = arr.astype(np.float32).mean(axis=0, keepdims=True)
        elif channels == 3 and arr.shape[0] == 1:
            arr = np.repeat(arr, 3, axis=0)
        else:
            raise MeddiffError(f"{path}: has {arr.shape[0]} channels, cannot convert to channels={channels}")
    return arr


class FolderDataset(_Base):
    """A folder of images (PNG/JPEG/npy/NIfTI/DICOM), optionally one sub-folder per class (the label is the
    class index in sorted order). Split by subject (file stem minus a slice suffix, or ``subject_pattern``
    group 1); the split is saved to ``split_file`` when given."""

    def __init__(self, path: str | Path, split: str = "train", size: int | Sequence[int] | None = None,
                 channels: int | None = None, normalize: dict | str | None = None, classes: bool | None = None,
                 subject_pattern: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0,
                 split_file: str | Path | None = None, seed: int = 0, augment: dict | None = None,
                 extensions: Sequence[str] | None = None) -> None:
        check_choice("split", split, SPLIT_CHOICES)
        root = Path(path)
        if not root.is_dir():
            raise MeddiffError(f"{root}: not a folder (a 'folder' dataset needs a directory of images)")
        suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions) if extensions else FOLDER_IMAGE_SUFFIXES
        direct = sorted(p for p in root.iterdir() if _is_image_file(p, suffixes))
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        use_classes = classes if classes is not None else (not direct and bool(subdirs))
        items: list[tuple[Path, int]] = []
        if use_classes:
            self.class_names = [d.name for d in subdirs]
            for label, d in enumerate(subdirs):
                items += [(p, label) for p in sorted(d.rglob("*")) if _is_image_file(p, suffixes)]
            self.num_classes = len(subdirs)
        else:
            items = [(p, -1) for p in direct]
            self.num_classes = 0
        if not items:
            raise MeddiffError(f"{root}: no image files ({', '.join(suffixes)}) found; the folder is empty or "
                               "holds other files")
        subjects = [subject_of(io.suffix_of(p) and p.name[: -len(io.suffix_of(p))] or p.name, subject_pattern)
                    for p, _ in items]
        self.split_parts = load_or_make_split(subjects, split_file, val_fraction=val_fraction,
                                              test_fraction=test_fraction, seed=seed)
        keep = select(split, self.split_parts)
        self.items = [(p, lab, s) for (p, lab), s in zip(items, subjects) if keep is None or s in keep]
        if not self.items:
            raise MeddiffError(f"{root}: split {split!r} is empty ({len(set(subjects))} subjects in all); "
                               "lower val_fraction/test_fraction or add data")
        self.channels = channels
        self.norm = NormConfig.from_dict(normalize) if normalize is not None else None
        first, meta = self.read(self.items[0][0])
        self.spatial_dims = first.ndim - 1
        self.size = _size_tuple(size, self.spatial_dims)
        self.image_shape = (first.shape[0],) + (self.size or tuple(first.shape[1:]))
        self._setup_augment(augment, self.spatial_dims, seed)

    def read(self, path: Path) -> tuple[np.ndarray, Any]:
        """One file as an array (C, *spatial) in its stored intensities (channels as configured) and its meta;
        no normalisation or resizing (``dataset[i]`` adds those)."""
        arr, meta = io.read_image(path, expect_ndim=(2, 3))
        if arr.ndim == 3 and meta.channel_axis is None and meta.format in ("nifti", "npy", "dicom") and arr.shape[-1] == 1:
            arr = arr[..., 0]
        arr = _to_channels(arr, meta, self.channels, path)
        return arr, meta

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label, _ = self.items[index]
        arr, meta = self.read(path)
        cfg = self.norm or default_norm_for(arr, meta)
        x, _ = normalize(torch.from_numpy(np.array(arr)), cfg)
        if self.size is None and tuple(x.shape) != self.image_shape:
            raise MeddiffError(f"{path}: image shape {tuple(x.shape)} differs from {self.image_shape} of the first "
                               "image; set size: in the dataset config to resize")
        item = {IMAGE_KEY: self._finish(x, self.size)}
        if label >= 0:
            item[LABEL_KEY] = torch.tensor(label, dtype=torch.int64)
        return item


# ------------------------------------------------------------------------------------------ registry
DATASET_KINDS: dict[str, Callable[..., Dataset]] = {
    "medmnist": MedMNISTDataset,
    "folder": FolderDataset,
}


def register_dataset(kind: str, factory: Callable[..., Dataset]) -> None:
    """Add a dataset kind usable from ``build_dataset`` configs."""
    DATASET_KINDS[kind] = factory


def build_dataset(config: dict[str, Any], split: str = "train") -> Dataset:
    """Dataset from a config dict ``{"kind": <one of DATASET_KINDS>, "path": ..., <options>}``.

    Unknown options are an error listing the allowed ones; ``split`` is train, val, test or all. Path options
    may name a shipped asset as ``"asset:pneumoniamnist/pneumoniamnist_small.npz"``.
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise MeddiffError(f"dataset config must be a mapping with a 'kind' key (one of {sorted(DATASET_KINDS)})")
    cfg = {key: resolve_path(value) for key, value in config.items()}
    kind = cfg.pop("kind")
    check_choice("dataset kind", kind, DATASET_KINDS)
    factory = DATASET_KINDS[kind]
    params = dict(inspect.signature(factory).parameters)
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if open_kwargs:  # a factory forwarding **options (e.g. paired): accept what its targets accept
        for target in getattr(factory, "forwards_to", ()):
            params.update({n: p for n, p in inspect.signature(target).parameters.items() if n not in params})
    named = {n: p for n, p in params.items()
             if n not in ("self", "split") and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    allowed = list(named)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise MeddiffError(f"dataset kind {kind!r}: unknown option(s) {unknown}; allowed: {allowed}")
    required = [n for n, p in named.items() if p.default is inspect.Parameter.empty]
    missing = [n for n in required if n not in cfg]
    if missing:
        raise MeddiffError(f"dataset kind {kind!r}: missing option(s) {missing}")
    return factory(split=split, **cfg)
