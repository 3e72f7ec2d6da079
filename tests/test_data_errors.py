"""Bad input: corrupted copies of the real files (in tmp_path) give a one-line MeddiffError naming the file
and the problem, and no partial output files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from meddiff.data import asset_path, build_dataset, read_image, write_nifti, write_png
from meddiff.data.inspect import preview
from meddiff.errors import MeddiffError


def _truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _error(path_or_call, match, name):
    with pytest.raises(MeddiffError) as info:
        path_or_call() if callable(path_or_call) else read_image(path_or_call)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert name in msg, f"{name!r} not named in: {msg}"
    assert pytest.importorskip("re").search(match, msg), msg
    return msg


def test_truncated_and_corrupt_nifti(shared_data, tmp_path):
    bad = _truncate(shared_data / "brats_case_1" / "TCGA-FG-6692_t1.nii.gz", tmp_path / "cut_t1.nii.gz")
    _error(bad, "not a readable NIfTI", "cut_t1.nii.gz")
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _error(garbage, "NIfTI", "garbage.nii")


def test_truncated_dicom(shared_data, tmp_path):
    bad = _truncate(shared_data / "dicom_small" / "CT_small.dcm", tmp_path / "ct.dcm", 0.3)
    _error(bad, "DICOM", "ct.dcm")


def _ct_slices(shared_data, tmp_path, n=6):
    import pydicom

    files = sorted((shared_data / "ct_chest_dicom" / "dicom").glob("*.dcm"))
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    out = tmp_path / "series"
    out.mkdir()
    for f in by_z[10:10 + n]:
        shutil.copy(f, out / f.name)
    return out, sorted(out.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def test_dicom_folder_with_missing_slice(shared_data, tmp_path):
    folder, files = _ct_slices(shared_data, tmp_path)
    files[2].unlink()
    _error(folder, r"about 1 missing slice", "series")


def test_dicom_folder_with_mixed_series(shared_data, tmp_path):
    import pydicom

    folder, files = _ct_slices(shared_data, tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.save_as(files[0])
    _error(folder, "mixed DICOM series", "series")


def test_dicom_folder_with_truncated_slice(shared_data, tmp_path):
    folder, files = _ct_slices(shared_data, tmp_path)
    _truncate(files[3], files[3], 0.5)
    _error(folder, "DICOM", files[3].name)


def test_empty_folder_and_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    _error(tmp_path / "empty", "empty", "empty")
    _error(tmp_path / "nothing.nii.gz", "no such file", "nothing.nii.gz")
    (tmp_path / "zero.npy").write_bytes(b"")
    _error(tmp_path / "zero.npy", "empty", "zero.npy")
    _error(lambda: build_dataset({"kind": "folder", "path": str(tmp_path / "empty")}), "no image files", "empty")


def test_wrong_extension(tmp_path):
    png = asset_path("brain_mr_slices/png/IXI012-HH-1211_slice060.png")
    shutil.copy(png, tmp_path / "scan.nii.gz")
    _error(tmp_path / "scan.nii.gz", r"wrong extension .nii.gz.*PNG.*rename it to .png", "scan.nii.gz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    shutil.copy(tmp_path / "a.npy", tmp_path / "a.png")
    _error(tmp_path / "a.png", "wrong extension", "a.png")
    (tmp_path / "notes.xyz").write_text("hello")
    _error(tmp_path / "notes.xyz", "unknown file type .xyz", "notes.xyz")


def test_4d_where_3d_expected(shared_data, tmp_path):
    epi = shared_data / "nibabel_brain_samples" / "example4d.nii.gz"
    if not epi.exists():
        epi = tmp_path / "x_t1.nii.gz"
        write_nifti(epi, np.zeros((4, 4, 4, 2), np.float32))
    _error(lambda: read_image(epi, expect_ndim=3), r"expected a 3D array, got a 4D array", epi.name)
    # a volume dataset meets the 4D file
    root = tmp_path / "vols"
    root.mkdir()
    shutil.copy(epi, root / "sub01_t1.nii.gz")
    _error(lambda: build_dataset({"kind": "volumes", "path": str(root), "val_fraction": 0}, "all"),
           "expected a 3D array", "sub01_t1.nii.gz")


def test_nan_in_image(shared_data, tmp_path):
    vol = read_image(shared_data / "nibabel_brain_samples" / "anatomical.nii")[0].astype(np.float32) \
        if (shared_data / "nibabel_brain_samples" / "anatomical.nii").exists() else np.ones((5, 5, 5), np.float32)
    vol[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan_t1.nii.gz", vol, np.eye(4))
    _error(tmp_path / "nan_t1.nii.gz", r"1 NaN/Inf", "nan_t1.nii.gz")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.inf]]))
    _error(tmp_path / "nan.npy", "NaN/Inf", "nan.npy")
    assert np.isnan(read_image(tmp_path / "nan_t1.nii.gz", allow_nan=True)[0]).sum() == 1


def test_truncated_npz_h5_cfl(shared_data, tmp_path):
    bad = _truncate(shared_data / "medmnist" / "pneumoniamnist.npz", tmp_path / "pm.npz")
    _error(bad, "not a readable .npz", "pm.npz")
    _error(lambda: build_dataset({"kind": "medmnist", "path": str(bad)}), ".npz", "pm.npz")
    import h5py

    with h5py.File(tmp_path / "full.h5", "w") as f:
        f.create_dataset("kspace", data=np.load(shared_data / "mri_kspace_brain_8ch" / "kspace.npy")[None])
    _truncate(tmp_path / "full.h5", tmp_path / "cut.h5")
    _error(tmp_path / "cut.h5", "HDF5", "cut.h5")
    from meddiff.data import write_cfl

    write_cfl(tmp_path / "k", np.ones((1, 8, 8, 2), np.complex64))
    _truncate(tmp_path / "k.cfl", tmp_path / "k.cfl", 0.5)
    _error(tmp_path / "k.cfl", r"holds 512 bytes but the header dims \[1, 8, 8, 2\] need 1024", "k.cfl")
    (tmp_path / "k.cfl").unlink()
    _error(tmp_path / "k.hdr", "missing", "k.cfl")


def test_no_partial_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MeddiffError):
        write_png(out / "nan.png", np.array([[0.0, np.nan]]))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(MeddiffError):
        preview(bad, out / "p.png")
    with pytest.raises(MeddiffError):
        write_nifti(out / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(3))
    assert list(out.iterdir()) == []


def test_volume_folder_missing_contrast_named(tmp_path):
    root = tmp_path / "brats"
    shutil.copytree(asset_path("brats_tcga_2mm"), root, ignore=shutil.ignore_patterns("*.md"))
    (next(root.rglob("*_t2.nii.gz"))).unlink()
    _error(lambda: build_dataset({"kind": "volumes", "path": str(root), "contrasts": ["t1", "t2"]}),
           r"subject TCGA-FG-6692 lacks t2", "brats")
