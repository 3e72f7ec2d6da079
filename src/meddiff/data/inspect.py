"""Summaries and previews of image files, DICOM series and dataset folders (used by `meddiff data`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meddiff.data import io
from meddiff.data.meta import ImageMeta
from meddiff.data.transforms import WINDOW_PRESETS, apply_window, check_choice, to_canonical
from meddiff.errors import MeddiffError

PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)


def _intensity_stats(arr: np.ndarray) -> dict[str, Any]:
    a = np.abs(arr) if np.iscomplexobj(arr) else arr
    a = np.asarray(a, dtype=np.float64).ravel()
    finite = np.isfinite(a)
    n_bad = int(a.size - finite.sum())
    a = a[finite]
    if a.size > 4_000_000:  # subsample big volumes for the percentiles
        a = a[:: a.size // 4_000_000 + 1]
    if a.size == 0:
        return {"nonfinite": n_bad}
    pct = np.percentile(a, PERCENTILES)
    return {
        "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std()),
        "percentiles": {str(p): float(v) for p, v in zip(PERCENTILES, pct)},
        "nonfinite": n_bad, "of_magnitude": bool(np.iscomplexobj(arr)),
    }


def inspect_file(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """Format, shape, dtype, spacing, orientation, modality, units and intensity statistics of one file or
    DICOM series folder."""
    arr, meta = io.read_image(path, key=key, allow_nan=True)
    info = meta.to_dict()
    info.pop("affine", None)
    info["affine"] = meta.affine.round(4).tolist() if meta.affine is not None else None
    info["kind"] = "image"
    info["intensity"] = _intensity_stats(arr)
    return info


def inspect_folder(path: str | Path) -> dict[str, Any]:
    """A dataset folder: file counts by type, class sub-folders, BraTS-style subjects, and the first image."""
    from meddiff.data.volumes import discover_subjects

    root = Path(path)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise MeddiffError(f"{root}: the folder is empty")
    by_type = Counter(io.suffix_of(p) or "(none)" for p in files)
    images = [p for p in files if io.suffix_of(p) in io.IMAGE_FILE_SUFFIXES and io.suffix_of(p) != ".hdr"]
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    info: dict[str, Any] = {"kind": "dataset_folder", "path": str(root), "n_files": len(files),
                            "file_types": dict(by_type), "n_images": len(images), "subfolders": subdirs[:50]}
    subjects = discover_subjects(root, strict=False)
    if subjects:
        contrasts = Counter(c for files_ in subjects.values() for c in files_)
        info["subjects"] = len(subjects)
        info["contrasts"] = dict(contrasts)
    if images:
        info["first_image"] = inspect_file(images[0])
    return info


def inspect_path(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """`inspect_file` for files and DICOM folders, `inspect_folder` for other folders."""
    p = Path(path)
    if not p.exists():
        raise MeddiffError(f"{p}: no such file or folder")
    if p.is_dir():
        if not any(p.iterdir()):
            raise MeddiffError(f"{p}: the folder is empty")
        if io._dicom_files(p):
            return inspect_file(p)
        return inspect_folder(p)
    return inspect_file(p, key=key)


def format_report(info: dict[str, Any], indent: str = "") -> str:
    """Human-readable lines for an `inspect_path` result."""
    lines = []
    if info.get("kind") == "dataset_folder":
        lines.append(f"{indent}dataset folder  {info['path']}")
        lines.append(f"{indent}files           {info['n_files']} ({', '.join(f'{k}: {v}' for k, v in info['file_types'].items())})")
        if info.get("subfolders"):
            lines.append(f"{indent}sub-folders     {', '.join(info['subfolders'][:10])}{' ...' if len(info['subfolders']) > 10 else ''}")
        if info.get("subjects"):
            lines.append(f"{indent}subjects        {info['subjects']} (contrasts: {', '.join(f'{k} x{v}' for k, v in info['contrasts'].items())})")
        if info.get("first_image"):
            lines.append(f"{indent}first image:")
            lines.append(format_report(info["first_image"], indent + "  "))
        return "\n".join(lines)
    fmt = lambda v: "?" if v is None else v  # noqa: E731
    spacing = "x".join(f"{s:g}" for s in info["spacing"]) + " mm" if info.get("spacing") else "?"
    lines += [
        f"{indent}file         {info['path']}",
        f"{indent}format       {info['format']}" + (f" (array {info['extra']['key']!r})" if info["extra"].get("key") else ""),
        f"{indent}shape        {tuple(info['shape'])}  dtype {info['dtype']}",
        f"{indent}spacing      {spacing}  orientation {fmt(info.get('orientation'))}",
        f"{indent}modality     {fmt(info.get('modality'))}  units {fmt(info.get('units'))}",
    ]
    st = info["intensity"]
    if "min" in st:
        mag = " (magnitude)" if st.get("of_magnitude") else ""
        lines.append(f"{indent}intensity    min {st['min']:.6g}  max {st['max']:.6g}  mean {st['mean']:.6g}  std {st['std']:.6g}{mag}")
        lines.append(f"{indent}percentiles  " + "  ".join(f"p{k} {v:.5g}" for k, v in st["percentiles"].items()))
    if st.get("nonfinite"):
        lines.append(f"{indent}WARNING      {st['nonfinite']} NaN/Inf values")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ preview
def _display_2d(img: np.ndarray, meta: ImageMeta, window: str | None) -> np.ndarray:
    """Map one 2D slice to 0..255 uint8: CT window (HU) or 0.5-99.5 percentiles."""
    if window is not None or meta.units == "HU":
        y = apply_window(img.astype(np.float32), window or "soft_tissue", out_range=(0.0, 1.0))
    else:
        a = img.astype(np.float64)
        lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0, 1)
        y = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return (np.asarray(y) * 255).round().astype(np.uint8)


def _kspace_to_image(k: np.ndarray) -> np.ndarray:
    """RSS of the centred orthonormal inverse FFT over the last two axes; coils at -3 when present."""
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return np.sqrt((np.abs(img) ** 2).sum(axis=-3)) if k.ndim >= 3 else np.abs(img)


def _three_planes(arr: np.ndarray, meta: ImageMeta, window: str | None) -> list[np.ndarray]:
    """Axial, coronal and sagittal middle slices of a volume reoriented to RAS, superior / anterior up, each
    resized so that pixels are square in mm (a 5 mm CT slab is not squeezed). Without an affine: raw axes."""
    if meta.format == "npz" and meta.extra.get("medmnist"):
        return [np.rot90(_display_2d(arr[0], meta, window))]
    spacing = [1.0, 1.0, 1.0]
    if meta.affine is not None:
        arr, meta = to_canonical(arr[None].astype(np.float32), meta, "RAS")
        arr, spacing = np.asarray(arr)[0], list(meta.spacing)
    elif meta.spacing:
        spacing = [float(v) for v in meta.spacing[-3:]]
    tiles = []
    for axis in (2, 1, 0):  # axial (R, A), coronal (R, S), sagittal (A, S)
        plane = np.rot90(_display_2d(np.take(arr, arr.shape[axis] // 2, axis=axis), meta, window))
        cols_mm, rows_mm = [spacing[a] for a in range(3) if a != axis]
        unit = min(spacing)
        size = (max(1, round(plane.shape[1] * cols_mm / unit)), max(1, round(plane.shape[0] * rows_mm / unit)))
        tiles.append(np.asarray(Image.fromarray(plane).resize(size, Image.BILINEAR)))
    return tiles


def preview(path: str | Path, out: str | Path, *, window: str | None = None, key: str | None = None) -> Path:
    """PNG of an image: 2D as is; 3D as the middle slices of the three planes side by side (CT window applied:
    ``window`` preset, default soft_tissue for HU data); k-space as its RSS image."""
    if window is not None:
        check_choice("window", window, WINDOW_PRESETS)
    arr, meta = io.read_image(path, key=key)
    if meta.extra.get("kspace"):
        while arr.ndim > 3:
            arr = arr[arr.shape[0] // 2]
        arr = _kspace_to_image(arr)
    elif np.iscomplexobj(arr):
        arr = np.abs(arr)
    if meta.channel_axis is not None and arr.ndim == 3:
        arr = arr.mean(axis=meta.channel_axis) if arr.shape[meta.channel_axis] != 3 else arr
        if arr.ndim == 3:  # colour image: write directly
            return io.write_png(out, arr.astype(np.uint8) if arr.dtype == np.uint8 else _display_2d(arr, meta, window))
    while arr.ndim > 3:  # e.g. (N, H, W, ...) stacks: take the first / middle item
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 2:
        panel = _display_2d(arr, meta, window)
    elif arr.ndim == 3:
        tiles = _three_planes(arr, meta, window)
        h = max(t.shape[0] for t in tiles)
        padded = [np.pad(t, ((0, h - t.shape[0]), (0, 4))) for t in tiles]
        panel = np.concatenate(padded, axis=1)[:, :-4]
    else:
        raise MeddiffError(f"{path}: cannot preview a {arr.ndim}D array of shape {arr.shape}")
    return io.write_png(out, panel)
