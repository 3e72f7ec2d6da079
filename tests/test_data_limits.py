"""Allocation limits (issue 20, item 5): a file's header claim is checked before its data is read, so a tiny
corrupt file or a decompression bomb gives a one-line MeddiffError naming the file and the claimed shape
quickly, without allocating what it claims."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from meddiff.data import io
from meddiff.data.io import read_image
from meddiff.errors import MeddiffError

MiB = 2**20


def _refused(call, *needles, max_seconds=2.0, max_alloc=32 * MiB):
    """Run ``call``; it must raise a one-line MeddiffError holding every needle, fast and without allocating."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(MeddiffError) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert seconds < max_seconds, f"took {seconds:.1f}s: {message}"
    assert peak < max_alloc, f"allocated {peak / MiB:.0f} MiB before refusing: {message}"
    return message


def _nifti_header(shape, dtype=np.int16) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4  # 348 bytes + the empty extension flag


def test_tiny_nii_gz_claiming_gigabytes(tmp_path):
    path = tmp_path / "tiny.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((2000, 2000, 180))))  # 1.3 GiB claimed
    assert path.stat().st_size < 200
    _refused(lambda: read_image(path), "tiny.nii.gz", "claims shape (2000, 2000, 180) int16", "ratio above 1000:1",
             "MEDDIFF_MAX_RATIO=0")
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(gzip.compress(_nifti_header((30000, 30000, 30000))))
    _refused(lambda: read_image(huge), "huge.nii.gz", "claims shape (30000, 30000, 30000)", "above the limit of 4.0 GiB",
             "MEDDIFF_MAX_BYTES=")


def test_uncompressed_nii_claiming_more_than_it_holds(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_nifti_header((512, 512, 400)) + b"\0" * 1000)
    _refused(lambda: read_image(path), "short.nii", "claims shape (512, 512, 400) int16", "but the file holds 1000 bytes",
             "truncated or corrupt")


def _gzip_bomb(path, shape):
    """A genuine .nii.gz of zeros (compresses about 1000:1)."""
    body = _nifti_header(shape, np.uint8)
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(body)
        zeros = bytes(MiB)
        for _ in range(int(np.prod(shape)) // MiB):
            handle.write(zeros)
    return path


def test_gzip_bomb_refused_by_a_lowered_limit_keyword_or_env(tmp_path, monkeypatch):
    bomb = _gzip_bomb(tmp_path / "bomb.nii.gz", (256, 256, 256))  # 16 MiB of zeros in ~16 KiB
    assert bomb.stat().st_size < 64 * 1024
    _refused(lambda: read_image(bomb, max_bytes=8 * MiB), "bomb.nii.gz", "claims shape (256, 256, 256) uint8",
             "= 16.0 MiB, above the limit of 8.0 MiB")
    monkeypatch.setenv("MEDDIFF_MAX_BYTES", str(4 * MiB))
    _refused(lambda: read_image(bomb), "above the limit of 4.0 MiB")
    monkeypatch.delenv("MEDDIFF_MAX_BYTES")
    monkeypatch.setattr(io, "RATIO_FLOOR_BYTES", MiB)  # the ratio bound alone, at a small size
    _refused(lambda: read_image(bomb), "bomb.nii.gz", "ratio above 1000:1", "decompression bomb")
    monkeypatch.setenv("MEDDIFF_MAX_RATIO", "0")
    array, _ = read_image(bomb)  # genuine: allowed once the user says so
    assert array.shape == (256, 256, 256) and not array.any()


def test_bad_limit_environment_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3))
    monkeypatch.setenv("MEDDIFF_MAX_BYTES", "lots")
    _refused(lambda: read_image(path), "MEDDIFF_MAX_BYTES='lots' is not a number of bytes")


def _npy_header(shape, dtype="<f8") -> bytes:
    import io as stdio

    buffer = stdio.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()  # magic string, version and the padded header dict


def test_npy_header_claiming_a_huge_or_missing_array(tmp_path):
    huge = tmp_path / "huge.npy"
    huge.write_bytes(_npy_header((100000, 100000)))
    _refused(lambda: read_image(huge), "huge.npy", "claims shape (100000, 100000) float64", "above the limit")
    short = tmp_path / "short.npy"
    short.write_bytes(_npy_header((1000, 1000)) + b"\0" * 64)
    _refused(lambda: read_image(short), "short.npy", "claims shape (1000, 1000) float64 = 7.6 MiB",
             "the file holds 64 bytes")


def test_npz_member_headers_are_checked_without_decompressing(tmp_path, monkeypatch):
    stored = tmp_path / "stored.npz"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("images.npy", _npy_header((60000, 60000)))
    _refused(lambda: read_image(stored), "stored.npz", "member 'images' claims shape (60000, 60000) float64",
             "above the limit")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as handle:
            handle.write(_npy_header((64, 1024, 1024), "|u1"))
            for _ in range(64):
                handle.write(bytes(MiB))
        archive.writestr("labels.npy", _npy_header((64,), "<i8") + bytes(512))
    monkeypatch.setattr(io, "RATIO_FLOOR_BYTES", MiB)
    _refused(lambda: read_image(bomb, key="images"), "bomb.npz", "member 'images' claims shape (64, 1024, 1024) uint8",
             "ratio above 1000:1")
    monkeypatch.setenv("MEDDIFF_MAX_RATIO", "0")
    _refused(lambda: io.load_npz(bomb, max_bytes=32 * MiB), "bomb.npz", "above the limit of 32.0 MiB")
    _refused(lambda: io.check_npz(bomb, max_bytes=64 * MiB + 100), "its 2 arrays claim 64.0 MiB together")
    assert io.check_npz(bomb)["labels"] == ((64,), np.dtype("<i8"))


def test_cfl_header_claiming_more_than_the_file(tmp_path):
    (tmp_path / "k.hdr").write_text("# Dimensions\n100000 100000 1 8\n")
    (tmp_path / "k.cfl").write_bytes(bytes(64))
    _refused(lambda: read_image(tmp_path / "k.cfl"), "k.cfl", "k.hdr claims shape (100000, 100000, 1, 8) complex64",
             "above the limit")
    (tmp_path / "k.hdr").write_text("# Dimensions\n4294967296 4294967296\n")  # int64 overflow in np.prod
    _refused(lambda: read_image(tmp_path / "k.cfl"), "claims shape (4294967296, 4294967296)", "above the limit")
    (tmp_path / "k.hdr").write_text("# Dimensions\n64 64 1 8\n")
    _refused(lambda: read_image(tmp_path / "k.cfl"), "k.cfl: holds 64 bytes but the header dims [64, 64, 1, 8] need")


def test_hdf5_dataset_of_unwritten_chunks(tmp_path, monkeypatch):
    import h5py

    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(20000, 20000), dtype="c8", chunks=(100, 100))  # 3 GiB of fill value
        f.create_dataset("small", data=np.ones((4, 4), np.float32))
    _refused(lambda: read_image(path, key="kspace"), "empty.h5", "dataset 'kspace' claims shape (20000, 20000) complex64",
             "ratio above 1000:1")
    _refused(lambda: read_image(path, key="kspace", max_bytes=MiB), "above the limit of 1.0 MiB")
    assert read_image(path, key="small")[0].shape == (4, 4)


def _dicom(path, rows, cols, pixel_bytes, frames=None, position=0.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 1
    if frames:
        ds.NumberOfFrames = frames
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, position], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.PixelData = pixel_bytes
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_header_claims_and_series_slice_count(tmp_path):
    huge = _dicom(tmp_path / "huge.dcm", 60000, 60000, bytes(128), frames=10)
    _refused(lambda: read_image(huge), "huge.dcm", "the DICOM header claims shape (10, 60000, 60000)", "above the limit")
    short = _dicom(tmp_path / "short.dcm", 1000, 1000, bytes(128))
    _refused(lambda: read_image(short), "short.dcm", "claims shape (1, 1000, 1000)", "the file holds 128 bytes")
    series = tmp_path / "series"
    series.mkdir()
    for z in range(3):
        _dicom(series / f"{z}.dcm", 64, 64, bytes(64 * 64 * 2), position=float(z))
    assert read_image(series)[0].shape == (3, 64, 64)
    _refused(lambda: read_image(series, max_bytes=3 * 64 * 64 * 2 - 1), "series", "the series (3 slices)",
             "claims shape (3, 64, 64)", "above the limit")


def _png_header(width, height) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_png_header_claim(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header(5000, 5000))
    _refused(lambda: read_image(path, max_bytes=10 * MiB), "wide.png", "the image header claims shape (5000, 5000) L",
             "above the limit of 10.0 MiB")
