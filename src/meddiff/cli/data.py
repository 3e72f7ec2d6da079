"""`meddiff data inspect|prepare|preview`: look at medical images and prepare slice datasets."""

from __future__ import annotations

import argparse
import json


def _inspect(args: argparse.Namespace) -> int:
    from meddiff.data.inspect import format_report, inspect_path

    info = inspect_path(args.path, key=args.key)
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from meddiff.data.inspect import preview

    out = preview(args.path, args.out, window=args.window, key=args.key)
    print(f"wrote {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from meddiff.data.prepare import load_config, prepare_slices

    cfg = load_config(args.config) if args.config else {}
    flags = {"path": args.input, "cache_dir": args.out, "axis": args.axis, "size": args.size,
             "contrasts": args.contrasts.split(",") if args.contrasts else None, "seg": args.seg or None,
             "min_foreground": args.min_foreground}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    summary = prepare_slices(cfg, progress=not args.quiet)
    print(json.dumps(summary) if args.json else
          f"{summary['slices']} slices from {summary['subjects']} subjects in {summary['cache']} "
          f"(image shape {tuple(summary['image_shape'])})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect, preview and prepare medical image data")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("inspect", help="format, shape, spacing, orientation and intensities of a file or folder")
    p.add_argument("path", help="image file, DICOM series folder or dataset folder")
    p.add_argument("--key", help="array name inside an .npz/.h5 file")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("preview", help="PNG of the middle slices in three planes (CT window applied)")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--window", help="CT window preset (brain, subdural, soft_tissue, lung, bone, ...)")
    p.add_argument("--key", help="array name inside an .npz/.h5 file")
    p.set_defaults(func=_preview)

    p = sub.add_parser("prepare", help="cut a NIfTI volume folder into a cached 2D slice dataset (resumable)")
    p.add_argument("config", nargs="?", help="YAML with the slice dataset options (or under 'dataset:')")
    p.add_argument("--input", help="folder of NIfTI volumes (overrides path)")
    p.add_argument("--out", help="cache folder (overrides cache_dir)")
    p.add_argument("--axis", type=int, help="slice axis after RAS reorientation (2 = axial)")
    p.add_argument("--size", type=int, help="resize slices to SIZE x SIZE")
    p.add_argument("--contrasts", help="comma-separated, e.g. t1,t1ce,t2,flair")
    p.add_argument("--seg", action="store_true", help="also cut the segmentation")
    p.add_argument("--min-foreground", type=float, help="drop slices with less foreground than this fraction")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_prepare)
