"""`meddiff translate`: a round trip on a tiny translation checkpoint (output on the input's grid and affine, target
units, header description and sidecar json, std map) for every method but sdedit (needs a prior; tested with a
tiny one), and the one-line errors: inputs on different grids, a contrast the checkpoint was not trained for, an
empty brain mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from meddiff.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AFFINE = np.array([[-1.0, 0, 0, 40], [0, 1.0, 0, -30], [0, 0, 1.0, 5], [0, 0, 0, 1]])  # LAS, 1 mm


def phantom(shape=(20, 24, 4), seed=0, noise=10.0):
    g = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = x**2 / 0.7 + y**2 / 0.7 < 1
    texture = 300 + 80 * np.sin(5 * x) + (g.normal(0, noise, shape) if noise else 0)
    return np.where(inside, texture, 0).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Palette (1 training step) + tiny UNet + translation.json: t1 -> t2, flair at 2 mm."""
    from meddiff.tasks.translate.methods import quantiles
    from meddiff.training import list_checkpoints, train
    from meddiff.training.regression import build_regression_unet, save_regression

    root = tmp_path_factory.mktemp("translate")
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(2, 8, 8, generator=g) * 2 - 1, "cond_image": torch.rand(1, 8, 8, generator=g) * 2 - 1}
             for _ in range(4)]
    config = {"model": {"channels": [8, 8], "attention_levels": [False, False], "norm_num_groups": 4},
              "diffusion": {"prediction": "v"}, "data": {"kind": "translation_slices"},
              "run": {"name": "tiny", "steps": 1, "batch_size": 2, "checkpoint_every": 1, "progress": False}}
    train(config, dataset=items, run_dir=root / "run")
    ckpt = list_checkpoints(root / "run" / "checkpoints")[-1]
    stats = {"mode": "percentile", "a_min": 10.0, "a_max": 810.0, "b_min": -1.0, "b_max": 1.0}
    card = {"source": ["t1"], "targets": ["t2", "flair"], "spacing_mm": 2.0, "reference_subject": "tiny",
            "reference_stats": {"t1": stats, "t2": stats, "flair": {**stats, "a_max": 110.0}},
            "histograms": {c: quantiles(np.random.default_rng(1).normal(m, 0.3, 2000).clip(-1, 1))
                           for c, m in (("t1", 0.0), ("t2", -0.3), ("flair", 0.2))}}
    (ckpt / "translation.json").write_text(json.dumps(card))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_regression_unet(1, 2, channels=(4, 8), strides=(2,), num_res_units=1)
    save_regression(unet, ckpt / "unet")
    return ckpt


@pytest.fixture()
def t1(tmp_path):
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(phantom(), AFFINE), str(path))
    return path


@pytest.mark.parametrize("method", ["histogram", "unet", "palette"])
def test_round_trip_keeps_grid_affine_and_units(checkpoint, t1, tmp_path, method, capsys):
    out, std = tmp_path / "t2.nii.gz", tmp_path / "t2_std.nii.gz"
    args = ["translate", "--checkpoint", str(checkpoint), "--input", str(t1), "--method", method, "--out", str(out)]
    if method == "palette":
        args += ["--steps", "2", "--samples", "2", "--std-out", str(std)]
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    img, src = nib.load(str(out)), nib.load(str(t1))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine)
    data = np.asarray(img.dataobj)
    brain = np.asarray(src.dataobj) > 0
    assert (data[~brain] == 0).all()
    assert 10.0 - 1e-3 <= data[brain].min() and data[brain].max() <= 810.0 + 1e-3  # t2 units of the card
    assert b"t1->t2" in img.header["descrip"].tobytes()
    side = json.loads((tmp_path / "t2.json").read_text())
    assert side["method"] == method and side["target"] == "t2" and side["downsample"] == [2, 2]
    if method == "histogram":  # identity + matching (monotone): the output follows the source's pattern, away from
        from scipy import ndimage  # the rim that the 2 mm block means blur with air

        inner = ndimage.binary_erosion(brain, structure=np.ones((5, 5, 1)))
        assert np.corrcoef(phantom(noise=0.0)[inner], data[inner])[0, 1] > 0.9
    if method == "palette":
        s = nib.load(str(std))
        assert s.shape == src.shape and (np.asarray(s.dataobj) >= 0).all()


def test_sdedit_with_a_prior(checkpoint, t1, tmp_path):
    from helpers import train_tiny_checkpoint

    prior = train_tiny_checkpoint(tmp_path, steps=1)
    out = tmp_path / "sd.nii.gz"
    assert main(["translate", "--checkpoint", str(checkpoint), "--input", str(t1), "--method", "sdedit", "--prior",
                 str(prior), "--steps", "3", "--samples", "2", "--t0", "0.3", "--out", str(out)]) == 0
    img = nib.load(str(out))
    assert img.shape == (20, 24, 4) and json.loads((tmp_path / "sd.json").read_text())["t0"] == 0.3


def test_flair_target_uses_its_units(checkpoint, t1, tmp_path):
    out = tmp_path / "flair.nii.gz"
    assert main(["translate", "--checkpoint", str(checkpoint), "--input", str(t1), "--method", "histogram",
                 "--target", "flair", "--out", str(out)]) == 0
    data = np.asarray(nib.load(str(out)).dataobj)
    assert data.max() <= 110.0 + 1e-3 and data.max() > 50


def run_error(args, capsys) -> str:
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_errors_are_one_line(checkpoint, t1, tmp_path, capsys):
    base = ["translate", "--checkpoint", str(checkpoint), "--input", str(t1), "--out", str(tmp_path / "o.nii.gz")]
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(phantom((20, 22, 4)), AFFINE), str(other))
    assert "different grids" in run_error(base + ["--method", "unet", "--input2", str(other)], capsys)
    assert "not trained for" in run_error(base + ["--method", "unet", "--target", "t1ce"], capsys)
    assert "source contrast" in run_error(base + ["--method", "unet", "--source-contrast", "t2"], capsys)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 4), np.float32), AFFINE), str(empty))
    err = run_error(["translate", "--checkpoint", str(checkpoint), "--input", str(empty), "--method", "histogram",
                     "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert "empty brain mask" in err
    assert "--prior" in run_error(base + ["--method", "sdedit"], capsys)
    assert "--std-out" in run_error(base + ["--method", "histogram", "--std-out", str(tmp_path / "s.nii.gz")], capsys)
    assert "translation.json" in run_error(["translate", "--checkpoint", "pneumonia_cond", "--input", str(t1),
                                            "--method", "unet", "--out", str(tmp_path / "o.nii.gz")], capsys)
