"""`meddiff simulate-ct --image IMG_HU --views N [--arc DEG] [--dose I0] --out SINO.npy [--angles-out ANGLES.npy]`:
simulate a parallel-beam CT sinogram (optionally low-dose) from an HU image or volume."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate-ct", help="simulate a (low-dose) parallel-beam CT sinogram from an HU image",
        description="Simulate post-log parallel-beam CT sinograms from a 2D HU image (H, W) or a volume (one sinogram "
                    "per slice): attenuation mu = 0.0193/mm x (1 + HU/1000), N views evenly over --arc degrees, "
                    "detectors one pixel apart covering the image diagonal (a non-square slice is padded to a square "
                    "with air). With --dose I0: Poisson photon counts I0 exp(-line integral) plus Gaussian "
                    "electronic noise (variance 10 counts^2), clamped to >= 1 count, then -log(counts / I0). Writes "
                    "float32 (views, detectors) or (slices, views, detectors) .npy, the angles (radians) and a "
                    "geometry sidecar SINO.json that `meddiff reconstruct --modality ct` reads.",
    )
    parser.add_argument("--image", required=True, help="HU image: 2D, or 3D (.npy/.nii.gz/DICOM folder)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2, -1, -2, -3),
                        help="slice axis of a 3D image (default: 0 for .npy (D, H, W) and DICOM, -1 for NIfTI)")
    parser.add_argument("--views", type=int, required=True, help="number of views (e.g. 180 full, 18-90 sparse)")
    parser.add_argument("--arc", type=float, default=180.0,
                        help="angular range in degrees (default: 180, full; 90 or 120 for limited angle)")
    parser.add_argument("--dose", type=float, help="incident photons per ray I0 (e.g. 1e5 full, 1e4 low dose); "
                                                   "default: noiseless line integrals")
    parser.add_argument("--pixel-size", type=float, dest="pixel_size",
                        help="pixel size in mm (default: the image header's in-plane spacing, else 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the noise (default: 0)")
    parser.add_argument("--out", required=True, help="output sinogram .npy")
    parser.add_argument("--angles-out", dest="angles_out", help="output view angles .npy (radians)")
    parser.add_argument("--counts-out", dest="counts_out", help="also write the photon counts .npy (needs --dose)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    from meddiff.data.io import write_json
    from meddiff.errors import MeddiffError
    from meddiff.physics.ct import MU_WATER
    from meddiff.tasks.ct import DEFAULT_PIXEL_MM, read_hu, save_npy, sidecar_path, simulate

    if args.views < 1:
        raise MeddiffError(f"--views {args.views} must be >= 1")
    if not (math.isfinite(args.arc) and 0 < args.arc <= 360):
        raise MeddiffError(f"--arc {args.arc} must be in (0, 360] degrees")
    if args.dose is not None and not (math.isfinite(args.dose) and args.dose > 1):
        raise MeddiffError(f"--dose {args.dose} must be a finite photon count per ray > 1 (e.g. 1e4)")
    if args.counts_out and args.dose is None:
        raise MeddiffError("--counts-out needs --dose (noiseless data have no photon counts)")
    for name in ("out", "angles_out", "counts_out"):
        value = getattr(args, name)
        if value is not None and not value.lower().endswith(".npy"):
            raise MeddiffError(f"--{name.replace('_', '-')} {value!r} must end in .npy")
    image, spacing = read_hu(args.image, axis=args.axis)
    pixel = args.pixel_size if args.pixel_size is not None else (spacing or DEFAULT_PIXEL_MM)
    if not (math.isfinite(pixel) and pixel > 0):
        raise MeddiffError(f"--pixel-size {pixel} must be a positive number (mm)")
    sino, angles, counts = simulate(image, args.views, arc=args.arc, dose=args.dose, pixel_size=pixel, seed=args.seed)
    out = save_npy(sino, args.out, "--out")
    side = write_json({"geometry": "parallel", "pixel_size_mm": pixel, "mu_water_per_mm": MU_WATER,
                       "detector_spacing_pixels": 1.0, "views": args.views, "arc_degrees": args.arc,
                       "dose_i0": args.dose, "seed": args.seed, "image_shape": list(image.shape[-2:]),
                       "units": "post-log line integrals int mu dl (mu in 1/mm, l in mm)"}, sidecar_path(out))
    dose = f"I0 {args.dose:g}" if args.dose is not None else "noiseless"
    print(f"wrote {out}: sinogram float32 {sino.shape} ({args.views} views over {args.arc:g} deg, {dose}, pixel "
          f"{pixel:g} mm); geometry {side}")
    if args.angles_out:
        print(f"wrote {save_npy(angles, args.angles_out, '--angles-out')}: {len(angles)} angles (radians)")
    if args.counts_out:
        print(f"wrote {save_npy(counts.astype('float32'), args.counts_out, '--counts-out')}: photon counts")
    return 0
