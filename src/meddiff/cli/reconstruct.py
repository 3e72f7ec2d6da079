"""`meddiff reconstruct --kspace K --mask M --method METHOD --out IMG.npy [--std-out STD.npy]`: reconstruct an
undersampled MR slice with a classical baseline or a diffusion solver (default prior: the shipped brain prior).
`meddiff reconstruct --modality ct --sinogram S.npy --angles A.npy --method METHOD [--size H W] --out IMG.npy`:
a CT slice (or a stack of sinograms) in HU (``meddiff.tasks.ct``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.ct import METHODS as CT_METHODS
    from meddiff.tasks.mri import (COMBINES, HIGH_ACCELERATION, HIGH_ACCELERATION_DEFAULTS, METHODS,
                                   SOLVER_DEFAULTS)

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
    parser.add_argument("--modality", choices=("mri", "ct"), default="mri", help="mri (default) or ct")
    parser.add_argument("--kspace", help="MRI: centred k-space file (required for mri)")
    parser.add_argument("--mask", help="MRI: sampling mask .npy, 1 = measured (required for mri)")
    parser.add_argument("--method", required=True, choices=METHODS + tuple(m for m in CT_METHODS if m not in METHODS),
                        help=f"reconstruction method (mri: {', '.join(METHODS)}; ct: {', '.join(CT_METHODS)})")
    ct = parser.add_argument_group("CT (--modality ct)")
    ct.add_argument("--sinogram", help="post-log sinogram .npy (views, detectors) or (slices, views, detectors); a "
                                       "SINO.json sidecar from simulate-ct beside it gives the pixel size")
    ct.add_argument("--angles", help="view angles .npy (views,), radians")
    ct.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="output grid (default: the square floor(detectors / sqrt 2) the detector covers)")
    ct.add_argument("--pixel-size", type=float, dest="pixel_size",
                    help="pixel (= detector) spacing in mm (default: the sidecar's, else 1.0)")
    ct.add_argument("--dose", type=float, help="the sinogram holds raw photon counts at incident flux I0 = DOSE "
                                               "(log-transformed here, counts clamped to >= 1)")
    ct.add_argument("--filter", choices=("ramp", "shepp-logan", "hann"), help="fbp filter (default: ramp)")
    ct.add_argument("--lam", type=float, help="tv weight (default 3e-4, meddiff.physics.ct.DEFAULTS; "
                                              "benchmarks/ct_reconstruction.py tunes it per setting)")
    ct.add_argument("--iters", type=int, help="sirt/tv iterations (default: 100 / 200)")
    parser.add_argument("--samples", type=int, help="posterior samples K (diffusion methods; default per method)")
    parser.add_argument("--steps", type=int, help="sampler steps (diffusion methods; default per method)")
    parser.add_argument("--start", type=float, help="diffusion methods: fraction of the diffusion time the noised CS "
                        "image starts from (default per method: ddnm 0.03, mc-ddpm "
                        f"{SOLVER_DEFAULTS['mc-ddpm']['start']:g}, from {HIGH_ACCELERATION:g}x on "
                        f"{HIGH_ACCELERATION_DEFAULTS['mc-ddpm']['start']:g}; 0.01 makes ddnm a CS "
                        "refinement that scores 0-0.6 dB higher but barely uses the prior, benchmarks/README.md; "
                        "larger starts spread the samples more, benchmarks/mri_uncertainty.py; CT: the noised TV "
                        "image, ddnm 0.02, dps/pc/mbir 0.05, 10 steps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--checkpoint", help="prior checkpoint: directory, run directory or shipped name "
                                             "(default: the shipped prior for reconstruct; --modality ct: the "
                                             "shipped CT prior ct_chest_prior)")
    parser.add_argument("--slice", type=int, dest="slice_index", help="slice of a multi-slice .h5 (default: middle)")
    parser.add_argument("--out", required=True, help="output image (.npy, .nii.gz or .png)")
    parser.add_argument("--std-out", help="per-pixel standard deviation over the samples (diffusion methods)")
    parser.add_argument("--combine", choices=COMBINES, default="sense",
                        help="output magnitude: sense = |x| of the SENSE-model image (default); rss = root-sum-of-"
                             "squares of the data-consistent coil images, like the fully sampled RSS reference")
    parser.set_defaults(func=run)


_CT_ONLY = ("sinogram", "angles", "size", "pixel_size", "dose", "filter", "lam", "iters")


def _check_method(args: argparse.Namespace, modality: str, required, methods, baselines, solvers) -> None:
    """The input options ``modality`` needs, a --method of that modality, and --std-out only with a diffusion
    method (the baselines give a single image)."""
    from meddiff.errors import MeddiffError

    for name in required:
        if getattr(args, name) is None:
            raise MeddiffError(f"--{name} is required for --modality {modality}")
    if args.method not in methods:
        other = "a CT" if modality == "mri" else "an MRI"
        raise MeddiffError(f"--method {args.method} is {other} method; for {modality.upper()} choose one of: "
                           f"{', '.join(methods)}")
    if args.std_out and args.method in baselines:
        raise MeddiffError(f"--std-out needs a diffusion method ({', '.join(solvers)}); {args.method!r} gives a "
                           "single image")


def _print_result(line: str, result, std_out: str | None, std) -> None:
    """Print ``line`` + the network evaluations of a diffusion method, after writing ``std`` to ``std_out`` if
    asked."""
    from meddiff.data.io import write_image

    if result.nfe:
        line += f", {result.nfe} network evaluations x {result.settings['samples']} samples"
    if std_out:
        line += f"; std -> {write_image(std_out, std)}"
    print(line)


def run(args: argparse.Namespace) -> int:
    from meddiff.data.io import write_image
    from meddiff.errors import MeddiffError
    from meddiff.tasks.mri import BASELINES, METHODS, SOLVERS, load_kspace, load_mask, reconstruct

    if args.modality == "ct":
        return run_ct(args)
    for name in _CT_ONLY:
        if getattr(args, name) is not None:
            raise MeddiffError(f"--{name.replace('_', '-')} is a CT option; add --modality ct")
    _check_method(args, "mri", ("kspace", "mask"), METHODS, BASELINES, SOLVERS)
    kspace = load_kspace(args.kspace, slice_index=args.slice_index)
    mask = load_mask(args.mask)
    if args.start is not None and args.method in BASELINES:
        raise MeddiffError(f"--start needs a diffusion method ({', '.join(SOLVERS)}); {args.method!r} does not "
                           "diffuse")
    solver = {} if args.start is None else {"start": args.start}
    result = reconstruct(kspace, mask, args.method, samples=args.samples, steps=args.steps, seed=args.seed,
                         checkpoint=args.checkpoint, combine=args.combine, **solver)
    path = write_image(args.out, result.image)
    _print_result(f"wrote {path}: {args.method} {result.image.shape[0]}x{result.image.shape[1]} in "
                  f"{result.seconds:.1f} s", result, args.std_out, result.std)
    return 0


def run_ct(args: argparse.Namespace) -> int:
    from meddiff.data.io import write_image
    from meddiff.errors import MeddiffError
    from meddiff.tasks.ct import BASELINES, METHODS, SOLVERS, load_array, read_sidecar, reconstruct

    for name in ("kspace", "mask", "slice_index"):
        if getattr(args, name) is not None:
            raise MeddiffError(f"--{name.replace('_index', '')} is an MRI option; drop it for --modality ct")
    if args.combine != "sense":
        raise MeddiffError("--combine is an MRI option; drop it for --modality ct")
    _check_method(args, "ct", ("sinogram", "angles"), METHODS, BASELINES, SOLVERS)
    sinogram = load_array(args.sinogram, "--sinogram")
    angles = load_array(args.angles, "--angles")
    pixel = args.pixel_size if args.pixel_size is not None else read_sidecar(args.sinogram).get("pixel_size_mm")
    params = {"filter": args.filter, "lam": args.lam, "iters": args.iters, "start": args.start}
    allowed = {"fbp": {"filter"}, "sirt": {"iters"}, "tv": {"lam", "iters"}}.get(args.method, {"start"})
    for name, value in params.items():
        if value is not None and name not in allowed:
            raise MeddiffError(f"--{name} does not apply to --method {args.method}")
    result = reconstruct(sinogram, angles, args.method, size=args.size, pixel_size=pixel, dose=args.dose,
                         checkpoint=args.checkpoint, steps=args.steps, samples=args.samples, seed=args.seed,
                         **{k: v for k, v in params.items() if v is not None})
    one = sinogram.ndim == 2  # one slice: drop the slice axis
    image = result.image[0] if one else result.image
    path = write_image(args.out, image)
    std = (result.std[0] if one else result.std) if args.std_out else None
    _print_result(f"wrote {path}: {args.method} HU {'x'.join(map(str, image.shape))} in {result.seconds:.1f} s",
                  result, args.std_out, std)
    return 0
