"""`meddiff train --config FILE.yaml [--resume]`: train a diffusion network or a noise-aware classifier."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a diffusion model (or classifier) from a YAML config",
        description="Train from a YAML config (sections: task, model, diffusion, data, optimiser, schedule, run); "
                    "the run goes to <run.out_dir>/<run.name>/. Multi-process: torchrun --nproc_per_node N "
                    "$(which meddiff) train --config FILE.yaml",
    )
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--name", help="run name (overrides run.name; default: the config file's stem)")
    parser.add_argument("--out-dir", help="parent directory of the run (overrides run.out_dir)")
    parser.add_argument("--steps", type=int, help="total optimiser steps (overrides run.steps)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.training import load_config, train

    config = load_config(args.config)
    overrides = {"name": args.name, "out_dir": args.out_dir, "steps": args.steps}
    config["run"].update({k: v for k, v in overrides.items() if v is not None})
    trainer = train(config, resume=args.resume)
    if trainer.is_main:
        print(f"trained {trainer.step} steps; run directory: {trainer.run_dir}")
    return 0
