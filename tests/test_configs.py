"""Every shipped config validates; the synthesis configs of issue 6 build their data and model and train a step."""

from __future__ import annotations

from pathlib import Path

import pytest

from meddiff.training import Trainer, load_config, resolve_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path):
    """Each config validates with the loader of its kind: distillation (`teacher:`), segmentation (`prior:` and
    `features:`), federated (a training config plus `federated:`) or training."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    if "teacher" in raw:
        from meddiff.training.distill import load_distill_settings, resolve_distill_config

        assert resolve_distill_config(load_distill_settings(path))["teacher"]
        return
    if "features" in raw:
        from meddiff.tasks.segment.train import load_config as load_segmentation_config

        assert load_segmentation_config(path)["prior"]
        return
    config = load_config(path)
    if "federated" in config:  # a federated config is a training config plus its `federated:` section
        from meddiff.tasks.federated.config import split_config

        config, _ = split_config(config, str(path))
    config = resolve_config(config)
    assert config["run"]["name"] and config["data"]["kind"]


@pytest.mark.parametrize("name, image_shape", [("pneumonia_cond", (1, 28, 28)), ("brain_slices_2d", (1, 64, 64)),
                                               ("adrenal3d", (1, 28, 28, 28))])
def test_synthesis_config_trains_one_step(name, image_shape, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths in configs are relative to the repository root
    config = load_config(REPO / "configs" / f"{name}.yaml")
    if "cache_dir" in config["data"]:
        config["data"]["cache_dir"] = str(tmp_path / "cache")
    config["run"].update({"steps": 1, "batch_size": 2, "progress": False, "sample_every": 0, "checkpoint_every": 1})
    trainer = Trainer(config, run_dir=tmp_path / name)
    losses = trainer.fit()
    trainer.close()
    assert tuple(trainer.dataset.image_shape) == image_shape
    assert len(losses) == 1 and losses[0][1] > 0
