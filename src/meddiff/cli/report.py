"""`meddiff report RUN_DIR [--out FILE.html]`: a self-contained HTML report of a training run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.diffusion.samplers import SAMPLERS

    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a training run (or a shipped checkpoint)",
        description="Summary, config, loss curve, EMA sample grids per class, real training images next to their "
                    "nearest generated samples, and the metric table (eval.json when present).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="run directory of `meddiff train`, a shipped checkpoint directory or its name")
    parser.add_argument("--out", help="output HTML file (default: RUN_DIR/report.html; for a checkpoint "
                                      "directory ./<name>_report.html)")
    parser.add_argument("--samples", type=int, default=16, help="samples per class (default: 16)")
    parser.add_argument("--sampler", default="dpmpp_2m", choices=sorted(SAMPLERS), help="default: dpmpp_2m")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance scale for class-conditional models (default: 1, no guidance)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the samples (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.tasks.run_report import write_run_report

    path = write_run_report(args.run_dir, args.out, num_samples=args.samples, sampler=args.sampler,
                            steps=args.steps, seed=args.seed, guidance_scale=args.guidance_scale, device=args.device)
    print(f"wrote {path}")
    return 0
