"""Coil maps from a small calibration region (issue 21): a 90 x 120 IXI T1 slice (val subject), simulated 8-coil
k-space, 9 ACS lines. The old fixed 6 x 6 ESPIRiT kernel cropped most of the head out of the maps (CS 5 dB); the
block-adapted kernel (``auto_kernel``) gives maps equal to the true ones up to a per-pixel common phase and CS /
CG-SENSE within 1 dB of the true maps. Full table: ``python benchmarks/coil_maps.py --out coil_maps.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.metrics.image import psnr
from meddiff.physics import MultiCoilMRI, cg_sense, cs_wavelet, estimate_sensitivity_maps, make_mask
from meddiff.physics.coils import auto_kernel, calibration_block
from meddiff.physics.simulate import simulate_kspace
from meddiff.tasks.mri.problem import make_problem

SPLIT = Path(__file__).resolve().parents[1] / "configs" / "splits" / "ixi_t1_2mm_dlmuse.json"
ACS_LINES = 9


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def head(shared_data):
    """Axial slice z = 64 (90 x 120, RAS) of the first val subject, / max; 8-coil k-space (noise 0.005 x max)."""
    from meddiff.data.io import read_image
    from meddiff.data.transforms import to_canonical

    name = json.loads(SPLIT.read_text())["val"][0]
    path = shared_data / "ixi_t1_2mm_dlmuse" / "t1" / f"{name}_T1.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    arr, meta = read_image(path)
    vol, _ = to_canonical(arr[None].astype(np.float32), meta)
    img = torch.from_numpy(np.ascontiguousarray(np.asarray(vol[0])[:, :, 64]))
    img = img / img.max()
    assert tuple(img.shape) == (90, 120)
    kspace, maps = simulate_kspace(img, 8, 0.005, seed=0)
    mask = make_mask((90, 120), 4, "gaussian", acs_fraction=ACS_LINES / 120, seed=0, axis=-1)
    return img, kspace, maps, mask


def _fg_psnr(x, img):
    return float(psnr(x, img, 1.0, mask=img > 0.1))


def test_small_calibration_region_maps_match_truth(head):
    img, kspace, true, mask = head
    y = kspace * mask
    acs = calibration_block(mask)
    assert acs == (24, ACS_LINES) and auto_kernel(acs) == (6, 4)
    fg = img > 0.1
    # Old behaviour, kept reachable by an explicit kernel=6: the eigenvalue crop removes much of the head.
    old = estimate_sensitivity_maps(y, acs=acs, kernel=6)
    assert float((old.abs().sum(0)[fg] == 0).float().mean()) > 0.1
    maps = estimate_sensitivity_maps(y, acs=acs)  # default: adapted kernel
    # Equal to the true maps up to one phase per pixel (common to all coils): |<S_est, S_true>| ~ 1 on the head.
    agreement = (maps.conj() * true).sum(0).abs()[fg]
    assert float(agreement.min()) > 0.98 and float(agreement.mean()) > 0.999, float(agreement.min())
    assert torch.equal(make_problem(kspace, mask).maps, maps), "make_problem calibrates the same way"
    scores = {}
    for name, m in (("true", true), ("estimated", maps)):
        op = MultiCoilMRI(m, mask)
        scores[name] = (_fg_psnr(cs_wavelet(op, y[None])[0].abs(), img), _fg_psnr(cg_sense(op, y[None])[0].abs(), img))
    # measured (foreground PSNR, CS / CG-SENSE): true maps 26.29 / 25.94 dB, estimated 26.48 / 25.98 dB,
    # old 6 x 6 kernel 5.06 / 6.33 dB (17 % of the head without maps); agreement min 0.997, mean 0.9999
    assert all(s > t - 1.0 for s, t in zip(scores["estimated"], scores["true"])), scores


def test_bad_calibration_size_names_the_argument():
    g = torch.Generator().manual_seed(0)
    k = torch.complex(torch.randn(4, 30, 40, generator=g), torch.randn(4, 30, 40, generator=g))
    for acs in (1, (9,), (31, 9), "9", (9.0, 9), True):
        with pytest.raises(MeddiffError, match="acs="):
            estimate_sensitivity_maps(k, acs=acs)
    with pytest.raises(MeddiffError, match=r"kernel=\(6, 6\) is larger than the ACS block \(24, 5\)"):
        estimate_sensitivity_maps(k, acs=(24, 5), kernel=6)
    for kernel in (0, (4,), "4", (4, 2.5)):
        with pytest.raises(MeddiffError, match="kernel="):
            estimate_sensitivity_maps(k, acs=12, kernel=kernel)
    mask = make_mask((30, 40), 4, "equispaced", acs_fraction=4 / 40, seed=0, axis=-1)
    assert calibration_block(mask) == (24, 4)
    with pytest.raises(MeddiffError, match=r"mask: the fully sampled centre is only \(24, 4\)"):
        make_problem(k, mask)
