"""Volume, slice, paired, CSV and k-space datasets (BraTS 2020 and 2023 naming, subject splits, cache)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from meddiff.data import COND_KEY, IMAGE_KEY, KSPACE_KEY, LABEL_KEY, SEG_KEY, asset_path, build_dataset, denormalize
from meddiff.errors import MeddiffError

RENAME_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


@pytest.fixture(scope="module")
def brats_two_styles(tmp_path_factory):
    """Three subjects: the shipped case in 2020 naming twice and once renamed to BraTS 2023 style."""
    root = tmp_path_factory.mktemp("brats")
    src = asset_path("brats_tcga_2mm/TCGA-FG-6692")
    for sub in ("BraTS20_001", "BraTS20_002"):
        (root / sub).mkdir()
        for c in RENAME_2023:
            shutil.copy(src / f"TCGA-FG-6692_{c}.nii.gz", root / sub / f"{sub}_{c}.nii.gz")
    sub = "BraTS-GLI-00003-000"
    (root / sub).mkdir()
    for c, new in RENAME_2023.items():
        shutil.copy(src / f"TCGA-FG-6692_{c}.nii.gz", root / sub / f"{sub}-{new}.nii.gz")
    return root


def test_volumes_both_namings_as_channels(brats_two_styles):
    ds = build_dataset({"kind": "volumes", "path": str(brats_two_styles), "seg": True, "val_fraction": 0}, "all")
    assert len(ds) == 3 and ds.contrasts == ["t1", "t1ce", "t2", "flair"] and ds.image_shape == (4, 76, 88, 68)
    a, b = ds[0], ds[2]  # same pixels, 2020 vs 2023 names
    torch.testing.assert_close(a[IMAGE_KEY], b[IMAGE_KEY])
    assert a[IMAGE_KEY].min() >= -1 and a[IMAGE_KEY].max() <= 1
    assert set(a[SEG_KEY].unique().tolist()) == {0, 1, 2, 4}
    small = build_dataset({"kind": "volumes", "path": str(brats_two_styles), "size": 32, "val_fraction": 0,
                           "contrasts": ["t2w", "t2f"]}, "all")
    assert small.image_shape == (2, 32, 32, 32) and small[1][IMAGE_KEY].shape == (2, 32, 32, 32)


def test_slices_split_by_subject_with_cache(brats_two_styles, tmp_path):
    cfg = {"kind": "slices", "path": str(brats_two_styles), "size": 32, "val_fraction": 0.34, "seed": 0,
           "cache_dir": str(tmp_path / "cache"), "split_file": str(tmp_path / "split.json")}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert {s for s, _ in train.index}.isdisjoint({s for s, _ in val.index})
    assert len(val.subjects) == 1 and len(train.subjects) == 2
    item = train[0]
    assert item[IMAGE_KEY].shape == (4, 32, 32) and item[IMAGE_KEY].dtype == torch.float32
    # empty slices dropped: fewer than the 68 axial slices per subject remain
    assert len(val) < 68
    stats = train.norm_stats(train.index[0][0])
    assert len(stats) == 4 and stats[0]["mode"] == "percentile"
    back = denormalize(item[IMAGE_KEY][0], stats[0])
    assert float(back.max()) > 100  # back in scanner intensity units


def test_slices_along_each_axis(brats_two_styles):
    shapes = {}
    for axis in (0, 1, 2):
        ds = build_dataset({"kind": "slices", "path": str(brats_two_styles), "axis": axis, "val_fraction": 0,
                            "contrasts": ["t1"], "min_foreground": 0.0}, "all")
        shapes[axis] = (len(ds) // 3, ds.image_shape)
    assert shapes == {0: (76, (1, 88, 68)), 1: (88, (1, 76, 68)), 2: (68, (1, 76, 88))}


def test_paired_contrast_a_to_b(brats_two_styles):
    ds = build_dataset({"kind": "paired", "path": str(brats_two_styles), "source": "t1", "target": "flair",
                        "size": 32, "val_fraction": 0}, "all")
    item = ds[10]
    assert ds.image_shape == (1, 32, 32) and item[IMAGE_KEY].shape == (1, 32, 32) and item[COND_KEY].shape == (1, 32, 32)
    full = build_dataset({"kind": "slices", "path": str(brats_two_styles), "size": 32, "val_fraction": 0,
                          "contrasts": ["t1", "flair"]}, "all")[10][IMAGE_KEY]
    torch.testing.assert_close(item[COND_KEY][0], full[0])
    torch.testing.assert_close(item[IMAGE_KEY][0], full[1])
    vol = build_dataset({"kind": "paired", "path": str(brats_two_styles), "source": ["t1", "t2"], "target": "flair",
                         "slices": False, "size": 16, "val_fraction": 0}, "all")
    assert vol[0][COND_KEY].shape == (2, 16, 16, 16) and vol.image_shape == (1, 16, 16, 16)
    with pytest.raises(MeddiffError, match="unknown option"):
        build_dataset({"kind": "paired", "path": str(brats_two_styles), "target": "t2", "sise": 3})


def test_csv_manifest_with_split_column(tmp_path):
    pngs = sorted(asset_path("brain_mr_slices/png").glob("*.png"))
    lines = ["path,label,subject,split"]
    for i, p in enumerate(pngs):
        sub = p.name.split("_")[0]
        split = "val" if sub.startswith("IXI363") else "train"
        lines.append(f"{p},{i % 2},{sub},{split}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    tr = build_dataset({"kind": "csv", "path": str(tmp_path / "m.csv"), "size": 32}, "train")
    va = build_dataset({"kind": "csv", "path": str(tmp_path / "m.csv"), "size": 32}, "val")
    assert len(tr) == 9 and len(va) == 3 and tr.num_classes == 2
    assert tr[0][LABEL_KEY].dtype == torch.int64 and tr[0][IMAGE_KEY].shape == (1, 32, 32)
    lines[1] = lines[1].replace(",train", ",val")  # the same subject in two splits
    (tmp_path / "leak.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MeddiffError, match="more than one split"):
        build_dataset({"kind": "csv", "path": str(tmp_path / "leak.csv")})


def test_kspace_dataset_npy_h5_cfl(tmp_path):
    from meddiff.data import write_cfl

    k = np.load(asset_path("kspace_brain_8ch/kspace.npy"))
    np.save(tmp_path / "a.npy", k)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("kspace", data=np.stack([k, k[:, ::-1]]))  # (slices, coils, H, W)
    write_cfl(tmp_path / "c", np.moveaxis(k, 0, -1)[None])
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f.create_dataset("kspace", data=k[:2])  # single-coil fastMRI: (slices, H, W)
    ds = build_dataset({"kind": "kspace", "path": str(tmp_path), "val_fraction": 0}, "all")
    assert len(ds) == 1 + 2 + 1 + 2
    shapes = sorted({tuple(ds[i][KSPACE_KEY].shape) for i in range(len(ds))})
    assert shapes == [(1, 230, 180), (8, 230, 180)]
    item = ds[0]
    assert item[KSPACE_KEY].dtype == torch.complex64 and item[IMAGE_KEY].max() == pytest.approx(1.0)
    rss = np.load(asset_path("kspace_brain_8ch/rss_reference.npy"))
    np.testing.assert_allclose(((item[IMAGE_KEY][0] + 1) / 2 * item["scale"]).numpy(), rss, rtol=1e-3, atol=1e-3)


def test_slices_per_slice_scale_and_pad(brats_two_styles, tmp_path):
    """per_slice + mode "scale" gives each slice the MRI solvers' scale (its 99.5th percentile of bright pixels -> 1,
    air -> -1) and pad_multiple pads whole slices with air instead of resizing (issue 21's prior data)."""
    from meddiff.data import magnitude_scale
    from meddiff.data.io import read_image
    from meddiff.data.transforms import to_canonical

    cfg = {"kind": "slices", "path": str(brats_two_styles), "contrasts": ["t1"], "val_fraction": 0,
           "min_foreground": 0.1, "per_slice": True, "pad_multiple": 8,
           "normalize": {"mode": "scale", "upper": 99.5, "clip": False}}
    ds = build_dataset(cfg, "all")
    assert ds.image_shape == (1, 80, 88)  # 76 x 88 axial slices padded to multiples of 8, not resized
    subject, position = ds.index[len(ds.index) // 2]
    index = int(ds._memory[subject]["index"][position])  # the axial slice number of the kept slice
    raw, meta = read_image(ds.subjects[subject]["t1"], expect_ndim=3)
    raw, _ = to_canonical(raw[None].astype(np.float32), meta)
    sl = raw[0, :, :, index]
    x = ds[len(ds.index) // 2][IMAGE_KEY][0]
    assert torch.all(x[:2] == -1) and torch.all(x[-2:] == -1)  # 2 padded rows of air on each side
    inner = x[2:-2]
    expected = 2 * torch.from_numpy(sl) / magnitude_scale(sl) - 1
    torch.testing.assert_close(inner, expected.float(), atol=1e-5, rtol=1e-5)
    assert float(inner.max()) > 1.0  # not clipped: the brightest 0.5 % stay above 1
    with pytest.raises(MeddiffError, match="power of 2"):
        build_dataset({**cfg, "pad_multiple": 6}, "all")
    with pytest.raises(MeddiffError, match="not both"):
        build_dataset({**cfg, "size": 32}, "all")


def test_magnitude_scale_is_the_solver_scale():
    from meddiff.data import magnitude_scale

    img = torch.zeros(50, 50)
    img[10:40, 10:40] = torch.linspace(1, 100, 900).reshape(30, 30)
    img[0, 0] = 0.5  # below 10 % of the max: not in the statistic
    fg = img[img > 10.0].double()
    assert magnitude_scale(img) == pytest.approx(float(torch.quantile(fg, 0.995)))
    assert magnitude_scale(torch.zeros(4, 4)) == 1.0
