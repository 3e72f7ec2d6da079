"""`meddiff demo`: the README's main job, on embedded data and shipped checkpoints only."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on embedded data and write an HTML report",
                                   description="Samplers on a known distribution, chest X-ray synthesis with its "
                                               "evaluation, MRI reconstruction of embedded k-space (baselines and a "
                                               "diffusion solver with uncertainty) and anomaly maps on unseen BraTS "
                                               "slices; writes report.html.")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--samples", type=int, default=20000, help="samples per sampler for the 2D target")
    parser.add_argument("--synthetic", type=int, default=128,
                        help="synthetic chest X-rays to generate and evaluate (default: 128, half per class)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.errors import MeddiffError
    from meddiff.tasks.demo import run_demo

    if args.samples < 100:
        raise MeddiffError(f"--samples={args.samples} is too few to estimate mode weights; use at least 100")
    if args.synthetic < 16:
        raise MeddiffError(f"--synthetic={args.synthetic} is too few for FID/KID and precision/recall; use at least 16")
    report = run_demo(args.out, samples=args.samples, synthetic=args.synthetic, seed=args.seed)
    print(f"report: {report}")
    return 0
