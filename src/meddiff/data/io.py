"""Readers and writers for medical image files; `read_image` picks the reader from the path.

Formats: NIfTI (nibabel), DICOM files and series folders (pydicom), PNG/JPEG (Pillow), NumPy .npy/.npz
(MedMNIST layout included), HDF5 in the fastMRI layout (h5py) and BART .cfl/.hdr k-space.
Every failure is a `MeddiffError` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from meddiff.data.meta import ImageMeta
from meddiff.errors import MeddiffError
from meddiff.files import atomic_path, write_png  # noqa: F401  (re-exported: the one atomic writer)

PathLike = str | os.PathLike

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NPY_SUFFIXES = (".npy",)
NPZ_SUFFIXES = (".npz",)
HDF5_SUFFIXES = (".h5", ".hdf5")
CFL_SUFFIXES = (".cfl", ".hdr")
IMAGE_FILE_SUFFIXES = (
    NIFTI_SUFFIXES + DICOM_SUFFIXES + PIL_SUFFIXES + NPY_SUFFIXES + NPZ_SUFFIXES + HDF5_SUFFIXES + CFL_SUFFIXES
)

# npz/h5 keys tried in this order when the caller names none.
DEFAULT_ARRAY_KEYS = ("image", "images", "img", "hu", "reconstruction_rss", "kspace", "data", "arr_0", "train_images")
MEDMNIST_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------- helpers
def suffix_of(path: PathLike) -> str:
    """Lower-case suffix, with the double suffix ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _sniff(path: Path) -> str | None:
    """Content type from the first bytes (None when unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if head.startswith(b"\x89HDF"):
        return "hdf5"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 4 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return "nifti"
    return None


_SNIFF_TO_FORMAT = {"png": "image", "jpeg": "image", "npy": "npy", "npz": "npz", "hdf5": "hdf5", "dicom": "dicom",
                    "nifti": "nifti"}
_FORMAT_HINT = {"image": ".png/.jpg", "npy": ".npy", "npz": ".npz", "hdf5": ".h5", "dicom": ".dcm", "nifti": ".nii"}


_FORMAT_BY_SUFFIX = {
    suffix: name
    for name, suffixes in (("nifti", NIFTI_SUFFIXES), ("dicom", DICOM_SUFFIXES), ("image", PIL_SUFFIXES),
                           ("npy", NPY_SUFFIXES), ("npz", NPZ_SUFFIXES), ("hdf5", HDF5_SUFFIXES),
                           ("cfl", CFL_SUFFIXES))
    for suffix in suffixes
}


def detect_format(path: PathLike) -> str:
    """Name of the reader for ``path``: nifti, dicom, dicom_series, image, npy, npz, hdf5 or cfl."""
    path = Path(path)
    if not path.exists():
        raise MeddiffError(f"{path}: no such file or folder")
    if path.is_dir():
        if not any(p.is_file() for p in path.iterdir()):
            raise MeddiffError(f"{path}: the folder is empty; point to an image file or a DICOM series folder")
        if _dicom_files(path):
            return "dicom_series"
        raise MeddiffError(f"{path}: folder holds no DICOM files; give an image file (NIfTI, DICOM, PNG, npy, npz, h5, cfl)"
                           " or use a dataset config for a folder of images")
    if path.stat().st_size == 0:
        raise MeddiffError(f"{path}: the file is empty (0 bytes)")
    suffix = suffix_of(path)
    by_suffix = _FORMAT_BY_SUFFIX.get(suffix)
    if by_suffix == "cfl":
        return "cfl"
    sniffed = _sniff(path)
    if by_suffix is None:
        if sniffed in _SNIFF_TO_FORMAT:
            return _SNIFF_TO_FORMAT[sniffed]
        raise MeddiffError(
            f"{path}: unknown file type {suffix or '(no extension)'}; supported: " + ", ".join(IMAGE_FILE_SUFFIXES)
        )
    # A content type that contradicts the extension is a wrong extension, reported as such.
    if sniffed is not None:
        expected_ok = {
            "nifti": {"nifti", "gzip"}, "dicom": {"dicom"}, "image": {"png", "jpeg"}, "npy": {"npy"},
            "npz": {"npz"}, "hdf5": {"hdf5"},
        }[by_suffix]
        if sniffed not in expected_ok and sniffed in _SNIFF_TO_FORMAT:
            real = _SNIFF_TO_FORMAT[sniffed]
            raise MeddiffError(
                f"{path}: wrong extension {suffix}: the content is {sniffed.upper()} data; rename it to {_FORMAT_HINT[real]}"
            )
    return by_suffix


def _fail(path: PathLike, what: str, error: BaseException | None = None) -> MeddiffError:
    detail = f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'})" if error else ""
    return MeddiffError(f"{path}: {what}{detail}")


def write_json(obj, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars become floats); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    return path


def _guess_modality(name: str) -> str | None:
    low = name.lower()
    if re.search(r"(^|[_\-.])(t1|t1ce|t1c|t1n|t1w|t2|t2w|t2f|flair|pd|dwi|mr|mri)([_\-.]|$)", low) or "ixi" in low:
        return "MR"
    if re.search(r"(^|[_\-.])(ct|hu)([_\-.]|$)", low):
        return "CT"
    return None


# --------------------------------------------------------------------------------------------- NIfTI
def read_nifti(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """NIfTI volume as stored (scl_slope/inter applied) with its affine, voxel spacing and axis codes."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as error:  # nibabel raises many types for truncated/corrupt files
        raise _fail(path, "not a readable NIfTI file (truncated or corrupt?)", error) from error
    affine = np.asarray(img.affine, dtype=np.float64)
    ndim_spatial = min(3, data.ndim)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:ndim_spatial])
    try:
        orientation = "".join(nib.aff2axcodes(affine))
    except Exception:
        orientation = None
    xyz_unit = img.header.get_xyzt_units()[0]
    meta = ImageMeta(
        path=str(path), format="nifti", shape=tuple(data.shape), dtype=str(data.dtype), spacing=zooms,
        affine=affine, orientation=orientation, modality=_guess_modality(path.name), units="a.u.",
        extra={"xyz_unit": xyz_unit},
    )
    return data, meta


def write_nifti(path: PathLike, array: np.ndarray, affine: np.ndarray | ImageMeta | None = None) -> Path:
    """Write ``array`` as NIfTI (.nii or .nii.gz) with ``affine`` (or a meta's affine) kept; atomic."""
    import nibabel as nib

    path = Path(path)
    if suffix_of(path) not in NIFTI_SUFFIXES:
        raise MeddiffError(f"{path}: a NIfTI output needs the extension .nii or .nii.gz")
    if isinstance(affine, ImageMeta):
        affine = affine.affine
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise MeddiffError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    array = np.asarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# --------------------------------------------------------------------------------------------- DICOM
def _dicom_files(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) that carry the DICM preamble or a .dcm-like suffix."""
    files = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if suffix_of(p) in DICOM_SUFFIXES or _sniff(p) == "dicom":
            files.append(p)
    return files


def _rescale(ds: Any, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return arr, False
    out = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if float(slope).is_integer() and float(intercept).is_integer() and out.size and np.abs(out).max() < 32767:
        out = out.astype(np.int16)
    return out, True


def _dicom_units(modality: str | None, rescaled: bool, ds: Any) -> str:
    if modality == "CT":
        return "HU"
    rescale_type = str(getattr(ds, "RescaleType", "") or "")
    return rescale_type or "a.u."


def read_dicom(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """One DICOM file: (rows, cols) or (frames, rows, cols), RescaleSlope/Intercept applied (CT in HU)."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as error:
        raise _fail(path, "not a readable DICOM file (truncated, corrupt or no pixel data)", error) from error
    modality = str(getattr(ds, "Modality", "") or "") or None
    arr, rescaled = _rescale(ds, arr)
    spacing = None
    if "PixelSpacing" in ds:
        dy, dx = (float(v) for v in ds.PixelSpacing)
        spacing = (dy, dx)
        if arr.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            dz = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
            spacing = (dz, dy, dx)
    meta = ImageMeta(
        path=str(path), format="dicom", shape=tuple(arr.shape), dtype=str(arr.dtype), spacing=spacing,
        modality=modality, units=_dicom_units(modality, rescaled, ds),
        channel_axis=arr.ndim - 1 if getattr(ds, "SamplesPerPixel", 1) == 3 else None,
        extra={"series_uid": str(getattr(ds, "SeriesInstanceUID", "")),
               "slice_thickness": float(getattr(ds, "SliceThickness", 0) or 0) or None,
               "rescaled": rescaled},
    )
    if spacing is not None and "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds and arr.ndim == 2:
        meta.affine = _slice_affine(ds, meta.extra["slice_thickness"] or 1.0)
        meta.orientation = _axcodes(meta.affine)
    return arr, meta


def _slice_affine(ds: Any, dz: float) -> np.ndarray:
    """Affine of one 2D slice (rows, cols) seen as a one-slice volume (row, col, 0) -> RAS mm."""
    row_cos = np.asarray(ds.ImageOrientationPatient[:3], dtype=float)
    col_cos = np.asarray(ds.ImageOrientationPatient[3:], dtype=float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = col_cos * dy
    lps[:3, 1] = row_cos * dx
    lps[:3, 2] = np.cross(row_cos, col_cos) * dz
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _axcodes(affine: np.ndarray) -> str | None:
    import nibabel as nib

    try:
        return "".join(nib.aff2axcodes(affine))
    except Exception:
        return None


def _dicom_affine(first: Any, last: Any, spacing_z: float, n_slices: int) -> np.ndarray:
    """Affine from (slice, row, col) indices to RAS mm (DICOM patient space is LPS, so x and y flip)."""
    row_cos = np.asarray(first.ImageOrientationPatient[:3], dtype=float)
    col_cos = np.asarray(first.ImageOrientationPatient[3:], dtype=float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    if n_slices > 1:
        step = (np.asarray(last.ImagePositionPatient, dtype=float) - origin) / (n_slices - 1)
    else:
        step = np.cross(row_cos, col_cos) * spacing_z
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_cos * dy
    lps[:3, 2] = row_cos * dx
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_dicom_series(folder: PathLike, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """A folder holding one DICOM series -> (slices, rows, cols), sorted along the slice normal by
    ImagePositionPatient, rescaled (CT in HU); spacing (dz, dy, dx) from slice positions and PixelSpacing."""
    import pydicom

    folder = Path(folder)
    files = _dicom_files(folder)
    if not files:
        raise MeddiffError(f"{folder}: no DICOM files in this folder")
    headers = []
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(str(f), stop_before_pixels=True)))
        except Exception as error:
            raise _fail(f, "not a readable DICOM file (truncated or corrupt?)", error) from error
    by_series: dict[str, list] = {}
    for f, ds in headers:
        by_series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise MeddiffError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {sorted(by_series)}")
        by_series = {series_uid: by_series[series_uid]}
    if len(by_series) > 1:
        counts = ", ".join(f"{uid[-12:] or '?'} ({len(v)} files)" for uid, v in by_series.items())
        raise MeddiffError(f"{folder}: mixed DICOM series in one folder: {counts}; put each series in its own folder")
    (uid, members), = by_series.items()
    for f, ds in members:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise MeddiffError(f"{f}: DICOM file lacks {tag}, so the series cannot be stacked into a volume")
    row_cos = np.asarray(members[0][1].ImageOrientationPatient[:3], float)
    col_cos = np.asarray(members[0][1].ImageOrientationPatient[3:], float)
    normal = np.cross(row_cos, col_cos)
    positions = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for _, ds in members])
    order = np.argsort(positions, kind="stable")
    members = [members[i] for i in order]
    positions = positions[order]
    if len(members) > 1:
        gaps = np.diff(positions)
        if np.any(gaps < 1e-4):
            i = int(np.argmin(gaps))
            raise MeddiffError(f"{folder}: two slices at the same position {positions[i]:.2f} mm "
                               f"({members[i][0].name}, {members[i + 1][0].name}); duplicate or mixed series")
        dz = float(np.median(gaps))
        bad = np.where(np.abs(gaps - dz) > 0.1 * dz + 1e-3)[0]
        if bad.size:
            i = int(bad[0])
            missing = int(round(gaps[i] / dz)) - 1
            what = f"about {missing} missing slice(s)" if missing >= 1 else "uneven slice spacing"
            raise MeddiffError(f"{folder}: {what} between positions {positions[i]:.2f} and {positions[i + 1]:.2f} mm "
                               f"(gap {gaps[i]:.2f} mm, expected {dz:.2f} mm)")
    else:
        dz = float(getattr(members[0][1], "SliceThickness", 1.0) or 1.0)
    slices = []
    rescaled_any = False
    for f, _ in members:
        try:
            ds = pydicom.dcmread(str(f))
            arr = ds.pixel_array
        except Exception as error:
            raise _fail(f, "DICOM pixel data cannot be decoded (truncated or corrupt?)", error) from error
        arr, rescaled = _rescale(ds, arr)
        rescaled_any |= rescaled
        slices.append(arr.astype(np.float32) if rescaled and arr.dtype != np.int16 else arr)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise MeddiffError(f"{folder}: slices of different sizes {sorted(shapes)}; not one series")
    volume = np.stack(slices, axis=0)
    first = members[0][1]
    modality = str(getattr(first, "Modality", "") or "") or None
    dy, dx = (float(v) for v in first.PixelSpacing)
    affine = _dicom_affine(first, members[-1][1], dz, len(members))
    meta = ImageMeta(
        path=str(folder), format="dicom_series", shape=tuple(volume.shape), dtype=str(volume.dtype),
        spacing=(abs(dz), dy, dx), affine=affine, orientation=_axcodes(affine), modality=modality,
        units=_dicom_units(modality, rescaled_any, first),
        extra={"series_uid": uid, "n_files": len(members), "slice_positions_mm": positions.tolist(),
               "series_description": str(getattr(first, "SeriesDescription", "") or "")},
    )
    return volume, meta


# --------------------------------------------------------------------------------------------- PNG/JPEG
def read_pil(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """PNG/JPEG/TIFF: grayscale -> (H, W); colour -> (3, H, W) with channel_axis 0 (alpha dropped)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("L", "I;16", "I;16B", "I", "F", "1"):
                arr = np.asarray(img.convert("L") if mode == "1" else img)
            elif mode in ("LA",):
                arr = np.asarray(img.convert("L"))
            else:
                arr = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
            fmt = (img.format or "").lower()
    except Exception as error:
        raise _fail(path, "not a readable PNG/JPEG image (truncated or corrupt?)", error) from error
    arr = np.ascontiguousarray(arr)
    meta = ImageMeta(path=str(path), format=fmt or "image", shape=tuple(arr.shape), dtype=str(arr.dtype),
                     spacing=None, units="a.u.", channel_axis=0 if arr.ndim == 3 else None)
    return arr, meta


# --------------------------------------------------------------------------------------------- NumPy
def read_npy(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """A .npy array as stored (no pickles)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as error:
        raise _fail(path, "not a readable .npy array (truncated or corrupt?)", error) from error
    is_complex = np.iscomplexobj(arr)
    meta = ImageMeta(path=str(path), format="npy", shape=tuple(arr.shape), dtype=str(arr.dtype),
                     modality="MR" if is_complex else _guess_modality(path.name), units="a.u.",
                     channel_axis=arr.ndim - 3 if is_complex and arr.ndim >= 3 else None,
                     extra={"kspace": True} if is_complex else {})
    return arr, meta


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz (no pickles), read fully so that a corrupt member fails here."""
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{path}: no such file (relative paths are taken from the current folder; "
                           "shipped data can be named as 'asset:NAME/FILE')")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as error:
        raise _fail(path, "not a readable .npz archive (truncated or corrupt?)", error) from error


def is_medmnist(arrays: dict[str, np.ndarray]) -> bool:
    """True for the MedMNIST layout: ``{split}_images`` and ``{split}_labels`` for some split."""
    return any(f"{s}_images" in arrays and f"{s}_labels" in arrays for s in MEDMNIST_SPLITS)


def _pick_key(path: Path, keys: list[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise MeddiffError(f"{path}: no array named {key!r}; available: {', '.join(keys)}")
        return key
    for k in DEFAULT_ARRAY_KEYS:
        if k in keys:
            return k
    if len(keys) == 1:
        return keys[0]
    raise MeddiffError(f"{path}: several arrays ({', '.join(keys)}); choose one with key=")


def read_npz(path: PathLike, key: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """One array of an .npz (``key`` or the first of DEFAULT_ARRAY_KEYS); MedMNIST files give
    ``train_images`` by default. Spacing is taken from a ``spacing*`` array when present."""
    path = Path(path)
    arrays = load_npz(path)
    if not arrays:
        raise MeddiffError(f"{path}: the .npz archive holds no arrays")
    chosen = _pick_key(path, list(arrays), key)
    arr = arrays[chosen]
    spacing = None
    for k, v in arrays.items():
        if k.startswith("spacing") and v.ndim == 1 and v.size in (2, 3):
            spacing = tuple(float(x) for x in v)
    modality = "CT" if chosen == "hu" else ("MR" if np.iscomplexobj(arr) else _guess_modality(path.name))
    meta = ImageMeta(path=str(path), format="npz", shape=tuple(arr.shape), dtype=str(arr.dtype), spacing=spacing,
                     modality=modality, units="HU" if chosen == "hu" else "a.u.",
                     extra={"key": chosen, "keys": sorted(arrays), "medmnist": is_medmnist(arrays)})
    return arr, meta


def read_medmnist(path: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST npz -> {split: (images, labels)} for the splits present (train, val, test)."""
    path = Path(path)
    arrays = load_npz(path)
    if not is_medmnist(arrays):
        raise MeddiffError(f"{path}: not a MedMNIST npz (expected train_images/train_labels...; found "
                           f"{', '.join(sorted(arrays)) or 'nothing'})")
    out = {}
    for split in MEDMNIST_SPLITS:
        if f"{split}_images" in arrays:
            images, labels = arrays[f"{split}_images"], arrays.get(f"{split}_labels")
            if labels is None or len(labels) != len(images):
                raise MeddiffError(f"{path}: {split}_labels missing or of a different length than {split}_images")
            out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------------------------- HDF5
def read_hdf5(path: PathLike, key: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """HDF5 in the fastMRI layout: ``kspace`` (slices, coils, H, W) complex, ``reconstruction_rss``
    (slices, H, W) and file attributes (kept in meta.extra). Default key: reconstruction_rss if present."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            keys = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            if not keys:
                raise MeddiffError(f"{path}: the HDF5 file holds no datasets")
            chosen = _pick_key(path, keys, key)
            arr = f[chosen][()]
            attrs = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in f.attrs.items()}
            shapes = {k: tuple(f[k].shape) for k in keys}
    except MeddiffError:
        raise
    except Exception as error:
        raise _fail(path, "not a readable HDF5 file (truncated or corrupt?)", error) from error
    is_k = chosen == "kspace" or np.iscomplexobj(arr)
    meta = ImageMeta(path=str(path), format="hdf5", shape=tuple(arr.shape), dtype=str(arr.dtype), modality="MR",
                     units="a.u.", channel_axis=arr.ndim - 3 if is_k and arr.ndim >= 4 else None,
                     extra={"key": chosen, "datasets": shapes, "attrs": attrs, "kspace": is_k})
    return arr, meta


# --------------------------------------------------------------------------------------------- BART cfl
def _cfl_base(path: Path) -> Path:
    return path.with_suffix("")


def read_cfl_raw(path: PathLike) -> np.ndarray:
    """BART .cfl/.hdr pair as an array with BART's dimension order (complex64, Fortran order)."""
    path = Path(path)
    base = _cfl_base(path)
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    for p in (hdr, cfl):
        if not p.exists():
            raise MeddiffError(f"{p}: missing; a BART array needs both {base.name}.hdr and {base.name}.cfl")
    try:
        lines = [ln.strip() for ln in hdr.read_text().splitlines()]
        dims_line = lines[lines.index("# Dimensions") + 1]
        dims = [int(d) for d in dims_line.split()]
    except Exception as error:
        raise _fail(hdr, "not a BART header (expected '# Dimensions' and a line of integers)", error) from error
    count = int(np.prod(dims))
    expected = count * 8
    size = cfl.stat().st_size
    if size != expected:
        raise MeddiffError(f"{cfl}: holds {size} bytes but the header dims {dims} need {expected} (truncated?)")
    data = np.fromfile(cfl, dtype=np.complex64, count=count)
    return data.reshape(dims, order="F")


def read_cfl(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """BART k-space -> (coils, ky, kx) (or (ky, kx) single-coil): BART dims (x, y, z, coil, ...) with
    singleton dims dropped and the coil axis (BART dim 3) moved in front of the spatial axes."""
    path = Path(path)
    raw = read_cfl_raw(path)
    dims = list(raw.shape) + [1] * max(0, 4 - raw.ndim)
    raw = raw.reshape(dims, order="A")
    coil_axis_first = np.moveaxis(raw, 3, 0)  # (coil, x, y, z, ...)
    keep = [0] + [i for i in range(1, coil_axis_first.ndim) if coil_axis_first.shape[i] > 1]
    squeezed = coil_axis_first.reshape([coil_axis_first.shape[i] for i in keep])
    if squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    arr = np.ascontiguousarray(squeezed.astype(np.complex64))
    meta = ImageMeta(path=str(_cfl_base(path)) + ".cfl", format="cfl", shape=tuple(arr.shape), dtype=str(arr.dtype),
                     modality="MR", units="a.u.", channel_axis=0 if arr.ndim >= 3 else None,
                     extra={"bart_dims": list(raw.shape), "kspace": True})
    return arr, meta


def write_cfl(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` with BART's dimension order as .cfl/.hdr (complex64, Fortran order); atomic."""
    base = _cfl_base(Path(path))
    arr = np.asarray(array, dtype=np.complex64)
    with atomic_path(base.with_suffix(".hdr")) as tmp_hdr, atomic_path(base.with_suffix(".cfl")) as tmp_cfl:
        tmp_hdr.write_text("# Dimensions\n" + " ".join(str(d) for d in arr.shape) + "\n")
        arr.ravel(order="F").tofile(tmp_cfl)
    return base.with_suffix(".cfl")


# --------------------------------------------------------------------------------------------- entry point
READERS: dict[str, Callable[..., tuple[np.ndarray, ImageMeta]]] = {
    "nifti": read_nifti,
    "dicom": read_dicom,
    "dicom_series": read_dicom_series,
    "image": read_pil,
    "npy": read_npy,
    "npz": read_npz,
    "hdf5": read_hdf5,
    "cfl": read_cfl,
}


def read_image(
    path: PathLike,
    *,
    key: str | None = None,
    expect_ndim: int | tuple[int, ...] | None = None,
    allow_nan: bool = False,
) -> tuple[np.ndarray, ImageMeta]:
    """Read any supported file or DICOM series folder -> (array, ImageMeta), reader picked from the path.

    ``key`` picks an array inside .npz/.h5; ``expect_ndim`` (e.g. 3, or (2, 3)) rejects arrays of
    another rank; NaN/Inf values are an error unless ``allow_nan``.
    """
    path = Path(path)
    fmt = detect_format(path)
    reader = READERS[fmt]
    if fmt in ("npz", "hdf5"):
        arr, meta = reader(path, key=key)
    else:
        arr, meta = reader(path)
    if expect_ndim is not None:
        allowed = (expect_ndim,) if isinstance(expect_ndim, int) else tuple(expect_ndim)
        if arr.ndim not in allowed:
            want = " or ".join(f"{n}D" for n in allowed)
            raise MeddiffError(f"{path}: expected a {want} array, got a {arr.ndim}D array of shape {arr.shape}")
    if not allow_nan and arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise MeddiffError(f"{path}: the image contains {bad} NaN/Inf value(s); clean the file or mask them first")
    return arr, meta


def write_image(path: PathLike, array: np.ndarray, meta: ImageMeta | None = None) -> Path:
    """Write by extension: .nii/.nii.gz (affine from ``meta``), .png, .npy, .cfl."""
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(path, array, meta.affine if meta is not None else None)
    if suffix == ".png":
        return write_png(path, array)
    if suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(array), allow_pickle=False)
        return Path(path)
    if suffix in CFL_SUFFIXES:
        return write_cfl(path, array)
    raise MeddiffError(f"{path}: cannot write {suffix or 'files without extension'}; use .nii.gz, .nii, .png, .npy or .cfl")
