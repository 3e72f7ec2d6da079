"""meddiff.physics.simulate (multi-coil k-space simulator) and `meddiff simulate-kspace`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.physics import MultiCoilMRI, fft2c, ifft2c, rss
from meddiff.physics.simulate import birdcage_maps, simulate_kspace, smooth_phase


def _phantom(h: int = 48, w: int = 40) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1).float() * 2.0 + ((x - 0.2) ** 2 + y**2 < 0.1).float()
    return img + 0.1 * torch.rand(h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("coils", [1, 4, 8])
def test_noiseless_rss_equals_image(coils):
    img = _phantom()
    kspace, maps = simulate_kspace(img, coils, 0.0, seed=3)
    assert kspace.shape == maps.shape == (coils, *img.shape)
    assert kspace.dtype == maps.dtype == torch.complex64
    assert torch.allclose(rss(ifft2c(kspace)), img, atol=1e-5 * float(img.max()), rtol=0)


def test_maps_normalised_and_smooth():
    maps = birdcage_maps((64, 48), 8)
    assert torch.allclose((maps.abs() ** 2).sum(0), torch.ones(64, 48), atol=1e-5)
    energy = fft2c(maps).abs() ** 2
    low = energy[:, 32 - 8:32 + 8, 24 - 6:24 + 6].sum()  # central 1/4 x 1/4 of k-space
    assert 1 - float(low / energy.sum()) < 0.05  # white noise would leave ~94 % outside
    # coils differ: the magnitude of each map peaks on the side of its coil
    peaks = {int(m.abs().argmax()) for m in maps}
    assert len(peaks) == 8
    phase = smooth_phase((64, 48), seed=1)
    pe = fft2c(torch.polar(torch.ones_like(phase), phase)).abs() ** 2
    assert 1 - float(pe[32 - 8:32 + 8, 24 - 6:24 + 6].sum() / pe.sum()) < 0.05


def test_noise_level():
    img = _phantom(64, 64)
    sd, coils = 0.02, 8
    clean, _ = simulate_kspace(img, coils, 0.0, seed=5)
    noisy, _ = simulate_kspace(img, coils, sd, seed=5)
    sigma = sd * float(img.max())
    diff = noisy - clean  # the noise alone: same seed, phase drawn first
    for part in (diff.real, diff.imag):
        assert abs(float(part.std()) / sigma - 1) < 0.05
        assert abs(float(part.mean())) < 0.05 * sigma
    err = rss(ifft2c(noisy)) - img
    bound = torch.sqrt((ifft2c(diff).abs() ** 2).sum(0))  # |RSS - |x|| <= ||n|| per pixel (triangle inequality)
    assert bool((err.abs() <= bound + 1e-5).all())
    strong = img > 1.5  # where the signal dominates, RSS error ~ N(0, sigma^2)
    assert abs(float(err[strong].std()) / sigma - 1) < 0.15
    assert float(err.abs().mean()) > 0.3 * sigma  # noise really was added


def test_seeded_reproducibility():
    img = _phantom()
    a, _ = simulate_kspace(img, 4, 0.05, seed=7)
    b, _ = simulate_kspace(img, 4, 0.05, seed=7)
    c, _ = simulate_kspace(img, 4, 0.05, seed=8)
    d, _ = simulate_kspace(img, 4, 0.05, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.allclose(a, c)


def test_operator_reproduces_kspace():
    img = _phantom()
    seed = 11
    kspace, maps = simulate_kspace(img, 6, 0.0, seed=seed)
    phase = smooth_phase(img.shape, seed=seed)  # the simulator draws the phase first from the seeded generator
    x = (img * torch.polar(torch.ones_like(phase), phase))[None]
    op = MultiCoilMRI(maps, mask=torch.ones(img.shape))
    assert torch.allclose(op.A(x)[0], kspace, atol=1e-5)
    plain, maps2 = simulate_kspace(img, 6, 0.0, seed=seed, phase=False)
    assert torch.allclose(op.A(img.to(torch.complex64)[None], maps=maps2)[0], plain, atol=1e-5)
    # given maps are used as-is
    again, same = simulate_kspace(img.numpy(), noise_sd=0.0, seed=seed, maps=maps)
    assert torch.equal(same, maps) and torch.allclose(again, kspace, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"coils": 0}, "coils"),
    ({"noise_sd": -0.1}, "noise_sd"),
    ({"noise_sd": math.nan}, "noise_sd"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(MeddiffError, match=match):
        simulate_kspace(_phantom(), **kwargs)


def test_bad_images():
    img = _phantom()
    bad = img.clone()
    bad[3, 4] = math.nan
    with pytest.raises(MeddiffError, match="NaN"):
        simulate_kspace(bad)
    with pytest.raises(MeddiffError, match="2D"):
        simulate_kspace(torch.zeros(2, 8, 8))
    with pytest.raises(MeddiffError, match="real"):
        simulate_kspace(img.to(torch.complex64))
    with pytest.raises(MeddiffError, match="maps"):
        simulate_kspace(img, maps=torch.zeros(4, 8, 8, dtype=torch.complex64))


def test_cli_round_trip(tmp_path, capsys):
    img = _phantom(24, 20).numpy()
    np.save(tmp_path / "img.npy", img)
    out, maps_out = tmp_path / "k.npy", tmp_path / "maps.npy"
    assert main(["simulate-kspace", "--image", str(tmp_path / "img.npy"), "--coils", "4", "--noise", "0",
                 "--seed", "2", "--out", str(out), "--maps-out", str(maps_out)]) == 0
    k, maps = np.load(out), np.load(maps_out)
    assert k.dtype == maps.dtype == np.complex64 and k.shape == maps.shape == (4, 24, 20)
    expected, expected_maps = simulate_kspace(img, 4, 0.0, seed=2)
    assert np.array_equal(k, expected.numpy()) and np.array_equal(maps, expected_maps.numpy())
    assert np.allclose(rss(ifft2c(torch.from_numpy(k))).numpy(), img, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npy", "k.npy", "maps.npy"]  # no temporaries left
    # a 3D volume with --slice
    np.save(tmp_path / "vol.npy", np.stack([img, 2 * img, 3 * img], axis=-1))
    assert main(["simulate-kspace", "--image", str(tmp_path / "vol.npy"), "--slice", "1", "--coils", "2",
                 "--out", str(out)]) == 0
    assert np.allclose(rss(ifft2c(torch.from_numpy(np.load(out)))).numpy(), 2 * img, atol=1e-4)


def test_cli_errors(tmp_path, capsys):
    img = _phantom(16, 16).numpy()
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "vol.npy", np.stack([img, img]))
    nan = img.copy()
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    out = str(tmp_path / "k.npy")
    cases = [
        (["--image", str(tmp_path / "vol.npy")], "--slice"),
        (["--image", str(tmp_path / "vol.npy"), "--slice", "50"], "--slice 50"),
        (["--image", str(tmp_path / "nan.npy")], "NaN"),
        (["--image", str(tmp_path / "img.npy"), "--coils", "0"], "--coils"),
        (["--image", str(tmp_path / "img.npy"), "--noise", "-1"], "--noise"),
    ]
    for extra, match in cases:
        capsys.readouterr()
        assert main(["simulate-kspace", *extra, "--out", out]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "k.npy").exists()
