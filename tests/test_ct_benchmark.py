"""benchmarks/ct_reconstruction.py: its metric (PSNR in HU in the body mask, hand-computed), the body mask, the
diffusion rows (K samples -> their mean) and the table of a partial run (the settings measured so far)."""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import ct_reconstruction as B  # noqa: E402
from helpers import tiny_prior  # noqa: E402

import meddiff.tasks.ct as ct  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _phantom(size: int = 32) -> torch.Tensor:
    """HU (size, size): a water body with an air-like lung inside it, and a separate small dense blob (a table)."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    hu = np.full((size, size), -1000.0, np.float32)
    hu[yy**2 / 120 + xx**2 / 90 < 1] = 40.0
    hu[(yy + 1) ** 2 + (xx - 3) ** 2 < 9] = -850.0
    hu[size - 3:, 2:6] = 200.0
    return torch.from_numpy(hu)


def test_body_mask_and_psnr_by_hand():
    hu = _phantom()
    mask = B.body_mask(hu)
    assert mask[15, 18] and mask[16, 16]  # the lung is inside the body
    assert not mask[-2, 3] and not mask[0, 0]  # the table and the air are not
    shifted = hu.clone()
    shifted[mask] += 20.0  # 20 HU everywhere in the body: PSNR = 20 log10(2000 / 20) = 40 dB
    shifted[~mask] += 500.0  # outside the mask does not count
    s = B.score(shifted, hu, mask)
    assert abs(s["psnr"] - 40.0) < 1e-6
    assert B.score(hu, hu, mask)["ssim"] == pytest.approx(1.0)
    clipped = hu.clone()
    clipped[mask & (hu > -900)] = 1500.0  # values above the window score as 1000 HU
    assert B.score(clipped, hu, mask)["psnr"] == pytest.approx(B.score(clipped.clamp_max(1000.0), hu, mask)["psnr"])


def test_diffusion_rows_average_the_samples_and_a_partial_table():
    hu = _phantom()[None]
    prior = tiny_prior()
    settings = {"init": "fbp", "start": 0.05, "steps": 2, "cg_iters": 3, "samples": 2}
    keep = {}
    rows = B.diffusion_rows("sparse-30", hu, 2.0, [7], {"ddnm": ("ddnm", settings, prior)}, keep)
    assert [r["method"] for r in rows] == ["ddnm"] and rows[0]["nfe"] == 2
    op, angles, _, ys = B.measure("sparse-30", hu, 2.0, [7])
    problem = ct.CTProblem(op, ys[0][None], angles, 2.0, B.MU_WATER)
    samples, _, _ = ct.solve("ddnm", problem, prior, seed=7, **settings)
    assert samples.shape == (2, 32, 32) and not torch.equal(samples[0], samples[1])
    torch.testing.assert_close(keep["ddnm"][0], samples.mean(0))
    assert rows[0]["psnr"] == pytest.approx(B.score(samples.mean(0), hu[0], B.body_mask(hu[0]))["psnr"])
    # written after the first of two settings: the table lists the one measured, with its tuned weights
    results = {"tuned": {"sparse-30": {"sirt_iters": 50, "tv_lam": 1e-4}},
               "test_rows": [{"setting": "sparse-30", "method": m, "psnr": 20.0, "ssim": 0.5, "seconds": 1.0}
                             for m in ("fbp", "fbp-hann", "sirt", "tv")],
               "diffusion_test_rows": rows, "diffusion_tuned": {"sparse-30": {"ddnm": settings}}}
    args = argparse.Namespace(size=32, settings=["sparse-30", "sparse-60"])
    table = B.markdown(results, args, [7], [3], 2.0)
    assert "| sparse-30 | tv | 20.00 |" in table and "| sparse-30 | ddnm |" in table and "samples 2" in table
    assert "sparse-60" not in table
