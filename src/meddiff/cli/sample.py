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
    parser.add_argument("--checkpoint", help="run dir, checkpoint dir or shipped name (meddiff checkpoints list), or a "
                                             "network file of meddiff export (.onnx, .pt)")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default: 16)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS),
                        help="default: dpmpp_2m, or a distilled student's own sampler (meddiff distill)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 20, or a distilled student's own count)")
    parser.add_argument("--class", dest="class_label", type=int,
                        help="class index for a class-conditional model (default: all classes in turn)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance: 1 = conditional model, 0 = unconditional, >1 = stronger (two "
                             "network evaluations per step; a guidance-distilled student takes any scale of its "
                             "trained range in one)")
    parser.add_argument("--label-map", help="3D label map (NIfTI) for a label-conditioned latent model such as "
                        "brain3d_ldm: the raw DLMUSE parcellation or the merged 10-class map, on the training grid")
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
    from meddiff.tasks.synthesis3d import is_ldm
    from meddiff.training.shipped import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint("sample")
    if args.label_map is not None or is_ldm(checkpoint):  # latent diffusion of whole heads (issue 27)
        return _run_ldm(args, checkpoint)
    result = sample_to_folder(checkpoint, args.out, args.n, sampler=args.sampler, steps=args.steps,
                              class_label=args.class_label, guidance_scale=args.guidance_scale, seed=args.seed,
                              batch_size=args.batch_size, device=args.device, clip_denoised=False if args.no_clip else None,
                              progress=lambda done, total: print(f"sampled {done}/{total}", flush=True))
    print(f"wrote {args.n} samples ({result['sampler']}, {result['steps']} steps, {result['seconds']:.1f} s) to {args.out}: "
          + ", ".join(sorted(result["files"])[:6]))
    return 0


def _run_ldm(args: argparse.Namespace, checkpoint) -> int:
    from meddiff.errors import MeddiffError
    from meddiff.tasks.synthesis3d.output import sample_to_folder

    if args.class_label is not None:
        raise MeddiffError(f"--class: {checkpoint} is a latent model conditioned by label maps, not classes; "
                           "use --label-map")
    result = sample_to_folder(checkpoint, args.out, args.n, label_map=args.label_map, sampler=args.sampler,
                              steps=args.steps, seed=args.seed, guidance_scale=args.guidance_scale,
                              progress=lambda done, total: print(f"sampled {done}/{total}", flush=True))
    print(f"wrote {args.n} heads ({result['seconds_per_volume']:.1f} s each) to {args.out}: "
          + ", ".join(result["files"][:4]))
    return 0
