"""`meddiff detect` and `meddiff evaluate-anomaly` end to end with tiny checkpoints trained for two steps: every
output in the input's shape and affine, one score per slice, and clear errors on bad inputs."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.training import train

SIZE = 16
AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])


class Images(Dataset):
    def __init__(self, channels: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand((8, channels, SIZE, SIZE), generator=g) * 2 - 1
        self.image_shape = (channels, SIZE, SIZE)
        self.num_classes = 2

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": torch.tensor(i % 2)}


def tiny(tmp, name, channels=3, **sections):
    config = {"model": {"channels": [8, 16], "attention_levels": [False, False]},
              "run": {"name": name, "steps": 2, "batch_size": 4, "progress": False, "checkpoint_every": 2},
              **sections}
    if sections.get("task") == "classifier":
        config["model"]["kind"] = "classifier"
    if "model" in sections:
        config["model"] = sections["model"]
    return train(config, dataset=Images(channels), run_dir=tmp / name).run_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return {
        "gaussian": tiny(tmp, "gaussian"),
        "simplex": tiny(tmp, "simplex", diffusion={"noise": {"kind": "simplex", "octaves": 2, "frequency": 4}}),
        "classifier": tiny(tmp, "classifier", task="classifier"),
        "autoencoder": tiny(tmp, "autoencoder", model={"kind": "autoencoder", "channels": [8, 4]},
                            diffusion={"prediction": "x0"}),
        "gray": tiny(tmp, "gray", channels=1),
    }


def write_case(folder, contrasts=("t1ce", "t2", "flair"), shape=(20, 20, 3), bad=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    brain = np.zeros(shape, bool)
    brain[3:17, 3:17] = True
    for c in contrasts:
        s = (22, 20, 3) if c == bad else shape
        data = np.zeros(s, np.float32)
        data[3:17, 3:17] = rng.uniform(100, 200, (14, 14, s[2]))
        nib.save(nib.Nifti1Image(data, AFFINE), folder / f"case7_{c}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[5:9, 5:9, 1] = 2
    nib.save(nib.Nifti1Image(seg, AFFINE), folder / "case7_seg.nii.gz")
    return folder


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method", ["wolleb", "anoddpm", "anoddpm-gaussian", "autoencoder", "intensity"])
def test_detect_on_a_case_folder_writes_every_output_in_the_input_geometry(method, models, tmp_path, capsys):
    case = write_case(tmp_path / "case")
    args = ["detect", "--method", method, "--input", str(case), "--out", str(tmp_path / "out"), "--steps", "3",
            "--noise-level", "50"]
    checkpoint = {"wolleb": "gaussian", "anoddpm": "simplex", "anoddpm-gaussian": "gaussian",
                  "autoencoder": "autoencoder"}.get(method)
    if checkpoint:
        args += ["--checkpoint", str(models[checkpoint])]
    if method == "wolleb":
        args += ["--classifier", str(models["classifier"])]
    code, out, err = run(args, capsys)
    assert code == 0, err
    out_dir = tmp_path / "out"
    anomaly = np.load(out_dir / "case7_anomaly.npy")
    assert anomaly.shape == (20, 20, 3) and np.all(anomaly[0] == 0)        # input shape; zero outside the brain
    channels = 1 if method == "intensity" else 3            # the intensity baseline reads FLAIR only
    assert np.load(out_dir / "case7_healthy.npy").shape == (channels, 20, 20, 3)
    seg = np.load(out_dir / "case7_segmentation.npy")
    assert seg.shape == (20, 20, 3) and set(np.unique(seg)) <= {0, 1}
    for name in ("anomaly", "segmentation"):
        image = nib.load(out_dir / f"case7_{name}.nii.gz")
        assert np.allclose(image.affine, AFFINE) and image.shape == (20, 20, 3)
    assert (out_dir / "case7_overlay.png").is_file()
    rows = list(csv.DictReader(open(out_dir / "scores.csv")))
    assert [r["slice"] for r in rows] == ["0", "1", "2"] and all(float(r["score"]) >= 0 for r in rows)


def test_detect_on_a_folder_of_2d_images(models, tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(folder / f"xray{i}.png")
    code, _, err = run(["detect", "--method", "anoddpm-gaussian", "--checkpoint", str(models["gray"]), "--input",
                        str(folder), "--out", str(tmp_path / "out"), "--steps", "2", "--threshold", "fixed",
                        "--threshold-value", "0.5", "--median", "3"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [r["input"] for r in rows] == ["xray0", "xray1", "xray2"] and all(r["slice"] == "" for r in rows)
    assert np.load(tmp_path / "out" / "xray1_anomaly.npy").shape == (24, 24)
    assert np.load(tmp_path / "out" / "xray1_healthy.npy").shape == (1, 24, 24)


def test_percentile_threshold_from_healthy_images(models, tmp_path, capsys):
    case = write_case(tmp_path / "case")
    code, _, err = run(["detect", "--method", "autoencoder", "--checkpoint", str(models["autoencoder"]), "--input",
                        str(case), "--out", str(tmp_path / "out"), "--threshold", "percentile", "--healthy",
                        str(case), "--paper-settings"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    # the 99th percentile of the same maps: about 1% of the brain pixels lie above it
    anomaly = np.load(tmp_path / "out" / "case7_anomaly.npy")
    tau = float(rows[0]["threshold"])
    assert 0.0 < (anomaly[anomaly > 0] >= tau).mean() < 0.03


def test_bad_inputs_give_clear_errors(models, tmp_path, capsys):
    missing = write_case(tmp_path / "missing", contrasts=("t1ce", "flair"))
    mismatch = write_case(tmp_path / "mismatch", bad="t2")
    png = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    small = tmp_path / "small.npy"
    np.save(small, np.ones((3, 8, 8), np.float32))
    cases = [
        (["--method", "anoddpm-gaussian", "--checkpoint", str(models["gaussian"]), "--input", str(missing)],
         "contrast(s) t2 missing"),
        (["--method", "anoddpm-gaussian", "--checkpoint", str(models["gaussian"]), "--input", str(mismatch)],
         "contrasts differ in shape"),
        (["--method", "anoddpm-gaussian", "--checkpoint", str(models["gaussian"]), "--input", str(png)],
         "1 channel(s) but the checkpoint was trained on 3"),
        (["--method", "anoddpm-gaussian", "--checkpoint", str(models["gaussian"]), "--input", str(small)],
         "is it another modality"),
        (["--method", "anoddpm", "--checkpoint", str(models["gaussian"]), "--input", str(png)],
         "trained with Gaussian noise; use --method anoddpm-gaussian"),
        (["--method", "wolleb", "--checkpoint", str(models["gaussian"]), "--classifier", str(models["gaussian"]),
          "--input", str(png)], "not a noise-aware classifier"),
        (["--method", "autoencoder", "--checkpoint", str(models["gaussian"]), "--input", str(png)],
         "needs a autoencoder checkpoint"),
        (["--method", "intensity", "--input", str(tmp_path / "nothing")], "no such file"),
        (["--method", "autoencoder", "--checkpoint", str(models["autoencoder"]), "--input", str(missing.parent /
          "mismatch"), "--threshold", "percentile"], "--healthy"),
    ]
    for args, message in cases:
        code, _, err = run(["detect", *args, "--out", str(tmp_path / "o")], capsys)
        assert code == 1 and message in err, (args, err)


def test_evaluate_anomaly_intensity_baseline_on_a_tiny_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = np.zeros((3, 4, 24, 24), np.float32)
    images[:, :, 4:20, 4:20] = rng.uniform(0.3, 0.5, (3, 4, 16, 16))
    seg = np.zeros((3, 24, 24), np.uint8)
    seg[:, 6:10, 12:16] = 2
    images[:, 3][seg > 0] = 0.9                               # bright FLAIR lesion
    npz = tmp_path / "slices.npz"
    np.savez(npz, images=images, seg=seg, subject=np.array(["a", "a", "b"]),
             channels=np.array(["t1", "t1ce", "t2", "flair"]))
    code, out, err = run(["evaluate-anomaly", "--methods", "intensity", "--brats-test", str(npz), "--brats-case", "",
                          "--pneumonia", "", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())["brats_unseen"]["intensity"]
    assert result["pixel_auroc"] > 0.9 and result["best_dice"] > 0.8 and result["slices"] == 3   # 5x5 median blurs edges
    assert "| intensity |" in out


def test_map_options_on_a_case_folder_and_their_errors(models, tmp_path, capsys):
    """--map-contrasts flair --residual positive --samples 2: the map is non-negative and FLAIR-only; wrong names,
    K for a deterministic method and map options for the intensity baseline are refused with the argument named."""
    case = write_case(tmp_path / "case")
    base = ["detect", "--checkpoint", str(models["gaussian"]), "--input", str(case), "--median", "1"]
    code, _, err = run([*base, "--method", "anoddpm-gaussian", "--map-contrasts", "flair", "--residual", "positive",
                        "--samples", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    anomaly = np.load(tmp_path / "o" / "case7_anomaly.npy")
    assert anomaly.shape == (20, 20, 3) and anomaly.min() >= 0 and anomaly.max() > 0
    assert "case7 (1/1)" in err and "slice" in err                          # progress bar: slices, rate, ETA
    cases = [
        ([*base, "--method", "anoddpm-gaussian", "--map-contrasts", "dwi"], "--map-contrasts 'dwi'"),
        ([*base, "--method", "anoddpm-gaussian", "--map-contrasts", "5"], "out of range"),
        (["detect", "--checkpoint", str(models["autoencoder"]), "--input", str(case), "--method", "autoencoder",
          "--samples", "3"], "--method autoencoder is deterministic"),
        ([*base, "--method", "anoddpm-gaussian", "--samples", "0"], "--samples must be at least 1"),
        (["detect", "--input", str(case), "--method", "intensity", "--residual", "positive"],
         "do not apply to --method intensity"),
    ]
    for args, message in cases:
        code, _, err = run([*args, "--out", str(tmp_path / "bad")], capsys)
        assert code == 1 and message in err, (args, err)


def test_evaluate_anomaly_with_your_own_checkpoint(models, tmp_path, capsys):
    """--checkpoint evaluates a given model in place of the shipped one, with the map options; it needs one method
    and the chest set skipped."""
    images = np.zeros((2, 4, 24, 24), np.float32)
    images[:, :, 4:20, 4:20] = np.random.default_rng(0).uniform(0.3, 0.5, (2, 4, 16, 16))
    seg = np.zeros((2, 24, 24), np.uint8)
    seg[:, 6:10, 12:16] = 2
    npz = tmp_path / "slices.npz"
    np.savez(npz, images=images, seg=seg, subject=np.array(["a", "b"]), channels=np.array(["t1", "t1ce", "t2", "flair"]))
    common = ["evaluate-anomaly", "--brats-test", str(npz), "--brats-case", "", "--checkpoint", str(models["gaussian"])]
    code, out, err = run([*common, "--methods", "anoddpm-gaussian", "--pneumonia", "", "--map-contrasts", "flair",
                          "--residual", "positive", "--samples", "2", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())["brats_unseen"]["anoddpm-gaussian"]
    assert result["checkpoint"] == str(models["gaussian"]) and result["slices"] == 2
    assert result["map"] == {"channels": [2], "residual": "positive", "samples": 2}
    code, _, err = run([*common, "--methods", "anoddpm-gaussian", "autoencoder", "--pneumonia", ""], capsys)
    assert code == 1 and "exactly one of --methods" in err
    code, _, err = run([*common, "--methods", "anoddpm-gaussian"], capsys)
    assert code == 1 and "--pneumonia ''" in err


def test_device_errors_are_one_line(models, tmp_path, capsys):
    """--device resolves as in `meddiff sample`: an unknown device, or CUDA on a machine without it, is a one-line
    error naming --device, not a traceback; the default is auto."""
    case = write_case(tmp_path / "case")
    base = ["detect", "--method", "intensity", "--input", str(case), "--out", str(tmp_path / "o")]
    devices = ["banana"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        code, _, err = run([*base, "--device", device], capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: --device"), err
        assert "Traceback" not in err
    code, _, err = run(base, capsys)                                          # default auto: runs here
    assert code == 0, err


def test_defaults_are_the_development_choice_for_brats_mr_and_the_papers_otherwise(models):
    from meddiff.tasks.anomaly import load_detector
    from meddiff.tasks.anomaly.methods import MR_DEFAULTS, PAPER_SETTINGS

    tuned = load_detector("anoddpm", models["simplex"])
    chosen = MR_DEFAULTS["anoddpm"]
    assert (tuned.noise_level, tuned.steps, tuned.samples) == (chosen["noise_level"], chosen["steps"], chosen["samples"])
    assert tuned.map_channels == (2,) and tuned.residual == "positive"                # FLAIR of (t1ce, t2, flair)
    paper = load_detector("anoddpm", models["simplex"], settings="paper")
    assert (paper.noise_level, paper.samples, paper.map_channels, paper.residual) == (250.0, 1, None, "abs")
    gray = load_detector("anoddpm-gaussian", models["gray"])                           # not BraTS MR: the papers'
    assert (gray.noise_level, gray.samples, gray.residual) == (PAPER_SETTINGS["anoddpm-gaussian"]["noise_level"], 1, "abs")
    wolleb = load_detector("wolleb", models["gaussian"], models["classifier"])
    assert (wolleb.noise_level, wolleb.map_channels, wolleb.residual) == (MR_DEFAULTS["wolleb"]["noise_level"], (2,),
                                                                          "positive")
    explicit = load_detector("anoddpm", models["simplex"], map_contrasts=["all"], residual="abs", samples=1)
    assert (explicit.map_channels, explicit.residual, explicit.samples) == (None, "abs", 1)
    with pytest.raises(MeddiffError, match="--noise-level 2000"):
        load_detector("anoddpm", models["simplex"], noise_level=2000)
