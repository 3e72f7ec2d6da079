"""Train the `pneumonia-cnn` feature network (normal vs pneumonia) and ship it in assets/checkpoints/.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_feature_net.py

Seeded and CPU-only: SmallCNN (meddiff.nets) on the PneumoniaMNIST train split, class-balanced
cross-entropy, AdamW with a one-cycle schedule; scored on the val split (accuracy, AUROC). Writes
weights.safetensors (fp16), meta.json (config, scores, data checksums), log.csv, command.txt; README.md is
kept by hand beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.data import MedMNISTDataset
from meddiff.data.assets import resolve_path
from meddiff.metrics.features import FEATURE_NET_DIR, save_feature_net
from meddiff.metrics.utility import classification_scores, train_classifier

DEFAULT_DATA = "../shared/data/medmnist/pneumoniamnist.npz"


def load_split(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) in [-1, 1] and labels (N,) of one MedMNIST split (MedMNISTDataset's normalisation)."""
    dataset = MedMNISTDataset(resolve_path(path), split=split)
    images = torch.from_numpy(dataset.images).float()[:, None] / 127.5 - 1.0
    if not torch.equal(images[0], dataset[0]["image"]):
        raise RuntimeError("normalisation differs from MedMNISTDataset")
    return images, torch.from_numpy(dataset.labels[:, 0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"MedMNIST npz (default: {DEFAULT_DATA})")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(FEATURE_NET_DIR))
    args = parser.parse_args(argv)

    x, y = load_split(args.data, "train")
    vx, vy = load_split(args.data, "val")
    rows = ["step,loss,seconds"]
    started = time.time()

    def log(step: int, loss: float) -> None:
        rows.append(f"{step},{loss:.5f},{time.time() - started:.1f}")
        print(f"step {step:5d}  loss {loss:.4f}  {time.time() - started:6.1f}s", flush=True)

    net = train_classifier(x, y, widths=tuple(args.widths), steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, log=log)
    net.half().float()  # shipped in fp16 (< 1 MB): score the weights exactly as they are loaded
    scores = classification_scores(net, vx, vy)
    print(f"val accuracy {scores['accuracy']:.4f}  AUROC {scores['auroc']:.4f}  (n={scores['n']})")
    data = Path(resolve_path(args.data))
    meta = {
        "name": "pneumonia-cnn",
        "task": "feature_net",
        "val_accuracy": round(scores["accuracy"], 4),
        "val_auroc": round(scores["auroc"], 4),
        "train_data": f"{data.name} train split ({len(y)} images: {np.bincount(y.numpy()).tolist()} normal/pneumonia)",
        "val_data": f"{data.name} val split ({len(vy)} images: {np.bincount(vy.numpy()).tolist()} normal/pneumonia)",
        "data_md5": hashlib.md5(data.read_bytes()).hexdigest(),
        "weights_dtype": "float16",
        "training": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "loss": "class-balanced cross-entropy", "optimiser": "AdamW, one-cycle, weight decay 1e-4"},
        "parameters": sum(p.numel() for p in net.parameters()),
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
    }
    command = "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python", "scripts/train_feature_net.py",
                                                 *(argv if argv is not None else sys.argv[1:])])
    out = save_feature_net(net, args.out, meta, {"log.csv": "\n".join(rows) + "\n", "command.txt": command + "\n"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
