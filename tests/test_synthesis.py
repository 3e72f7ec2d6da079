"""meddiff sample / checkpoints: generation with classifier-free guidance, intensities, outputs, shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from meddiff.cli.main import main
from meddiff.diffusion import ModelDenoiser, make_grid, make_schedule
from meddiff.diffusion.samplers import recommended_spacing, sample_ddim
from meddiff.errors import MeddiffError
from meddiff.tasks import synthesis
from meddiff.training import Trainer, list_checkpoints, load_checkpoint
from meddiff.training import shipped as shipped_module


class TinyImages(Dataset):
    """n random images in [-1, 1], labels i % 2, recorded as uint8-style 0..255 intensities."""

    num_classes = 2
    normalisation = {"mode": "fixed", "a_min": 0.0, "a_max": 255.0, "b_min": -1.0, "b_max": 1.0}

    def __init__(self, shape=(1, 8, 8), n: int = 8, classes: bool = True) -> None:
        self.images = torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.image_shape = shape
        if not classes:
            self.num_classes = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": torch.tensor(i % 2)}


def _train(tmp_path, name, shape=(1, 8, 8), classes=True, task="synthesis"):
    config = {
        "task": task,
        "model": {"channels": [8, 16], "attention_levels": [False, False], "num_classes": "auto" if classes else None,
                  "class_dropout": 0.2 if classes else 0.0},
        "schedule": {"warmup_steps": 1},
        "diffusion": {"schedule": {"kind": "discrete", "num_train_steps": 100}},
        "run": {"name": name, "steps": 2, "batch_size": 4, "checkpoint_every": 2, "progress": False,
                "sample_every": 2, "num_samples": 4, "sample_steps": 3},
    }
    if task == "classifier":
        config["model"] = {"channels": [8, 16], "attention_levels": [False, False]}
    trainer = Trainer(config, TinyImages(shape, classes=classes), run_dir=tmp_path / name)
    trainer.fit()
    trainer.close()
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"cond": _train(root, "cond"), "uncond3d": _train(root, "uncond3d", shape=(1, 4, 8, 8), classes=False),
            "classifier": _train(root, "classifier", task="classifier")}


def test_guidance_scale_zero_is_the_null_class_model_and_one_is_the_conditional(runs):
    model, meta = load_checkpoint(runs["cond"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 2 training steps leave the zero-initialised output layer ~0: randomise every weight
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    schedule = make_schedule(meta["schedule"])
    grid = make_grid(schedule, 5, recommended_spacing("ddim", schedule))
    denoiser = ModelDenoiser(model, schedule, meta["prediction"])
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(3)) * grid.prior_std()
    null = torch.full((4,), model.null_class)
    ones = torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        unconditional = sample_ddim(denoiser, noise, grid, cond={"class_labels": null}).clamp(-1, 1)
        raw = sample_ddim(denoiser, noise, grid, cond={"class_labels": ones})
    conditional = raw.clamp(-1, 1)
    for scale, expected in ((0.0, unconditional), (1.0, conditional)):
        samples, labels = synthesis.generate(runs["cond"], 4, sampler="ddim", steps=5, class_label=1,
                                             guidance_scale=scale, seed=3, model=model, meta=meta,
                                             clip_denoised=False)
        assert labels.tolist() == [1, 1, 1, 1]
        torch.testing.assert_close(samples, expected, atol=1e-5, rtol=0)
    assert (conditional - unconditional).abs().max() > 1e-2
    guided, _ = synthesis.generate(runs["cond"], 4, sampler="ddim", steps=5, class_label=1, guidance_scale=3.0,
                                   seed=3, model=model, meta=meta, clip_denoised=False)
    assert (guided - conditional).abs().max() > 1e-3  # guidance changes the result
    clipped, _ = synthesis.generate(runs["cond"], 4, sampler="ddim", steps=5, class_label=1, seed=3, model=model,
                                    meta=meta)  # default: x0 estimates clamped to [-1, 1] at every step
    assert (clipped - conditional).abs().max() > 1e-3
    zscored = {**meta, "normalisation": {"mode": "zscore", "mean": 0.0, "std": 1.0}}  # unbounded data: no clamp
    unclamped, _ = synthesis.generate(runs["cond"], 4, sampler="ddim", steps=5, class_label=1, seed=3, model=model,
                                      meta=zscored)
    assert raw.abs().max() > 1  # the randomised net leaves the range, so this tests that nothing clamps
    torch.testing.assert_close(unclamped, raw, atol=1e-5, rtol=0)


def test_seed_fixes_the_samples_for_any_batch_size_with_a_deterministic_sampler(runs):
    a, labels = synthesis.generate(runs["cond"], 5, sampler="dpmpp_2m", steps=4, seed=7, batch_size=2)
    b, _ = synthesis.generate(runs["cond"], 5, sampler="dpmpp_2m", steps=4, seed=7, batch_size=64)
    c, _ = synthesis.generate(runs["cond"], 5, sampler="dpmpp_2m", steps=4, seed=8)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - c).abs().max() > 1e-3
    assert labels.tolist() == [0, 1, 0, 1, 0]  # classes in turn
    assert a.shape == (5, 1, 8, 8) and a.min() >= -1 and a.max() <= 1


def test_outputs_are_written_in_the_original_intensity_range(runs, tmp_path):
    result = synthesis.sample_to_folder(runs["cond"], tmp_path / "out", 6, sampler="ddim", steps=3, seed=1)
    samples, _ = synthesis.generate(runs["cond"], 6, sampler="ddim", steps=3, seed=1)
    written = np.load(tmp_path / "out" / "samples.npy")
    np.testing.assert_allclose(written, (samples.numpy() + 1) * 127.5, atol=1e-3)
    assert np.load(tmp_path / "out" / "labels.npy").tolist() == [0, 1, 0, 1, 0, 1]
    assert {"grid_class0", "grid_class1", "samples", "labels", "manifest"} <= set(result["files"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["intensity_range"] == "original" and manifest["seed"] == 1 and manifest["sampler"] == "ddim"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_3d_samples_give_nifti_volumes_and_three_plane_grids(runs, tmp_path):
    import nibabel as nib
    from PIL import Image

    synthesis.sample_to_folder(runs["uncond3d"], tmp_path / "out", 2, sampler="ddim", steps=2)
    volumes = sorted((tmp_path / "out").glob("sample_*.nii.gz"))
    assert len(volumes) == 2 and nib.load(volumes[0]).shape == (4, 8, 8)
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape[1] > 3 * 8  # three planes side by side


def test_sampling_errors_name_the_argument(runs):
    with pytest.raises(MeddiffError, match="--class 5"):
        synthesis.generate(runs["cond"], 2, class_label=5)
    with pytest.raises(MeddiffError, match="unconditional"):
        synthesis.generate(runs["uncond3d"], 2, class_label=0)
    with pytest.raises(MeddiffError, match="'classifier' checkpoint"):
        synthesis.generate(runs["classifier"], 2)
    with pytest.raises(MeddiffError, match="--n 0"):
        synthesis.generate(runs["cond"], 0)
    with pytest.raises(MeddiffError, match="no checkpoint found at no_such_model"):
        synthesis.generate("no_such_model", 2)


def test_shipped_checkpoint_export_list_resolve_and_load(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", tmp_path / "shipped")
    checkpoint = list_checkpoints(runs["cond"] / "checkpoints")[-1]
    path = shipped_module.export_checkpoint(checkpoint, "tiny_cond", command="python train.py",
                                            description="tiny test model", default_for=["sample"],
                                            trained_on="8x8 toy images, seed 0")
    assert {p.name for p in path.iterdir()} >= {"ema.safetensors", "meta.json", "command.txt", "config.yaml",
                                                 "log.csv", "environment.json", "samples.png"}
    assert all(v.dtype == torch.float16 for v in load_file(path / "ema.safetensors").values())
    (card,) = shipped_module.list_shipped()
    assert card["name"] == "tiny_cond" and card["num_classes"] == 2 and card["default_for"] == ["sample"]
    assert card["trained_on"] == "8x8 toy images, seed 0"
    assert shipped_module.default_checkpoint("sample") == path
    with pytest.raises(MeddiffError, match="no shipped checkpoint is the default for 'detect'"):
        shipped_module.default_checkpoint("detect")
    shipped_model, _ = load_checkpoint("tiny_cond")
    original, _ = load_checkpoint(runs["cond"])
    for a, b in zip(shipped_model.state_dict().values(), original.state_dict().values()):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)  # fp16 storage
    assert main(["checkpoints", "list"]) == 0
    listing = capsys.readouterr().out
    assert "| tiny_cond | synthesis | 8x8 (1 ch) | 2 |" in listing and "| 8x8 toy images, seed 0 |" in listing
    assert main(["sample", "--n", "2", "--steps", "2", "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    assert (tmp_path / "cli" / "samples.npy").is_file()


def test_cli_sample_reports_errors(runs, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(runs["cond"]), "--n", "2", "--class", "9", "--out", str(tmp_path)]) == 1
    assert "error: --class 9 is out of range" in capsys.readouterr().err


def test_shipped_brain_and_adrenal_models_sample_plausible_images(tmp_path):
    """The shipped 2D brain-slice and 3D adrenal models give head-like slices and gland-sized shapes, not noise."""
    assert main(["sample", "--checkpoint", "adrenal3d_cond", "--n", "2", "--class", "1", "--guidance-scale", "2",
                 "--steps", "10", "--out", str(tmp_path / "adrenal"), "--device", "cpu"]) == 0
    volumes = np.load(tmp_path / "adrenal" / "samples.npy")
    assert volumes.shape == (2, 1, 28, 28, 28) and volumes.min() >= 0 and volumes.max() <= 255
    gland = (volumes > 127).mean(axis=(1, 2, 3, 4))
    assert np.all((gland > 0.003) & (gland < 0.06))  # real val volumes: 0.006-0.035; noise would give ~0.5
    assert len(list((tmp_path / "adrenal").glob("sample_*.nii.gz"))) == 2
    assert main(["sample", "--checkpoint", "brain_slices_2d", "--n", "4", "--steps", "10",
                 "--out", str(tmp_path / "brain"), "--device", "cpu"]) == 0
    slices = np.load(tmp_path / "brain" / "samples.npy")
    assert slices.shape == (4, 1, 64, 64)
    head = (slices > -0.8).mean(axis=(1, 2, 3))
    border = np.concatenate([slices[..., :3, :].reshape(4, -1), slices[..., -3:, :].reshape(4, -1)], axis=1)
    assert np.all((head > 0.2) & (head < 0.9)) and np.all(border.mean(axis=1) < -0.7)  # a head on a dark background (noise: ~0)


def test_every_shipped_card_says_what_it_was_trained_on():
    """`meddiff checkpoints list` names the data of every shipped model (issue 21)."""
    cards = shipped_module.list_shipped()
    assert cards and all(len(c["trained_on"]) > 10 for c in cards), [c["name"] for c in cards if not c["trained_on"]]
