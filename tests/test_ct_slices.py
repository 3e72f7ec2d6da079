"""The ct_slices dataset kind (meddiff.data.ct_slices): blocks as splits, v = clip(HU) / 1000 after k x k averaging,
augmentations that keep air as air, config errors."""

import numpy as np
import pytest
import torch

from meddiff.data import build_dataset
from meddiff.data.ct_slices import augment_slice
from meddiff.errors import MeddiffError


@pytest.fixture()
def series(tmp_path):
    g = np.random.default_rng(0)
    hu = g.uniform(-1100, 2000, size=(12, 16, 16)).astype(np.int16)
    path = tmp_path / "ct.npz"
    np.savez(path, hu=hu, spacing_zyx_mm=np.array([3.0, 0.5, 0.5]))
    return path, hu.astype(np.float32)


def test_blocks_scaling_and_averaging(series):
    path, hu = series
    cfg = {"kind": "ct_slices", "path": str(path), "size": 8, "blocks": {"train": [0, 6], "val": [7, 9],
                                                                          "test": [10, 12]}}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 6 and len(val) == 2 and train.image_shape == (1, 8, 8) and train.pixel_mm == 1.0
    clipped = np.clip(hu[7], -1000, 3071)
    expected = clipped.reshape(8, 2, 8, 2).mean(axis=(1, 3)) / 1000  # 2 x 2 averaging after clipping
    np.testing.assert_allclose(val[0]["image"][0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert val[0]["image"].dtype == torch.float32


def test_augmentations_keep_air_and_only_act_on_train(series):
    path, _ = series
    v = torch.full((1, 16, 16), -1.0)
    v[0, 4:12, 4:10] = 0.2  # a tissue block, off centre
    rng = np.random.default_rng(0)
    flipped = augment_slice(v, rng, flip_prob=1.0)
    torch.testing.assert_close(flipped, v.flip(-1))
    shifted = augment_slice(v, np.random.default_rng(3), shift=3)
    assert float(shifted.min()) == -1.0 and int((shifted > -0.5).sum()) == 48  # moved inside the field, air fills in
    scaled = augment_slice(v, np.random.default_rng(1), scale=0.1)
    ratio = float((scaled[0, 5, 5] + 1) / (v[0, 5, 5] + 1))
    assert 0.9 <= ratio <= 1.1 and float(scaled[0, 0, 0]) == -1.0  # water units scaled, air stays air
    rotated = augment_slice(v, np.random.default_rng(2), rotate_degrees=10, rotate_prob=1.0)
    assert abs(float(rotated[0, 0, 0]) + 1.0) < 1e-6 and not torch.equal(rotated, v)
    cfg = {"kind": "ct_slices", "path": str(path), "size": None, "blocks": {"train": [0, 6], "val": [7, 9]},
           "augment": {"flip_prob": 1.0}}
    assert torch.equal(build_dataset(cfg, "val")[0]["image"], build_dataset({**cfg, "augment": None}, "val")[0]["image"])
    torch.testing.assert_close(build_dataset(cfg, "train")[0]["image"],
                               build_dataset({**cfg, "augment": None}, "train")[0]["image"].flip(-1))


def test_config_errors_name_the_option(series, tmp_path):
    path, _ = series
    with pytest.raises(MeddiffError, match="augment: unknown key"):
        build_dataset({"kind": "ct_slices", "path": str(path), "augment": {"flip": 1}}, "train")
    with pytest.raises(MeddiffError, match="blocks.train"):
        build_dataset({"kind": "ct_slices", "path": str(path), "size": None, "blocks": {"train": [0, 50]}}, "train")
    with pytest.raises(MeddiffError, match="must divide"):
        build_dataset({"kind": "ct_slices", "path": str(path), "size": 5, "blocks": {"test": [10, 12]}}, "test")
    with pytest.raises(MeddiffError, match="not a DICOM series"):
        build_dataset({"kind": "ct_slices", "path": str(tmp_path / "none.npz")}, "train")
