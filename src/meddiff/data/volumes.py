"""Volume datasets: NIfTI subject folders (BraTS 2020 / 2023 naming), 2D slice datasets cut from them with an
on-disk cache (resumable), paired contrast A -> B datasets, CSV manifests and k-space datasets."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meddiff.data import io
from meddiff.data.datasets import (
    COND_KEY,
    IMAGE_KEY,
    KSPACE_KEY,
    SEG_KEY,
    FolderDataset,
    _Base,
    _size_tuple,
    register_dataset,
)
from meddiff.data.splits import SPLIT_CHOICES, load_or_make_split, select
from meddiff.data.transforms import (NormConfig, extract_slices, fit_to_multiple, foreground_fraction, normalize,
                                     resample_to_spacing, resize, to_canonical)
from meddiff.errors import MeddiffError, check_choice

BRATS2020_CONTRASTS = ("t1", "t1ce", "t2", "flair")
BRATS2023_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
# BraTS 2023 names map onto the 2020 ones, so a config may use either.
CONTRAST_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
_NAME_RX = re.compile(r"^(?P<subject>.+?)[_\-](?P<contrast>t1ce|t1n|t1c|t1|t2w|t2f|t2|flair|seg)\.nii(?:\.gz)?$",
                      re.IGNORECASE)
DEFAULT_MR_NORM = {"mode": "percentile", "lower": 0.5, "upper": 99.5, "foreground": True}


def canonical_contrast(name: str) -> str:
    low = name.lower()
    return CONTRAST_ALIASES.get(low, low)


def discover_subjects(root: str | Path, strict: bool = True) -> dict[str, dict[str, Path]]:
    """{subject: {contrast: path}} from NIfTI names ``<subject>_<contrast>.nii.gz`` (or ``-``), searched
    recursively; contrasts t1, t1ce, t2, flair, seg (BraTS 2023 t1n, t1c, t2w, t2f map onto them)."""
    root = Path(root)
    subjects: dict[str, dict[str, Path]] = {}
    for p in sorted(root.rglob("*.nii*")):
        m = _NAME_RX.match(p.name)
        if not m:
            continue
        c = canonical_contrast(m.group("contrast"))
        entry = subjects.setdefault(m.group("subject"), {})
        if c in entry and strict:
            raise MeddiffError(f"{root}: subject {m.group('subject')} has two {c} files ({entry[c].name}, {p.name})")
        entry.setdefault(c, p)
    if strict and not subjects:
        raise MeddiffError(f"{root}: no NIfTI files named <subject>_<contrast>.nii.gz (contrasts t1, t1ce, t2, flair, "
                           "seg or t1n, t1c, t2w, t2f) found")
    return subjects


def load_subject(files: dict[str, Path], contrasts: Sequence[str], *, with_seg: bool, normalize_cfg: Any,
                 canonical: bool, spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """Stack a subject's contrasts -> (C, X, Y, Z) float32 normalised per contrast, seg (1, X, Y, Z) or None,
    and the per-contrast normalisation stats (for the inverse)."""
    arrays, metas = [], []
    for c in contrasts:
        a, m = io.read_image(files[c], expect_ndim=3)
        arrays.append(a.astype(np.float32))
        metas.append(m)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise MeddiffError(f"{files[contrasts[0]].parent}: contrasts {list(contrasts)} differ in shape {sorted(shapes)}")
    vol = np.stack(arrays)
    seg = None
    if with_seg:
        s, _ = io.read_image(files["seg"], expect_ndim=3)
        if s.shape != vol.shape[1:]:
            raise MeddiffError(f"{files['seg']}: seg shape {s.shape} differs from image shape {vol.shape[1:]}")
        seg = s.astype(np.float32)[None]
    meta = metas[0]
    if canonical:
        vol, new_meta = to_canonical(vol, meta)
        if seg is not None:
            seg, _ = to_canonical(seg, meta)
        meta = new_meta
    if spacing is not None:
        vol, new_meta = resample_to_spacing(vol, meta, spacing)
        if seg is not None:
            seg, _ = resample_to_spacing(seg, meta, spacing, mode="nearest")
        meta = new_meta
    cfg = NormConfig.from_dict(normalize_cfg if normalize_cfg is not None else DEFAULT_MR_NORM)
    stats = []
    for i in range(vol.shape[0]):
        vol[i], st = normalize(np.ascontiguousarray(vol[i]), cfg)
        stats.append(st)
    return np.ascontiguousarray(vol, dtype=np.float32), (None if seg is None else np.rint(seg).astype(np.int64)), stats


class _SubjectsMixin:
    """Subject discovery, contrast resolution and the subject-level split."""

    def _init_subjects(self, path, contrasts, seg, split, val_fraction, test_fraction, split_file, seed):
        check_choice("split", split, SPLIT_CHOICES)
        self.root = Path(path)
        if not self.root.is_dir():
            raise MeddiffError(f"{self.root}: not a folder of NIfTI volumes")
        all_subjects = discover_subjects(self.root)
        if contrasts is None:
            have = set.intersection(*(set(f) for f in all_subjects.values())) - {"seg"}
            contrasts = [c for c in BRATS2020_CONTRASTS if c in have] or sorted(have)
        self.contrasts = [canonical_contrast(c) for c in ([contrasts] if isinstance(contrasts, str) else contrasts)]
        self.with_seg = bool(seg)
        need = self.contrasts + (["seg"] if self.with_seg else [])
        for s, files in all_subjects.items():
            missing = [c for c in need if c not in files]
            if missing:
                raise MeddiffError(f"{self.root}: subject {s} lacks {', '.join(missing)} "
                                   f"(has {', '.join(sorted(files))}); fix the folder or change contrasts/seg")
        self.split_parts = load_or_make_split(list(all_subjects), split_file, val_fraction=val_fraction,
                                              test_fraction=test_fraction, seed=seed)
        keep = select(split, self.split_parts)
        self.subjects = {s: f for s, f in sorted(all_subjects.items()) if keep is None or s in keep}
        if not self.subjects:
            raise MeddiffError(f"{self.root}: split {split!r} has no subjects ({len(all_subjects)} in all); "
                               "change val_fraction/test_fraction")

    def _pair(self, x: torch.Tensor, source, target) -> dict[str, torch.Tensor]:
        if target is None:
            return {IMAGE_KEY: x}
        t = self.contrasts.index(canonical_contrast(target))
        src = [self.contrasts.index(canonical_contrast(s)) for s in source]
        return {IMAGE_KEY: x[t:t + 1], COND_KEY: x[src]}


def _resolve_pair(contrasts, source, target):
    if target is None:
        return contrasts, None
    source = [source] if isinstance(source, str) else list(source or [])
    if not source:
        raise MeddiffError("paired dataset: give source (one or more contrasts) and target")
    return source + [target], source


class VolumeDataset(_SubjectsMixin, _Base):
    """NIfTI subject volumes -> {"image": (C, X, Y, Z) contrasts as channels in [-1, 1], "seg": (1, X, Y, Z)}.
    With ``target`` (and ``source``) it is a paired dataset: image = target contrast, cond_image = source(s)."""

    def __init__(self, path, split: str = "train", contrasts: Sequence[str] | None = None, seg: bool = False,
                 size: int | Sequence[int] | None = None, normalize: dict | str | None = None, canonical: bool = True,
                 spacing: Sequence[float] | None = None, source: Sequence[str] | str | None = None,
                 target: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0,
                 split_file: str | None = None, seed: int = 0, augment: dict | None = None) -> None:
        contrasts, self.source = _resolve_pair(contrasts, source, target)
        self.target = target
        self._init_subjects(path, contrasts, seg, split, val_fraction, test_fraction, split_file, seed)
        self.norm, self.canonical, self.spacing = normalize, canonical, spacing
        self.names = list(self.subjects)
        self.size = _size_tuple(size, 3)
        x, _, _ = self._load(self.names[0])
        c = 1 if target else x.shape[0]
        self.image_shape = (c,) + (self.size or tuple(x.shape[1:]))
        self.num_classes = 0
        self._setup_augment(augment, 3, seed)

    def _load(self, name):
        return load_subject(self.subjects[name], self.contrasts, with_seg=self.with_seg, normalize_cfg=self.norm,
                            canonical=self.canonical, spacing=self.spacing)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vol, seg, _ = self._load(self.names[index])
        x = torch.from_numpy(vol)
        if self.size is not None:
            x = resize(x, self.size)
        item = self._pair(x.float(), self.source, self.target)
        if self._augment is not None:
            item[IMAGE_KEY] = self._finish(item[IMAGE_KEY], None)
        if seg is not None:
            s = torch.from_numpy(seg)
            item[SEG_KEY] = resize(s.float(), self.size, mode="nearest").long() if self.size else s
        return item


# ------------------------------------------------------------------------------------------ slices + cache
class SliceDataset(_SubjectsMixin, _Base):
    """2D slices cut from NIfTI subject volumes along ``axis`` (after reorienting to RAS: 2 = axial), empty
    slices dropped (foreground fraction < ``min_foreground``), cached per subject under ``cache_dir`` so
    later runs (and an interrupted `meddiff data prepare`) reuse them. Items: {"image": (C, H, W) in [-1, 1],
    "seg": (1, H, W) when seg}, or with ``target`` a paired item {"image": target, "cond_image": sources}.
    ``per_slice``: ``normalize`` each slice on its own (as a reconstruction sees one slice) instead of the volume;
    ``pad_multiple``: pad whole slices with the background value to a multiple of this power of 2 (what a U-Net
    with log2(pad_multiple) down-sampling levels needs) instead of resizing them."""

    def __init__(self, path, split: str = "train", contrasts: Sequence[str] | None = None, seg: bool = False,
                 axis: int = 2, min_foreground: float = 0.05, size: int | Sequence[int] | None = None,
                 normalize: dict | str | None = None, canonical: bool = True, spacing: Sequence[float] | None = None,
                 cache_dir: str | None = None, source: Sequence[str] | str | None = None, target: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.0, split_file: str | None = None, seed: int = 0,
                 augment: dict | None = None, progress: bool = False, per_slice: bool = False,
                 pad_multiple: int | None = None) -> None:
        contrasts, self.source = _resolve_pair(contrasts, source, target)
        self.target = target
        self._init_subjects(path, contrasts, seg, split, val_fraction, test_fraction, split_file, seed)
        check_choice("axis", axis, (0, 1, 2, -1, -2, -3))
        if pad_multiple is not None and (isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int)
                                         or pad_multiple < 1 or pad_multiple & (pad_multiple - 1)):
            raise MeddiffError(f"pad_multiple={pad_multiple!r} must be a power of 2 (e.g. 8 for a U-Net with 4 levels)")
        if pad_multiple is not None and size is not None:
            raise MeddiffError("give size (resize slices) or pad_multiple (pad whole slices), not both")
        self.per_slice, self.pad_multiple = bool(per_slice), pad_multiple
        self.axis, self.min_foreground = axis, float(min_foreground)
        self.norm, self.canonical, self.spacing = normalize, canonical, spacing
        self.size = _size_tuple(size, 2)
        self.settings = {"contrasts": self.contrasts, "seg": self.with_seg, "axis": axis,
                         "min_foreground": self.min_foreground, "size": self.size, "normalize": normalize,
                         "canonical": canonical, "spacing": spacing}
        if per_slice or pad_multiple:  # new keys only when used: existing caches keep their names
            self.settings.update({"per_slice": self.per_slice, "pad_multiple": pad_multiple})
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self.cache = None
        if cache_dir is not None:
            key = hashlib.sha1(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
            self.cache = Path(cache_dir) / f"slices-{key}"
            self.cache.mkdir(parents=True, exist_ok=True)
            cfg_file = self.cache / "settings.json"
            if not cfg_file.exists():
                with io.atomic_path(cfg_file) as tmp:
                    tmp.write_text(json.dumps({**self.settings, "source": str(self.root)}, indent=1, default=str))
        self.build(progress=progress)
        self.index = [(s, i) for s in self.subjects for i in range(self._count[s])]
        if not self.index:
            raise MeddiffError(f"{self.root}: no slices left after the empty-slice filter (min_foreground="
                               f"{self.min_foreground}); lower it")
        first = self._arrays(self.index[0][0])["image"]
        c = 1 if target else first.shape[1]
        self.image_shape = (c,) + tuple(first.shape[2:])
        self.num_classes = 0
        self._setup_augment(augment, 2, seed)

    def _files(self, subject: str) -> dict[str, Path]:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", subject)
        return {k: self.cache / f"{safe}_{k}.npy" for k in ("image", "seg", "index", "stats")}

    def build(self, progress: bool = False) -> int:
        """Cut and cache every subject not cached yet (resumable); returns how many were processed now."""
        from tqdm import tqdm

        self._count: dict[str, int] = {}
        todo = []
        for s in self.subjects:
            if self.cache is not None and self._files(s)["index"].exists():
                self._count[s] = len(np.load(self._files(s)["index"]))
            else:
                todo.append(s)
        for s in tqdm(todo, desc="slicing volumes", unit="subject", disable=not progress):
            self._count[s] = self._cut(s)
        return len(todo)

    def _cut(self, subject: str) -> int:
        vol, seg, stats = load_subject(self.subjects[subject], self.contrasts, with_seg=self.with_seg,
                                       normalize_cfg="none" if self.per_slice else self.norm,
                                       canonical=self.canonical, spacing=self.spacing)
        both = np.concatenate([vol, seg.astype(np.float32)], 0) if seg is not None else vol
        cut = extract_slices(both, self.axis, channel_first=True)
        norm_cfg = NormConfig.from_dict(self.norm if self.norm is not None else DEFAULT_MR_NORM)
        kept = []
        for i, sl in cut:
            sl = np.array(sl, dtype=np.float32)
            if self.per_slice:
                for c in range(vol.shape[0]):
                    sl[c] = normalize(sl[c], norm_cfg)[0]
            # foreground judged on the first contrast in [-1, 1]: background sits at -1
            if self.min_foreground > 0 and foreground_fraction(sl[0], -0.95) < self.min_foreground:
                continue
            kept.append((i, sl))
        images, segs, idx = [], [], []
        for i, sl in kept:
            t = torch.from_numpy(np.ascontiguousarray(sl))
            img, s = t[: vol.shape[0]], t[vol.shape[0]:]
            if self.size is not None:
                img = resize(img, self.size)
                s = resize(s, self.size, mode="nearest") if s.numel() else s
            if self.pad_multiple:
                k = self.pad_multiple.bit_length() - 1
                img = fit_to_multiple(img, k, "pad", value=-1.0)
                s = fit_to_multiple(s, k, "pad", value=0.0) if s.numel() else s
            images.append(img.numpy())
            segs.append(s.numpy())
            idx.append(i)
        arrays = {"image": np.stack(images).astype(np.float32) if images else np.zeros((0, vol.shape[0], 1, 1), np.float32),
                  "seg": np.stack(segs).astype(np.uint8) if (segs and seg is not None) else np.zeros((0,), np.uint8),
                  "index": np.asarray(idx, dtype=np.int64),
                  "stats": np.asarray(json.dumps(stats))}
        if self.cache is None:
            self._memory[subject] = arrays
        else:
            files = self._files(subject)
            for k in ("image", "seg", "stats", "index"):  # index last: it marks the subject as complete
                with io.atomic_path(files[k]) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arrays[k], allow_pickle=False)
        return len(idx)

    def _arrays(self, subject: str) -> dict[str, np.ndarray]:
        if self.cache is None:
            return self._memory[subject]
        files = self._files(subject)
        return {"image": np.load(files["image"], mmap_mode="r"), "seg": np.load(files["seg"], mmap_mode="r")}

    def norm_stats(self, subject: str) -> list[dict]:
        """Per-contrast normalisation stats of ``subject`` (for `denormalize`)."""
        if self.cache is None:
            return json.loads(str(self._memory[subject]["stats"]))
        return json.loads(str(np.load(self._files(subject)["stats"])))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        subject, i = self.index[index]
        arrays = self._arrays(subject)
        x = torch.from_numpy(np.array(arrays["image"][i]))
        item = self._pair(x, self.source, self.target)
        item[IMAGE_KEY] = self._finish(item[IMAGE_KEY], None)
        if self.with_seg:
            item[SEG_KEY] = torch.from_numpy(np.array(arrays["seg"][i])).long()
        return item


def paired_dataset(path, split: str = "train", source: Sequence[str] | str = "t1", target: str = "t2",
                   slices: bool = True, **options) -> _Base:
    """Contrast A -> contrast B of the same subject: a SliceDataset (2D, default) or VolumeDataset (3D) with
    image = target contrast and cond_image = source contrast(s)."""
    cls = SliceDataset if slices else VolumeDataset
    return cls(path, split=split, source=source, target=target, **options)


# ------------------------------------------------------------------------------------------ CSV manifests
class CSVDataset(FolderDataset):
    """A CSV manifest with columns ``path`` (relative to the CSV), optional ``label``, ``subject`` and ``split``.
    With a split column the rows are used as given (checked: a subject never in two splits); otherwise the
    subjects are split like a folder."""

    def __init__(self, path, split: str = "train", size=None, channels=None, normalize=None,
                 val_fraction: float = 0.1, test_fraction: float = 0.0, split_file=None, seed: int = 0,
                 augment=None) -> None:
        check_choice("split", split, SPLIT_CHOICES)
        manifest = Path(path)
        try:
            with open(manifest, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except Exception as error:
            raise MeddiffError(f"{manifest}: cannot read the CSV manifest ({error})") from error
        if not rows or "path" not in rows[0]:
            raise MeddiffError(f"{manifest}: a manifest needs a header with a 'path' column (and optional label, "
                               "subject, split)")
        base = manifest.parent
        entries = []
        for n, r in enumerate(rows, start=2):
            p = Path(r["path"])
            p = p if p.is_absolute() else base / p
            if not p.exists():
                raise MeddiffError(f"{manifest}: line {n}: file {p} does not exist")
            entries.append((p, r.get("label", "") or "", r.get("subject") or p.stem, (r.get("split") or "").strip()))
        labels = sorted({e[1] for e in entries if e[1] != ""})
        numeric = all(re.fullmatch(r"-?\d+", lab) for lab in labels)
        self.class_names = labels if labels and not numeric else None
        to_int = (lambda lab: int(lab)) if numeric else (lambda lab: labels.index(lab))
        self.num_classes = (max(int(x) for x in labels) + 1 if numeric else len(labels)) if labels else 0
        if any(e[3] for e in entries):
            parts: dict[str, set] = {}
            for _, _, s, sp in entries:
                check_choice(f"{manifest}: split value", sp, ("train", "val", "test"))
                parts.setdefault(s, set()).add(sp)
            leaks = [s for s, v in parts.items() if len(v) > 1]
            if leaks:
                raise MeddiffError(f"{manifest}: subject(s) {leaks[:3]} appear in more than one split; splits must be by subject")
            self.split_parts = {k: sorted(s for s, v in parts.items() if k in v) for k in ("train", "val", "test")}
        else:
            self.split_parts = load_or_make_split([e[2] for e in entries], split_file, val_fraction=val_fraction,
                                                  test_fraction=test_fraction, seed=seed)
        keep = select(split, self.split_parts)
        self.items = [(p, to_int(lab) if lab != "" else -1, s) for p, lab, s, _ in entries if keep is None or s in keep]
        if not self.items:
            raise MeddiffError(f"{manifest}: split {split!r} is empty")
        self.channels = channels
        self.norm = NormConfig.from_dict(normalize) if normalize is not None else None
        first, _ = self.read(self.items[0][0])
        self.spatial_dims = first.ndim - 1
        self.size = _size_tuple(size, self.spatial_dims)
        self.image_shape = (first.shape[0],) + (self.size or tuple(first.shape[1:]))
        self._setup_augment(augment, self.spatial_dims, seed)


# ------------------------------------------------------------------------------------------ k-space
KSPACE_SUFFIXES = (".h5", ".hdf5", ".npy", ".cfl")


def _kspace_slices(path: Path) -> np.ndarray:
    """k-space of one file as (slices, coils, H, W) complex64 (single-coil files get coils = 1)."""
    arr, meta = io.read_image(path, key="kspace" if io.suffix_of(path) in (".h5", ".hdf5") else None)
    if not np.iscomplexobj(arr):
        raise MeddiffError(f"{path}: k-space must be complex, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        # fastMRI single-coil h5 is (slices, H, W); .npy/.cfl (coils, H, W)
        arr = arr[:, None] if meta.format == "hdf5" else arr[None]
    elif arr.ndim != 4:
        raise MeddiffError(f"{path}: k-space of shape {arr.shape} is not (H, W), (coils, H, W) or (slices, coils, H, W)")
    return arr.astype(np.complex64, copy=False)


class KspaceDataset(_Base):
    """Centred k-space files (fastMRI .h5, .npy, BART .cfl; single or multi-coil) -> per slice
    {"kspace": complex64 (coils, H, W), "image": RSS magnitude (1, H, W) scaled to [-1, 1] by its maximum,
    "scale": that maximum}. Split by file (one file = one subject)."""

    def __init__(self, path, split: str = "train", val_fraction: float = 0.1, test_fraction: float = 0.0,
                 split_file=None, seed: int = 0) -> None:
        check_choice("split", split, SPLIT_CHOICES)
        root = Path(path)
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and io.suffix_of(p) in KSPACE_SUFFIXES)
        if not files:
            raise MeddiffError(f"{root}: no k-space files ({', '.join(KSPACE_SUFFIXES)})")
        subjects = [p.stem for p in files]
        self.split_parts = load_or_make_split(subjects, split_file, val_fraction=val_fraction,
                                              test_fraction=test_fraction, seed=seed)
        keep = select(split, self.split_parts)
        self.files = [p for p, s in zip(files, subjects) if keep is None or s in keep]
        if not self.files:
            raise MeddiffError(f"{root}: split {split!r} is empty")
        self.index = []
        for p in self.files:
            n = _kspace_slices(p).shape[0]
            self.index += [(p, i) for i in range(n)]
        k = _kspace_slices(self.files[0])
        self.coils = k.shape[1]
        self.image_shape = (1,) + tuple(k.shape[2:])
        self.num_classes = 0
        self._augment = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, i = self.index[index]
        k = torch.from_numpy(np.ascontiguousarray(_kspace_slices(path)[i]))
        img = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
        rss = img.abs().pow(2).sum(0, keepdim=True).sqrt()
        scale = rss.max().clamp_min(1e-12)
        return {KSPACE_KEY: k, IMAGE_KEY: (rss / scale * 2 - 1).float(), "scale": scale.float()}


paired_dataset.forwards_to = (SliceDataset, VolumeDataset)  # type: ignore[attr-defined]
register_dataset("volumes", VolumeDataset)
register_dataset("slices", SliceDataset)
register_dataset("paired", paired_dataset)
register_dataset("csv", CSVDataset)
register_dataset("kspace", KspaceDataset)
