"""Readers and writers for medical image files; `read_image` picks the reader from the path.

Formats: NIfTI (nibabel), DICOM files and series folders (pydicom), PNG/JPEG (Pillow), NumPy .npy/.npz
(MedMNIST layout included), HDF5 in the fastMRI layout (h5py) and BART .cfl/.hdr k-space.
Every failure is a `MeddiffError` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
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


# ------------------------------------------------------------------------------------- allocation limits
# A file says in its header how big its array is; a corrupt file or a decompression bomb can claim gigabytes from
# a few bytes. Every reader checks the claim against these limits BEFORE reading the data.
MAX_BYTES = 4 * 2**30  # the largest array a file may make us allocate; env MEDDIFF_MAX_BYTES or max_bytes= overrides
MAX_COMPRESSION_RATIO = 1000  # claimed bytes per compressed byte; env MEDDIFF_MAX_RATIO (0 turns the check off)
RATIO_FLOOR_BYTES = 256 * 2**20  # the ratio bound applies to claims above this (a small all-zero mask may exceed it)


def _env_number(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise MeddiffError(f"environment variable {name}={value!r} is not a number of bytes") from None
    if number < 0:
        raise MeddiffError(f"environment variable {name}={value!r} must not be negative")
    return int(number)


def max_bytes_limit(max_bytes: int | None = None) -> int:
    """The allocation limit in bytes: ``max_bytes``, else env MEDDIFF_MAX_BYTES, else MAX_BYTES."""
    return int(max_bytes) if max_bytes is not None else _env_number("MEDDIFF_MAX_BYTES", MAX_BYTES)


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def check_claim(path: PathLike, shape, itemsize: float, *, what: str = "the header", dtype: object = "",
                max_bytes: int | None = None, compressed_bytes: int | None = None,
                stored_bytes: int | None = None, stored_itemsize: float | None = None) -> int:
    """Refuse (MeddiffError) an array whose header-claimed size exceeds the limit, or that claims more than
    MAX_COMPRESSION_RATIO times its ``compressed_bytes`` (above RATIO_FLOOR_BYTES), or more than the
    ``stored_bytes`` an uncompressed file holds (``stored_itemsize`` bytes per element when the stored form differs
    from the array, e.g. 1-bit DICOM); returns the claimed bytes. Python ints: no overflow."""
    shape = tuple(int(d) for d in shape)
    described = f"{what} claims shape {shape}{f' {dtype}' if dtype != '' else ''}"
    if any(d < 0 for d in shape):
        raise MeddiffError(f"{path}: {described}, a negative size (corrupt header)")
    count = 1
    for d in shape:
        count *= d
    claim = int(count * itemsize)
    limit = max_bytes_limit(max_bytes)
    if claim > limit:
        raise MeddiffError(f"{path}: {described} = {_human(claim)}, above the limit of {_human(limit)}; if the file "
                           f"is genuine, raise it (environment MEDDIFF_MAX_BYTES={claim} or max_bytes=)")
    stored_claim = claim if stored_itemsize is None else int(math.ceil(count * stored_itemsize))
    if stored_bytes is not None and stored_claim > stored_bytes:
        raise MeddiffError(f"{path}: {described} = {_human(stored_claim)} but the file holds {_human(stored_bytes)} "
                           "of data (truncated or corrupt)")
    ratio_limit = _env_number("MEDDIFF_MAX_RATIO", MAX_COMPRESSION_RATIO)
    if compressed_bytes is not None and ratio_limit and claim > RATIO_FLOOR_BYTES \
            and claim > ratio_limit * max(int(compressed_bytes), 1):
        raise MeddiffError(f"{path}: {described} = {_human(claim)} from {_human(compressed_bytes)} compressed, "
                           f"a ratio above {ratio_limit}:1 (corrupt or a decompression bomb); if the file is "
                           "genuine, set the environment MEDDIFF_MAX_RATIO=0")
    return claim


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
def _check_nifti(path: Path, img, max_bytes: int | None) -> None:
    """The header's shape x dtype against the limits (and, uncompressed, the file size) before any voxel is read."""
    dtype = img.header.get_data_dtype()
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        check_claim(path, img.shape, dtype.itemsize, dtype=dtype, max_bytes=max_bytes, compressed_bytes=size)
    else:
        offset = int(getattr(img.dataobj, "offset", 0) or 0)
        check_claim(path, img.shape, dtype.itemsize, dtype=dtype, max_bytes=max_bytes,
                    stored_bytes=max(size - offset, 0))


def read_nifti_input(path: PathLike, option: str) -> tuple[np.ndarray, ImageMeta]:
    """A command's NIfTI input (``option`` names the argument in the errors): it must exist, be .nii/.nii.gz and
    carry an affine; one-line ``MeddiffError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{option} {path}: file not found")
    if suffix_of(path) not in NIFTI_SUFFIXES:
        raise MeddiffError(f"{option} {path}: expected a NIfTI volume (.nii.gz or .nii)")
    array, meta = read_nifti(path)
    if meta.affine is None:
        raise MeddiffError(f"{option} {path}: no affine in the header")
    return array, meta


def read_nifti(path: PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """NIfTI volume as stored (scl_slope/inter applied) with its affine, voxel spacing and axis codes. The
    header's claimed size is checked against `check_claim`'s limits before the voxels are read."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for truncated/corrupt files
        raise _fail(path, "not a readable NIfTI file (truncated or corrupt?)", error) from error
    _check_nifti(path, img, max_bytes)
    try:
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


def _dicom_claim(ds: Any) -> tuple[tuple[int, ...], int, float] | None:
    """(shape, bytes per decoded element, bytes per stored element) that a DICOM header claims; None when it has
    no image (no Rows/Columns)."""
    if "Rows" not in ds or "Columns" not in ds:
        return None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 8) or 8)
    shape = (frames, int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    return shape, max(1, (bits + 7) // 8), bits / 8


def _check_dicom(path: Path, ds: Any, max_bytes: int | None) -> None:
    """Rows x Columns x frames x samples x bits against the limits and the pixel data the file holds."""
    claim = _dicom_claim(ds)
    if claim is None or "PixelData" not in ds:
        return
    shape, itemsize, stored_itemsize = claim
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    stored = len(ds.PixelData)
    if syntax is not None and getattr(syntax, "is_compressed", False):
        check_claim(path, shape, itemsize, what="the DICOM header", max_bytes=max_bytes, compressed_bytes=stored)
    else:
        check_claim(path, shape, itemsize, what="the DICOM header", max_bytes=max_bytes, stored_bytes=stored,
                    stored_itemsize=stored_itemsize)


def _decode_dicom(path: Path, max_bytes: int | None) -> tuple[Any, np.ndarray, bool]:
    """Read one DICOM file, check its claimed size, decode and rescale the pixels -> (dataset, array, rescaled)."""
    import pydicom

    what = "not a readable DICOM file (truncated, corrupt or no pixel data)"
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as error:
        raise _fail(path, what, error) from error
    _check_dicom(path, ds, max_bytes)
    try:
        arr = ds.pixel_array
    except Exception as error:
        raise _fail(path, what, error) from error
    arr, rescaled = _rescale(ds, arr)
    return ds, arr, rescaled


def read_dicom(path: PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """One DICOM file: (rows, cols) or (frames, rows, cols), RescaleSlope/Intercept applied (CT in HU). The
    header's claimed size is checked (`check_claim`) before the pixels are decoded."""
    path = Path(path)
    ds, arr, rescaled = _decode_dicom(path, max_bytes)
    modality = str(getattr(ds, "Modality", "") or "") or None
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


def read_dicom_series(folder: PathLike, series_uid: str | None = None, *,
                      max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """A folder holding one DICOM series -> (slices, rows, cols), sorted along the slice normal by
    ImagePositionPatient, rescaled (CT in HU); spacing (dz, dy, dx) from slice positions and PixelSpacing.
    The slice count x each header's claimed size is checked (`check_claim`) before any pixel is decoded."""
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
    claims = [c for c in (_dicom_claim(ds) for _, ds in members) if c is not None]
    if claims:
        shape, itemsize, _ = max(claims, key=lambda c: math.prod(c[0]) * c[1])
        slice_shape = shape[1:] if shape[0] == 1 else shape
        check_claim(folder, (len(members), *slice_shape), itemsize,
                    what=f"the series ({len(members)} slices) with its headers", max_bytes=max_bytes)
    slices = []
    rescaled_any = False
    for f, _ in members:
        ds, arr, rescaled = _decode_dicom(f, max_bytes)
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
_PIL_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}


def read_pil(path: PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """PNG/JPEG/TIFF: grayscale -> (H, W); colour -> (3, H, W) with channel_axis 0 (alpha dropped). The size in
    the header is checked (`check_claim`, the file size as the compressed size) before the pixels are decoded."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            bands = len(img.getbands())
            check_claim(path, (img.height, img.width) + ((bands,) if bands > 1 else ()),
                        _PIL_BYTES.get(img.mode, 1), what="the image header", dtype=img.mode, max_bytes=max_bytes,
                        compressed_bytes=path.stat().st_size)
            img.load()
            mode = img.mode
            if mode in ("L", "I;16", "I;16B", "I", "F", "1"):
                arr = np.asarray(img.convert("L") if mode == "1" else img)
            elif mode in ("LA",):
                arr = np.asarray(img.convert("L"))
            else:
                arr = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
            fmt = (img.format or "").lower()
    except MeddiffError:
        raise
    except Exception as error:
        raise _fail(path, "not a readable PNG/JPEG image (truncated or corrupt?)", error) from error
    arr = np.ascontiguousarray(arr)
    meta = ImageMeta(path=str(path), format=fmt or "image", shape=tuple(arr.shape), dtype=str(arr.dtype),
                     spacing=None, units="a.u.", channel_axis=0 if arr.ndim == 3 else None)
    return arr, meta


# --------------------------------------------------------------------------------------------- NumPy
def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an .npy stream, leaving ``handle`` at the start of the data."""
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(handle)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = read(handle)
    return tuple(shape), dtype


def check_npy(path: PathLike, *, max_bytes: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy header claims, refused (`check_claim`) when over the limit or larger than the
    file; nothing but the header is read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            shape, dtype = _npy_header(handle)
            offset = handle.tell()
    except Exception as error:
        raise _fail(path, "not a readable .npy array (truncated or corrupt?)", error) from error
    check_claim(path, shape, dtype.itemsize, dtype=dtype, max_bytes=max_bytes,
                stored_bytes=path.stat().st_size - offset)
    return shape, dtype


def read_npy(path: PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """A .npy array as stored (no pickles); its header's claimed size is checked first (`check_npy`)."""
    path = Path(path)
    check_npy(path, max_bytes=max_bytes)
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


def check_npz(path: PathLike, *, max_bytes: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{member: (shape, dtype)} from each member's .npy header (only the headers are decompressed), refused
    (`check_claim`) when a member or all together exceed the limit, a compressed member claims more than the
    compression ratio bound, or a stored one more than it holds."""
    path = Path(path)
    claims, total = {}, 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as handle:
                    shape, dtype = _npy_header(handle)
                    offset = handle.tell()
                name = info.filename[:-4]
                stored = info.compress_type == zipfile.ZIP_STORED
                total += check_claim(path, shape, dtype.itemsize, what=f"member {name!r}", dtype=dtype,
                                     max_bytes=max_bytes, compressed_bytes=None if stored else info.compress_size,
                                     stored_bytes=info.file_size - offset if stored else None)
                claims[name] = (shape, dtype)
    except MeddiffError:
        raise
    except Exception as error:
        raise _fail(path, "not a readable .npz archive (truncated or corrupt?)", error) from error
    limit = max_bytes_limit(max_bytes)
    if total > limit:
        raise MeddiffError(f"{path}: its {len(claims)} arrays claim {_human(total)} together, above the limit of "
                           f"{_human(limit)}; if the file is genuine, raise it (environment MEDDIFF_MAX_BYTES={total} "
                           "or max_bytes=)")
    return claims


def load_npz(path: PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """All arrays of an .npz (no pickles), read fully so that a corrupt member fails here; the members' headers
    are checked first (`check_npz`)."""
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{path}: no such file (relative paths are taken from the current folder; "
                           "shipped data can be named as 'asset:NAME/FILE')")
    check_npz(path, max_bytes=max_bytes)
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


def read_npz(path: PathLike, key: str | None = None, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """One array of an .npz (``key`` or the first of DEFAULT_ARRAY_KEYS); MedMNIST files give
    ``train_images`` by default. Spacing is taken from a ``spacing*`` array when present."""
    path = Path(path)
    arrays = load_npz(path, max_bytes=max_bytes)
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


def read_medmnist(path: PathLike, *, max_bytes: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST npz -> {split: (images, labels)} for the splits present (train, val, test)."""
    path = Path(path)
    arrays = load_npz(path, max_bytes=max_bytes)
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
def read_hdf5(path: PathLike, key: str | None = None, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """HDF5 in the fastMRI layout: ``kspace`` (slices, coils, H, W) complex, ``reconstruction_rss``
    (slices, H, W) and file attributes (kept in meta.extra). Default key: reconstruction_rss if present.
    The dataset's shape x dtype is checked (`check_claim`, its storage size as the compressed size: unwritten
    chunks read as fill values) before it is read."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            keys = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            if not keys:
                raise MeddiffError(f"{path}: the HDF5 file holds no datasets")
            chosen = _pick_key(path, keys, key)
            dataset = f[chosen]
            check_claim(path, dataset.shape, dataset.dtype.itemsize, what=f"dataset {chosen!r}", dtype=dataset.dtype,
                        max_bytes=max_bytes, compressed_bytes=dataset.id.get_storage_size())
            arr = dataset[()]
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


def read_cfl_raw(path: PathLike, *, max_bytes: int | None = None) -> np.ndarray:
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
    size = cfl.stat().st_size
    count = check_claim(cfl, dims, 8, what=f"{hdr.name}", dtype="complex64", max_bytes=max_bytes) // 8
    expected = count * 8
    if size != expected:
        raise MeddiffError(f"{cfl}: holds {size} bytes but the header dims {dims} need {expected} (truncated?)")
    data = np.fromfile(cfl, dtype=np.complex64, count=count)
    return data.reshape(dims, order="F")


def read_cfl(path: PathLike, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """BART k-space -> (coils, ky, kx) (or (ky, kx) single-coil): BART dims (x, y, z, coil, ...) with
    singleton dims dropped and the coil axis (BART dim 3) moved in front of the spatial axes."""
    path = Path(path)
    raw = read_cfl_raw(path, max_bytes=max_bytes)
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
    max_bytes: int | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read any supported file or DICOM series folder -> (array, ImageMeta), reader picked from the path.

    ``key`` picks an array inside .npz/.h5; ``expect_ndim`` (e.g. 3, or (2, 3)) rejects arrays of
    another rank; NaN/Inf values are an error unless ``allow_nan``. No file may make us allocate more than
    ``max_bytes`` (default: env MEDDIFF_MAX_BYTES, else MAX_BYTES) or claim more than MAX_COMPRESSION_RATIO times
    its compressed size: the header's claim is checked before the data is read (`check_claim`).
    """
    path = Path(path)
    fmt = detect_format(path)
    reader = READERS[fmt]
    if fmt in ("npz", "hdf5"):
        arr, meta = reader(path, key=key, max_bytes=max_bytes)
    else:
        arr, meta = reader(path, max_bytes=max_bytes)
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
