"""`meddiff reconstruct` end to end with a tiny trained prior: formats in (.npy, .h5, .cfl) and out (.npy, .nii.gz,
.png), the std map, and one-line errors naming the bad argument."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from meddiff.cli.main import main
from meddiff.data import io
from meddiff.physics import ifft2c, make_mask, rss

from helpers import train_tiny_checkpoint

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_mri_solvers import phantom  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    train_tiny_checkpoint(root, n=32, steps=3)
    k, _, _ = phantom(h=24, w=20)
    mask = make_mask((24, 20), 2, "equispaced", acs_fraction=0.4, seed=0, axis=-1)[0]  # (W,) line pattern
    np.save(root / "k.npy", k.numpy())
    np.save(root / "mask.npy", mask.numpy())
    return root, k, mask


def test_diffusion_reconstruction_writes_image_and_std(files, capsys):
    root, k, mask = files
    code = main(["reconstruct", "--kspace", str(root / "k.npy"), "--mask", str(root / "mask.npy"), "--method", "ddnm",
                 "--steps", "2", "--samples", "2", "--checkpoint", str(root / "run"), "--out", str(root / "x.npy"),
                 "--std-out", str(root / "std.npy")])
    assert code == 0
    assert "2 network evaluations x 2 samples" in capsys.readouterr().out
    image, std = np.load(root / "x.npy"), np.load(root / "std.npy")
    assert image.shape == std.shape == (24, 20) and image.dtype == np.float32
    assert np.isfinite(image).all() and (std >= 0).all()


def test_start_flag_reaches_the_solver_and_is_refused_by_baselines(files, capsys):
    root, k, mask = files
    common = ["reconstruct", "--kspace", str(root / "k.npy"), "--mask", str(root / "mask.npy"), "--steps", "2",
              "--samples", "1", "--checkpoint", str(root / "run")]
    outs = {}
    for start in ("0.01", "0.3"):
        assert main([*common, "--method", "ddnm", "--start", start, "--out", str(root / f"s{start}.npy")]) == 0
        outs[start] = np.load(root / f"s{start}.npy")
    assert not np.array_equal(outs["0.01"], outs["0.3"])
    capsys.readouterr()
    assert main([*common, "--method", "ddnm", "--start", "1.5", "--out", str(root / "never.npy")]) == 1
    assert "start=1.5 must be in (0, 1]" in capsys.readouterr().err
    assert main([*common, "--method", "sense", "--start", "0.1", "--out", str(root / "never.npy")]) == 1
    assert capsys.readouterr().err.startswith("error: --start needs a diffusion method")
    assert not (root / "never.npy").exists()


def test_combine_flag_reaches_the_reconstruction(files):
    root, k, mask = files
    paths = {c: root / f"cg_{c}.npy" for c in ("sense", "rss")}
    for combine, path in paths.items():
        assert main(["reconstruct", "--kspace", str(root / "k.npy"), "--mask", str(root / "mask.npy"), "--method",
                     "sense", "--combine", combine, "--out", str(path)]) == 0
    sense, rss_image = np.load(paths["sense"]), np.load(paths["rss"])
    assert sense.shape == rss_image.shape == (24, 20) and not np.allclose(sense, rss_image)


def test_formats_in_and_out_agree(files):
    root, k, mask = files
    reference = rss(ifft2c(k * mask)).numpy()
    with h5py.File(root / "k.h5", "w") as f:  # fastMRI layout: (slices, coils, H, W), the middle slice is used
        f.create_dataset("kspace", data=np.stack([k.numpy() * 0, k.numpy(), k.numpy() * 0]))
    io.write_cfl(root / "k.cfl", np.moveaxis(k.numpy(), 0, -1)[:, :, None, :])  # BART dims (x, y, z, coil)
    for source in ("k.npy", "k.h5", "k.cfl"):
        for out in ("zf.npy", "zf.nii.gz", "zf.png"):
            assert main(["reconstruct", "--kspace", str(root / source), "--mask", str(root / "mask.npy"),
                         "--method", "zero-filled", "--out", str(root / out)]) == 0
        np.testing.assert_allclose(np.load(root / "zf.npy"), reference, rtol=1e-5, atol=1e-4)
    assert io.read_image(root / "zf.nii.gz")[0].shape == (24, 20)
    assert (root / "zf.png").stat().st_size > 0


def bad_case(root, k, mask, case):
    args = {"--kspace": root / "k.npy", "--mask": root / "mask.npy", "--method": "ddnm", "--checkpoint": root / "run"}
    if case == "real":
        np.save(root / "bad.npy", np.abs(k.numpy()))
        args["--kspace"] = root / "bad.npy"
    elif case == "nan":
        bad = k.numpy().copy()
        bad[0, 3, 3] = np.nan
        np.save(root / "bad.npy", bad)
        args["--kspace"] = root / "bad.npy"
    elif case == "mask_shape":
        np.save(root / "badmask.npy", np.ones((7, 7), np.uint8))
        args["--mask"] = root / "badmask.npy"
    elif case == "empty":
        np.save(root / "badmask.npy", np.zeros(20, np.uint8))
        args["--mask"] = root / "badmask.npy"
    elif case == "checkpoint":
        other = root / "other_task"
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(sorted((root / "run" / "checkpoints").iterdir())[-1], other)
        meta = json.loads((other / "meta.json").read_text())
        meta["task"] = "classifier"
        (other / "meta.json").write_text(json.dumps(meta))
        args["--checkpoint"] = other
    return [x for kv in args.items() for x in map(str, kv)]


@pytest.mark.parametrize("case, message", [
    ("real", "kspace must be complex"), ("nan", "kspace contains 1 NaN"), ("mask_shape", "mask has shape (7, 7)"),
    ("empty", "mask is empty"), ("checkpoint", "--checkpoint"),
])
def test_bad_input_is_a_one_line_error_naming_the_argument(files, capsys, case, message):
    root, k, mask = files
    code = main(["reconstruct", *bad_case(root, k, mask, case), "--steps", "1", "--samples", "1",
                 "--out", str(root / "never.npy")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert not (root / "never.npy").exists()


def test_errors_without_traceback_from_the_command_line(files):
    root, k, mask = files
    result = subprocess.run([sys.executable, "-m", "meddiff.cli.main", "reconstruct", "--kspace", str(root / "k.npy"),
                             "--mask", str(root / "mask.npy"), "--method", "sense", "--out", str(root / "s.npy"),
                             "--std-out", str(root / "s_std.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.startswith("error: --std-out") and "Traceback" not in result.stderr
