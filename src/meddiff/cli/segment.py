"""`meddiff segment --checkpoint C --input IMG.nii.gz --out LABELS.nii.gz [--samples K] [--uncertainty-out U.nii.gz]
[--probabilities-out P.nii.gz]`: parcellate a 3D T1 volume slice by slice along the axial axis; integer labels on the
input's grid and affine (the class names and DLMUSE ids: labels.json beside the checkpoint)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.segment.postprocess import CLEANUPS, DEFAULT_CLEANUP, MIN_FRACTION

    parser = subparsers.add_parser(
        "segment", help="brain parcellation of a 3D T1 volume (diffusion features, UNet or MedSegDiff)",
        description="Segment a 3D T1 NIfTI volume into the checkpoint's classes (labels.json beside it; `meddiff "
                    "checkpoints list` shows them). The volume is reoriented to RAS, cut into axial slices, each "
                    "scaled as the checkpoint's prior was trained (the 2 mm IXI grid: axial slices of at most 96 x 120 "
                    "voxels), segmented, and the labels are written on the input's grid and affine. --samples K "
                    "averages the class probabilities over K noise draws of the diffusion features (on top of the "
                    "classifier ensemble); for a MedSegDiff checkpoint (method medsegdiff) it draws K label maps "
                    "(DDIM) and the probabilities are their vote frequencies (the labels: the majority); the "
                    "uncertainty map is the entropy (nats) of the mean probabilities.")
    parser.add_argument("--checkpoint", default="brain_parcellation_ixi",
                        help="segmentation checkpoint folder or shipped name (default: brain_parcellation_ixi)")
    parser.add_argument("--input", required=True, help="3D T1 volume (.nii.gz or .nii)")
    parser.add_argument("--out", required=True, help="label map (.nii.gz or .nii), integer class ids")
    parser.add_argument("--samples", type=int, default=1, help="noise draws of the features, or MedSegDiff label samples, K (default 1)")
    parser.add_argument("--uncertainty-out", help="per-voxel entropy of the mean class probabilities (.nii.gz)")
    parser.add_argument("--probabilities-out", help="per-class mean probabilities, 4D (X, Y, Z, classes) (.nii.gz)")
    parser.add_argument("--cleanup", choices=CLEANUPS, default=DEFAULT_CLEANUP,
                        help="connected-component clean-up of the labels: none; brain = keep the largest connected "
                             "foreground component; brain+islands = also relabel specks of a class (< "
                             f"{MIN_FRACTION * 100:g} %% of its "
                             f"largest component) to the next most probable class (default {DEFAULT_CLEANUP}: chosen "
                             "on val subjects, benchmarks/segmentation_cleanup.py)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from meddiff.tasks.segment import segment_file

    result = segment_file(args.input, args.out, args.checkpoint, samples=args.samples,
                          uncertainty_out=args.uncertainty_out, probabilities_out=args.probabilities_out,
                          cleanup=args.cleanup)
    counts = np.bincount(result.labels.ravel())
    present = int((counts[1:] > 0).sum()) if counts.size > 1 else 0
    shape = "x".join(map(str, result.labels.shape))
    extra = "".join(f"; {p}" for p in result.written[1:])
    print(f"wrote {result.written[0]}: {shape} labels, {present} foreground classes present, "
          f"{result.seconds:.1f} s{extra}")
    return 0
