"""`meddiff interpolate --frame0 A --frame1 B --times 0.25 0.5 0.75 --out DIR [--method {linear,registration,ddm}]
[--checkpoint C]`: synthesise the frames between two 2D frames (e.g. cardiac cine); one file per time in DIR."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.register.diffusemorph import DEFAULT_DDM
    from meddiff.tasks.register.interpolate import METHODS

    parser = subparsers.add_parser(
        "interpolate", help="frames between two 2D frames (linear, registration-based, DDM)",
        description="Interpolate between --frame0 (time 0) and --frame1 (time 1), two 2D frames on the same grid "
                    "(.npy, .nii.gz/.nii, .png). linear: intensity cross-fade; registration: frame0 warped along a "
                    "stationary velocity field registered to frame1, scaled by the time; ddm: the shipped DDM "
                    f"diffusion deformable model ({DEFAULT_DDM}: trained on ONE rat's cardiac cine, 192 x 192), its "
                    "latent scaled by the time. Writes DIR/frame_t<time>.npy and .nii.gz (frame0's affine) per "
                    "time and DIR/strip.png (frame0, the frames, frame1).")
    parser.add_argument("--frame0", required=True, help="the frame at time 0 (.npy, .nii.gz, .png)")
    parser.add_argument("--frame1", required=True, help="the frame at time 1, same grid as --frame0")
    parser.add_argument("--times", required=True, type=float, nargs="+", help="times in [0, 1], e.g. 0.25 0.5 0.75")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--method", choices=METHODS, default="ddm", help="interpolation method (default ddm)")
    parser.add_argument("--checkpoint", default=None, help=f"DDM checkpoint folder or shipped name (default "
                                                            f"{DEFAULT_DDM})")
    parser.add_argument("--bidirectional", action="store_true",
                        help="registration, ddm: also warp frame1 backwards and blend the two (averages the noise)")
    parser.add_argument("--formats", nargs="+", default=["npy", "nii.gz"], help="output formats: npy nii.gz")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.errors import MeddiffError
    from meddiff.tasks.register.interpolate import interpolate_file

    if args.checkpoint is not None and args.method != "ddm":
        raise MeddiffError(f"--checkpoint applies to --method ddm only (got --method {args.method})")
    if args.bidirectional and args.method == "linear":
        raise MeddiffError("--bidirectional applies to --method registration or ddm")
    result = interpolate_file(args.frame0, args.frame1, args.times, args.out, args.method,
                              checkpoint=args.checkpoint, formats=tuple(args.formats),
                              bidirectional=args.bidirectional)
    shape = "x".join(map(str, result.frames[0].shape))
    print(f"wrote {len(result.written)} files to {args.out}: {args.method}, {len(result.times)} frame(s) of {shape} "
          f"at times {' '.join(f'{t:g}' for t in result.times)}, {result.seconds:.2f} s")
    return 0
