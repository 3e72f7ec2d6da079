"""Dataset contract: items {"image": float32 (C, ...) in [-1, 1], "label": int64}, image_shape, num_classes,
subject-level splits saved to disk, config errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from meddiff.data import IMAGE_KEY, LABEL_KEY, asset_path, build_dataset
from meddiff.errors import MeddiffError


def _check_item(item, shape):
    x = item[IMAGE_KEY]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_medmnist_2d_contract(shared_data):
    path = shared_data / "medmnist" / "pneumoniamnist.npz"
    ds = build_dataset({"kind": "medmnist", "path": str(path), "size": 28}, split="val")
    assert len(ds) == 524 and ds.num_classes == 2 and ds.image_shape == (1, 28, 28)
    item = ds[3]
    _check_item(item, (1, 28, 28))
    assert item[LABEL_KEY].dtype == torch.int64 and item[LABEL_KEY].ndim == 0
    raw = np.load(path)["val_images"][3]
    np.testing.assert_allclose(item[IMAGE_KEY][0].numpy(), raw / 127.5 - 1.0, atol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch[IMAGE_KEY].shape == (8, 1, 28, 28) and batch[LABEL_KEY].shape == (8,)
    up = build_dataset({"kind": "medmnist", "path": str(path), "size": 64}, split="val")
    assert up.image_shape == (1, 64, 64) and up[0][IMAGE_KEY].shape == (1, 64, 64)


def test_medmnist_3d_contract(shared_data):
    ds = build_dataset({"kind": "medmnist", "path": str(shared_data / "medmnist" / "adrenalmnist3d_64.npz"),
                        "size": 16}, split="val")
    assert ds.image_shape == (1, 16, 16, 16) and ds.num_classes == 2 and len(ds) == 98
    _check_item(ds[0], (1, 16, 16, 16))


def test_medmnist_missing_split_is_clear(shared_data):
    with pytest.raises(MeddiffError, match="no test_images.*available splits: train, val"):
        build_dataset({"kind": "medmnist", "path": str(shared_data / "medmnist" / "pneumoniamnist.npz")}, "test")


def test_medmnist_asset_works_without_shared_data():
    ds = build_dataset({"kind": "medmnist", "path": str(asset_path("pneumoniamnist/pneumoniamnist_small.npz"))})
    assert len(ds) == 600 and ds.num_classes == 2
    labels = torch.stack([ds[i][LABEL_KEY] for i in range(len(ds))])
    assert int(labels.sum()) == 300


def _class_folder(tmp_path):
    root = tmp_path / "xray"
    src = sorted(asset_path("brain_mr_slices/png").glob("*.png"))
    for i, f in enumerate(src):
        cls = "a" if i % 2 == 0 else "b"
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / cls / f.name)
    return root, src


def test_folder_with_class_subfolders(tmp_path):
    root, src = _class_folder(tmp_path)
    ds = build_dataset({"kind": "folder", "path": str(root), "size": [64, 48], "val_fraction": 0.0}, "all")
    assert len(ds) == len(src) and ds.num_classes == 2 and ds.class_names == ["a", "b"]
    assert ds.image_shape == (1, 64, 48)
    item = ds[0]
    _check_item(item, (1, 64, 48))
    assert item[LABEL_KEY].dtype == torch.int64
    assert sorted({int(ds[i][LABEL_KEY]) for i in range(len(ds))}) == [0, 1]


def test_folder_flat_has_no_label_and_fixed_uint8_scaling():
    ds = build_dataset({"kind": "folder", "path": str(asset_path("brain_mr_slices/png")), "val_fraction": 0.0}, "all")
    assert ds.num_classes == 0 and LABEL_KEY not in ds[0] and ds.image_shape == (1, 120, 90)
    from PIL import Image

    raw = np.asarray(Image.open(ds.items[0][0]))
    np.testing.assert_allclose(ds[0][IMAGE_KEY][0].numpy(), raw / 127.5 - 1, atol=1e-6)


def test_folder_split_is_by_subject_and_saved(tmp_path):
    split_file = tmp_path / "split.json"
    cfg = {"kind": "folder", "path": str(asset_path("brain_mr_slices/png")), "val_fraction": 0.25,
           "split_file": str(split_file), "seed": 3}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    subj = lambda ds: {s for _, _, s in ds.items}  # noqa: E731
    assert subj(train).isdisjoint(subj(val))
    assert len(subj(val)) == 1 and len(subj(train)) == 3 and len(val) == 3  # 3 slices per subject stay together
    saved = json.loads(split_file.read_text())
    assert set(saved["val"]) == subj(val)
    # the saved split wins over a new seed
    again = build_dataset(dict(cfg, seed=99), "val")
    assert subj(again) == subj(val)


def test_build_dataset_config_errors(tmp_path):
    with pytest.raises(MeddiffError, match="dataset kind"):
        build_dataset({"kind": "nope", "path": "x"})
    with pytest.raises(MeddiffError, match="unknown option.*'sise'"):
        build_dataset({"kind": "medmnist", "path": "x", "sise": 28})
    with pytest.raises(MeddiffError, match="missing option.*path"):
        build_dataset({"kind": "medmnist"})
    with pytest.raises(MeddiffError, match="split="):
        build_dataset({"kind": "folder", "path": str(tmp_path)}, "training")
