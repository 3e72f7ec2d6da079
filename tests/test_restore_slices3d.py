"""Missing-slice inpainting of 3D volumes (meddiff.tasks.restore.slices3d): the slice mask, the interpolation and
biharmonic baselines against hand computations, data consistency of every method, the CLI round trip on a tiny
NIfTI (affine kept) and the failure paths. Tiny volumes and a tiny untrained prior."""

import functools

import nibabel as nib
import numpy as np
import pytest

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.tasks import restore as R

from helpers import tiny_prior as build_tiny_prior
from helpers import train_tiny_checkpoint

tiny_prior = functools.cache(build_tiny_prior)  # one untrained prior for the module (building it is the slow part)


def volume(h=12, w=12, d=9):
    """A smooth blob whose size and brightness change along the slice axis, plus a bar: >= 0."""
    yy, xx, zz = np.mgrid[0:h, 0:w, 0:d].astype(np.float64)
    img = (1 + 0.1 * zz) * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.05 * h * w * (1 + 0.05 * zz)))
    img[h // 4:h // 4 + 2, 1:-1, :] += 0.3
    return img.astype(np.float32)


def test_missing_slices_mask_marks_exactly_the_stated_slices():
    m = R.missing_slices_mask((4, 5, 10), every=3).numpy()
    assert m.shape == (4, 5, 10) and m.dtype == bool
    assert np.flatnonzero(m.all((0, 1))).tolist() == [1, 4, 7] and not m[..., [0, 2, 3, 5, 6, 8, 9]].any()
    m0 = R.missing_slices_mask((4, 5, 10), every=2, offset=0).numpy()
    assert np.flatnonzero(m0.all((0, 1))).tolist() == [0, 2, 4, 6, 8]
    ax0 = R.missing_slices_mask((6, 5, 4), every=2, axis=0).numpy()
    assert ax0[[1, 3, 5]].all() and not ax0[[0, 2, 4]].any()
    f = R.missing_slices_mask((3, 3, 12), fraction=0.5, seed=1).numpy()
    missing = np.flatnonzero(f.all((0, 1)))
    assert len(missing) == 5 and 0 not in missing and 11 not in missing  # round(0.5 x 10 inner slices)
    assert np.array_equal(f, R.missing_slices_mask((3, 3, 12), fraction=0.5, seed=1).numpy())
    assert R.missing_slices(f).tolist() == missing.tolist()
    assert R.missing_slices(np.zeros((3, 3, 4))) is None
    for bad in (dict(every=1), dict(fraction=1.2), dict(), dict(every=2, fraction=0.5)):
        with pytest.raises(MeddiffError):
            R.missing_slices_mask((3, 3, 4), **bad)


def test_linear_and_cubic_against_hand_computation():
    vol = np.random.default_rng(0).random((3, 2, 7)).astype(np.float32)
    missing = [0, 2, 3, 6]  # known: 1, 4, 5
    lin = R.interpolate_slices(vol, missing, "linear")
    np.testing.assert_allclose(lin[..., 2], vol[..., 1] + (vol[..., 4] - vol[..., 1]) / 3, rtol=1e-6)
    np.testing.assert_allclose(lin[..., 3], vol[..., 1] + 2 * (vol[..., 4] - vol[..., 1]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(lin[..., 0], vol[..., 1])  # outside the known range: nearest known slice
    np.testing.assert_array_equal(lin[..., 6], vol[..., 5])
    np.testing.assert_array_equal(lin[..., [1, 4, 5]], vol[..., [1, 4, 5]])
    # cubic: exact for a cubic polynomial along z (not-a-knot through 4 known points reproduces it)
    z = np.arange(8, dtype=np.float64)
    poly = (0.5 + 0.2 * z - 0.05 * z**2 + 0.01 * z**3)[None, None] * np.ones((2, 3, 1))
    cubic = R.interpolate_slices(poly, [2, 3, 5], "cubic")
    np.testing.assert_allclose(cubic[..., [2, 3, 5]], poly[..., [2, 3, 5]], rtol=1e-5)


def test_biharmonic_fills_a_linear_ramp_exactly_and_keeps_known_slices():
    ramp = np.broadcast_to(np.linspace(1, 2, 8, dtype=np.float32), (5, 6, 8)).copy()
    out = R.biharmonic_slices(ramp, [2, 3, 5])
    np.testing.assert_allclose(out, ramp, atol=1e-4)  # a linear function has zero Laplacian
    vol = volume()
    mask = R.missing_slices_mask(vol.shape, every=2).numpy()
    res = R.restore(np.where(mask, 0, vol), "inpaint", "biharmonic", mask=mask)
    known = ~mask.all((0, 1))
    np.testing.assert_array_equal(res.image[..., known], vol[..., known])
    assert res.settings["mode"] == "missing slices" and res.std is None


@pytest.mark.parametrize("method", ["linear", "cubic", "biharmonic", "ddnm", "sdedit"])
def test_every_method_keeps_the_known_slices_and_beats_zero_fill(method):
    vol = volume()
    mask = R.missing_slices_mask(vol.shape, every=2).numpy()
    given = np.where(mask, 123.0, vol)  # values in the missing slices are ignored
    kwargs = {"prior": tiny_prior(), "steps": 2, "samples": 2} if method in ("ddnm", "sdedit") else {}
    if method == "ddnm":
        kwargs["factor"] = 2
    res = R.restore(given, "inpaint", method, mask=mask, **kwargs)
    missing = np.flatnonzero(mask.all((0, 1)))
    known = np.setdiff1d(np.arange(vol.shape[-1]), missing)
    np.testing.assert_array_equal(res.image[..., known], vol[..., known])
    if method in ("ddnm", "sdedit"):
        assert res.std.shape == vol.shape and np.all(res.std[..., known] == 0) and res.std[..., missing].max() > 0
        assert res.nfe >= 1
    else:  # the classical fills are close to the truth of this smooth phantom
        score = R.volume_scores(res.image, vol, missing)["psnr_missing"]
        assert score > R.volume_scores(np.where(mask, 0, vol), vol, missing)["psnr_missing"] + 10


def test_ddnm_keeps_the_interpolations_low_pass():
    """DDNM's measurement is the block mean of the linear interpolation: the refined slice has the same block means."""
    vol = volume(16, 12, 5)
    mask = R.missing_slices_mask(vol.shape, every=2).numpy()
    res = R.restore(np.where(mask, 0, vol), "inpaint", "ddnm", mask=mask, prior=tiny_prior(), steps=2, samples=1,
                    factor=4)
    lin = R.interpolate_slices(vol, [1, 3])
    for z in (1, 3):
        np.testing.assert_allclose(R.degrade_sr(res.image[..., z], 4).numpy(), R.degrade_sr(lin[..., z], 4).numpy(),
                                   atol=1e-4 * float(vol.max()))
    res = R.restore(np.where(mask, 0, vol), "inpaint", "ddnm", mask=mask, prior=tiny_prior(), steps=2, samples=1,
                    factor=4, guide="biharmonic")  # the biharmonic fill as the guide instead
    bih = R.biharmonic_slices(vol, [1, 3])
    np.testing.assert_allclose(R.degrade_sr(res.image[..., 1], 4).numpy(), R.degrade_sr(bih[..., 1], 4).numpy(),
                               atol=1e-4 * float(vol.max()))


def test_volume_scores_pool_the_missing_voxels():
    ref = np.ones((12, 12, 3), np.float32)
    x = ref.copy()
    x[..., 1] += 0.1
    x[..., 2] += 0.3
    assert R.volume_scores(x, ref, [1])["psnr_missing"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    pooled = R.volume_scores(x, ref, [1, 2])  # MSE (0.01 + 0.09) / 2 over the voxels of both slices
    assert pooled["psnr_missing"] == pytest.approx(10 * np.log10(1 / 0.05), abs=1e-4)
    assert R.volume_scores(x, ref, [0])["psnr_missing"] > 200


@pytest.mark.parametrize("call,match", [
    (lambda v: R.restore(v, "inpaint", "linear", mask=np.zeros((12, 12, 8))), "--mask has shape"),
    (lambda v: R.restore(v, "inpaint", "linear", mask=np.ones(v.shape)), "all 9 slices"),
    (lambda v: R.restore(v, "inpaint", "linear", mask=np.zeros((12, 9))), "--mask has shape"),
    (lambda v: R.restore(v, "inpaint", "linear", mask=R.box_mask((12, 12), 0.2).numpy()), "fills whole missing"),
    (lambda v: R.restore(v, "inpaint", "tv", mask=R.missing_slices_mask(v.shape, every=2).numpy()),
     "cannot fill whole missing slices"),
    (lambda v: R.restore(v, "inpaint", "linear", mask=R.missing_slices_mask(v.shape, every=2).numpy(), lam=1.0),
     "takes no parameters"),
    (lambda v: R.restore(v, "inpaint", "ddnm", mask=R.missing_slices_mask(v.shape, every=2).numpy(),
                         prior=tiny_prior(), factor=1), "factor"),
    (lambda v: R.restore(v, "inpaint", "sdedit", mask=R.missing_slices_mask(v.shape, every=2).numpy(),
                         prior=tiny_prior(), guide="cubic"), "guide"),
    (lambda v: R.restore(v[..., 0], "inpaint", "linear", mask=np.zeros((12, 12))), "fills whole missing"),
])
def test_bad_missing_slice_input_is_a_one_line_error(call, match):
    with pytest.raises(MeddiffError, match=match) as info:
        call(volume())
    assert "\n" not in str(info.value)


def test_whole_and_partial_holes_together_are_an_error():
    mask = R.missing_slices_mask((12, 12, 9), every=2).numpy()
    mask[2:4, 2:4, 0] = True
    with pytest.raises(MeddiffError, match="in two runs"):
        R.restore(volume(), "inpaint", "linear", mask=mask)


def test_cli_round_trip_on_a_nifti_keeps_the_affine(tmp_path, capsys):
    vol = volume(16, 16, 5)
    mask = R.missing_slices_mask(vol.shape, every=2).numpy()
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 4.0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.where(mask, 0, vol), affine), str(tmp_path / "thick.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(tmp_path / "mask.nii.gz"))
    assert main(["restore", "--task", "inpaint", "--input", str(tmp_path / "thick.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--method", "linear", "--out", str(tmp_path / "full.nii.gz")]) == 0
    assert "16x16x5" in capsys.readouterr().out
    img = nib.load(str(tmp_path / "full.nii.gz"))
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), R.interpolate_slices(vol, [1, 3]), rtol=1e-6)
    run = train_tiny_checkpoint(tmp_path)
    assert main(["restore", "--task", "inpaint", "--input", str(tmp_path / "thick.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--method", "sdedit", "--checkpoint", str(run), "--steps", "2",
                 "--samples", "2", "--out", str(tmp_path / "sd.nii.gz"), "--std-out", str(tmp_path / "std.npy")]) == 0
    out = np.asarray(nib.load(str(tmp_path / "sd.nii.gz")).dataobj)
    np.testing.assert_allclose(out[..., [0, 2, 4]], vol[..., [0, 2, 4]], rtol=1e-6)
    std = np.load(tmp_path / "std.npy")
    assert std.shape == vol.shape and std[..., 1].max() > 0 and np.all(std[..., 0] == 0)
    assert main(["restore", "--task", "inpaint", "--input", str(tmp_path / "thick.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--method", "cubic", "--out", str(tmp_path / "c.nii.gz"),
                 "--std-out", str(tmp_path / "s.npy")]) == 1
    assert "--std-out needs a sampling method" in capsys.readouterr().err
