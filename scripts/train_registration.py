"""Train the shipped VoxelMorph-style registration model (issue 26) in one command: unsupervised (local NCC + the
mean squared gradient of the field, both on the half-resolution grid of the velocity field), on random pairs of IXI
DLMUSE train subjects of configs/splits/ixi_t1_2mm_dlmuse.json (the labels are used only to report the Dice of a few
val pairs while training, never in the loss).

Data: each subject is reoriented to RAS (90 x 120 x 120 at 2 mm) and affinely registered to one template (the first
train subject) with ``meddiff.tasks.register.affine`` (similarity over the top 150 mm of the head); the aligned
volumes are cached (``--cache``). At test time
(``meddiff register --method voxelmorph``) the moving volume is instead aligned pairwise to the fixed one.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_registration.py --subjects 150 --minutes 40 \\
        --out src/meddiff/assets/checkpoints/voxelmorph_ixi
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from meddiff.training.ema import EMA  # noqa: E402
from meddiff.tasks.register import (VelocityNet, VoxelMorphConfig, apply_matrix, head_top_mask,  # noqa: E402
                                    pad_to_multiple, register_affine, registration_loss, save_voxelmorph,
                                    scale_intensity, warp, warp_pair)
from meddiff.tasks.register.training import checkpoint_files, mean_row, optimiser_step  # noqa: E402
from meddiff.tasks.segment import NUM_CLASSES, dice_per_class, load_labelled, load_split  # noqa: E402

DATA = "/work/shared/data/ixi_t1_2mm_dlmuse"
SPLIT = "configs/splits/ixi_t1_2mm_dlmuse.json"


def prepare_cache(data: str, split: str, subjects: int, val_subjects: int, path: Path) -> dict:
    """Affinely align the first ``subjects`` train and ``val_subjects`` val subjects to the first train subject;
    save {images float16 (S, X, Y, Z) scaled, labels uint8, names, split} to ``path`` (npz)."""
    parts = load_split(ROOT / split if not Path(split).is_absolute() else split)
    names = parts["train"][:subjects] + parts["val"][:val_subjects]
    template = load_labelled(data, names[0])
    fixed = scale_intensity(template.image)
    mask = head_top_mask(template.image, np.diag(list(template.spacing) + [1.0]))  # as meddiff register does
    images, labels = [], []
    start = time.time()
    for i, name in enumerate(names):
        s = template if i == 0 else load_labelled(data, name)
        m = np.eye(4) if i == 0 else register_affine(s.image, template.image, mask=mask)
        images.append(apply_matrix(scale_intensity(s.image), m, fixed.shape).astype(np.float16))
        labels.append(apply_matrix(s.labels, m, fixed.shape, mode="nearest").round().astype(np.uint8))
        print(f"aligned {i + 1}/{len(names)} {name} ({time.time() - start:.0f} s)", flush=True)
    split_of = ["train"] * min(subjects, len(parts["train"])) + ["val"] * (len(names) - min(subjects,
                                                                                             len(parts["train"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.stack(images), labels=np.stack(labels), names=np.array(names), split=np.array(split_of))
    return dict(np.load(path))


@torch.no_grad()
def val_dice(net: VelocityNet, images: torch.Tensor, labels: torch.Tensor, pairs) -> float:
    """Mean Dice of the merged classes of the val pairs (labels warped with nearest neighbour)."""
    scores = []
    for i, j in pairs:
        ddf = net.eval()(images[i:i + 1], images[j:j + 1])
        wl = warp(labels[i:i + 1], ddf, mode="nearest")[0, 0].round().long().numpy()
        scores.append(np.nanmean(dice_per_class(wl, labels[j, 0].long().numpy(), NUM_CLASSES)))
    net.train()
    return float(np.mean(scores))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--split", default=SPLIT)
    parser.add_argument("--subjects", type=int, default=150, help="train subjects (the first N of the split)")
    parser.add_argument("--val-subjects", type=int, default=4)
    parser.add_argument("--cache", default="runs/register/aligned_cache.npz")
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the time budget only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--reg-weight", type=float, default=1.0)
    parser.add_argument("--kernel", type=int, default=5, help="LNCC window on the 4 mm loss grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--out", default="runs/register/voxelmorph_ixi")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning)  # MONAI's deprecation notes on every loss call
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cache = Path(args.cache)
    if cache.is_file():
        arrays = dict(np.load(cache))
    else:
        arrays = prepare_cache(args.data, args.split, args.subjects, args.val_subjects, cache)
    split = arrays["split"]
    config = VoxelMorphConfig(kernel=args.kernel, reg_weight=args.reg_weight)
    images, crop = pad_to_multiple(torch.from_numpy(arrays["images"].astype(np.float32))[:, None], config.multiple)
    labels, _ = pad_to_multiple(torch.from_numpy(arrays["labels"].astype(np.float32))[:, None], config.multiple)
    train = np.flatnonzero(split == "train")
    val = np.flatnonzero(split == "val")
    val_pairs = [(int(val[k]), int(val[(k + 1) % len(val)])) for k in range(len(val))]
    net = VelocityNet(config)
    averager = EMA(net, args.ema, warmup=False)  # constant decay, no warm-up
    ema = averager.module
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    rows = [{"step": 0, "seconds": 0.0, "loss": "", "similarity": "", "smoothness": "",
             "val_dice_ema": val_dice(ema, images, labels, val_pairs)}]
    print(rows[-1], flush=True)
    start, step, running = time.time(), 0, []
    while True:
        i, j = rng.choice(train, 2, replace=False)
        warped, target, ddf = warp_pair(net, images[i:i + 1], images[j:j + 1])  # on the half-resolution grid
        loss, parts = registration_loss(warped, target, ddf, config)
        step = optimiser_step(net, opt, averager, loss, step)
        running.append((float(loss), parts["similarity"], parts["smoothness"]))
        elapsed = time.time() - start
        done = elapsed > args.minutes * 60 or (args.steps and step >= args.steps)
        if step % args.val_every == 0 or done:
            rows.append({**mean_row(step, elapsed, running, {"loss": 5, "similarity": 5, "smoothness": 5}),
                         "val_dice_ema": round(val_dice(ema, images, labels, val_pairs), 4)})
            running = []
            print(rows[-1], flush=True)
        if done:
            break
    names = arrays["names"]
    meta = {"channels": 1, "image_size": list(arrays["images"].shape[1:]), "spacing_mm": [2.0, 2.0, 2.0], "step": step,
            "training": {
        "data": "ixi_t1_2mm_dlmuse", "split": args.split, "train_subjects": [str(names[k]) for k in train],
        "val_subjects": [str(names[k]) for k in val], "template": str(names[0]), "minutes": round(elapsed / 60, 1),
        "lr": args.lr, "ema": args.ema, "seed": args.seed, "loss": "LNCC + reg_weight x DiffusionLoss(ddf)",
        "final_val_dice_ema": rows[-1]["val_dice_ema"]},
        "shipped": {"name": Path(args.out).name, "description": "VoxelMorph-style diffeomorphic registration of 2 mm "
                    "T1 heads (UNet -> stationary velocity -> scaling and squaring), after the affine stage",
                    "trained_on": f"ixi_t1_2mm_dlmuse: {len(train)} train subjects of {args.split} (unsupervised "
                                  f"pairs), {len(val)} val subjects monitored",
                    "default_for": ["register --method voxelmorph"],
                    "parameters": sum(p.numel() for p in ema.parameters())}}
    command = "nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_registration.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    save_voxelmorph(args.out, ema, meta, checkpoint_files(args.out, asdict(config), args, rows, command))
    print(f"saved {args.out}: {step} steps, {elapsed / 60:.1f} min, val Dice (EMA) {rows[-1]['val_dice_ema']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
