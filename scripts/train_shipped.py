"""Train a model from a config and ship its EMA weights in src/meddiff/assets/checkpoints/<name>/.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_shipped.py --config configs/pneumonia_cond.yaml \
        --name pneumonia_cond --description "..." --default-for sample

The run itself goes to runs/shipped/<name>/ (resumable with --resume after an interruption); the shipped
folder gets the EMA weights (fp16), meta.json, the resolved config, the training log, the environment and
this exact command, so anyone can retrain the model and compare the logs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from meddiff.training import load_config, list_checkpoints, train
from meddiff.training.shipped import export_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True, help="shipped name (folder under assets/checkpoints)")
    parser.add_argument("--description", required=True, help="one line for `meddiff checkpoints list`")
    parser.add_argument("--default-for", nargs="*", default=[],
                        help="commands that use this model when --checkpoint is left out (e.g. sample)")
    parser.add_argument("--steps", type=int, help="override run.steps")
    parser.add_argument("--out-dir", default="runs/shipped")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint of the run")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    config["run"].update({"name": args.name, "out_dir": args.out_dir})
    if args.steps is not None:
        config["run"]["steps"] = args.steps
    run_dir = Path(args.out_dir) / args.name
    started = time.time()
    if not args.export_only:
        train(config, resume=args.resume, run_dir=run_dir)
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    command = "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python", "scripts/train_shipped.py", *(argv or sys.argv[1:])])
    shipped = export_checkpoint(checkpoint, args.name, command=command, description=args.description,
                                default_for=args.default_for)
    print(f"shipped {checkpoint} -> {shipped} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
