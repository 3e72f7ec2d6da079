"""CT files: HU images in (``read_hu``), sinograms, view angles and their geometry sidecar in and out, each checked
with a one-line ``MeddiffError`` naming the argument."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from meddiff.errors import MeddiffError

HU_RANGE = (-1100.0, 4000.0)  # values outside get a warning: probably not HU


def read_hu(path, *, axis: int | None = None, argument: str = "--image") -> tuple[np.ndarray, float | None]:
    """An HU image (H, W) or volume -> (float32 (D, H, W) or (H, W), in-plane pixel size in mm or None).
    ``axis``: the slice axis of a 3D array (default: 0 for .npy/.npz/DICOM (D, H, W), -1 for NIfTI (x, y, z));
    slices are moved to axis 0. Values outside ``HU_RANGE`` get a warning naming the range."""
    from meddiff.data import read_image

    try:
        image, meta = read_image(path, expect_ndim=(2, 3))
    except MeddiffError as error:
        raise MeddiffError(f"{argument}: {error}") from None
    if np.iscomplexobj(image):
        raise MeddiffError(f"{argument} {path}: complex values; a CT image is real (HU)")
    image = np.asarray(image, dtype=np.float32)
    spacing = None
    if image.ndim == 3:
        axis = (-1 if meta.format == "nifti" else 0) if axis is None else axis
        if not -3 <= axis < 3:
            raise MeddiffError(f"--axis {axis} is out of range for a 3D image")
        image = np.moveaxis(image, axis, 0)
        if meta.spacing is not None and len(meta.spacing) == 3:
            rest = [s for i, s in enumerate(meta.spacing) if i != axis % 3]
            spacing = float(rest[0]) if abs(rest[0] - rest[1]) < 1e-6 else None
    elif meta.spacing is not None and len(meta.spacing) == 2 and abs(meta.spacing[0] - meta.spacing[1]) < 1e-6:
        spacing = float(meta.spacing[0])
    if meta.format in ("npy", "npz"):
        spacing = None  # no spacing stored: the caller's default
    low, high = float(image.min()), float(image.max())
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        warnings.warn(f"{argument} {path}: values {low:g}..{high:g} fall outside [{HU_RANGE[0]:g}, {HU_RANGE[1]:g}] "
                      "HU; is the image in Hounsfield units?", stacklevel=2)
    return image, spacing


def check_sinogram(sinogram: np.ndarray, argument: str = "--sinogram", *, counts: bool = False) -> np.ndarray:
    """float32 (V, D) or (S, V, D); NaN/Inf, other ranks and (``counts``) negative counts are errors."""
    s = np.asarray(sinogram)
    if s.ndim not in (2, 3) or np.iscomplexobj(s) or s.dtype.kind not in "fiu":
        raise MeddiffError(f"{argument}: expected a real (views, detectors) or (slices, views, detectors) array; got "
                           f"{s.dtype} of shape {s.shape}")
    s = s.astype(np.float32)
    if not np.isfinite(s).all():
        bad = int(s.size - np.count_nonzero(np.isfinite(s)))
        raise MeddiffError(f"{argument}: {bad} NaN/Inf value(s) in the sinogram; fix or drop those rays")
    if counts and (s < 0).any():
        raise MeddiffError(f"{argument}: {int((s < 0).sum())} negative photon count(s) (min {float(s.min()):g}); "
                           "counts must be >= 0 (or drop --dose if the file holds post-log line integrals)")
    return s


def check_angles(angles: np.ndarray, views: int, argument: str = "--angles") -> np.ndarray:
    """float64 (V,) radians matching the sinogram's ``views``."""
    a = np.asarray(angles)
    if a.ndim != 1 or a.dtype.kind not in "fiu":
        raise MeddiffError(f"{argument}: expected a 1D array of view angles in radians; got {a.dtype} of shape "
                           f"{a.shape}")
    if len(a) != views:
        raise MeddiffError(f"{argument}: {len(a)} angles but the sinogram has {views} views; give one angle (radians) "
                           "per sinogram row")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise MeddiffError(f"{argument}: NaN/Inf angles; give finite view angles in radians")
    if np.abs(a).max() > 4 * math.pi:
        raise MeddiffError(f"{argument}: angles up to {np.abs(a).max():g}: these look like degrees; give radians")
    return a


def load_array(path, argument: str) -> np.ndarray:
    """A .npy file (no pickles), the header checked against the size limit first."""
    from meddiff.data.io import read_npy

    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise MeddiffError(f"{argument} {str(path)!r} must be a .npy file")
    if not path.is_file():
        raise MeddiffError(f"{argument} {str(path)!r}: no such file")
    try:
        array, _ = read_npy(path)
    except MeddiffError as error:
        raise MeddiffError(f"{argument}: {error}") from None
    return array


def sidecar_path(sinogram_path) -> Path:
    """SINO.json beside SINO.npy: the geometry ``simulate-ct`` used (pixel size, water mu, dose, views, arc)."""
    return Path(sinogram_path).with_suffix(".json")


def read_sidecar(sinogram_path) -> dict:
    path = sidecar_path(sinogram_path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MeddiffError(f"{path}: unreadable geometry sidecar ({error}); fix or delete it") from None


def save_npy(array: np.ndarray, path, argument: str) -> Path:
    """``meddiff.files.write_npy`` (atomic, .npy only), argument order of the CT CLI."""
    from meddiff.files import write_npy

    return write_npy(path, array, argument)
