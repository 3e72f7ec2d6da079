"""`meddiff simulate-kspace --image IMG --coils 8 --noise SD [--seed S] [--slice N] --out K.npy [--maps-out MAPS.npy]`:
simulate fully sampled multi-coil k-space (birdcage coil maps, smooth phase, Gaussian noise) from a magnitude image."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate-kspace", help="simulate multi-coil k-space from a magnitude image (.npy complex64 (coils, H, W))",
        description="Simulate fully sampled centred multi-coil k-space from a 2D magnitude image (or one slice of a "
                    "3D volume): analytic birdcage coil maps normalised so the RSS of the coil images equals the "
                    "image, a smooth random phase and complex Gaussian noise. Writes complex64 (coils, H, W) .npy.",
    )
    parser.add_argument("--image", required=True, help="input image: 2D, or 3D with --slice (.npy, .nii.gz, ...)")
    parser.add_argument("--slice", type=int, dest="slice_index", help="slice index of a 3D volume (required for 3D)")
    parser.add_argument("--axis", type=int, default=-1, choices=(0, 1, 2, -1, -2, -3),
                        help="axis of a 3D volume that --slice indexes (default: -1, the last)")
    parser.add_argument("--coils", type=int, default=8, help="number of coils (default: 8)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="k-space noise std per real/imaginary part, relative to the image maximum (default: 0)")
    parser.add_argument("--no-phase", action="store_true", help="keep the image real (no smooth random phase)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the phase and the noise (default: 0)")
    parser.add_argument("--out", required=True, help="output k-space .npy (complex64 (coils, H, W))")
    parser.add_argument("--maps-out", help="also write the coil maps .npy (complex64 (coils, H, W))")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from meddiff.data import read_image
    from meddiff.files import write_npy
    from meddiff.errors import MeddiffError
    from meddiff.physics.simulate import simulate_kspace

    if args.coils < 1:
        raise MeddiffError(f"--coils {args.coils} must be >= 1")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise MeddiffError(f"--noise {args.noise} must be a finite number >= 0 (std relative to the image maximum)")
    for name, value in (("--out", args.out), ("--maps-out", args.maps_out)):
        if value is not None and not value.lower().endswith(".npy"):
            raise MeddiffError(f"{name} {value!r} must end in .npy")
    image, _ = read_image(args.image, expect_ndim=(2, 3))
    if np.iscomplexobj(image):
        image = np.abs(image)
    if image.ndim == 3:
        if args.slice_index is None:
            raise MeddiffError(f"--image {args.image} is a 3D volume {image.shape}; pick a 2D slice with --slice N "
                               f"(along --axis {args.axis})")
        n = image.shape[args.axis]
        if not -n <= args.slice_index < n:
            raise MeddiffError(f"--slice {args.slice_index} is out of range for axis {args.axis} of size {n}")
        image = np.take(image, args.slice_index, axis=args.axis)
    image = np.asarray(image, dtype=np.float32)
    kspace, maps = simulate_kspace(image, args.coils, args.noise, seed=args.seed, phase=not args.no_phase)
    out = write_npy(args.out, kspace.numpy(), "--out")
    print(f"wrote {out}: k-space complex64 {tuple(kspace.shape)}, noise {args.noise:g} x image max, seed {args.seed}")
    if args.maps_out:
        print(f"wrote {write_npy(args.maps_out, maps.numpy(), '--maps-out')}: coil maps complex64 {tuple(maps.shape)}")
    return 0
