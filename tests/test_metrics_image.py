"""PSNR / SSIM / NMSE against analytic cases (no reference library needed)."""

from __future__ import annotations

import math

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
