"""`meddiff distill --teacher C --steps 4 [--method progressive|consistency] [--guidance-range LOW HIGH] --out RUN_DIR
[--resume]`: distil a diffusion checkpoint into a student that samples in a few steps (progressive distillation,
Salimans & Ho 2022, guided distillation, Meng et al. 2023, or consistency distillation, Song et al. 2023)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.training.distill import METHODS

    parser = subparsers.add_parser(
        "distill", help="distil a diffusion model into a 1-4 step sampler (progressive or consistency distillation)",
        description="Progressive distillation (Salimans & Ho 2022): rounds halve the teacher's DDIM steps from "
                    "--start-steps down to --steps; each student step matches two teacher steps. The run directory "
                    "holds distill.yaml, one Trainer run per round (steps_<N>/: checkpoints, log.jsonl, log.csv) and "
                    "student/, an ordinary checkpoint that `meddiff sample --checkpoint RUN_DIR/student` runs with its "
                    "own sampler and steps. Class-conditional teachers are distilled at one guidance scale, or with "
                    "--guidance-range LOW HIGH by guided distillation (Meng et al. 2023): a first round (guided/) makes "
                    "the scale a student input, then the rounds distil it, so the student samples at any scale of "
                    "the range with one evaluation per step. --method "
                    "consistency (Song et al. 2023): one round (consistency_<N>/) on the teacher's N = --start-steps grid "
                    "against an EMA target network; the student samples by multistep consistency sampling in --steps "
                    "steps (a divisor of N).",
    )
    parser.add_argument("--teacher", help="teacher checkpoint: run dir, checkpoint dir or shipped name")
    parser.add_argument("--steps", type=int, help="the student's sampling steps (default 4); start-steps / 2^k")
    parser.add_argument("--method", choices=METHODS, help="distillation method (default: progressive)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--config", help="YAML file of distillation settings (keys: teacher, steps, start_steps, "
                                         "iterations, batch_size, lr, ...); command-line options override it")
    parser.add_argument("--start-steps", type=int, help="the teacher's DDIM steps in the first round (default 64)")
    parser.add_argument("--iterations", type=int, help="optimiser steps per round (default 400)")
    parser.add_argument("--batch-size", type=int, help="images per optimiser step (default 32)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate, linear decay to 0 per round (default 1e-4)")
    parser.add_argument("--guidance-scale", type=float,
                        help="class-conditional teachers: classifier-free guidance scale distilled into the student "
                             "(default 1.0, the default of `meddiff sample`)")
    parser.add_argument("--guidance-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="class-conditional teachers: guided distillation, the CFG scale a student input trained "
                             "on this range (e.g. 1 4); `meddiff sample --guidance-scale S` then picks S")
    parser.add_argument("--guidance-iterations", type=int,
                        help="--guidance-range: optimiser steps of the first (guided/) round (default: --iterations)")
    parser.add_argument("--target-decay", type=float,
                        help="--method consistency: EMA decay of the target network (default 0.95)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.training.distill import distill, load_distill_settings

    settings = load_distill_settings(args.config) if args.config else {}
    overrides = {"teacher": args.teacher, "steps": args.steps, "method": args.method, "start_steps": args.start_steps,
                 "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr,
                 "guidance_scale": args.guidance_scale, "seed": args.seed, "target_decay": args.target_decay,
                 "guidance_range": args.guidance_range, "guidance_iterations": args.guidance_iterations}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_progress:
        settings["progress"] = False
    student = distill(settings, args.out, resume=args.resume,
                      on_round=lambda steps, checkpoint: print(f"round done: {steps}-step student at {checkpoint}",
                                                               flush=True))
    print(f"student: {student} (sample it with: meddiff sample --checkpoint {student} --out DIR)")
    return 0
