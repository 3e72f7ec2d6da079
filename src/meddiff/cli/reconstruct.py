"""`meddiff reconstruct --kspace K --mask M --method METHOD --out IMG.npy [--std-out STD.npy]`: reconstruct an
undersampled MR slice with a classical baseline or a diffusion solver (default prior: the shipped brain prior)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.mri import COMBINES, METHODS, SOLVER_DEFAULTS

    parser = subparsers.add_parser(
        "reconstruct", help="reconstruct undersampled MRI k-space (baselines or diffusion solvers)",
        description="Reconstruct a 2D MR slice from centred k-space (.npy complex (coils, H, W) or (H, W), .h5 in the "
                    "fastMRI layout, or BART .cfl/.hdr) and a 0/1 mask (.npy (H, W) or (W,); k-space outside the mask "
                    "is ignored). Writes the magnitude image (float32 (H, W), RSS intensity scale) as .npy, .nii.gz "
                    "or .png. Diffusion methods use --checkpoint or the shipped brain prior and refine the "
                    "L1-wavelet CS image; none beats CS by more than about 0.1 dB with the shipped prior; at its "
                    "defaults dps scores about the same with an untrained network: a CS refinement "
                    "(benchmarks/README.md). mc-ddpm (after MC-DDPM, Xie & Li 2022) keeps the measured k-space "
                    "lines and diffuses only the unmeasured ones; its --std-out is the spread of the samples.",
    )
    parser.add_argument("--kspace", required=True, help="centred k-space file")
    parser.add_argument("--mask", required=True, help="sampling mask .npy, 1 = measured")
    parser.add_argument("--method", required=True, choices=METHODS, help="reconstruction method")
    parser.add_argument("--samples", type=int, help="posterior samples K (diffusion methods; default per method)")
    parser.add_argument("--steps", type=int, help="sampler steps (diffusion methods; default per method)")
    parser.add_argument("--start", type=float, help="diffusion methods: fraction of the diffusion time the noised CS "
                        "image starts from (default per method: ddnm 0.03, mc-ddpm "
                        f"{SOLVER_DEFAULTS['mc-ddpm']['start']:g}; 0.01 makes ddnm a CS "
                        "refinement that scores 0-0.6 dB higher but barely uses the prior, benchmarks/README.md; "
                        "larger starts spread the samples more, benchmarks/mri_uncertainty.py)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--checkpoint", help="prior checkpoint: directory, run directory or shipped name "
                                             "(default: the shipped prior for reconstruct)")
    parser.add_argument("--slice", type=int, dest="slice_index", help="slice of a multi-slice .h5 (default: middle)")
    parser.add_argument("--out", required=True, help="output image (.npy, .nii.gz or .png)")
    parser.add_argument("--std-out", help="per-pixel standard deviation over the samples (diffusion methods)")
    parser.add_argument("--combine", choices=COMBINES, default="sense",
                        help="output magnitude: sense = |x| of the SENSE-model image (default); rss = root-sum-of-"
                             "squares of the data-consistent coil images, like the fully sampled RSS reference")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.data.io import write_image
    from meddiff.errors import MeddiffError
    from meddiff.tasks.mri import BASELINES, SOLVERS, load_kspace, load_mask, reconstruct

    if args.std_out and args.method in BASELINES:
        raise MeddiffError(f"--std-out needs a diffusion method ({', '.join(SOLVERS)}); {args.method!r} "
                           "gives a single image")
    kspace = load_kspace(args.kspace, slice_index=args.slice_index)
    mask = load_mask(args.mask)
    if args.start is not None and args.method in BASELINES:
        raise MeddiffError(f"--start needs a diffusion method ({', '.join(SOLVERS)}); {args.method!r} does not "
                           "diffuse")
    solver = {} if args.start is None else {"start": args.start}
    result = reconstruct(kspace, mask, args.method, samples=args.samples, steps=args.steps, seed=args.seed,
                         checkpoint=args.checkpoint, combine=args.combine, **solver)
    path = write_image(args.out, result.image)
    line = f"wrote {path}: {args.method} {result.image.shape[0]}x{result.image.shape[1]} in {result.seconds:.1f} s"
    if result.nfe:
        line += f", {result.nfe} network evaluations x {result.settings['samples']} samples"
    if args.std_out:
        line += f"; std -> {write_image(args.std_out, result.std)}"
    print(line)
    return 0
