"""`meddiff register --moving M.nii.gz --fixed F.nii.gz --method {affine,classical,voxelmorph} [--checkpoint C]
--out WARPED.nii.gz [--field-out DDF.nii.gz] [--labels L.nii.gz --labels-out WL.nii.gz]`: register a moving volume
onto a fixed one; outputs on the fixed grid and affine."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.register.learned import DEFAULT_CHECKPOINT
    from meddiff.tasks.register.pipeline import METHODS

    parser = subparsers.add_parser(
        "register", help="register a moving 3D volume onto a fixed one (affine, demons, VoxelMorph-style)",
        description="Register --moving onto --fixed (3D NIfTI). Every method starts from the NIfTI affines and an "
                    "affine registration (global NCC, 2 resolutions); classical adds SimpleITK diffeomorphic demons "
                    "(pip install 'meddiff[register]'), voxelmorph adds the shipped VoxelMorph-style network "
                    f"({DEFAULT_CHECKPOINT}: T1 heads at 2 mm). The warped image (linear), labels (nearest neighbour) "
                    "and world displacement field (mm, X x Y x Z x 3) are written on the fixed grid with the fixed "
                    "affine. The percentage of voxels where the deformation folds (Jacobian <= 0) is printed.")
    parser.add_argument("--moving", required=True, help="moving volume (.nii.gz or .nii)")
    parser.add_argument("--fixed", required=True, help="fixed volume (.nii.gz or .nii): the output grid")
    parser.add_argument("--method", choices=METHODS, default="affine", help="registration method (default affine)")
    parser.add_argument("--checkpoint", default=None,
                        help=f"voxelmorph checkpoint folder or shipped name (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--out", required=True, help="warped moving volume on the fixed grid (.nii.gz)")
    parser.add_argument("--field-out", help="world displacement field, mm, (X, Y, Z, 3) on the fixed grid (.nii.gz)")
    parser.add_argument("--labels", help="label map of the moving volume, on its grid (.nii.gz)")
    parser.add_argument("--labels-out", help="warped labels on the fixed grid (.nii.gz), nearest neighbour")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.tasks.register.pipeline import register_file

    result = register_file(args.moving, args.fixed, args.out, args.method, checkpoint=args.checkpoint,
                           field_out=args.field_out, labels=args.labels, labels_out=args.labels_out)
    extra = "".join(f"; {p}" for p in result.written[1:])
    print(f"wrote {result.written[0]}: {args.method}, {'x'.join(map(str, result.warped.shape))}, folding "
          f"{result.folding_percent:.3f} % of voxels (Jacobian <= 0), {result.seconds:.1f} s{extra}")
    return 0
