"""`meddiff data inspect|preview|prepare` through the real CLI entry point (only the data command loaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meddiff.cli import main as cli_main
from meddiff.data import asset_path, read_image


@pytest.fixture()
def run(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("meddiff.cli.data",))

    def _run(*argv):
        code = cli_main.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


def test_inspect_dicom_file_json(run, shared_data):
    code, out, err = run("data", "inspect", shared_data / "dicom_small" / "CT_small.dcm", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == "dicom" and info["shape"] == [128, 128] and info["units"] == "HU"
    assert info["intensity"]["min"] == -896 and info["intensity"]["max"] == 1167
    assert set(info["intensity"]["percentiles"]) >= {"1", "50", "99"}


def test_inspect_dicom_series_and_dataset_folder_text(run, shared_data):
    code, out, _ = run("data", "inspect", shared_data / "ct_chest_dicom" / "dicom")
    assert code == 0 and "dicom_series" in out and "(99, 512, 512)" in out and "3x0.564453x0.564453 mm" in out
    code, out, _ = run("data", "inspect", asset_path("brats_tcga_2mm"))
    assert code == 0 and "dataset folder" in out and "subjects        1" in out and "seg x1" in out


def test_preview_ct_volume_three_planes(run, shared_data, tmp_path):
    src = tmp_path / "ct.nii.gz"
    hu = np.load(shared_data / "ct_chest_dicom" / "ct_hu.npz")["hu"][:, ::4, ::4]  # (99, 128, 128)
    from meddiff.data import write_nifti

    write_nifti(src, hu, np.diag([3.0, 2.25, 2.25, 1.0]))
    out = tmp_path / "p.png"
    code, _, err = run("data", "preview", src, "--out", out, "--window", "lung")
    assert code == 0, err
    img, _ = read_image(out)
    assert img.ndim == 2 and img.shape[1] > 2 * img.shape[0] * 0.5 and img.max() == 255 and img.min() == 0


def test_preview_kspace_shows_rss(run, tmp_path):
    out = tmp_path / "k.png"
    code, _, _ = run("data", "preview", asset_path("kspace_brain_8ch/kspace.npy"), "--out", out)
    img, _ = read_image(out)
    assert code == 0 and img.shape == (230, 180)
    rss = np.load(asset_path("kspace_brain_8ch/rss_reference.npy"))
    assert np.corrcoef(img.ravel().astype(float), rss.ravel())[0, 1] > 0.95


def test_prepare_is_resumable(run, tmp_path):
    root = asset_path("brats_tcga_2mm")
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"dataset:\n  kind: slices\n  path: {root}\n  cache_dir: {tmp_path / 'cache'}\n  size: 32\n  seg: true\n")
    code, out, err = run("data", "prepare", cfg, "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["subjects"] == 1 and summary["slices"] > 20 and summary["image_shape"] == [4, 32, 32]
    cache = next((tmp_path / "cache").iterdir())
    index = next(cache.glob("*_index.npy"))
    stamp = index.stat().st_mtime_ns
    code, out2, _ = run("data", "prepare", cfg, "--quiet", "--json")  # second run reuses the cache
    assert code == 0 and json.loads(out2) == summary and index.stat().st_mtime_ns == stamp
    index.unlink()  # as if interrupted before the subject finished: redone
    code, out3, _ = run("data", "prepare", cfg, "--quiet", "--json")
    assert code == 0 and json.loads(out3) == summary and index.exists()


def test_cli_errors_are_one_line(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (("data", "inspect", empty), ("data", "inspect", tmp_path / "missing.nii.gz"),
                 ("data", "preview", asset_path("pneumoniamnist/pneumoniamnist_small.npz"), "--out", tmp_path / "x.jpg"),
                 ("data", "prepare", "--input", empty, "--out", tmp_path / "c", "--quiet")):
        code, out, err = run(*argv)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.jpg").exists()


def test_preview_planes_are_ras_and_square_in_mm(tmp_path):
    """A 1 x 1 x 5 mm volume: coronal and sagittal tiles are stretched 5x along z, superior at the top."""
    import nibabel as nib
    import numpy as np

    from meddiff.data.inspect import _three_planes
    from meddiff.data.io import read_image

    vol = np.zeros((40, 30, 8), dtype=np.float32)
    vol[:, :, -1] = 100.0  # top (superior) slab bright
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 5.0, 1.0])), str(path))
    arr, meta = read_image(path)
    axial, coronal, sagittal = _three_planes(arr, meta, None)
    assert axial.shape == (30, 40) and coronal.shape == (40, 40) and sagittal.shape == (40, 30)
    assert coronal[:3].mean() > coronal[-3:].mean()  # superior up
