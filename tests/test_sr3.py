"""SR3 and the supervised UNet for super-resolution (issue 22): the training pairs agree with the inference mapping,
the sr_slices dataset kind, restore with tiny trained models, errors; and the shipped SR3 beats bicubic on a real
val slice while the same network untrained does not."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from meddiff.data import build_dataset
from meddiff.data.assets import asset_path
from meddiff.data.superres import SRPairs, area_downsample, bicubic_upsample, sr_condition
from meddiff.data.transforms import magnitude_scale
from meddiff.errors import MeddiffError
from meddiff.physics import Downsampling
from meddiff.tasks import restore as R
from meddiff.training.regression import build_regression_unet, save_regression

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SLICES = {"kind": "sr_slices", "contrasts": ["t1"], "val_fraction": 0.34, "min_foreground": 0.1, "per_slice": True,
          "pad_multiple": 8, "normalize": {"mode": "scale", "upper": 99.5, "clip": False}}


class Slices(torch.utils.data.Dataset):
    """Magnitude slices in model space (zero = -1), like a SliceDataset with normalize mode "scale"."""

    image_shape = (1, 16, 12)

    def __init__(self, n=4):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 16, 12, generator=g) * 3
        self.x[:, :, :2] = 0  # air

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": 2 * self.x[i] / magnitude_scale(self.x[i]) - 1}


def test_degradation_is_the_benchmarks():
    x = torch.rand(2, 16, 12)
    torch.testing.assert_close(area_downsample(x, 4), Downsampling(4).A(x))
    torch.testing.assert_close(area_downsample(x, 4), R.degrade_sr(x, 4))
    low = area_downsample(x, 4)[0]
    torch.testing.assert_close(bicubic_upsample(low, 4), R.upsample(low, 4, "bicubic"))
    with pytest.raises(MeddiffError, match="does not divide"):
        area_downsample(torch.rand(10, 12), 4)


def test_pairs_agree_with_the_inference_mapping():
    """The pair built from a training slice equals what inference computes from the low-resolution image alone,
    whatever the slice's own intensity scale (magnitude_scale is proportional)."""
    data = Slices()
    pairs = SRPairs(data, 4)
    for i in range(len(data)):
        x = 7.3 * data.x[i, 0]  # the scanner's units: any constant
        low = R.degrade_sr(x, 4)
        cond, s = sr_condition(low, 4)
        item = pairs[i]
        torch.testing.assert_close(item["cond_image"], cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["image"], 2 * x[None] / s - 1, atol=1e-5, rtol=1e-5)
        # inference maps v back with the same s: the target returns the high-resolution image
        torch.testing.assert_close(0.5 * s * (item["image"] + 1), x[None], atol=1e-4, rtol=1e-5)
    assert pairs.image_shape == (1, 16, 12) and pairs.num_classes == 0


def test_residual_target_and_noise_augmentation():
    data = Slices()
    plain, residual = SRPairs(data, 4), SRPairs(data, 4, residual=True, residual_scale=2.0)
    a, b = plain[1], residual[1]
    torch.testing.assert_close(b["image"], 2.0 * (a["image"] - a["cond_image"]))
    noisy = SRPairs(data, 4, noise_levels=[0.0, 0.5], seed=3)
    assert noisy.num_classes == 2
    labels = []
    for _ in range(12):
        item = noisy[1]
        k = int(item["label"])
        labels.append(k)
        diff = item["cond_image"] - a["cond_image"]
        if k == 0:
            assert torch.equal(diff, torch.zeros_like(diff))
        else:
            assert 0.4 < float(diff.std()) < 0.6
        torch.testing.assert_close(item["image"], a["image"])
    assert set(labels) == {0, 1}
    with pytest.raises(MeddiffError, match="noise_levels"):
        SRPairs(data, 4, noise_levels=[-1.0])
    with pytest.raises(MeddiffError, match="residual_scale"):
        SRPairs(data, 4, residual=True, residual_scale=0)
    with pytest.raises(MeddiffError, match="scale 5 does not divide"):
        SRPairs(data, 5)


@pytest.fixture(scope="module")
def nifti_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("srdata")
    src = asset_path("brats_tcga_2mm/TCGA-FG-6692")
    for sub in ("A", "B", "C"):
        (root / sub).mkdir()
        shutil.copy(src / "TCGA-FG-6692_t1.nii.gz", root / sub / f"{sub}_t1.nii.gz")
    return root


def test_sr_slices_kind(nifti_root):
    ds = build_dataset({**SLICES, "path": str(nifti_root), "scale": 4, "residual": True, "residual_scale": 2.0},
                       "train")
    assert ds.image_shape == (1, 80, 88) and len(ds) > 10
    item = ds[len(ds) // 2]
    assert set(item) == {"image", "cond_image"} and item["image"].shape == item["cond_image"].shape == (1, 80, 88)
    with pytest.raises(MeddiffError, match="normalize must be"):
        build_dataset({**SLICES, "path": str(nifti_root), "normalize": {"mode": "percentile"}}, "train")
    with pytest.raises(MeddiffError, match="scale 3 does not divide"):
        build_dataset({**SLICES, "path": str(nifti_root), "scale": 3}, "train")


@pytest.fixture(scope="module")
def tiny_models(nifti_root, tmp_path_factory):
    """An SR3 run (2 Trainer steps, residual target) and a saved UNet (untrained), both for 4x."""
    from meddiff.training import train

    root = tmp_path_factory.mktemp("srmodels")
    config = {"model": {"channels": [8, 8], "attention_levels": [False, False], "num_classes": None,
                        "norm_num_groups": 4},
              "diffusion": {"prediction": "v"},
              "data": {**SLICES, "path": str(nifti_root), "scale": 4, "residual": True, "residual_scale": 2.0},
              "run": {"name": "tiny", "steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2,
                      "progress": False}}
    train(config, run_dir=root / "sr3")
    torch.manual_seed(0)
    save_regression(build_regression_unet(1, 1, (4, 8), (2,), 1, residual=True), root / "unet",
                    meta={"data": {"scale": 4}})
    return root


def test_sr3_and_unet_restore(tiny_models):
    low = R.degrade_sr(torch.rand(16, 20) + 0.5, 4).numpy()
    out = R.restore(low, "super-resolution", "sr3", scale=4, checkpoint=tiny_models / "sr3", samples=3, steps=3)
    assert out.image.shape == (16, 20) and out.std.shape == (16, 20) and out.nfe == 3
    assert float(out.std.max()) > 0 and out.settings["samples"] == 3
    again = R.restore(low, "super-resolution", "sr3", scale=4, checkpoint=tiny_models / "sr3", samples=3, steps=3)
    np.testing.assert_array_equal(out.image, again.image)
    net = R.restore(low, "super-resolution", "unet", scale=4, checkpoint=tiny_models / "unet")
    assert net.image.shape == (16, 20) and net.std is None and net.nfe == 1
    # the UNet sees exactly the bicubic condition of the LR scale: its output = s (net(c) + 1) / 2 on the crop
    model = R.load_sr_model("unet", tiny_models / "unet")
    cond, s = sr_condition(torch.from_numpy(low), 4)
    with torch.no_grad():
        expected = 0.5 * s * (model.net(cond[None])[0, 0] + 1)
    np.testing.assert_allclose(net.image, expected.numpy(), rtol=1e-5, atol=1e-5)
    volume = R.restore(np.stack([low, 2 * low], -1), "super-resolution", "unet", scale=4,
                       checkpoint=tiny_models / "unet")
    np.testing.assert_allclose(volume.image[..., 1], 2 * volume.image[..., 0], rtol=1e-4, atol=1e-5)


def test_learned_methods_errors(tiny_models):
    low = np.ones((4, 5), np.float32)
    with pytest.raises(MeddiffError, match="trained for --scale 4"):
        R.restore(low, "super-resolution", "sr3", scale=2, checkpoint=tiny_models / "sr3")
    with pytest.raises(MeddiffError, match="--kernel"):
        R.restore(low, "super-resolution", "unet", scale=4, kernel="gaussian", checkpoint=tiny_models / "unet")
    with pytest.raises(MeddiffError, match="not an SR3 model"):
        R.load_sr_model("sr3", R.default_prior())
    with pytest.raises(MeddiffError, match="no supervised UNet"):
        R.load_sr_model("unet", tiny_models / "sr3")
    with pytest.raises(MeddiffError, match="leave out --steps"):
        R.restore(low, "super-resolution", "unet", scale=4, samples=4, checkpoint=tiny_models / "unet")
    with pytest.raises(MeddiffError, match="not a method for --task inpaint"):
        R.restore(low, "inpaint", "sr3", mask=np.zeros((4, 5)))


def val_slice(shared_data):
    """A mid-brain axial slice of the first VAL subject, cropped to 88 x 120 (the benchmark's rule)."""
    import json
    from pathlib import Path

    from meddiff.data.volumes import load_subject

    data = shared_data / "ixi_t1_2mm_dlmuse"
    split = json.loads((Path(__file__).parents[1] / "configs/splits/ixi_t1_2mm_dlmuse.json").read_text())
    subject = sorted(split["val"])[0]
    vol, _, _ = load_subject({"t1": data / "t1" / f"{subject}_T1.nii.gz"}, ["t1"], with_seg=False,
                             normalize_cfg="none", canonical=True, spacing=None)
    image = vol[0, 1:89, :, vol.shape[-1] // 2 + 5]
    return image / magnitude_scale(image)


def test_shipped_sr3_beats_bicubic_on_a_val_slice_and_untrained_does_not(shared_data):
    from meddiff.training.shipped import shipped_path

    if shipped_path(R.DEFAULT_MODELS["sr3"]) is None:
        pytest.skip("sr3_ixi_4x is not shipped in this checkout")
    image = val_slice(shared_data)
    low = R.degrade_sr(image, 4).numpy()
    truth = torch.from_numpy(np.ascontiguousarray(image))

    def psnr(x):
        return float(10 * torch.log10(truth.max() ** 2 / ((torch.as_tensor(x) - truth) ** 2).mean()))

    bicubic = psnr(R.restore(low, "super-resolution", "bicubic", scale=4).image)
    model = R.load_sr_model("sr3")
    trained = psnr(R.restore(low, "super-resolution", "sr3", scale=4, model=model, samples=2, steps=10).image)
    untrained = psnr(R.restore(low, "super-resolution", "sr3", scale=4, model=R.untrained_sr3(model), samples=2,
                               steps=10).image)
    assert trained > bicubic + 0.3, (trained, bicubic)
    assert untrained < bicubic, (untrained, bicubic)


def test_shipped_unet_beats_bicubic_on_a_val_slice_and_untrained_does_not(shared_data):
    from meddiff.tasks.restore.learned import SRModel, resolve_regression_folder
    from meddiff.training.regression import read_regression_config

    try:
        model = R.load_sr_model("unet")
    except MeddiffError:
        pytest.skip("unet_sr_ixi_4x is not shipped in this checkout")
    image = val_slice(shared_data)
    low = R.degrade_sr(image, 4).numpy()
    truth = torch.from_numpy(np.ascontiguousarray(image))

    def psnr(x):
        return float(10 * torch.log10(truth.max() ** 2 / ((torch.as_tensor(x) - truth) ** 2).mean()))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = build_regression_unet(**read_regression_config(resolve_regression_folder("unet_sr_ixi_4x"))["build"]).eval()
    untrained_model = SRModel("unet", fresh, model.scale, model.kernel, model.multiple, None, "untrained")
    bicubic = psnr(R.restore(low, "super-resolution", "bicubic", scale=4).image)
    trained = psnr(R.restore(low, "super-resolution", "unet", scale=4, model=model).image)
    untrained = psnr(R.restore(low, "super-resolution", "unet", scale=4, model=untrained_model).image)
    assert trained > bicubic + 0.5, (trained, bicubic)
    assert untrained < bicubic, (untrained, bicubic)


def test_cli_sr3_and_unet(tiny_models, tmp_path, capsys):
    from meddiff.cli.main import main

    low = R.degrade_sr(torch.rand(16, 20) + 0.5, 4).numpy()
    np.save(tmp_path / "low.npy", low)
    assert main(["restore", "--task", "super-resolution", "--input", str(tmp_path / "low.npy"), "--scale", "4",
                 "--method", "sr3", "--checkpoint", str(tiny_models / "sr3"), "--samples", "2", "--steps", "2",
                 "--out", str(tmp_path / "sr.npy"), "--std-out", str(tmp_path / "std.npy")]) == 0
    assert "2 network evaluations x 2 samples" in capsys.readouterr().out
    assert np.load(tmp_path / "sr.npy").shape == np.load(tmp_path / "std.npy").shape == (16, 20)
    assert main(["restore", "--task", "super-resolution", "--input", str(tmp_path / "low.npy"), "--scale", "4",
                 "--method", "unet", "--checkpoint", str(tiny_models / "unet"), "--out",
                 str(tmp_path / "u.npy"), "--std-out", str(tmp_path / "u_std.npy")]) == 1
    assert "--std-out needs a sampling method" in capsys.readouterr().err
    assert not (tmp_path / "u.npy").exists()


def test_benchmark_patch_fid_and_rows(tiny_models):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import restoration as B
    from meddiff.metrics.features import get_feature_extractor

    g = np.random.default_rng(0)
    truths = [g.random((88, 120)).astype(np.float32) for _ in range(3)]
    assert B.patches(truths[0]).shape == (5 * 7, 1, 28, 28)
    extractor = get_feature_extractor("random-cnn")
    same = B.patch_fid(truths, truths, extractor)
    smooth = B.patch_fid([np.full_like(t, float(t.mean())) for t in truths], truths, extractor)
    assert abs(same) < 1e-6 and smooth > 10 * max(same, 1e-6)
    learned = {"sr3": R.load_sr_model("sr3", tiny_models / "sr3"), "unet": R.load_sr_model("unet",
                                                                                          tiny_models / "unet")}
    rows4, rows2 = B.methods_for("sr4", None, True, learned), B.methods_for("sr2", None, True, learned)
    assert {"sr3", "unet", "sr3-untrained", "bicubic"} <= set(rows4)
    assert not {"sr3", "unet", "sr3-untrained"} & set(rows2)  # 4x models: no 2x rows
    assert "sr3" not in B.methods_for("sr4", None, True, {})


def test_unet_config_builds_and_trains_with_its_settings():
    """configs/regression/unet_sr_ixi_4x.yaml: its model and train sections are what build_regression_unet and
    train_regression accept, and its data section is the SR3 config's (scripts/train_sr.py)."""
    import inspect
    from pathlib import Path

    from meddiff.files import read_yaml_mapping
    from meddiff.training.regression import train_regression

    repo = Path(__file__).parents[1]
    config = read_yaml_mapping(repo / "configs/regression/unet_sr_ixi_4x.yaml")
    model = build_regression_unet(1, 1, **config["model"])
    assert model.residual and model.multiple == 8
    assert set(config["train"]) <= set(inspect.signature(train_regression).parameters)
    assert (repo / config["data_from"]).is_file()
