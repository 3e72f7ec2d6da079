"""`meddiff restore` end to end on tiny .npy / .nii.gz / .png inputs: baselines and zero-shot methods with a tiny
trained prior (--checkpoint), the NIfTI affine (spacing divided by the scale for SR), the std map, atomic outputs
and one-line errors naming the bad argument."""

import nibabel as nib
import numpy as np
import pytest

from meddiff.cli.main import main
from meddiff.files import write_png
from meddiff.tasks import restore as R

from helpers import train_tiny_checkpoint


def phantom(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.exp(-((yy - h / 2) ** 2 + (xx - 0.45 * w) ** 2) / (0.06 * h * w))
    img += 0.5 * (((yy - 0.3 * h) ** 2 + (xx - 0.6 * w) ** 2) < 0.03 * h * w)
    return img.astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    train_tiny_checkpoint(root)
    hi = np.stack([phantom(16, 12), 2 * phantom(16, 12)], -1)  # (16, 12, 2) volume
    low = R.degrade_sr(np.moveaxis(hi, -1, 0), 2).numpy()
    low = np.moveaxis(low, 0, -1)  # (8, 6, 2)
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(low, affine), str(root / "low.nii.gz"))
    np.save(root / "low.npy", low[..., 0])
    np.save(root / "image.npy", hi[..., 0])
    hole = R.box_mask((16, 12), 0.2).numpy()
    np.save(root / "hole.npy", hole.astype(np.uint8))
    write_png(root / "hole.png", (hole * 255).astype(np.uint8))
    return root, hi, low, affine, hole


def run(*args):
    return main(["restore", *map(str, args)])


def test_sr_nifti_keeps_the_affine_with_scaled_spacing(files, capsys):
    root, hi, low, affine, _ = files
    assert run("--task", "super-resolution", "--input", root / "low.nii.gz", "--scale", 2, "--method", "bicubic",
               "--out", root / "sr.nii.gz") == 0
    assert "16x12x2" in capsys.readouterr().out
    img = nib.load(str(root / "sr.nii.gz"))
    assert img.shape == (16, 12, 2)
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 3.0))
    # the centre of the field of view is unchanged: LR voxel (3.5 - 0.5 ...) -> the same world point
    lr_centre = affine @ np.array([(8 - 1) / 2, (6 - 1) / 2, 0, 1])
    hr_centre = img.affine @ np.array([(16 - 1) / 2, (12 - 1) / 2, 0, 1])
    np.testing.assert_allclose(hr_centre, lr_centre, atol=1e-9)
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., 1], 2 * np.asarray(img.dataobj)[..., 0], rtol=1e-5,
                               atol=1e-6)


def test_sr_ddnm_with_checkpoint_writes_image_and_std(files, capsys):
    root, hi, low, _, _ = files
    assert run("--task", "super-resolution", "--input", root / "low.npy", "--scale", 2, "--method", "ddnm",
               "--steps", 2, "--samples", 2, "--checkpoint", root / "run", "--out", root / "d.npy",
               "--std-out", root / "d_std.npy") == 0
    assert "2 network evaluations x 2 samples" in capsys.readouterr().out
    image, std = np.load(root / "d.npy"), np.load(root / "d_std.npy")
    assert image.shape == std.shape == (16, 12) and image.dtype == np.float32 and (std >= 0).all()
    np.testing.assert_allclose(R.degrade_sr(image, 2).numpy(), low[..., 0], atol=1e-4)  # A x = y
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_inpaint_with_png_mask_and_repaint(files):
    root, hi, _, _, hole = files
    assert run("--task", "inpaint", "--input", root / "image.npy", "--mask", root / "hole.npy", "--method",
               "biharmonic", "--out", root / "bh.npy") == 0
    out = np.load(root / "bh.npy")
    np.testing.assert_allclose(out[~hole], hi[..., 0][~hole], atol=1e-5)
    assert run("--task", "inpaint", "--input", root / "image.npy", "--mask", root / "hole.png", "--method",
               "repaint", "--steps", 3, "--samples", 1, "--checkpoint", root / "run", "--out", root / "rp.npy") == 0
    out = np.load(root / "rp.npy")  # a 0/255 PNG mask: white = missing
    np.testing.assert_allclose(out[~hole], hi[..., 0][~hole], atol=1e-5)


def test_denoise_nifti_and_sigma(files, capsys):
    root, hi, _, affine, _ = files
    noisy = R.add_noise(hi, 0.05).numpy()
    nib.save(nib.Nifti1Image(noisy, affine), str(root / "noisy.nii.gz"))
    assert run("--task", "denoise", "--input", root / "noisy.nii.gz", "--sigma", 0.05, "--method", "diffusion",
               "--steps", 2, "--samples", 2, "--checkpoint", root / "run", "--out", root / "dn.nii.gz",
               "--std-out", root / "dn_std.nii.gz") == 0
    img = nib.load(str(root / "dn.nii.gz"))
    assert img.shape == (16, 12, 2) and np.allclose(img.affine, affine)
    assert nib.load(str(root / "dn_std.nii.gz")).shape == (16, 12, 2)
    assert run("--task", "denoise", "--input", root / "noisy.nii.gz", "--sigma", 0.05, "--method", "tv",
               "--lam", 0.05, "--out", root / "tv.npy") == 0
    assert np.load(root / "tv.npy").shape == (16, 12, 2)


@pytest.mark.parametrize("args,match", [
    (["--task", "denoise", "--input", "image.npy", "--method", "tv", "--sigma", "0", "--out", "x.npy"], "--sigma"),
    (["--task", "inpaint", "--input", "image.npy", "--mask", "low.npy", "--method", "biharmonic", "--out", "x.npy"],
     "--mask has shape"),
    (["--task", "super-resolution", "--input", "low.npy", "--scale", "0", "--method", "bicubic", "--out", "x.npy"],
     "--scale"),
    (["--task", "super-resolution", "--input", "low.npy", "--scale", "2", "--method", "repaint", "--out", "x.npy"],
     "--method 'repaint' is not a method for --task super-resolution"),
    (["--task", "super-resolution", "--input", "nan.npy", "--scale", "2", "--method", "bicubic", "--out", "x.npy"],
     "--input contains"),
    (["--task", "denoise", "--input", "4d.npy", "--method", "tv", "--sigma", "1", "--out", "x.npy"],
     "--input: a 4D"),
    (["--task", "super-resolution", "--input", "low.npy", "--scale", "2", "--method", "bicubic", "--out", "x.png"],
     "--out"),
    (["--task", "super-resolution", "--input", "low.npy", "--scale", "2", "--method", "bicubic", "--out", "x.npy",
      "--std-out", "s.npy"], "--std-out needs"),
    (["--task", "denoise", "--input", "missing.npy", "--method", "tv", "--out", "x.npy"], "--input"),
    (["--task", "denoise", "--input", "image.npy", "--method", "bicubic", "--out", "x.npy"], "--method 'bicubic'"),
])
def test_bad_input_is_one_error_line(files, capsys, args, match):
    root = files[0]
    np.save(root / "nan.npy", np.full((4, 4), np.nan, np.float32))
    np.save(root / "4d.npy", np.zeros((2, 4, 4, 2), np.float32))
    args = [str(root / a) if a.endswith((".npy", ".png")) else a for a in args]
    assert main(["restore", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err, err
    assert not (root / "x.npy").exists()
