"""Whole-head latent diffusion (issue 27), the steps around ``meddiff train``:

    cache-heads    read the 170 IXI DLMUSE heads once into runs/ldm/heads.npz (normalised, padded to 96x128x128)
    eval-ae        reconstruction L1 / PSNR of an autoencoder checkpoint on the val (or test) heads
    cache-latents  encode every cached head with the autoencoder (posterior mean), scale by 1/std of the train
                   latents (Rombach et al. 2022) and pool the one-hot labels to the latent grid -> runs/ldm/latents.npz

Order: cache-heads; meddiff train --config configs/brain3d_autoencoder.yaml; cache-latents;
meddiff train --config configs/brain3d_ldm.yaml; then ship (see the model card of brain3d_ldm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ixi_t1_2mm_dlmuse"
SPLIT = ROOT / "configs" / "splits" / "ixi_t1_2mm_dlmuse.json"
HEADS = ROOT / "runs" / "ldm" / "heads.npz"
LATENTS = ROOT / "runs" / "ldm" / "latents.npz"


def cache_heads(args) -> None:
    from meddiff.data.heads import build_head_cache
    from meddiff.data.splits import SPLITS

    split = json.loads(Path(args.split).read_text())
    subjects = sorted(s for part in SPLITS for s in split[part])
    build_head_cache(args.data, subjects, args.out)
    print(f"wrote {args.out} ({len(subjects)} heads)")


def eval_ae(args) -> None:
    from meddiff.tasks.synthesis3d.autoencoder import evaluate_reconstruction, load_autoencoder

    ae = load_autoencoder(args.checkpoint)
    scores = evaluate_reconstruction(ae, args.heads, args.split, args.part)
    print(json.dumps(scores, indent=1))
    if args.out:
        from meddiff.files import write_text

        write_text(args.out, json.dumps(scores, indent=1) + "\n")


def cache_latents(args) -> None:
    from meddiff.tasks.synthesis3d.autoencoder import build_latent_cache, load_autoencoder

    ae = load_autoencoder(args.checkpoint)
    info = build_latent_cache(ae, args.heads, args.split, args.out)
    print(json.dumps(info, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cache-heads")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--split", default=str(SPLIT))
    p.add_argument("--out", default=str(HEADS))
    p.set_defaults(func=cache_heads)
    p = sub.add_parser("eval-ae")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--heads", default=str(HEADS))
    p.add_argument("--split", default=str(SPLIT))
    p.add_argument("--part", default="val")
    p.add_argument("--out")
    p.set_defaults(func=eval_ae)
    p = sub.add_parser("cache-latents")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--heads", default=str(HEADS))
    p.add_argument("--split", default=str(SPLIT))
    p.add_argument("--out", default=str(LATENTS))
    p.set_defaults(func=cache_latents)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
