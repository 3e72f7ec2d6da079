"""`meddiff sample [--checkpoint C] --n N [--sampler S --steps K] [--class C --guidance-scale s] --out DIR`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.diffusion.samplers import SAMPLERS

    parser = subparsers.add_parser(
        "sample", help="generate images with a trained or shipped diffusion model",
        description="Sample a synthesis checkpoint (a run directory, a checkpoint directory or a shipped name; "
                    "default: the shipped chest X-ray model). Writes grid PNGs, samples.npy in the original "
                    "intensity range, labels.npy, NIfTI volumes for 3D models and manifest.json.",
    )
    parser.add_argument("--checkpoint", help="run dir, checkpoint dir or shipped name (meddiff checkpoints list)")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default: 16)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS),
                        help="default: dpmpp_2m, or a distilled student's own sampler (meddiff distill)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 20, or a distilled student's own count)")
    parser.add_argument("--class", dest="class_label", type=int,
                        help="class index for a class-conditional model (default: all classes in turn)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance: 1 = conditional model, 0 = unconditional, >1 = stronger")
    parser.add_argument("--no-clip", action="store_true",
                        help="do not clamp the x0 estimates to [-1, 1] at each step (default: clamp unless the "
                             "training data was z-scored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.tasks.synthesis import sample_to_folder
    from meddiff.training.shipped import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint("sample")
    result = sample_to_folder(checkpoint, args.out, args.n, sampler=args.sampler, steps=args.steps,
                              class_label=args.class_label, guidance_scale=args.guidance_scale, seed=args.seed,
                              batch_size=args.batch_size, device=args.device, clip_denoised=False if args.no_clip else None,
                              progress=lambda done, total: print(f"sampled {done}/{total}", flush=True))
    print(f"wrote {args.n} samples ({result['sampler']}, {result['steps']} steps, {result['seconds']:.1f} s) to {args.out}: "
          + ", ".join(sorted(result["files"])[:6]))
    return 0
