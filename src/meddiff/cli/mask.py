"""`meddiff mask --shape H W --acceleration R --pattern P --seed S --out MASK.npy`: write a k-space sampling mask."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.physics.masks import PATTERNS

    parser = subparsers.add_parser(
        "mask", help="make a seeded k-space undersampling mask (.npy, uint8 0/1, centred k-space)",
        description="Write an (H, W) uint8 0/1 undersampling mask for centred k-space. 1D patterns sample whole "
                    "lines along --axis with a fully sampled centre; 2D patterns sample points.",
    )
    parser.add_argument("--shape", type=int, nargs=2, required=True, metavar=("H", "W"), help="k-space size")
    parser.add_argument("--acceleration", type=float, required=True, help="k-space points / sampled points (2-12)")
    parser.add_argument("--pattern", default="random", choices=PATTERNS, help="sampling pattern (default: random)")
    parser.add_argument("--acs-fraction", type=float, default=0.08,
                        help="fully sampled centre as a fraction of the phase-encode size (default: 0.08)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--axis", type=int, default=-1, choices=(-1, -2),
                        help="phase-encode axis of 1D patterns: -1 samples columns, -2 rows (default: -1)")
    parser.add_argument("--out", required=True, help="output .npy file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.physics.masks import acceleration_of, make_mask, save_mask

    mask = make_mask(tuple(args.shape), args.acceleration, args.pattern, acs_fraction=args.acs_fraction,
                     seed=args.seed, axis=args.axis)
    path = save_mask(mask, args.out)
    print(f"wrote {path}: {args.pattern} mask {tuple(mask.shape)}, {int(mask.sum())} sampled, "
          f"acceleration {acceleration_of(mask):.2f}")
    return 0
