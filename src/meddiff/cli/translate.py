"""`meddiff translate --checkpoint C --input SRC.nii.gz [--input2 SRC2.nii.gz] --method {palette,sdedit,unet,histogram}
--out OUT.nii.gz [--std-out STD.nii.gz]`: translate an MR volume into another contrast (T1 -> T2 or FLAIR), slice by
slice along the RAS axial axis, on the input's grid and affine, in the target contrast's units of the training data."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.translate.pipeline import DEFAULTS, METHODS

    parser = subparsers.add_parser(
        "translate", help="MR contrast translation (T1 -> T2 / FLAIR): Palette, SDEdit, supervised UNet, histogram",
        description="Translate a skull-stripped MR volume (NIfTI) into another contrast. The volume is reoriented to "
                    "RAS and cut into axial slices (RAS axis 2), down-sampled in-plane to the model's spacing "
                    "(2 mm for the shipped t1_to_t2_flair), normalised within its brain mask (0.5th/99.5th "
                    "percentiles -> -1/1), translated, mapped back to the target contrast's units of the training "
                    "subject (stated in the header description and the sidecar OUT.json) and written on the input's "
                    "grid and affine (0 outside the brain mask). Methods: palette (conditional diffusion, K samples "
                    f"-> mean, --std-out their std; default {DEFAULTS['palette']['steps']} DDIM steps x "
                    f"{DEFAULTS['palette']['samples']} samples), sdedit (needs --prior, an unconditional prior of "
                    "the target contrast), unet (supervised baseline), histogram (identity + histogram matching "
                    "to the training target histogram).")
    parser.add_argument("--checkpoint", default="t1_to_t2_flair",
                        help="translation model: folder, run directory or shipped name (default t1_to_t2_flair)")
    parser.add_argument("--input", required=True, help="source contrast volume (.nii.gz), e.g. a T1")
    parser.add_argument("--input2", help="second source contrast on the same grid (for models with two sources)")
    parser.add_argument("--source-contrast", nargs="+", metavar="NAME",
                        help="contrast name(s) of --input (and --input2); default: the checkpoint's sources")
    parser.add_argument("--target", help="target contrast (default: the checkpoint's first, e.g. t2)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--steps", type=int, help="diffusion sampler steps (default 20)")
    parser.add_argument("--samples", type=int, help="diffusion samples K per slice (default 4)")
    parser.add_argument("--t0", type=float, help="sdedit: start level as a fraction of the diffusion time (0.5)")
    parser.add_argument("--prior", help="sdedit: unconditional one-channel prior of the target contrast")
    parser.add_argument("--mask", help="brain mask volume on the input's grid (default: from the source intensities)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output volume (.nii.gz or .nii); OUT.json gets the settings")
    parser.add_argument("--std-out", help="per-voxel std over the samples (diffusion methods), target units")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.tasks.translate.pipeline import translate_file

    result, written = translate_file(args.input, args.out, checkpoint=args.checkpoint, method=args.method,
                                     input2=args.input2, target=args.target, source_contrasts=args.source_contrast,
                                     std_out=args.std_out, mask_path=args.mask, prior_checkpoint=args.prior,
                                     steps=args.steps, samples=args.samples, seed=args.seed, t0=args.t0)
    s = result.settings
    line = (f"wrote {written[0]}: {'+'.join(s['source'])} -> {s['target']} by {s['method']}, "
            f"{'x'.join(map(str, result.image.shape))} in {result.seconds:.1f} s")
    if result.nfe:
        line += f", {result.nfe} network evaluation(s) x {s.get('samples', 1)} sample(s) per slice"
    if args.std_out:
        line += f"; std -> {written[1]}"
    print(line)
    return 0
