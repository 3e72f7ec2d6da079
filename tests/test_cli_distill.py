"""`meddiff distill` end to end on a tiny teacher trained on a tiny .npz (its meta names the data): rounds, the
student checkpoint that `meddiff sample` runs with its own steps, --resume, --config, and one-line errors."""

import json

import numpy as np
import pytest
import yaml

from meddiff.cli.main import main

from helpers import train_tiny_checkpoint


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_cli")
    train_tiny_checkpoint(root, size=8, name="tiny.npz")
    return root / "run"


def test_distill_cli_writes_a_student_that_sample_runs_with_its_own_steps(teacher, tmp_path, capsys):
    out = tmp_path / "student_run"
    args = ["distill", "--teacher", str(teacher), "--steps", "2", "--start-steps", "8", "--iterations", "2",
            "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "round done: 4-step" in printed and "round done: 2-step" in printed and str(out / "student") in printed
    for name in ("steps_004", "steps_002"):
        assert (out / name / "log.jsonl").is_file() and (out / name / "log.csv").is_file()
    assert yaml.safe_load((out / "distill.yaml").read_text())["steps"] == 2
    assert main(args + ["--resume"]) == 0  # every round done: nothing to train, the student is rewritten
    assert main(["sample", "--checkpoint", str(out / "student"), "--n", "2", "--out", str(tmp_path / "s")]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["sampler"], manifest["steps"]) == ("ddim", 2)
    assert "(ddim, 2 steps" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out / "student"), "--n", "2", "--steps", "3",
                 "--out", str(tmp_path / "s3")]) == 0
    assert json.loads((tmp_path / "s3" / "manifest.json").read_text())["steps"] == 3


def test_distill_cli_reads_a_config_file(teacher, tmp_path):
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({"teacher": str(teacher), "steps": 1, "start_steps": 2, "iterations": 1,
                                      "batch_size": 4}))
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "run" / "student" / "meta.json").read_text())
    assert meta["sampling"]["steps"] == 1 and meta["sampling"]["times"] == [999.0]


@pytest.mark.parametrize("args, message", [
    (["--teacher", "no_such_model"], "--teacher no_such_model: no checkpoint found"),
    (["--steps", "3"], "--steps 3 must be start_steps / 2^k"),
    (["--steps", "4", "--start-steps", "48"], "--steps 4 must be start_steps / 2^k"),
    ([], "no teacher given"),
])
def test_distill_cli_errors_are_one_line(teacher, tmp_path, capsys, args, message):
    base = [] if any(a == "--teacher" for a in args) or not args else ["--teacher", str(teacher)]
    if args and args[0] != "--teacher":
        base = ["--teacher", str(teacher)]
    assert main(["distill", *base, *args, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()
