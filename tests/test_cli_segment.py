"""`meddiff segment` end to end on small synthetic NIfTI volumes with a tiny untrained prior and a segmenter trained
here in seconds: labels on the input's grid and affine (a PSR-oriented input, so the RAS round trip is exercised),
probabilities summing to 1, the uncertainty file equal to their entropy, the prior fingerprint check and the
one-line errors for bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from meddiff.cli.main import main
from meddiff.nets import build_network
from meddiff.tasks.prior import load_prior
from meddiff.tasks.segment import (DiffusionFeatures, FeatureSegmenter, SlicePrep, collect_pixels, dice_per_class,
                                   fit_pixel_ensemble, label_slices, save_segmenter, volume_slices)
from meddiff.tasks.segment.labels import SegClass
from meddiff.tasks.segment.pipeline import prior_fingerprint
from meddiff.tasks.segment.postprocess import DEFAULT_CLEANUP, clean_labels

NET = {"kind": "unet", "channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
       "norm_num_groups": 4}
SIZE = (16, 24)


def _write_prior(folder, seed):
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(NET)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "ema.safetensors")
    meta = {"task": "synthesis", "network": NET, "channels": 1, "image_size": list(SIZE), "step": seed,
            "schedule": {"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000},
            "prediction": "eps", "data": {"axis": 2, "per_slice": True, "pad_multiple": 8,
                                          "normalize": {"mode": "scale", "upper": 99.5, "clip": False}}}
    (folder / "meta.json").write_text(json.dumps(meta))


def _phantom(seed, shape=(14, 24, 10)):
    """RAS volume: a head ellipse (tissue ~100) with a bright blob (class 1, ~200) drifting across slices; noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s, dtype=float) for s in shape), indexing="ij")
    head = ((x - shape[0] / 2) / (shape[0] / 2 - 1)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 2 - 1)) ** 2 < 1
    cy = 8 + rng.uniform(0, 8) + 0.5 * z
    blob = ((x - 7) ** 2 + (y - cy) ** 2 < rng.uniform(6, 12)) & head
    vol = np.where(head, 100.0, 0.0) + np.where(blob, 100.0, 0.0) + rng.normal(0, 8, shape) * head
    return vol.astype(np.float32), blob.astype(np.int64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("segment")
    prior_dir = root / "prior"
    _write_prior(prior_dir, 0)
    prior = load_prior(str(prior_dir))
    prep = SlicePrep.from_prior_meta(prior.meta)
    ext = DiffusionFeatures(prior.denoiser.model, prior.schedule, [0, 1], [20], seed=0)
    images, labels = [], []
    for s in range(4):
        vol, lab = _phantom(s)
        images.append(volume_slices(vol, prep))
        labels.append(label_slices(lab, prep))
    f, t = collect_pixels(ext, torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                          per_slice=150, seed=0)
    ens = fit_pixel_ensemble(f, t, 2, hidden=(16,), members=3, steps=150, batch=512, seed=0)
    meta = {"method": "diffusion_features", "num_classes": 2, "image_size": list(SIZE), "preprocessing": prep.to_dict(),
            "prior": prior_fingerprint(str(prior_dir)), "features": {"blocks": [0, 1], "timesteps": [20], "seed": 0},
            "classifier": ens.config()}
    classes = (SegClass(0, "background", (0,)), SegClass(1, "blob", (1,)))
    ckpt = save_segmenter(root / "seg", FeatureSegmenter(ext, ens), meta=meta, classes=classes,
                          files={"command.txt": "python train_tiny.py\n"})
    # the test input: a new phantom stored as P, S, R axes (like the IXI files)
    vol, lab = _phantom(9)
    ras_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    to_psr = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("PSR"))
    img = nib.Nifti1Image(vol, ras_affine).as_reoriented(to_psr)
    truth = nib.orientations.apply_orientation(lab, to_psr)
    nib.save(img, root / "t1.nii.gz")
    return {"root": root, "ckpt": ckpt, "prior_dir": prior_dir, "truth": truth, "affine": img.affine,
            "shape": img.shape}


def _run(capsys, *args):
    rc = main(["segment", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_segment_round_trip_on_the_input_grid(setup, capsys):
    root = setup["root"]
    rc, out, err = _run(capsys, "--checkpoint", setup["ckpt"], "--input", root / "t1.nii.gz", "--out",
                        root / "labels.nii.gz", "--uncertainty-out", root / "u.nii.gz", "--probabilities-out",
                        root / "p.nii.gz", "--samples", "2", "--cleanup", "none")
    assert rc == 0, err
    assert "wrote" in out and "1 foreground classes present" in out
    lab_img = nib.load(root / "labels.nii.gz")
    labels = np.asarray(lab_img.dataobj)
    assert labels.shape == setup["shape"] and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_allclose(lab_img.affine, setup["affine"])
    assert set(np.unique(labels)) <= {0, 1}
    # the blob is found in the input's own orientation (a wrong axis order would miss it)
    assert dice_per_class(labels, setup["truth"], 2)[0] > 0.6
    probs = np.asarray(nib.load(root / "p.nii.gz").dataobj)
    assert probs.shape == setup["shape"] + (2,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(-1), labels)
    unc = np.asarray(nib.load(root / "u.nii.gz").dataobj)
    p = np.clip(probs, 1e-12, None)
    np.testing.assert_allclose(unc, -(p * np.log(p)).sum(-1), atol=1e-5)
    assert not [f.name for f in root.iterdir() if f.name.startswith(".")]  # atomic writes
    # without --cleanup the labels are clean_labels(argmax) of the same probabilities (the default clean-up)
    rc, _, err = _run(capsys, "--checkpoint", setup["ckpt"], "--input", root / "t1.nii.gz", "--out",
                      root / "clean.nii.gz", "--samples", "2", "--probabilities-out", root / "p2.nii.gz")
    assert rc == 0, err
    clean = np.asarray(nib.load(root / "clean.nii.gz").dataobj)
    probs2 = np.asarray(nib.load(root / "p2.nii.gz").dataobj)
    np.testing.assert_array_equal(clean, clean_labels(probs2.argmax(-1), np.moveaxis(probs2, -1, 0), DEFAULT_CLEANUP))
    assert (clean != probs2.argmax(-1)).any()  # the clean-up acts on this phantom (specks), so skipping it fails
    assert (clean > 0).sum() <= (labels > 0).sum()


def _nifti(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def test_segment_bad_input_one_line_errors(setup, capsys, tmp_path):
    ckpt = setup["ckpt"]
    good = setup["root"] / "t1.nii.gz"
    vol, _ = _phantom(1)
    cases = [
        (["--input", tmp_path / "missing.nii.gz"], "file not found"),
        (["--input", _nifti(tmp_path / "flat.nii.gz", vol[..., 0])], "expected a 3D volume, got 2 dimensions"),
        (["--input", _nifti(tmp_path / "four.nii.gz", vol[..., None])], "expected a 3D volume, got 4 dimensions"),
        (["--input", _nifti(tmp_path / "wide.nii.gz", np.pad(vol, ((4, 4), (0, 0), (0, 0))))], "at most 16 x 24"),
        (["--input", _nifti(tmp_path / "const.nii.gz", np.full((14, 24, 6), 7.0))], "empty or constant"),
        (["--input", good, "--samples", "0"], "--samples 0 must be a positive integer"),
        (["--input", good, "--uncertainty-out", tmp_path / "u.png"], "must be a NIfTI file"),
    ]
    for args, message in cases:
        out = tmp_path / "out.nii.gz"
        rc, _, err = _run(capsys, "--checkpoint", ckpt, "--out", out, *args)
        assert rc == 1 and message in err and err.count("\n") == 1, (args, err)
        assert not out.exists()
    rc, _, err = _run(capsys, "--checkpoint", setup["prior_dir"], "--input", good, "--out", tmp_path / "o.nii.gz")
    assert rc == 1 and "not a segmentation checkpoint" in err


def test_segment_refuses_a_changed_prior(setup, capsys, tmp_path):
    import shutil

    ckpt = tmp_path / "seg"
    shutil.copytree(setup["ckpt"], ckpt)
    other = tmp_path / "prior"
    _write_prior(other, 1)  # same layout, other weights
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["prior"]["name"] = str(other)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    rc, _, err = _run(capsys, "--checkpoint", ckpt, "--input", setup["root"] / "t1.nii.gz", "--out",
                      tmp_path / "o.nii.gz")
    assert rc == 1 and "retrain with: python train_tiny.py" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.nii.gz").exists()
