"""Issue 27, latent diffusion of whole heads: label maps (raw DLMUSE or merged, grid checks), the bundle round trip,
label-conditioned sampling through meddiff's samplers, `meddiff sample --label-map` outputs and its one-line errors.
A tiny bundle (random weights) on a 6 x 8 x 8 "head" grid stands in for brain3d_ldm."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.nets import build_network
from meddiff.tasks.synthesis3d import is_ldm, load_ldm, sample_heads, write_bundle
from meddiff.tasks.synthesis3d.autoencoder import decode
from meddiff.tasks.synthesis3d.labelmap import from_ras, merge_any, read_label_map
from meddiff.tasks.synthesis3d.pipeline import label_map_counts, sample_latents

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAS, GRID = (6, 8, 8), (8, 8, 8)  # tiny stand-ins for 90 x 120 x 120 padded to 96 x 128 x 128
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _randomised(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # MONAI zero-initialises the UNet's output layer: give every weight a value
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ldm") / "tiny_ldm"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = _randomised(build_network({"kind": "autoencoder_kl", "channels": [4, 4], "latent_channels": 2}), 1)
        unet = _randomised(build_network({"kind": "unet", "dims": 3, "in_channels": 2, "cond_channels": 10,
                                          "channels": [8, 8], "attention_levels": [False, False]}), 2)
    meta = {"task": "synthesis", "network": unet.config, "channels": 2, "image_size": [4, 4, 4],
            "schedule": {"kind": "discrete", "beta_schedule": "scaled_linear", "num_train_steps": 1000},
            "prediction": "v"}
    info = {"scale_factor": 2.0, "latent_shape": [4, 4, 4], "head_grid": list(GRID), "ras_shape": list(RAS),
            "spacing": [2.0, 2.0, 2.0], "affine": AFFINE.tolist(), "num_classes": 10, "label_conditioning": True,
            "cfg": False}
    labels = np.zeros((2,) + GRID, np.int64)
    labels[0, :2], labels[1, :, :2] = 3, 7
    write_bundle(folder, unet, meta, ae, info,
                 label_maps={"counts": label_map_counts(labels, 10, 2), "subjects": np.asarray(["A", "B"])},
                 dtype=torch.float32)
    return folder


def _nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def test_merge_any_reads_merged_and_raw_maps():
    merged = np.array([[0, 3], [9, 1]])
    out, raw = merge_any(merged, "m", 10)
    assert not raw and np.array_equal(out, merged)
    out, raw = merge_any(np.array([0, 51, 100, 35, 1]), "r", 10)  # ventricle, cortex, brainstem, sulcal CSF
    assert raw and out.tolist() == [0, 3, 1, 8, 9]
    with pytest.raises(MeddiffError, match=r"unknown DLMUSE label id\(s\) \[250\]"):
        merge_any(np.array([0, 100, 250]), "--label-map x.nii.gz", 10)
    with pytest.raises(MeddiffError, match="non-integer"):
        merge_any(np.array([0.5, 2.0]), "x", 10)


def test_read_label_map_checks_the_grid_and_pads(tmp_path):
    labels = np.zeros(RAS, np.uint8)
    labels[1, 2, 3] = 51  # raw DLMUSE: lateral ventricle -> class 3
    got = read_label_map(_nifti(tmp_path / "l.nii.gz", labels), RAS, GRID)
    assert got.raw_dlmuse and got.labels.shape == GRID and got.labels.sum() == 3
    assert got.labels[2, 2, 3] == 3  # padding (8 - 6) // 2 = 1 along x
    with pytest.raises(MeddiffError, match="is not the training grid"):
        read_label_map(_nifti(tmp_path / "big.nii.gz", np.zeros((7, 8, 8), np.uint8)), RAS, GRID)
    with pytest.raises(MeddiffError, match="is not the training grid"):
        read_label_map(_nifti(tmp_path / "1mm.nii.gz", labels, np.eye(4)), RAS, GRID)


def test_real_dlmuse_map_is_accepted_on_the_training_grid(shared_data):
    path = shared_data / "ixi_t1_2mm_dlmuse" / "dlmuse_seg" / "IXI012-HH-1211_T1_DLMUSE.nii.gz"
    got = read_label_map(path, (90, 120, 120), (96, 128, 128))
    assert got.raw_dlmuse and set(np.unique(got.labels)) <= set(range(10)) and got.shape == (120, 120, 90)
    image = nib.load(str(path))
    back = from_ras(got.labels[3:93, 4:124, 4:124], image.affine)  # un-padded, back to the file's orientation
    from meddiff.tasks.segment.labels import merge_labels
    assert np.array_equal(back, merge_labels(np.asanyarray(image.dataobj)))


def test_sampling_is_the_decoded_scaled_latents_and_follows_the_condition(bundle):
    ldm = load_ldm(bundle)
    assert is_ldm(bundle) and ldm.ae.factor == 2
    cond, names = ldm.default_conditions()
    assert names == ["A", "B"] and cond.shape == (2, 10, 4, 4, 4) and torch.allclose(cond.sum(1), torch.ones(2, 4, 4, 4))
    heads = sample_heads(ldm, cond, sampler="ddim", steps=4, seed=5)
    assert heads.shape == (2, 1) + GRID
    z = torch.cat([sample_latents(ldm, cond[i:i + 1], sampler="ddim", steps=4, seed=5 + i) for i in range(2)])
    assert torch.allclose(heads, decode(ldm.ae, z / 2.0).clamp(-1, 2), atol=1e-6)
    assert torch.equal(sample_heads(ldm, cond, sampler="ddim", steps=4, seed=5, batch=2), heads)  # batch-invariant
    other = sample_latents(ldm, cond[1:2], sampler="ddim", steps=4, seed=5)
    assert not torch.allclose(other, z[:1])  # same noise, another label map: another head
    with pytest.raises(MeddiffError, match="without conditioning drop-out"):
        sample_latents(ldm, cond[:1], guidance_scale=2.0)


def test_cli_sample_with_a_label_map_writes_niftis_on_its_grid(bundle, tmp_path, capsys):
    labels = np.zeros(RAS, np.uint8)
    labels[:, :2] = 2  # merged ids
    affine = np.array([[0, 0, 2.0, 5], [-2.0, 0, 0, 7], [0, 2.0, 0, -3], [0, 0, 0, 1]])  # not RAS: PSR like IXI
    stored = from_ras(labels, affine)
    path = _nifti(tmp_path / "merged.nii.gz", stored, affine)
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(bundle), "--n", "2", "--label-map", str(path), "--steps", "3",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num"] == 2 and {"sample_0000.nii.gz", "sample_0001.png", "grid.png"} <= set(manifest["files"])
    written = nib.load(str(out / "sample_0000.nii.gz"))
    assert written.shape == stored.shape and np.allclose(written.affine, affine)
    assert np.asanyarray(written.dataobj).min() >= 0
    assert main(["sample", "--checkpoint", str(bundle), "--n", "1", "--steps", "2", "--out", str(tmp_path / "d")]) == 0
    written = nib.load(str(tmp_path / "d" / "sample_0000.nii.gz"))  # default condition: the bundle's reference grid
    assert written.shape == RAS and np.allclose(written.affine, AFFINE)


def test_cli_one_line_errors(bundle, tmp_path, capsys):
    bad = _nifti(tmp_path / "bad.nii.gz", np.full(RAS, 250, np.uint8))
    wrong = _nifti(tmp_path / "wrong.nii.gz", np.zeros((8, 8, 6), np.uint8))
    cases = [(["--label-map", str(bad)], "unknown DLMUSE label id"),
             (["--label-map", str(wrong)], "is not the training grid"),
             (["--guidance-scale", "3"], "without conditioning drop-out"),
             (["--class", "1"], "conditioned by label maps, not classes")]
    for extra, message in cases:
        assert main(["sample", "--checkpoint", str(bundle), "--n", "1", "--out", str(tmp_path / "o"), *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_label_map_needs_a_latent_model(tmp_path, capsys):
    from helpers import train_tiny_checkpoint

    run = train_tiny_checkpoint(tmp_path, steps=1)
    path = _nifti(tmp_path / "l.nii.gz", np.zeros(RAS, np.uint8))
    assert main(["sample", "--checkpoint", str(run), "--n", "1", "--label-map", str(path), "--out",
                 str(tmp_path / "o")]) != 0
    assert "not a latent diffusion checkpoint" in capsys.readouterr().err
