"""`meddiff restore --task {super-resolution,inpaint,denoise} --input IMG --method M --out OUT [--std-out STD]`:
restore a 2D image or a 3D volume (slice by slice along the last axis) with a classical baseline, a zero-shot
diffusion method (default prior: the shipped default for restore, else the one for reconstruct) or a trained
super-resolution network (sr3, unet: shipped sr3_ixi_4x / unet_sr_ixi_4x, 4x area averaging)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.restore import ALL_METHODS, KERNELS, METHODS, NOISES, TASKS

    by_task = "; ".join(f"{task}: {', '.join(METHODS[task])}" for task in TASKS)
    parser = subparsers.add_parser(
        "restore", help="super-resolution, inpainting or denoising (classical baselines, zero-shot diffusion, SR3)",
        description="Restore an image (.nii.gz, .npy or .png; 2D, or 3D slice by slice along the last axis). "
                    "super-resolution: the input is the low-resolution image and the output has --scale times its "
                    "size in-plane (NIfTI: in-plane spacing divided by the scale); the degradation model is area "
                    "averaging (the mean over scale x scale blocks) unless --kernel says otherwise. inpaint: --mask "
                    "marks the missing pixels (1 = fill); on a 3D volume a mask of whole slices along the last axis "
                    "fills those slices from the known ones (linear, cubic, biharmonic, or ddnm / sdedit: the axial prior refining "
                    "the linear interpolation, or slice-diffusion / slice-unet: networks trained to predict a missing "
                    "slice from its nearest known slices below and above; shipped slices_diffusion_ixi / "
                    "slices_unet_ixi where present). denoise: --sigma is the noise sd in the input's units "
                    f"(estimated when left out). Methods per task: {by_task}. Zero-shot methods (ddnm, dps, "
                    "repaint, diffusion) draw --samples posterior samples; the output is their mean and --std-out "
                    "their per-pixel standard deviation.",
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="restoration task")
    parser.add_argument("--input", required=True, help="input image or volume (.nii.gz, .npy, .png)")
    parser.add_argument("--method", required=True, choices=ALL_METHODS, help="method (see the list per task above)")
    parser.add_argument("--scale", type=int, help="super-resolution factor (e.g. 2 or 4)")
    parser.add_argument("--kernel", choices=KERNELS, default="area",
                        help="super-resolution degradation: area = mean over scale x scale blocks (default), "
                             "gaussian = Gaussian blur of sd scale/2 sampled at the block centres")
    parser.add_argument("--mask", help="inpainting mask (.npy, .png, .nii.gz), 1 = missing pixel; (H, W) for every "
                                       "slice or the input's shape (whole missing slices of a volume: linear, cubic, "
                                       "biharmonic, ddnm, sdedit, slice-diffusion, slice-unet)")
    parser.add_argument("--sigma", type=float, help="denoising: noise sd in the input's intensity units")
    parser.add_argument("--noise", choices=NOISES, default="gaussian", help="denoising: noise model (default gaussian)")
    parser.add_argument("--lam", type=float, help="tv: regularisation weight (default per task)")
    parser.add_argument("--samples", type=int, help="zero-shot methods, sr3 and slice-diffusion: posterior "
                                                    "samples K (default per method)")
    parser.add_argument("--steps", type=int, help="zero-shot methods, sr3 and slice-diffusion: sampler steps "
                                                  "(default per method)")
    parser.add_argument("--checkpoint", help="prior checkpoint (zero-shot methods) or trained network (sr3, unet, "
                                             "slice-diffusion, slice-unet): "
                                             "directory, run directory or shipped name (default: the shipped prior "
                                             "for restore, else for reconstruct; sr3_ixi_4x; unet_sr_ixi_4x; "
                                             "slices_diffusion_ixi; slices_unet_ixi)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0; slice z of a volume uses "
                                                            "seed + z)")
    parser.add_argument("--out", required=True, help="output image (.npy, .nii.gz or .nii)")
    parser.add_argument("--std-out", help="per-pixel standard deviation over the samples (zero-shot methods)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.errors import MeddiffError
    from meddiff.tasks.restore import restore_file

    if args.lam is not None and args.method != "tv":
        raise MeddiffError(f"--lam applies to --method tv only (got --method {args.method})")
    params = {} if args.lam is None else {"lam": args.lam}
    result, written = restore_file(args.input, args.out, args.task, args.method, mask_path=args.mask,
                                   std_out=args.std_out, scale=args.scale, kernel=args.kernel, sigma=args.sigma,
                                   noise=args.noise, samples=args.samples, steps=args.steps, seed=args.seed,
                                   checkpoint=args.checkpoint, **params)
    shape = "x".join(map(str, result.image.shape))
    line = f"wrote {written[0]}: {args.task} by {args.method}, {shape} in {result.seconds:.1f} s"
    if result.nfe:
        line += f", {result.nfe} network evaluations x {result.settings['samples']} samples per slice"
    if len(written) > 1:
        line += f"; std -> {written[1]}"
    print(line)
    return 0
