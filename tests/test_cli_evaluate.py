"""`meddiff evaluate` end to end on the shipped PneumoniaMNIST subset: table, JSON, near-copies, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.data import asset_path
from meddiff.metrics.image import psnr, ssim
from meddiff.tasks.evaluate import evaluate_folders, load_image_set

NPZ = "asset:pneumoniamnist/pneumoniamnist_small.npz"
FAST = ["--features", "random-cnn", "--kid-subsets", "3", "--utility-steps", "20"]


def _small():
    return np.load(asset_path("pneumoniamnist") / "pneumoniamnist_small.npz")


@pytest.fixture()
def copies(tmp_path):
    """A class-folder of 24 PNGs that are copies of training images (a memorising generator)."""
    d = _small()
    x, y = d["train_images"], d["train_labels"].reshape(-1)
    for i in range(0, 600, 25):
        folder = tmp_path / "fake" / ["normal", "pneumonia"][y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / f"s{i:03d}.png")
    return tmp_path / "fake"


def test_evaluate_prints_table_writes_json_and_flags_copies(copies, tmp_path, capsys):
    out = tmp_path / "result" / "eval.json"
    assert main(["evaluate", "--real", NPZ, "--fake", str(copies), "--train", NPZ, "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| FID |" in printed and "features: random-cnn" in printed and "wrote" in printed
    result = json.loads(out.read_text())
    assert result["features"]["name"] == "random-cnn"
    assert result["real"]["n"] == 200 and result["train"]["n"] == 600 and result["fake"]["labels"] == [12, 12]
    assert "val split" in result["real"]["source"] and "train split" in result["train"]["source"]
    mem = result["memorisation"]
    assert mem["flagged"] == 24 and mem["exact_copies"] == 24 and max(mem["distance"]) == 0.0
    names = sorted(mem["flagged_images"])  # "normal/s025.png": the copy of training image 25
    assert sorted(int(n.split("/s")[1][:3]) for n in names) == sorted(mem["nearest_train"]) == list(range(0, 600, 25))
    assert set(result["utility"]) >= {"synthetic", "real", "real+synthetic"}
    assert result["fid"] >= 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert not list(out.parent.glob(".*")), "no temporary file left behind"


def test_array_files_labels_and_resizing(tmp_path):
    d = _small()
    fake = (np.repeat(np.repeat(d["val_images"][:40], 2, 1), 2, 2).astype(np.float32) / 127.5 - 1)  # 56 x 56 floats
    np.save(tmp_path / "fake.npy", fake)
    labels = d["val_labels"][:40].reshape(-1)
    np.savetxt(tmp_path / "labels.txt", labels, fmt="%d")
    s = load_image_set(tmp_path / "fake.npy", labels=tmp_path / "labels.txt")
    assert s.images.shape == (40, 1, 56, 56) and s.describe()["normalisation"] == [
        "symmetric: [-1, 1] -> [-1, 1] (auto: float values of images span [-1, 0.976])"]
    assert torch.equal(s.labels, torch.from_numpy(labels.astype(np.int64)))
    np.savez(tmp_path / "fake.npz", images=d["val_images"][:40], labels=labels)
    z = load_image_set(tmp_path / "fake.npz")
    assert torch.equal(z.labels, s.labels) and z.normalisation[0] == "uint8: [0, 255] -> [-1, 1] (dtype uint8)"
    result = evaluate_folders(NPZ, tmp_path / "fake.npy", features="random-cnn", kid_subsets=2)
    assert result["fake"]["resized_to"] == [28, 28]
    assert "no --train" in result["memorisation"]["skipped"] and "--fake" in result["utility"]["skipped"]
    # Nearest-neighbour upsampling then area downsampling returns the val images: fake = real[:40].
    assert result["precision"] == 1.0


def test_paired_metrics_match_the_functions(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(6, 1, 40, 40, generator=g) * 2 - 1
    fake = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    np.save(tmp_path / "real.npy", real.numpy())
    np.save(tmp_path / "fake.npy", fake.numpy())
    result = evaluate_folders(tmp_path / "real.npy", tmp_path / "fake.npy", features="random-cnn", kid_subsets=2,
                              paired=True)
    p = result["paired"]
    assert p["psnr"] == pytest.approx(float(psnr(fake, real, data_range=2.0).mean()), rel=1e-6)
    assert p["ssim"] == pytest.approx(float(ssim(fake, real, 2.0).mean()), rel=1e-6)
    assert p["ms_ssim"] is None and "too small" in p["ms_ssim_note"]
    vol = torch.rand(5, 1, 12, 14, 16, generator=g) * 2 - 1  # volumes
    train = torch.rand(5, 1, 12, 14, 16, generator=g) * 2 - 1
    fake = (train + 0.01).clamp(-1, 1)  # near-copies of the training volumes
    for name, array in (("vreal", vol), ("vfake", fake), ("vtrain", train)):
        np.save(tmp_path / f"{name}.npy", array.numpy())
    result = evaluate_folders(tmp_path / "vreal.npy", tmp_path / "vfake.npy", train=tmp_path / "vtrain.npy",
                              paired=True)
    assert result["features"]["name"] == "pneumonia-cnn (3 central planes)" and "no class labels" in result["utility"]["skipped"]
    assert result["fid"] >= 0 and 0 <= result["precision"] <= 1  # 2.5D features: the three central planes
    assert result["paired"]["ssim"] == pytest.approx(float(ssim(fake, vol, 2.0, spatial_dims=3).mean()), rel=1e-6)
    assert result["memorisation"]["nearest_train"] == list(range(5)) and result["memorisation"]["flagged"] == 5


@pytest.mark.parametrize("case, message", [
    ("empty", "no image files"),
    ("channels", "channel counts"),
    ("few", "needs at least 4"),
    ("same", "same images"),
    ("features", "features='inception'"),
])
def test_errors_are_one_line_with_the_fix(case, message, tmp_path, copies, capsys):
    (tmp_path / "empty").mkdir()
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(5):
        Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(rgb / f"{i}.png")
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((3, 28, 28), np.float32))
    fake = {"empty": tmp_path / "empty", "channels": rgb, "few": few}.get(case, copies)
    args = ["evaluate", "--real", NPZ, "--fake", str(fake), "--out", str(tmp_path / "e.json"), *FAST]
    if case == "same":
        args += ["--train", NPZ, "--train-split", "val"]
    if case == "features":
        with pytest.raises(SystemExit):  # argparse choices
            main(args + ["--features", "inception"])
        from meddiff.metrics.features import get_feature_extractor
        with pytest.raises(MeddiffError, match=message):
            get_feature_extractor("inception")
        return
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.json").exists()


def test_reads_a_meddiff_sample_folder_in_original_intensities(tmp_path):
    d = _small()
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    norm = {"mode": "fixed", "a_min": 0.0, "a_max": 255.0, "b_min": -1.0, "b_max": 1.0}
    (checkpoint / "meta.json").write_text(json.dumps({"normalisation": norm}))
    out = tmp_path / "samples"
    out.mkdir()
    np.save(out / "samples.npy", d["val_images"][:30, None].astype(np.float32))  # 0..255 as `meddiff sample` writes
    np.save(out / "labels.npy", d["val_labels"][:30].reshape(-1).astype(np.int64))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(out / "grid_class0.png")  # not an image of the set
    (out / "manifest.json").write_text(json.dumps({"checkpoint": str(checkpoint), "intensity_range": "original",
                                                   "files": {"samples": "samples.npy", "labels": "labels.npy"}}))
    s = load_image_set(out)
    expected = torch.from_numpy(d["val_images"][:30, None]).float() / 127.5 - 1
    assert torch.allclose(s.images, expected, atol=1e-6) and s.labels.tolist() == d["val_labels"][:30].ravel().tolist()
    assert s.describe()["normalisation"] == [
        "checkpoint: [0, 255] -> [-1, 1] (meddiff sample folder: checkpoint normalisation (fixed))"]
    (checkpoint / "meta.json").unlink()
    with pytest.raises(MeddiffError, match="cannot be read here"):
        load_image_set(out, what="--fake")


# ------------------------------------------------------------------ intensity ranges (issue 20, item 2)
ENCODINGS = {  # the same uint8 images stored five ways, and the file each is written to
    "uint8": lambda x: x,
    "unit": lambda x: x.astype(np.float32) / 255,
    "symmetric": lambda x: x.astype(np.float32) / 127.5 - 1,
    "uint8 as int64": lambda x: x.astype(np.int64),
    "hu": lambda x: (x.astype(np.float32) / 255 * 4095 - 1024).astype(np.int16),  # CT in HU (.npz key "hu")
    "float npy files": lambda x: x.astype(np.float32) / 255,  # a folder of one .npy per image
}
METRICS = ("fid", "kid", "precision", "recall")


def _encode(tmp_path, name, encoding, images):
    array = ENCODINGS[encoding](images)
    if encoding == "float npy files":
        (tmp_path / name).mkdir()
        for i, image in enumerate(array):
            np.save(tmp_path / name / f"{i:03d}.npy", image)
        return tmp_path / name
    if encoding == "hu":
        np.savez(tmp_path / f"{name}.npz", hu=array)
        return tmp_path / f"{name}.npz"
    np.save(tmp_path / f"{name}.npy", array)
    return tmp_path / f"{name}.npy"


def _score(real, fake, train=None, **kwargs):
    return evaluate_folders(real, fake, train=train, features="random-cnn", kid_subsets=3, kid_subset_size=50,
                            utility=False, **kwargs)


def _hu_exact(images):
    """Images whose HU encoding (x / 255 * 4095 - 1024, rounded to integers) is exact: multiples of 17 (4095 / 255
    = 16.06 is not an integer, so HU rounds; these values survive every encoding bit for bit)."""
    return (images // 51 * 51).astype(np.uint8)


def test_uint8_unit_symmetric_and_hu_inputs_give_the_same_metrics(tmp_path):
    d = _small()
    real, train, fake = (_hu_exact(a) for a in (d["val_images"][:80], d["train_images"][:120],
                                                 d["train_images"][200:260]))
    results = {}
    for encoding in ENCODINGS:
        folder = tmp_path / encoding.replace(" ", "_")
        folder.mkdir()
        paths = [_encode(folder, name, encoding, a) for name, a in (("real", real), ("fake", fake),
                                                                    ("train", train))]
        results[encoding] = _score(*paths)
    base = results["uint8"]
    for encoding, result in results.items():
        for metric in METRICS:
            assert result[metric] == pytest.approx(base[metric], rel=1e-4, abs=1e-6), (encoding, metric)
        assert result["memorisation"]["distance"] == pytest.approx(base["memorisation"]["distance"], abs=1e-4)
    assert results["unit"]["intensity"]["sets"]["--fake"][0].startswith("unit: [0, 1] -> [-1, 1]")
    assert results["hu"]["intensity"]["sets"]["--real"][0].startswith("hu: [-1024, 3071] -> [-1, 1] (auto: units HU")
    assert results["uint8"]["fake"]["normalisation"] == ["uint8: [0, 255] -> [-1, 1] (dtype uint8)"]


def test_float_fake_against_a_uint8_medmnist_real_set(tmp_path):
    """The reported case: the same images as float / 255 and as uint8 gave FID 3.08 and precision 0.005."""
    fake = _small()["val_images"][:60]
    by_uint8 = _score(NPZ, _encode(tmp_path, "a", "uint8", fake))
    for encoding in ("unit", "symmetric"):
        result = _score(NPZ, _encode(tmp_path, encoding, encoding, fake))
        for metric in METRICS:
            assert result[metric] == pytest.approx(by_uint8[metric], rel=1e-4, abs=1e-6), (encoding, metric)
    assert by_uint8["precision"] == 1.0  # the fakes are real images


def test_explicit_ranges_give_the_same_metrics(tmp_path):
    fake = _hu_exact(_small()["val_images"][:60])
    by_uint8 = _score(NPZ, _encode(tmp_path, "a", "uint8", fake))
    hu = tmp_path / "hu_float.npy"
    np.save(hu, fake.astype(np.float32) / 255 * 4095 - 1024)  # HU values in a file with no units
    floats255 = tmp_path / "f255.npy"
    np.save(floats255, fake.astype(np.float32))
    for path, value in ((hu, "hu"), (hu, (-1024, 3071)), (hu, "-1024,3071"), (floats255, "uint8"),
                        (_encode(tmp_path, "unit", "unit", fake), "unit")):
        result = _score(NPZ, path, intensity_range=value)
        for metric in METRICS:
            assert result[metric] == pytest.approx(by_uint8[metric], rel=1e-4, abs=1e-6), (value, metric)
    result = _score(NPZ, hu, intensity_range="percentile")  # each image by its own percentiles: runs, is recorded
    assert result["fake"]["normalisation"] == ["percentile: each image's 0.5..99.5 percentiles -> [-1, 1] "
                                               "(--range percentile)"]
    result = _score(NPZ, hu, intensity_range="min-max")  # one min and max over both sets: the uint8 real one too
    assert result["intensity"]["range"] == "min-max" and "--range min-max" in result["intensity"]["sets"]["--fake"][0]
    assert result["intensity"]["sets"]["--real"] == ["uint8: [0, 255] -> [-1, 1] (dtype uint8)"]


@pytest.mark.parametrize("case, message", [
    ("float255", "neither [0, 1] nor [-1, 1]; pass --range with one of uint8, uint16, unit, symmetric, hu"),
    ("disagree", "may be either (e.g. --range unit or --range symmetric)"),
    ("int16", "int16 values span [-1000, 1000] with no units"),
    ("outside", "outside --range unit [0, 1]"),
    ("bad", "--range 3 1: LO must be finite and below HI"),
    ("word", "--range bogus: give one of auto, uint8"),
])
def test_ambiguous_intensities_are_refused_naming_the_file_and_range(case, message, tmp_path, capsys):
    x = _small()["val_images"][:10]
    real, fake = tmp_path / "real.npy", tmp_path / "fake.npy"
    np.save(real, x)
    np.save(fake, {"float255": x.astype(np.float32), "disagree": x / 255.0, "int16": np.linspace(-1000, 1000, 7840)
                   .astype(np.int16).reshape(10, 28, 28), "outside": x.astype(np.float32)}.get(case, x))
    if case == "disagree":
        np.save(real, x / 127.5 - 1)
    extra = {"outside": ["--range", "unit"], "bad": ["--range", "3", "1"], "word": ["--range", "bogus"]}.get(case, [])
    out = tmp_path / "e.json"
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), "--k", "3", *FAST,
                 *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    if case in ("float255", "int16", "outside"):
        assert f"--fake {fake}:" in err
    assert not out.exists()


def test_cli_range_with_negative_numbers_is_recorded(tmp_path, capsys):
    fake = tmp_path / "hu.npy"
    np.save(fake, _small()["val_images"][:20].astype(np.float32) * 4 - 1000)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--real", NPZ, "--fake", str(fake), "--out", str(out), "--k", "3", "--no-utility",
                 *FAST, "--range", "-1000", "20"]) == 0
    assert "intensities of --fake: window: [-1000, 20] -> [-1, 1] (--range LO HI)" in capsys.readouterr().out
    record = json.loads(out.read_text())["intensity"]
    assert record["range"] == [-1000.0, 20.0] and record["sets"]["--fake"] == [
        "window: [-1000, 20] -> [-1, 1] (--range LO HI)"]
