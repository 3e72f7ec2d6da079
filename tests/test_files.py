"""meddiff.files: the one atomic-write helper and the one PNG writer (issue 20, item 11)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from meddiff.errors import MeddiffError
from meddiff.files import atomic_path, write_png, write_text


class Boom(RuntimeError):
    pass


def test_file_write_that_raises_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half written")
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_file_write_that_raises_keeps_the_old_file(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise Boom()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_file_write_keeps_suffix_and_plain_permissions(tmp_path):
    with atomic_path(tmp_path / "sub" / "x.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"data")
    out = tmp_path / "sub" / "x.nii.gz"
    assert out.read_bytes() == b"data"
    assert out.stat().st_mode & 0o044  # readable by group/others as with open(), not mkstemp's 0600


def test_directory_write_that_raises_leaves_no_folder_and_no_temporary(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "ckpt", directory=True) as tmp:
            assert tmp.is_dir()
            (tmp / "model.safetensors").write_bytes(b"x" * 100)
            raise Boom()
    assert list(tmp_path.iterdir()) == []


def test_directory_write_replaces_an_old_folder_whole_and_keeps_it_on_error(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_path(final, directory=True) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "stale").write_text("1")
    assert sorted(p.name for p in final.iterdir()) == ["a", "stale"]
    with pytest.raises(Boom):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "a").write_text("2")
            raise Boom()
    assert (final / "a").read_text() == "1"
    with atomic_path(final, directory=True) as tmp:
        (tmp / "a").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["a"] and (final / "a").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no .old or .part folder left


def test_write_png_round_trips_and_is_atomic(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = np.stack([grey, 255 - grey, grey], axis=0)  # (3, H, W)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png(tmp_path / "g.png", grey))), grey)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png(tmp_path / "c.png", rgb))), rgb.transpose(1, 2, 0))
    write_png(tmp_path / "p.png", Image.fromarray(grey))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), grey)
    with pytest.raises(MeddiffError, match="NaN"):
        write_png(tmp_path / "bad.png", np.full((4, 4), np.nan))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "g.png", "p.png"]


def test_callers_use_the_one_helper(tmp_path, monkeypatch):
    """The writers that had their own rename code now go through meddiff.files (no temporaries left on error)."""
    import torch

    from meddiff.physics.masks import save_mask
    from meddiff.training.checkpoint import save_checkpoint
    from meddiff.training.images import save_image_grid

    save_image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "grid.png")
    save_mask(torch.ones(8, 8), tmp_path / "mask.npy")
    net = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "ck", 1, net, net, {"step": torch.tensor(1)}, {"task": "t"})
    save_checkpoint(tmp_path / "ck", 1, net, net, {"step": torch.tensor(1)}, {"task": "t"})  # resave replaces
    def failing_save(*args, **kwargs):
        raise Boom()

    monkeypatch.setattr(torch, "save", failing_save)  # the disk fills up midway through a checkpoint
    with pytest.raises(Boom):
        save_checkpoint(tmp_path / "ck", 2, net, net, {"step": torch.tensor(2)}, {"task": "t"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "grid.png", "mask.npy"]
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step_00000001"]


def test_write_npy_is_atomic_and_refuses_other_suffixes(tmp_path):
    import numpy as np
    import pytest

    from meddiff.errors import MeddiffError
    from meddiff.files import write_npy

    path = write_npy(tmp_path / "a.npy", np.arange(4, dtype=np.float32), "--out")
    assert np.array_equal(np.load(path), np.arange(4)) and [p.name for p in tmp_path.iterdir()] == ["a.npy"]
    with pytest.raises(MeddiffError, match="--out .*b.nii' must end in .npy"):
        write_npy(tmp_path / "b.nii", np.zeros(2), "--out")
    assert not (tmp_path / "b.nii").exists()


def test_read_yaml_mapping_returns_the_mapping_and_names_the_file_on_errors(tmp_path):
    from meddiff.files import read_yaml_mapping

    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [2, 3]\n")
    assert read_yaml_mapping(good) == {"a": 1, "b": [2, 3]}
    with pytest.raises(MeddiffError, match="segmentation config file .*missing.yaml not found"):
        read_yaml_mapping(tmp_path / "missing.yaml", "segmentation config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(MeddiffError, match="bad.yaml is not valid YAML"):
        read_yaml_mapping(bad)
    for text in ("- 1\n- 2\n", ""):  # a list, an empty file
        bad.write_text(text)
        with pytest.raises(MeddiffError, match="bad.yaml must hold a mapping .* of distillation config settings"):
            read_yaml_mapping(bad, "distillation config")
