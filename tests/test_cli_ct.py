"""`meddiff simulate-ct` -> `meddiff reconstruct --modality ct` end to end: shapes, units (HU), stacks, NIfTI pixel
size through the sidecar, photon counts, a diffusion method with a tiny checkpoint, and one-line errors naming the
bad argument."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from meddiff.cli.main import main
from meddiff.data import io

from helpers import train_tiny_checkpoint


def _hu(n: int = 40) -> np.ndarray:
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n] - c
    hu = np.full((n, n), -1000.0, np.float32)
    hu[yy**2 / (0.4 * n) ** 2 + xx**2 / (0.3 * n) ** 2 < 1] = 40.0
    hu[(yy - 4) ** 2 + xx**2 < 20] = 700.0
    return hu


def _psnr(x, ref) -> float:
    x, ref = np.clip(x, -1000, 1000), np.clip(ref, -1000, 1000)
    return 10 * math.log10(2000.0**2 / float(((x - ref) ** 2).mean()))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    hu = _hu()
    np.save(root / "hu.npy", hu)
    np.save(root / "vol.npy", np.stack([hu, hu[::-1]]))
    return root, hu


def _sim(root, image, out, *extra):
    return main(["simulate-ct", "--image", str(root / image), "--out", str(root / f"{out}.npy"), "--angles-out",
                 str(root / f"{out}_a.npy"), *extra])


def _rec(root, sino, method, out, *extra):
    return main(["reconstruct", "--modality", "ct", "--sinogram", str(root / f"{sino}.npy"), "--angles",
                 str(root / f"{sino}_a.npy"), "--method", method, "--out", str(root / out), *extra])


def test_round_trip_baselines_in_hu(files, capsys):
    """60 views at I0 = 1e5: every baseline returns float32 HU (40, 40), the detector-implied size; TV and SIRT score
    above FBP (measured PSNR in the [-1000, 1000] window: fbp 28.3, sirt 32.3, tv 45.3 dB)."""
    root, hu = files
    assert _sim(root, "hu.npy", "s", "--views", "60", "--dose", "1e5") == 0
    assert "60 views over 180 deg, I0 100000" in capsys.readouterr().out
    assert np.load(root / "s.npy").shape == (60, 57) and np.load(root / "s_a.npy").shape == (60,)
    assert json.loads((root / "s.json").read_text())["pixel_size_mm"] == 1.0
    scores = {}
    for method in ("fbp", "sirt", "tv"):
        assert _rec(root, "s", method, f"{method}.npy") == 0
        image = np.load(root / f"{method}.npy")
        assert image.shape == (40, 40) and image.dtype == np.float32
        scores[method] = _psnr(image, hu)
    assert scores["fbp"] > 28 and scores["tv"] > scores["fbp"] + 3 and scores["sirt"] > scores["fbp"], scores
    assert _rec(root, "s", "fbp", "big.npy", "--size", "48", "52", "--filter", "hann") == 0
    assert np.load(root / "big.npy").shape == (48, 52)


def test_stack_limited_angle_and_counts(files, capsys):
    """A (2, H, W) stack gives (2, views, detectors) sinograms and (2, H, W) images; photon counts with --dose
    reconstruct like the post-log sinogram of the same noise."""
    root, hu = files
    assert _sim(root, "vol.npy", "v", "--views", "30", "--arc", "120") == 0
    assert np.load(root / "v.npy").shape == (2, 30, 57)
    assert _rec(root, "v", "tv", "v_img.npy", "--iters", "50") == 0
    stack = np.load(root / "v_img.npy")
    assert stack.shape == (2, 40, 40) and _psnr(stack[1], hu[::-1]) > 20
    assert _sim(root, "hu.npy", "c", "--views", "30", "--dose", "1e4", "--counts-out", str(root / "counts.npy")) == 0
    np.save(root / "counts_a.npy", np.load(root / "c_a.npy"))
    assert _rec(root, "counts", "fbp", "from_counts.npy", "--dose", "1e4") == 0
    assert _rec(root, "c", "fbp", "from_log.npy") == 0
    np.testing.assert_allclose(np.load(root / "from_counts.npy"), np.load(root / "from_log.npy"), atol=0.05)


def test_nifti_pixel_size_travels_in_the_sidecar(files, tmp_path, capsys):
    """A NIfTI slice at 0.5 mm: simulate-ct uses the header spacing and writes it beside the sinogram, so reconstruct
    returns the right HU without --pixel-size (and a wrong --pixel-size scales mu)."""
    root, hu = files
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    io.write_nifti(tmp_path / "hu.nii.gz", hu[:, :, None], affine)
    assert _sim(tmp_path, "hu.nii.gz", "n", "--views", "90") == 0
    assert "pixel 0.5 mm" in capsys.readouterr().out
    assert _rec(tmp_path, "n", "sirt", "n_img.npy") == 0
    image = np.load(tmp_path / "n_img.npy")
    assert image.shape == (1, 40, 40) and _psnr(image[0], hu) > 28  # a 3D file (x, y, 1): a stack of one slice
    assert _rec(tmp_path, "n", "sirt", "wrong.npy", "--pixel-size", "1.0") == 0
    water = np.load(tmp_path / "wrong.npy")[0, 18:22, 12:16].mean()
    assert abs(water - (-500.0)) < 60  # half the true mu: (0.5 - 1) x 1000 HU


def test_diffusion_method_with_a_checkpoint(files, tmp_path, capsys):
    root, hu = files
    train_tiny_checkpoint(tmp_path, prediction="eps", name="p.npz")
    if not (root / "s.npy").exists():
        assert _sim(root, "hu.npy", "s", "--views", "60", "--dose", "1e5") == 0
    assert _rec(root, "s", "ddnm", "d.npy", "--checkpoint", str(tmp_path / "run"), "--steps", "2", "--samples", "2",
                "--start", "0.05", "--std-out", str(tmp_path / "std.npy")) == 0
    assert "2 network evaluations x 2 samples" in capsys.readouterr().out
    image, std = np.load(root / "d.npy"), np.load(tmp_path / "std.npy")
    assert image.shape == std.shape == (40, 40) and np.isfinite(image).all() and (std >= 0).all()


def test_mbir_on_a_stack_with_a_checkpoint(files, tmp_path, capsys):
    root, _ = files
    train_tiny_checkpoint(tmp_path, prediction="v", name="p.npz")
    assert _sim(root, "vol.npy", "vs", "--views", "20") == 0
    assert _rec(root, "vs", "mbir", "m.npy", "--checkpoint", str(tmp_path / "run"), "--steps", "2", "--start",
                "0.1") == 0
    assert "4 network evaluations" in capsys.readouterr().out  # 2 steps x 2 slices in one batch
    image = np.load(root / "m.npy")
    assert image.shape == (2, 40, 40) and np.isfinite(image).all()


def test_failures_are_one_line_errors_naming_the_argument(files, capsys, tmp_path):
    root, hu = files
    if not (root / "s.npy").exists():
        assert _sim(root, "hu.npy", "s", "--views", "60", "--dose", "1e5") == 0
    capsys.readouterr()
    sino = np.load(root / "s.npy")
    np.save(tmp_path / "short_a.npy", np.load(root / "s_a.npy")[:-2])
    np.save(tmp_path / "short.npy", sino)
    nan = sino.copy()
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "nan_a.npy", np.load(root / "s_a.npy"))
    np.save(tmp_path / "neg.npy", -np.ones_like(sino))
    np.save(tmp_path / "neg_a.npy", np.load(root / "s_a.npy"))
    np.save(tmp_path / "odd.npy", (np.ones((50, 30)) * 5000).astype(np.float32))
    ct_args = ["reconstruct", "--modality", "ct", "--method", "fbp", "--out", str(tmp_path / "x.npy")]
    sim_args = ["simulate-ct", "--image", str(root / "hu.npy")]
    cases = [
        (lambda: _rec(tmp_path, "short", "fbp", "x.npy"), "--angles: 58 angles but the sinogram has 60 views"),
        (lambda: _rec(tmp_path, "nan", "fbp", "x.npy"), "--sinogram: 1 NaN/Inf"),
        (lambda: _rec(tmp_path, "neg", "fbp", "x.npy", "--dose", "1e4"), "--sinogram: 3420 negative photon count"),
        (lambda: _rec(root, "s", "fbp", "x.npy", "--size", "30", "30"), "--size 30 30 is smaller than the 40 x 40"),
        (lambda: _rec(root, "s", "ddnm", "x.npy", "--checkpoint", "pneumonia_cond"),
         "--checkpoint pneumonia_cond: not an unconditional one-channel image prior"),
        (lambda: _rec(root, "s", "sense", "x.npy"), "--method sense is an MRI method"),
        (lambda: _rec(root, "s", "fbp", "x.npy", "--lam", "0.1"), "--lam does not apply to --method fbp"),
        (lambda: _rec(root, "s", "fbp", "x.npy", "--std-out", str(tmp_path / "std.npy")),
         "--std-out needs a diffusion"),
        (lambda: main([*ct_args, "--angles", str(root / "s_a.npy")]), "--sinogram is required for --modality ct"),
        (lambda: main(["reconstruct", "--sinogram", str(root / "s.npy"), "--kspace", "k.npy", "--mask", "m.npy",
                       "--method", "sense", "--out", str(tmp_path / "x.npy")]), "--sinogram is a CT option"),
        (lambda: main([*sim_args, "--views", "0", "--out", str(tmp_path / "x.npy")]), "--views 0 must be >= 1"),
        (lambda: main([*sim_args, "--views", "10", "--out", str(tmp_path / "x.png")]), "--out"),
        (lambda: main([*sim_args, "--views", "10", "--counts-out", "c.npy", "--out", str(tmp_path / "x.npy")]),
         "--counts-out needs --dose"),
    ]
    for call, message in cases:
        code = call()
        err = capsys.readouterr().err
        assert code == 1 and message in err and err.count("\n") == 1, (message, err)
    with pytest.warns(UserWarning, match=r"outside \[-1100, 4000\] HU"):
        assert main(["simulate-ct", "--image", str(tmp_path / "odd.npy"), "--views", "10", "--out",
                     str(tmp_path / "odd_s.npy")]) == 0
    assert np.load(tmp_path / "odd_s.npy").shape == (10, 71)  # 50 x 30 padded to a 50 x 50 square
