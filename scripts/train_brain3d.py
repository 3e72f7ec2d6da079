"""Whole-head latent diffusion (issue 27), the steps around ``meddiff train``:

    cache-heads    read the 170 IXI DLMUSE heads once into runs/ldm/heads.npz (normalised, padded to 96x128x128)
    eval-ae        reconstruction L1 / PSNR of an autoencoder checkpoint on the val (or test) heads
    cache-latents  encode every cached head with the autoencoder (posterior mean), scale by 1/std of the train
                   latents (Rombach et al. 2022) and pool the one-hot labels to the latent grid -> runs/ldm/latents.npz
    ship           export the latent UNet (meddiff.training.shipped.export_checkpoint, fp16) with the autoencoder,
                   the grid facts (meta.json "ldm") and 4 training subjects' pooled label maps as brain3d_ldm

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
    from meddiff.tasks.synthesis3d.cache import build_head_cache
    from meddiff.data.splits import SPLITS

    split = json.loads(Path(args.split).read_text())
    subjects = sorted(s for part in SPLITS for s in split[part])
    build_head_cache(args.data, subjects, args.out)
    print(f"wrote {args.out} ({len(subjects)} heads)")


def eval_ae(args) -> None:
    from meddiff.tasks.synthesis3d.autoencoder import evaluate_reconstruction, load_autoencoder

    ae = load_autoencoder(args.checkpoint)
    scores = evaluate_reconstruction(ae, args.heads, args.split, args.part, args.limit)
    print(json.dumps(scores, indent=1))
    if args.out:
        from meddiff.files import write_text

        write_text(args.out, json.dumps(scores, indent=1) + "\n")


def cache_latents(args) -> None:
    from meddiff.tasks.synthesis3d.autoencoder import build_latent_cache, load_autoencoder

    ae = load_autoencoder(args.checkpoint)
    info = build_latent_cache(ae, args.heads, args.split, args.out)
    print(json.dumps(info, indent=1))


def ship(args) -> None:
    import numpy as np

    from meddiff.data.heads import HEAD_GRID
    from meddiff.files import write_text
    from meddiff.tasks.segment.labels import CLASS_NAMES, NUM_CLASSES
    from meddiff.tasks.synthesis3d.autoencoder import (AE_META, AE_WEIGHTS, DECODE_OVERLAP, DECODE_TILE,
                                                        load_autoencoder)
    from meddiff.tasks.synthesis3d.pipeline import LABEL_MAPS, label_map_counts, write_autoencoder
    from meddiff.training.checkpoint import read_meta, resolve_checkpoint
    from meddiff.training.shipped import export_checkpoint

    ae_checkpoint, ldm_checkpoint = resolve_checkpoint(args.autoencoder), resolve_checkpoint(args.checkpoint)
    ae = load_autoencoder(ae_checkpoint)
    staging = Path(args.staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_autoencoder(staging, ae)
    heads = np.load(args.heads)
    split = json.loads(Path(args.split).read_text())
    subjects = [str(s) for s in heads["subjects"]]
    picks = [subjects.index(s) for s in split["train"][:4]]
    np.savez_compressed(staging / LABEL_MAPS, counts=label_map_counts(heads["labels"][picks], NUM_CLASSES, ae.factor),
                        subjects=np.asarray([subjects[i] for i in picks]))
    latents = np.load(args.latents)
    ae_run = ae_checkpoint.parent.parent
    extra = {AE_WEIGHTS: staging / AE_WEIGHTS, AE_META: staging / AE_META, LABEL_MAPS: staging / LABEL_MAPS,
             "autoencoder_config.yaml": ae_run / "config.yaml", "autoencoder_log.csv": ae_run / "log.csv",
             "split.json": Path(args.split)}
    folder = export_checkpoint(
        ldm_checkpoint, "brain3d_ldm", command=Path(args.command_file).read_text(),
        description="label-conditioned latent diffusion of whole 2 mm T1 heads (KL autoencoder + 3D latent UNet)",
        trained_on=f"ixi_t1_2mm_dlmuse: the {len(split['train'])} train subjects of configs/splits/ixi_t1_2mm_dlmuse.json",
        extra_files=extra)
    meta = json.loads((folder / "meta.json").read_text())
    meta["ldm"] = {
        "scale_factor": float(latents["scale_factor"]), "latent_shape": list(latents["latents"].shape[2:]),
        "head_grid": list(HEAD_GRID), "ras_shape": [int(s) for s in heads["shape"]], "spacing": [2.0, 2.0, 2.0],
        "affine": heads["affines"][picks[0]].tolist(), "num_classes": NUM_CLASSES, "class_names": list(CLASS_NAMES),
        "label_conditioning": True, "cfg": False, "autoencoder_step": read_meta(ae_checkpoint)["step"],
        "autoencoder_network": ae.config, "reference_subject": subjects[picks[0]],
        "decode_tile": DECODE_TILE, "decode_overlap": DECODE_OVERLAP,
    }
    write_text(folder / "meta.json", json.dumps(meta, indent=2, default=str))
    print(f"shipped {folder}: " + ", ".join(f"{f.name} {f.stat().st_size / 2**20:.2f} MB" for f in sorted(folder.iterdir())))


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
    p.add_argument("--limit", type=int, help="first N subjects of the part")
    p.add_argument("--out")
    p.set_defaults(func=eval_ae)
    p = sub.add_parser("cache-latents")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--heads", default=str(HEADS))
    p.add_argument("--split", default=str(SPLIT))
    p.add_argument("--out", default=str(LATENTS))
    p.set_defaults(func=cache_latents)
    p = sub.add_parser("ship")
    p.add_argument("--checkpoint", default=str(ROOT / "runs" / "ldm" / "latent_unet"))
    p.add_argument("--autoencoder", default=str(ROOT / "runs" / "ldm" / "autoencoder"))
    p.add_argument("--heads", default=str(HEADS))
    p.add_argument("--latents", default=str(LATENTS))
    p.add_argument("--split", default=str(SPLIT))
    p.add_argument("--command-file", default=str(ROOT / "runs" / "ldm" / "command.txt"))
    p.add_argument("--staging", default=str(ROOT / "runs" / "ldm" / "ship"))
    p.set_defaults(func=ship)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
