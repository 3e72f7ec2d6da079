"""scripts/train_shipped.py over sittings: a resumed sitting keeps the shipped card (description, trained_on,
default_for) and appends its command to the earlier ones; a re-export keeps them all; a new model needs a
description."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import meddiff.training.shipped as shipped_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shipped.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_shipped_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_setup(tmp_path, monkeypatch):
    """A 2-step config of a tiny prior on random 16 x 16 patches (tmp_path/tiny.yaml) and the script loaded with its
    shipped folder redirected to tmp_path/shipped: (script module, shipped folder)."""
    g = np.random.default_rng(0)
    images = (np.clip(g.normal(0.4, 0.3, (16, 16, 16)), 0, 1) * 255).astype(np.uint8)
    np.savez(tmp_path / "patches.npz", train_images=images, train_labels=np.zeros((16, 1), np.int64))
    config = {"model": {"channels": [8, 8], "attention_levels": [False, False], "num_classes": None},
              "data": {"kind": "medmnist", "path": str(tmp_path / "patches.npz")},
              "run": {"name": "tiny", "steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 1,
                      "progress": False}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    script = load_script()
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(script, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", shipped)
    return script, shipped


def test_resumed_sitting_keeps_the_card_and_every_command(tmp_path, monkeypatch):
    script, shipped = tiny_setup(tmp_path, monkeypatch)
    common = ["--config", str(tmp_path / "tiny.yaml"), "--name", "tiny", "--out-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):  # a new model without a description
        script.main(common)
    assert script.main(common + ["--description", "Tiny prior", "--trained-on", "noise", "--default-for", "sample"]) == 0
    assert script.main(common + ["--steps", "3", "--resume"]) == 0
    card = json.loads((shipped / "tiny" / "meta.json").read_text())
    assert card["step"] == 3
    assert {k: card["shipped"][k] for k in ("description", "trained_on", "default_for")} == {
        "description": "Tiny prior", "trained_on": "noise", "default_for": ["sample"]}
    commands = (shipped / "tiny" / "command.txt").read_text()
    assert "--description 'Tiny prior'" in commands and "# resumed:" in commands and "--steps 3 --resume" in commands
    assert script.main(common + ["--export-only", "--description", "Tiny prior v2"]) == 0
    assert (shipped / "tiny" / "command.txt").read_text() == commands
    assert json.loads((shipped / "tiny" / "meta.json").read_text())["shipped"]["description"] == "Tiny prior v2"



def test_sitting_from_the_shipped_weights_with_overrides(tmp_path, monkeypatch):
    """--set overrides config values (read as YAML; "1e-12" without a dot is still taken as a number), and a sitting that
    starts from the shipped weights (run.init_from = its own name, fresh optimiser) starts from exactly those weights and
    appends its command to the record; a malformed --set is a usage error."""
    import torch
    from safetensors.torch import load_file

    script, shipped = tiny_setup(tmp_path, monkeypatch)
    base = ["--config", str(tmp_path / "tiny.yaml"), "--name", "tiny"]
    assert script.main(base + ["--out-dir", str(tmp_path / "runs1"), "--description", "Tiny prior"]) == 0
    first = load_file(shipped / "tiny" / "ema.safetensors")
    for bad in ("optimiser.lr", "lr=1", ".lr=1"):
        with pytest.raises(SystemExit):
            script.main(base + ["--out-dir", str(tmp_path / "bad"), "--set", bad])

    # a rate of 1e-12 leaves the weights where the sitting started: the shipped ones, not a fresh initialisation
    assert script.main(base + ["--out-dir", str(tmp_path / "runs2"), "--set", "run.init_from=tiny",
                               "--set", "optimiser.lr=1e-12", "--set", "run.seed=6"]) == 0
    second = load_file(shipped / "tiny" / "ema.safetensors")
    assert set(first) == set(second)
    assert all(torch.allclose(first[k].float(), second[k].float(), atol=1e-3) for k in first)
    card = json.loads((shipped / "tiny" / "meta.json").read_text())
    assert card["step"] == 2 and card["total_steps"] == 4 and card["init_from"] == {"source": "tiny", "steps": 2}
    assert (shipped / "tiny" / "log_until_step_2.csv").read_text().startswith("step,")  # the first sitting's log
    assert script.main(base + ["--out-dir", str(tmp_path / "runs2"), "--steps", "3", "--resume", "--set",
                               "run.init_from=tiny", "--set", "optimiser.lr=1e-12", "--set", "run.seed=6"]) == 0
    card = json.loads((shipped / "tiny" / "meta.json").read_text())
    assert card["total_steps"] == 5 and sorted(p.name for p in (shipped / "tiny").glob("log_until_*")) == [
        "log_until_step_2.csv"]  # a resumed warm-started sitting keeps the earlier log, not its own first export's
    commands = (shipped / "tiny" / "command.txt").read_text()
    assert "--description 'Tiny prior'" in commands
    assert "# warm-started from the shipped weights, fresh optimiser:" in commands and "run.init_from=tiny" in commands

    # the same sitting without the warm start ends far from the first weights (so the check above can fail)
    assert script.main(base + ["--out-dir", str(tmp_path / "runs3"), "--set", "optimiser.lr=1e-12",
                               "--set", "run.seed=6"]) == 0
    third = load_file(shipped / "tiny" / "ema.safetensors")
    assert not list((shipped / "tiny").glob("log_until_*"))  # a model trained from scratch has only its own log
    assert not all(torch.allclose(first[k].float(), third[k].float(), atol=1e-3) for k in first)
