"""`meddiff export --checkpoint C --format onnx|torchscript --out F`: write a checkpoint's per-step network as an
ONNX graph (run under onnxruntime) or a traced TorchScript module, checked against eager torch (issue 28)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.training.export_onnx import DEFAULT_ATOL, FORMATS

    parser = subparsers.add_parser(
        "export", help="export a diffusion checkpoint's network to ONNX or TorchScript",
        description="Exports the network of one sampling step, model(x, t[, class_labels]) -> prediction, with a "
                    "dynamic batch axis (a distilled student is then sampled by meddiff's sampler on its own grid, one "
                    "exported call per step). The export is compared with eager torch on random inputs and written "
                    "only if the largest absolute difference is <= --atol; F.json beside it records the checkpoint's "
                    "meta and that difference. ONNX needs the [export] extra (onnx, onnxruntime).",
    )
    parser.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir or shipped name")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (.onnx) or torchscript (.pt)")
    parser.add_argument("--out", required=True, help="output file: .onnx for onnx, .pt for torchscript")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest allowed |export - eager torch| (default {DEFAULT_ATOL:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.training.export_onnx import export_checkpoint_network, sidecar

    info = export_checkpoint_network(args.checkpoint, args.format, args.out, atol=args.atol)
    print(f"wrote {args.out} ({args.format}, inputs {', '.join(info['inputs'])}; max |export - torch| "
          f"{info['max_abs_error_vs_eager']:.2e}) and {sidecar(args.out)}")
    return 0
