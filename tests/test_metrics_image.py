"""PSNR / SSIM / NMSE against analytic cases (no reference library needed)."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.metrics.image import nmse, psnr, ssim


def _img(seed=0, shape=(40, 36)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_images():
    x = _img()
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(nmse(x, x)) == 0.0
    assert float(psnr(x, x)) > 200


def test_constant_shift_in_mean_has_closed_form_ssim():
    # Constant images a and a + c: variances and covariance vanish, so SSIM = (2 a (a + c) + C1) / (a^2 + (a+c)^2 + C1).
    a, c, L = 0.25, 0.125, 1.0  # exactly representable in float32
    x, ref = torch.full((32, 32), a + c), torch.full((32, 32), a)
    c1 = (0.01 * L) ** 2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    assert float(ssim(x, ref, data_range=L)) == pytest.approx(expected, rel=1e-6)
    # A shifted textured image: contrast-structure term is exactly 1, so SSIM is the mean luminance term < 1.
    t = _img()
    s = float(ssim(t + c, t, data_range=L))
    assert 0.5 < s < 1.0
    assert float(psnr(t + c, t, data_range=L)) == pytest.approx(10 * math.log10(1 / c**2), rel=1e-6)  # float32 rounding of t + c
    assert float(nmse(t + c, t)) == pytest.approx(c**2 * t.numel() / float((t.double() ** 2).sum()), rel=1e-6)


def test_ssim_decreases_with_noise_and_batches():
    x = _img()
    g = torch.Generator().manual_seed(1)
    noisy = [x + s * torch.randn(x.shape, generator=g) for s in (0.01, 0.05, 0.2)]
    values = [float(ssim(n, x, data_range=1.0)) for n in noisy]
    assert values[0] > values[1] > values[2]
    batch = ssim(torch.stack(noisy), torch.stack([x] * 3), data_range=1.0)
    assert batch.shape == (3,) and torch.allclose(batch, torch.tensor(values, dtype=torch.float64))
    assert float(ssim(-x + 1, x, data_range=1.0)) < 0, "an inverted image is anti-correlated"


def test_masked_metrics_only_see_the_region():
    x = _img()
    y = x.clone()
    y[:, 18:] += 0.5  # change only the right part
    left = torch.zeros(x.shape, dtype=torch.bool)
    left[:, :10] = True  # windows centred here (radius 5) never reach column 18
    assert float(ssim(y, x, data_range=1.0, mask=left)) == pytest.approx(1.0, abs=1e-12)
    assert float(psnr(y, x, data_range=1.0, mask=left)) > 200
    assert float(nmse(y, x, mask=left)) == 0.0
    assert float(ssim(y, x, data_range=1.0)) < 0.99


def test_metric_errors():
    with pytest.raises(MeddiffError, match="must match"):
        psnr(_img(shape=(10, 10)), _img(shape=(10, 12)))
    with pytest.raises(MeddiffError, match="real"):
        ssim(torch.ones(16, 16, dtype=torch.complex64), torch.ones(16, 16, dtype=torch.complex64))
    with pytest.raises(MeddiffError, match="smaller than the SSIM window"):
        ssim(_img(shape=(8, 8)), _img(shape=(8, 8)))
    with pytest.raises(MeddiffError, match="mask"):
        psnr(_img(), _img(), mask=torch.zeros(40, 36, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ MS-SSIM and 3D SSIM
from meddiff.data import asset_path, read_image  # noqa: E402
from meddiff.metrics.image import MS_SSIM_WEIGHTS, ms_ssim  # noqa: E402


def _monai(kind, pred, ref, dims, **kw):
    from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

    metric = (SSIMMetric if kind == "ssim" else MultiScaleSSIMMetric)(dims, reduction="none", **kw)
    return metric(pred[:, None].float(), ref[:, None].float()).reshape(-1).double()


def test_ssim_and_ms_ssim_match_monai_on_random_images():
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 192, 200, generator=g)
    x = (ref + 0.15 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(x, ref, 1.0), _monai("ssim", x, ref, 2, data_range=1.0), atol=2e-5)
    assert torch.allclose(ms_ssim(x, ref, 1.0), _monai("ms", x, ref, 2, data_range=1.0), atol=2e-5)
    vol_ref = torch.rand(2, 48, 50, 52, generator=g)
    vol = vol_ref + 0.3 * torch.randn(vol_ref.shape, generator=g)
    w = (0.2, 0.3, 0.5)
    assert torch.allclose(ssim(vol, vol_ref, 1.0, spatial_dims=3), _monai("ssim", vol, vol_ref, 3, data_range=1.0),
                          atol=2e-5)
    assert torch.allclose(ms_ssim(vol, vol_ref, 1.0, spatial_dims=3, size=7, weights=w),
                          _monai("ms", vol, vol_ref, 3, data_range=1.0, kernel_size=7, weights=w), atol=2e-5)


def test_ms_ssim_matches_monai_on_real_mr():
    data = np.load(asset_path("brats_tcga_slices") / "brats_tcga_slices.npz")
    t1, t2 = (torch.from_numpy(data["images"][:, c].astype(np.float64)) for c in (0, 2))  # 4 slices, 240 x 240
    top = float(max(t1.max(), t2.max()))
    t1, t2 = t1 / top, t2 / top
    blurred = torch.nn.functional.avg_pool2d(t1[:, None], 3, 1, 1)[:, 0]
    for x in (t2, blurred):  # another contrast (low similarity) and a blurred copy (high similarity)
        assert torch.allclose(ms_ssim(x, t1, 1.0), _monai("ms", x, t1, 2, data_range=1.0), atol=2e-5)
    assert float(ms_ssim(blurred, t1, 1.0).min()) > float(ms_ssim(t2, t1, 1.0).max())
    folder = asset_path("brats_tcga_2mm") / "TCGA-FG-6692"
    vol = [torch.from_numpy(read_image(folder / f"TCGA-FG-6692_{c}.nii.gz")[0].astype(np.float64))
           for c in ("t1", "t1ce")]
    top = float(max(v.max() for v in vol))
    a, b = vol[0][None] / top, vol[1][None] / top  # (1, 76, 88, 68)
    w = (0.3, 0.3, 0.4)
    assert torch.allclose(ms_ssim(b, a, 1.0, spatial_dims=3, weights=w),
                          _monai("ms", b, a, 3, data_range=1.0, weights=w), atol=2e-5)
    assert torch.allclose(ssim(b, a, 1.0, spatial_dims=3), _monai("ssim", b, a, 3, data_range=1.0), atol=2e-5)


def test_ms_ssim_properties_and_errors():
    x = _img(shape=(180, 176))
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    one_scale = ms_ssim(x + 0.1, x, 1.0, weights=(1.0,))
    assert float(one_scale) == pytest.approx(float(ssim(x + 0.1, x, 1.0)), abs=1e-12), "one scale = SSIM"
    assert len(MS_SSIM_WEIGHTS) == 5 and sum(MS_SSIM_WEIGHTS) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(MeddiffError, match="too small for 5 MS-SSIM scales"):
        ms_ssim(_img(shape=(100, 100)), _img(shape=(100, 100)))
    with pytest.raises(MeddiffError, match="spatial_dims"):
        ms_ssim(x, x, spatial_dims=4)
    with pytest.raises(MeddiffError, match="non-negative"):
        ms_ssim(x, x, weights=(-1.0, 2.0))
