"""Readers/writers on the real files in ../shared/data: values, spacing, affine and round trips."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from meddiff.data import ImageMeta, read_cfl, read_image, write_cfl, write_image, write_nifti, write_png
from meddiff.data.io import detect_format


def test_nifti_roundtrip_keeps_affine_and_spacing(shared_data, tmp_path):
    src = shared_data / "brats_case_1" / "TCGA-FG-6692_t1.nii.gz"
    arr, meta = read_image(src)
    assert arr.shape == (240, 240, 155) and arr.dtype == np.int16
    assert meta.spacing == (1.0, 1.0, 1.0) and meta.orientation == "LPS" and meta.format == "nifti"
    assert (arr.min(), arr.max()) == (-52, 759)  # values given in the data README
    out = write_nifti(tmp_path / "copy.nii.gz", arr, meta)
    back, meta2 = read_image(out)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(meta2.affine, meta.affine)
    assert meta2.orientation == "LPS"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_nifti_scaled_uint8_gives_scanner_units(shared_data):
    arr, meta = read_image(shared_data / "ixi_t1_2mm_nichart" / "IXI012-HH-1211_T1.nii.gz")
    assert arr.shape == (120, 120, 90) and meta.spacing == (2.0, 2.0, 2.0) and meta.orientation == "PSR"
    assert 3540 < arr.max() < 3546  # README: max after scl_slope 13.8952 is 3543
    assert meta.modality == "MR"


def test_dicom_single_ct_is_in_hu(shared_data):
    arr, meta = read_image(shared_data / "dicom_small" / "CT_small.dcm")
    assert arr.shape == (128, 128)
    assert (int(arr.min()), int(arr.max())) == (-896, 1167)  # stored 128..2191, intercept -1024
    assert meta.modality == "CT" and meta.units == "HU"
    assert meta.spacing == pytest.approx((0.661468, 0.661468))
    mr, mr_meta = read_image(shared_data / "dicom_small" / "MR_small.dcm")
    assert mr.shape == (64, 64) and mr_meta.modality == "MR" and mr_meta.units != "HU"


def test_dicom_series_matches_reference_hu_volume(shared_data):
    vol, meta = read_image(shared_data / "ct_chest_dicom" / "dicom")
    ref = np.load(shared_data / "ct_chest_dicom" / "ct_hu.npz")
    np.testing.assert_array_equal(vol, ref["hu"])  # sorted by position, rescaled to HU
    np.testing.assert_allclose(meta.spacing, ref["spacing_zyx_mm"])
    assert meta.units == "HU" and meta.format == "dicom_series"
    pos = np.asarray(meta.extra["slice_positions_mm"])
    np.testing.assert_allclose(pos, ref["z_positions_mm"])
    # The affine sends voxel (0,0,0) to the first slice's ImagePositionPatient (LPS -> RAS flips x, y).
    lps0 = ref["origin_xyz_mm"]
    np.testing.assert_allclose(meta.affine[:3, 3], [-lps0[0], -lps0[1], lps0[2]], atol=1e-3)


def test_dicom_series_order_does_not_depend_on_file_names(shared_data, tmp_path):
    import pydicom

    files = sorted((shared_data / "ct_chest_dicom" / "dicom").glob("*.dcm"))
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    chosen = by_z[40:46]
    for i, f in enumerate(reversed(chosen)):  # names in the reverse anatomical order
        shutil.copy(f, tmp_path / f"{i:02d}.dcm")
    vol, meta = read_image(tmp_path)
    ref = np.load(shared_data / "ct_chest_dicom" / "ct_hu.npz")["hu"][40:46]
    np.testing.assert_array_equal(vol, ref)
    assert meta.spacing[0] == pytest.approx(3.0)


def test_png_gray_and_rgb_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    a, m = read_image(write_png(tmp_path / "g.png", gray))
    np.testing.assert_array_equal(a, gray)
    assert m.channel_axis is None
    b, m = read_image(write_png(tmp_path / "c.png", rgb))
    np.testing.assert_array_equal(b, rgb)
    assert m.channel_axis == 0
    f, _ = read_image(write_png(tmp_path / "f.png", np.linspace(-1, 1, 20).reshape(4, 5)))
    assert f.min() == 0 and f.max() == 255


def test_jpeg_reads(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "x.jpg")
    a, m = read_image(tmp_path / "x.jpg")
    assert a.shape == (3, 8, 8) and abs(int(a.mean()) - 120) <= 2 and m.format == "jpeg"


def test_npz_medmnist_and_key(shared_data):
    arr, meta = read_image(shared_data / "medmnist" / "pneumoniamnist.npz")
    assert arr.shape == (3882, 28, 28) and meta.extra["medmnist"] and meta.extra["key"] == "train_images"
    val, _ = read_image(shared_data / "medmnist" / "pneumoniamnist.npz", key="val_images")
    assert val.shape == (524, 28, 28)


def test_npy_kspace(shared_data):
    k, meta = read_image(shared_data / "mri_kspace_brain_8ch" / "kspace.npy")
    assert k.shape == (8, 230, 180) and k.dtype == np.complex64 and meta.channel_axis == 0


def test_hdf5_fastmri_layout(shared_data, tmp_path):
    k = np.load(shared_data / "mri_kspace_brain_8ch" / "kspace.npy")
    rss = np.load(shared_data / "mri_kspace_brain_8ch" / "rss_reference.npy")
    path = tmp_path / "file_brain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.stack([k, k]))
        f.create_dataset("reconstruction_rss", data=np.stack([rss, rss]))
        f.attrs["acquisition"] = "AXT1"
        f.attrs["max"] = float(rss.max())
    img, meta = read_image(path)
    assert img.shape == (2, 230, 180) and meta.extra["key"] == "reconstruction_rss"
    assert meta.extra["attrs"]["acquisition"] == "AXT1"
    ks, meta = read_image(path, key="kspace")
    np.testing.assert_array_equal(ks[1], k)
    assert meta.channel_axis == 1 and meta.extra["kspace"]


def test_cfl_roundtrip_in_bart_dims(shared_data, tmp_path):
    k = np.load(shared_data / "mri_kspace_brain_8ch" / "kspace.npy")
    bart = np.moveaxis(k, 0, -1)[None]  # BART dims (1, 230, 180, 8) as in the ESPIRiT demo
    write_cfl(tmp_path / "full", bart)
    assert detect_format(tmp_path / "full.hdr") == "cfl"
    back, meta = read_cfl(tmp_path / "full.cfl")
    np.testing.assert_array_equal(back, k)
    assert meta.extra["bart_dims"] == [1, 230, 180, 8]


def test_write_image_dispatch_and_meta_json(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    path = write_image(tmp_path / "v.nii", arr, ImageMeta(affine=aff))
    back, meta = read_image(path)
    np.testing.assert_array_equal(back, arr)
    assert meta.spacing == (2.0, 3.0, 4.0)
    import json

    json.dumps(meta.to_dict())  # JSON-friendly
