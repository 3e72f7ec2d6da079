"""Train a model from a config and ship its EMA weights in src/meddiff/assets/checkpoints/<name>/.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_shipped.py --config configs/pneumonia_cond.yaml \
        --name pneumonia_cond --description "..." --default-for sample

A config whose data names a ``split_file`` ships it as split.json (train / val / test subjects).
The run itself goes to runs/shipped/<name>/ (resumable with --resume after an interruption); the shipped
folder gets the EMA weights (fp16), meta.json, the resolved config, the training log, the environment and
this exact command, so anyone can retrain the model and compare the logs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from meddiff.training import load_config, list_checkpoints, train
from meddiff.training.shipped import SHIPPED_DIR, export_checkpoint


def save_real_examples(data_config: dict, per_class: int, path: Path) -> None:
    """``per_class`` randomly chosen (seed 0) validation images of each class drawn as `meddiff sample` draws its grids (one per
    class, top to bottom; 3D: three central planes), so real and synthetic images can be compared without the data."""
    import numpy as np
    import torch
    from PIL import Image

    from meddiff.data import build_dataset
    from meddiff.data.io import atomic_path
    from meddiff.tasks.synthesis import sample_grid

    dataset = build_dataset(data_config, split="val")
    chosen: dict[int, list] = {}
    for i in torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist():  # spread over subjects
        item = dataset[i]
        label = int(item.get("label", -1))
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(item["image"])
        if len(chosen) == (getattr(dataset, "num_classes", 0) or 1) and all(len(v) == per_class for v in chosen.values()):
            break
    grids = [sample_grid(torch.stack(chosen[label]).float().clamp(-1, 1)) for label in sorted(chosen)]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(grids)).save(tmp, format="PNG")  # one grid per class, top to bottom


def shipped_card(name: str) -> dict:
    """The "shipped" fields (description, trained_on, default_for) of the model already shipped as ``name``, or {}:
    a further sitting (``--resume``) or a re-export keeps them unless the command line gives new ones."""
    meta = SHIPPED_DIR / name / "meta.json"
    return json.loads(meta.read_text()).get("shipped", {}) if meta.is_file() else {}


def earlier_logs(name: str, checkpoint: Path) -> dict[str, Path]:
    """The training logs of the weights a warm-started run began from, to ship beside its own log.csv: a run started
    from the shipped ``name`` (run.init_from) keeps that model's log.csv as log_until_step_<N>.csv (N: its steps) and
    the earlier such files it carried; {} for any other run."""
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    source = meta.get("init_from") or {}
    shipped = SHIPPED_DIR / name
    if source.get("source") != name or not shipped.is_dir():
        return {}
    logs = {path.name: path for path in shipped.glob("log_until_step_*.csv")}
    before = f"log_until_step_{source['steps']}.csv"
    if before not in logs and (shipped / "log.csv").is_file():  # the shipped folder still holds the source model
        logs[before] = shipped / "log.csv"
    return logs


def apply_override(config: dict, assignment: str, parser: argparse.ArgumentParser) -> None:
    """``section.key=value`` -> config[section][key] = YAML value; a malformed assignment is a usage error."""
    import yaml

    path, sep, text = assignment.partition("=")
    keys = path.split(".")
    if not sep or len(keys) < 2 or not all(keys):
        parser.error(f"--set {assignment!r}: write SECTION.KEY=VALUE, e.g. --set optimiser.lr=4e-4")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            parser.error(f"--set {assignment!r}: {key} is not a section of the config")
    node[keys[-1]] = yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True, help="shipped name (folder under assets/checkpoints)")
    parser.add_argument("--description", help="one line for `meddiff checkpoints list` (kept from the shipped card "
                                              "when left out; required for a new model)")
    parser.add_argument("--trained-on", default="", help="one line naming the data and split, for `meddiff "
                        "checkpoints list` (kept from the shipped card when left out)")
    parser.add_argument("--default-for", nargs="*",
                        help="commands that use this model when --checkpoint is left out (e.g. sample; kept from the "
                             "shipped card when left out)")
    parser.add_argument("--steps", type=int, help="override run.steps")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, read as YAML (repeatable), e.g. a further sitting that starts "
                             "from the shipped weights with a fresh optimiser: --set run.init_from=NAME "
                             "--set optimiser.lr=4e-4")
    parser.add_argument("--out-dir", default="runs/shipped")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint of the run")
    parser.add_argument("--real-examples", type=int, default=0, metavar="N",
                        help="also save real_examples.png: N held-out (val) images per class, for side-by-side viewing")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    config["run"].update({"name": args.name, "out_dir": args.out_dir})
    if args.steps is not None:
        config["run"]["steps"] = args.steps
    for assignment in args.set:
        apply_override(config, assignment, parser)
    run_dir = Path(args.out_dir) / args.name
    card = shipped_card(args.name)
    description = args.description or card.get("description")
    if not description:
        parser.error(f"--description is required: {args.name} has no shipped card to keep it from")
    started = time.time()
    if not args.export_only:
        train(config, resume=args.resume, run_dir=run_dir)
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    command = "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python", "scripts/train_shipped.py", *(argv or sys.argv[1:])])
    previous = SHIPPED_DIR / args.name / "command.txt"
    if previous.is_file() and args.export_only:  # re-exporting keeps the commands that trained the model
        command = previous.read_text().strip()
    elif previous.is_file() and args.resume:  # a further sitting: the earlier ones stay in the record
        command = previous.read_text().strip() + "\n# resumed:\n" + command
    elif previous.is_file() and config["run"].get("init_from") == args.name:  # a sitting from the shipped weights
        command = previous.read_text().strip() + "\n# warm-started from the shipped weights, fresh optimiser:\n" + command
    trained_on = args.trained_on or card.get("trained_on", "")
    default_for = args.default_for if args.default_for is not None else card.get("default_for", [])
    split_file = (config.get("data") or {}).get("split_file")  # the subject split travels with the model
    extra = {"split.json": Path(split_file)} if split_file and Path(split_file).is_file() else {}
    extra.update(earlier_logs(args.name, checkpoint))
    shipped = export_checkpoint(checkpoint, args.name, command=command, description=description,
                                default_for=default_for, trained_on=trained_on, extra_files=extra or None)
    if args.real_examples:
        save_real_examples(config["data"], args.real_examples, shipped / "real_examples.png")
    print(f"shipped {checkpoint} -> {shipped} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
