"""Transforms: CT windows on real HU, invertible normalisations, geometry (MONAI-backed), slices, stacking,
augmentation determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiff.data import (
    WINDOW_PRESETS,
    apply_window,
    build_augment,
    denormalize,
    extract_slices,
    fit_to_multiple,
    normalize,
    read_image,
    resample_to_spacing,
    resize,
    stack_contrasts,
    to_canonical,
)
from meddiff.data.transforms import NormConfig
from meddiff.errors import MeddiffError


def test_window_presets_and_custom(shared_data):
    hu, _ = read_image(shared_data / "dicom_small" / "CT_small.dcm")
    assert WINDOW_PRESETS["brain"] == (40.0, 80.0) and WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert WINDOW_PRESETS["soft_tissue"] == WINDOW_PRESETS["abdomen"] == (40.0, 400.0)
    y = apply_window(hu, "brain")
    assert isinstance(y, np.ndarray) and y.min() >= -1 and y.max() <= 1
    inside = (hu > 0) & (hu < 80)
    np.testing.assert_allclose(y[inside], (hu[inside] - 0.0) / 80.0 * 2 - 1, atol=1e-5)
    assert np.all(y[hu <= 0] == -1) and np.all(y[hu >= 80] == 1)
    z = apply_window(hu, center=40, width=80, out_range=(0.0, 1.0))
    np.testing.assert_allclose(z, (y + 1) / 2, atol=1e-6)
    with pytest.raises(MeddiffError, match="window='brian'"):
        apply_window(hu, "brian")


@pytest.mark.parametrize("cfg", [
    {"mode": "minmax"}, {"mode": "minmax", "out_range": "[0,1]"}, {"mode": "zscore"},
    {"mode": "zscore", "foreground": True}, {"mode": "fixed", "a_min": -1024, "a_max": 3071},
    {"mode": "percentile", "lower": 0.0, "upper": 100.0},
])
def test_normalisation_inverts_to_original_units(shared_data, cfg):
    hu, _ = read_image(shared_data / "dicom_small" / "CT_small.dcm")
    x = hu.astype(np.float32)
    y, stats = normalize(x, cfg)
    if cfg["mode"] != "zscore":
        lo, hi = (0.0, 1.0) if cfg.get("out_range") == "[0,1]" else (-1.0, 1.0)
        assert y.min() >= lo - 1e-6 and y.max() <= hi + 1e-6
    back = denormalize(y, stats)
    if cfg.get("foreground"):
        fg = x > 0
        np.testing.assert_allclose(back[fg], x[fg], atol=0.05)
    else:
        np.testing.assert_allclose(back, x, atol=0.05)  # back to HU


def test_percentile_clips_and_window_inverse_saturates():
    x = torch.linspace(0, 100, 1001)
    y, stats = normalize(x, {"mode": "percentile", "lower": 10, "upper": 90})
    assert stats["a_min"] == pytest.approx(10) and stats["a_max"] == pytest.approx(90)
    back = denormalize(y, stats)
    torch.testing.assert_close(back, x.clamp(10, 90), atol=1e-3, rtol=0)
    hu = torch.tensor([-2000.0, 0.0, 40.0, 80.0, 3000.0])
    y, stats = normalize(hu, {"mode": "window", "window": "brain"})
    torch.testing.assert_close(denormalize(y, stats), torch.tensor([0.0, 0.0, 40.0, 80.0, 80.0]))


def test_zscore_foreground_uses_brain_only(shared_data):
    t1, _ = read_image(shared_data / "brats_case_1" / "TCGA-FG-6692_t1.nii.gz")
    x = t1.astype(np.float32)
    y, stats = normalize(x, {"mode": "zscore", "foreground": True})
    fg = x > 0
    assert stats["mean"] == pytest.approx(float(x[fg].mean()), rel=1e-5)
    assert abs(float(y[fg].mean())) < 1e-3 and abs(float(y[fg].std()) - 1) < 1e-3


def test_norm_config_validation():
    with pytest.raises(MeddiffError, match="normalize.mode"):
        NormConfig.from_dict({"mode": "minmaxx"})
    with pytest.raises(MeddiffError, match="unknown key"):
        NormConfig.from_dict({"mode": "minmax", "lowr": 1})
    with pytest.raises(MeddiffError, match="a_min < a_max"):
        NormConfig.from_dict({"mode": "fixed", "a_min": 5, "a_max": 1})


def test_resample_resize_canonical(shared_data):
    vol, meta = read_image(shared_data / "ixi_t1_2mm_nichart" / "IXI012-HH-1211_T1.nii.gz")
    x = vol[None].astype(np.float32)
    can, cmeta = to_canonical(x, meta)  # PSR -> RAS: (120,120,90) -> (90,120,120) per the data README
    assert can.shape == (1, 90, 120, 120) and cmeta.orientation == "RAS"
    import nibabel as nib

    ref = nib.as_closest_canonical(nib.load(shared_data / "ixi_t1_2mm_nichart" / "IXI012-HH-1211_T1.nii.gz"))
    np.testing.assert_allclose(can[0], ref.get_fdata(), rtol=1e-5, atol=1e-3)
    res, rmeta = resample_to_spacing(can, cmeta, (4.0, 4.0, 4.0))
    # MONAI Spacing keeps the span between the outer voxel centres: n_new = ceil((n - 1) * old / new + 1) or so
    assert res.shape[0] == 1 and all(abs(a - b) <= 1 for a, b in zip(res.shape[1:], (45, 60, 60)))
    assert rmeta.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(np.linalg.norm(rmeta.affine[:3, :3], axis=0), 4.0)
    assert abs(float(res.mean()) - float(can.mean())) / float(can.mean()) < 0.05
    small = resize(can, (30, 40, 40))
    assert small.shape == (1, 30, 40, 40)


def test_resample_2d():
    from meddiff.data import ImageMeta

    x = np.ones((1, 10, 20), np.float32)
    y, m = resample_to_spacing(x, ImageMeta(spacing=(1.0, 1.0), affine=np.eye(4)), (2.0, 2.0))
    assert y.shape[0] == 1 and abs(y.shape[1] - 5) <= 1 and abs(y.shape[2] - 10) <= 1 and np.allclose(y, 1.0)
    assert m.spacing == (2.0, 2.0)


def test_fit_to_multiple():
    x = torch.arange(1 * 30 * 45, dtype=torch.float32).reshape(1, 30, 45)
    p = fit_to_multiple(x, 3)
    assert p.shape == (1, 32, 48)
    assert torch.equal(p[:, 1:31, 1:46], x)  # centred, content kept
    c = fit_to_multiple(x, 3, how="crop")
    assert c.shape == (1, 24, 40)


def test_extract_slices_any_axis_and_empty_filter():
    v = np.zeros((4, 5, 6), np.float32)
    v[1:3, 1:4, 2:5] = 1.0
    for axis, n in ((0, 4), (1, 5), (2, 6), (-1, 6)):
        assert len(extract_slices(v, axis)) == n
    kept = extract_slices(v, 0, min_foreground=0.05)
    assert [i for i, _ in kept] == [1, 2] and kept[0][1].shape == (5, 6)
    with pytest.raises(MeddiffError, match="expected a 3D volume"):
        extract_slices(np.zeros((2, 3, 4, 5)), 0)


def test_stack_brats_contrasts(shared_data):
    names = ("t1", "t1ce", "t2", "flair")
    arrs = [read_image(shared_data / "brats_case_1" / f"TCGA-FG-6692_{n}.nii.gz")[0] for n in names]
    s = stack_contrasts(arrs, names)
    assert s.shape == (4, 240, 240, 155) and s.dtype == np.float32
    with pytest.raises(MeddiffError, match="differ in shape"):
        stack_contrasts([arrs[0], arrs[1][:10]], names[:2])


def test_augment_is_seeded_and_keeps_shape():
    x = torch.rand(1, 16, 16)
    cfg = {"flip_prob": 0.5, "rotate_prob": 0.5, "rotate_degrees": 10, "scale_prob": 0.5, "shift_prob": 0.5}
    a, b = build_augment(cfg, 2, seed=1), build_augment(cfg, 2, seed=1)
    outs_a = [a(x) for _ in range(5)]
    outs_b = [b(x) for _ in range(5)]
    for u, v in zip(outs_a, outs_b):
        assert u.shape == x.shape
        torch.testing.assert_close(torch.as_tensor(u), torch.as_tensor(v))
    assert any(not torch.allclose(torch.as_tensor(u), x) for u in outs_a)
    assert build_augment({}, 2) is None
    with pytest.raises(MeddiffError, match="probability"):
        build_augment({"flip_prob": 2}, 2)


def test_zoom_and_gamma_augment_change_size_and_contrast_not_background():
    """Zoom rescales the anatomy (a centred disc's area changes) with the background edge extended, not a constant
    0 (mid-grey in [-1, 1]); gamma changes intensities but keeps the minimum and maximum; bad ranges are refused."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 8.0 ** 2).float()
    x = (disc * torch.linspace(0, 1, 32)[None, :] * 1.5 + disc * 0.25 - (1 - disc))[None]   # background -1
    zoom = build_augment({"zoom_prob": 1.0, "zoom_range": 0.3}, 2, seed=0)
    areas = [float((torch.as_tensor(zoom(x)) > -0.5).sum()) for _ in range(6)]
    assert max(abs(a - float(disc.sum())) for a in areas) > 0.1 * float(disc.sum())
    assert all(float(torch.as_tensor(zoom(x))[0, 0, 0]) == -1.0 for _ in range(3))      # corner stays background
    gamma = build_augment({"gamma_prob": 1.0, "gamma_range": [0.5, 0.6]}, 2, seed=0)
    y = torch.as_tensor(gamma(x))
    torch.testing.assert_close(y.min(), x.min()), torch.testing.assert_close(y.max(), x.max())
    inside = disc.bool()[None]
    assert float(y[inside].mean()) > float(x[inside].mean()) + 0.05                       # gamma < 1 brightens
    with pytest.raises(MeddiffError, match="zoom_range"):
        build_augment({"zoom_prob": 0.5, "zoom_range": 1.5}, 2)
    with pytest.raises(MeddiffError, match="gamma_range"):
        build_augment({"gamma_prob": 0.5, "gamma_range": [1.2, 0.8]}, 2)
