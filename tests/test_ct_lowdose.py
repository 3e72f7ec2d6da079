"""meddiff.tasks.ct.lowdose: the training pairs (clean target, reproducible noisy FBP input) and a tiny residual UNet
trained on them denoising a noise draw it never saw better than the Hann FBP it starts from; the benchmark's row."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiff.physics.ct import ParallelBeamCT, fbp, simulate_sinogram, view_angles
from meddiff.physics.ct.dose import MU_WATER
from meddiff.tasks.ct.lowdose import denoise, lowdose_fbp, lowdose_pairs, shifted
from meddiff.training.regression import build_regression_unet, save_regression, train_regression

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _slices(n: int = 3, size: int = 32) -> torch.Tensor:
    """HU (n, size, size): water ellipses of varying size with a bone-like insert, air around."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    hu = np.full((n, size, size), -1000.0, np.float32)
    for k in range(n):
        hu[k][yy**2 / (150 - 10 * k) + xx**2 / 110 < 1] = 40.0
        hu[k][(yy - 2 + k) ** 2 + (xx + 3) ** 2 < 8] = 700.0
    return torch.from_numpy(hu)


def test_pairs_are_the_clean_slice_and_its_low_dose_fbp():
    hu = _slices()
    pairs = lowdose_pairs(hu, 2.0, realisations=2, seed=3, views=40, i0=2e3)
    assert len(pairs) == 6 and pairs[0]["cond_image"].shape == (1, 32, 32)
    torch.testing.assert_close(pairs[4]["image"][0], hu[1] / 1000)  # second draw, second slice
    # the input is the Hann FBP of a noisy sinogram drawn from the seed, in v = HU / 1000
    angles = view_angles(40, 180.0)
    op = ParallelBeamCT(32, angles)
    g = torch.Generator().manual_seed(3)
    sino, _ = simulate_sinogram(hu[0], op, pixel_size=2.0, i0=2e3, generator=g)
    torch.testing.assert_close(pairs[0]["cond_image"][0], fbp(sino / (MU_WATER * 2.0), angles, 32, filter="hann") - 1)
    assert not torch.equal(pairs[0]["cond_image"], pairs[3]["cond_image"])  # another draw of the same slice
    noiseless = fbp(simulate_sinogram(hu[0], op, pixel_size=2.0)[0] / (MU_WATER * 2.0), angles, 32, filter="hann") - 1
    assert (pairs[0]["cond_image"][0] - noiseless).abs().mean() > 0.02  # the dose is low enough to matter


def test_augmented_pairs_are_moved_slices_and_their_own_fbp():
    hu = _slices()
    x = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(shifted(x, 1, -1, False)[1:, :3], x[:2, 1:]) and (shifted(x, 1, -1, False)[0] == -1000).all()
    assert torch.equal(shifted(x, 0, 0, True), x.flip(-1))
    pairs = lowdose_pairs(hu, 2.0, realisations=3, seed=1, shift=3, flip=True, views=40, i0=2e3)
    torch.testing.assert_close(pairs[0]["image"][0], hu[0] / 1000)  # the first draw is the slices as they are
    moved = [p["image"][0] * 1000 for p in pairs[3:]]
    assert any(not torch.equal(m, h) for m, h in zip(moved, list(hu) * 2))
    for m in moved:  # a mirrored / shifted copy of one of the slices: same body area, air entering at the edge
        assert any(abs(int((m > -500).sum()) - int((h > -500).sum())) <= 2 for h in hu)
    # each input is the low-dose FBP of its own (moved) target, not of the original slice
    clean_fbp = [fbp(simulate_sinogram(p["image"][0] * 1000, ParallelBeamCT(32, view_angles(40, 180.0)),
                                       pixel_size=2.0)[0] / (MU_WATER * 2.0), view_angles(40, 180.0), 32,
                     filter="hann") - 1 for p in pairs[3:]]
    for p, c in zip(pairs[3:], clean_fbp):
        assert float((p["cond_image"][0] - c).abs().mean()) < float((p["cond_image"][0] - c.flip(-1)).abs().mean()) \
            or torch.allclose(c, c.flip(-1))


def test_a_tiny_unet_beats_the_fbp_it_starts_from(tmp_path):
    hu = _slices()
    kw = dict(views=40, i0=1e3)
    pairs = lowdose_pairs(hu, 2.0, realisations=6, seed=0, **kw)
    torch.manual_seed(0)
    model = build_regression_unet(1, 1, channels=(8, 16), strides=(2,), num_res_units=1, residual=True)
    train_regression(model, pairs, loss="l1", batch_size=6, lr=2e-3, max_steps=400, seed=0)
    held_out = lowdose_fbp(hu, 2.0, generator=torch.Generator().manual_seed(99), **kw)  # a new noise draw
    clean = hu / 1000
    before = float((held_out - clean).abs().mean())
    after = float((denoise(model.eval(), held_out) - clean).abs().mean())
    assert after < 0.85 * before, (before, after)  # measured: 0.079 -> 0.062
    # the benchmark's row reloads the saved model and scores it on the same sinograms as the other methods
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import ct_reconstruction as B

    save_regression(model, tmp_path / "unet")
    rows = B.unet_rows("low-dose-1e4", hu, 2.0, [5, 6, 7], str(tmp_path / "unet"))
    assert [r["method"] for r in rows] == [B.UNET] * 3 and all(np.isfinite(r["psnr"]) for r in rows)
