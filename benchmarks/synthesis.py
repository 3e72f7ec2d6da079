"""Synthesis quality against sampling cost for the shipped chest X-ray model (`pneumonia_cond`).

For each sampler setting (DDPM 1000, DDIM 50/20/10, DPM-Solver++ 20/10, Heun 10) draw the same number of
class-balanced samples from the same seed and measure, against real PneumoniaMNIST images the model never saw
(the val split): FID and KID on the `pneumonia-cnn` features (and FID on `random-cnn`), k-NN precision/recall,
the memorisation flag rate against the training split (the floor row's images are training images: n/a), and train-synthetic-test-real accuracy/AUROC, with wall
time and network evaluations. A "real" row gives the floor: the same metrics for real training images.

    python benchmarks/synthesis.py --out synthesis.json [--n 200] [--data ../shared/data/medmnist/pneumoniamnist.npz]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from meddiff import __version__
from meddiff.data.io import read_medmnist, write_json
from meddiff.diffusion import network_evaluations
from meddiff.metrics.features import get_feature_extractor
from meddiff.metrics.generative import fid, kid, precision_recall
from meddiff.metrics.memorisation import memorisation
from meddiff.metrics.utility import train_synthetic_test_real
from meddiff.tasks.synthesis import generate
from meddiff.training import load_checkpoint

SETTINGS = [("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10), ("heun", 10)]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def balanced(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images, half per class, drawn without replacement; model space [-1, 1]."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), n // 2, replace=False) for c in (0, 1)])
    x = torch.from_numpy(images[picks]).float().unsqueeze(1) / 127.5 - 1
    return x, torch.from_numpy(labels[picks]).long()


def evaluate(name: str, images, labels, reference: dict, seconds: float | None, nfe: int | None) -> dict:
    feats = {k: extractor(images) for k, extractor in reference["extractors"].items()}
    kid_mean, kid_std = kid(reference["val_features"]["pneumonia-cnn"], feats["pneumonia-cnn"], subsets=50,
                            subset_size=min(100, len(images)))
    precision, recall = precision_recall(reference["val_features"]["pneumonia-cnn"], feats["pneumonia-cnn"])
    memo = memorisation(feats["pneumonia-cnn"], reference["train_features"], reference["val_features"]["pneumonia-cnn"])
    utility = train_synthetic_test_real((images, labels), reference["train_small"], reference["val"], seed=0)
    return {
        "setting": name, "nfe": nfe, "seconds": None if seconds is None else round(seconds, 2),
        "fid_pneumonia_cnn": fid(reference["val_features"]["pneumonia-cnn"], feats["pneumonia-cnn"]),
        "fid_random_cnn": fid(reference["val_features"]["random-cnn"], feats["random-cnn"]),
        "kid_pneumonia_cnn": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
        "memorised_fraction": None if seconds is None else memo["summary"]["flagged_fraction"],  # floor: in train
        "tstr_accuracy": utility["synthetic"]["accuracy"], "tstr_auroc": utility["synthetic"]["auroc"],
        "trtr_accuracy": utility["real"]["accuracy"], "trtr_auroc": utility["real"]["auroc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="pneumonia_cond")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="PneumoniaMNIST npz with train and val splits")
    parser.add_argument("--n", type=int, default=200, help="samples per setting (half per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="*", help="subset, e.g. ddim:20 dpmpp_2m:10")
    parser.add_argument("--out", help="JSON output")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    data = read_medmnist(args.data)
    train_images, train_labels = data["train"][0], data["train"][1].reshape(-1)
    val_images, val_labels = data["val"][0], data["val"][1].reshape(-1)
    # balanced reference: every val normal image and as many pneumonia ones (the samples are half per class, and
    # class-aware features make FID jump with the class mix: normal-only vs all real images gives FID ~28)
    per_class = int(np.bincount(val_labels).min())
    val = balanced(val_images, val_labels, 2 * per_class, args.seed)
    train_all = torch.from_numpy(train_images).float().unsqueeze(1) / 127.5 - 1
    extractors = {k: get_feature_extractor(k) for k in ("pneumonia-cnn", "random-cnn")}
    reference = {
        "extractors": extractors, "val": val,
        "val_features": {k: e(val[0]) for k, e in extractors.items()},
        "train_features": extractors["pneumonia-cnn"](train_all),
        "train_small": balanced(train_images, train_labels, args.n, args.seed + 1),
    }
    model, meta = load_checkpoint(args.checkpoint)
    rows = [evaluate("real train images (floor)", *balanced(train_images, train_labels, args.n, args.seed + 2),
                     reference, None, None)]
    print(f"floor: {rows[0]}", flush=True)
    settings = [tuple(s.split(":")) for s in args.settings] if args.settings else SETTINGS
    for sampler, steps in settings:
        steps = int(steps)
        start = time.perf_counter()
        samples, labels = generate(args.checkpoint, args.n, sampler=sampler, steps=steps, seed=args.seed,
                                   model=model, meta=meta, batch_size=args.n)
        seconds = time.perf_counter() - start
        rows.append(evaluate(f"{sampler} {steps}", samples, labels, reference, seconds,
                             network_evaluations(sampler, steps)))
        print(f"{sampler} {steps}: {rows[-1]}", flush=True)

    ddpm = next((r for r in rows if r["setting"] == "ddpm 1000"), None)
    for row in rows:
        row["fid_vs_ddpm1000"] = None if ddpm is None else row["fid_pneumonia_cnn"] / ddpm["fid_pneumonia_cnn"]
        row["speedup_vs_ddpm1000"] = (None if ddpm is None or row["seconds"] is None
                                      else ddpm["seconds"] / row["seconds"])
        # "DDPM-1000 quality": KID within two of its subset standard deviations of DDPM-1000's KID
        row["matches_ddpm1000"] = (None if ddpm is None or row["seconds"] is None else
                                   row["kid_pneumonia_cnn"] <= ddpm["kid_pneumonia_cnn"] + 2 * ddpm["kid_std"])
    header = ("| setting | NFE | s | FID (pneumonia-cnn) | FID ratio vs DDPM-1000 | FID (random-cnn) | KID x1e3 | "
              "precision | recall | memorised | TSTR acc | TSTR AUROC | speed-up vs DDPM-1000 | DDPM-1000 quality |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['setting']} | {fmt(r['nfe'], 'd')} | {fmt(r['seconds'], '.1f')} | {r['fid_pneumonia_cnn']:.2f} | "
                     f"{fmt(r['fid_vs_ddpm1000'], '.2f')} | {r['fid_random_cnn']:.3f} | "
                     f"{1e3 * r['kid_pneumonia_cnn']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {fmt(r['memorised_fraction'], '.3f')} | {r['tstr_accuracy']:.3f} | "
                     f"{r['tstr_auroc']:.3f} | {fmt(r['speedup_vs_ddpm1000'], '.1f')} | "
                     f"{'-' if r['matches_ddpm1000'] is None else ('yes' if r['matches_ddpm1000'] else 'no')} |")
    table = "\n".join(lines)
    print(table)
    result = {"benchmark": "synthesis", "checkpoint": args.checkpoint, "n_per_setting": args.n, "seed": args.seed,
              "real_reference": f"{args.data} val split, class-balanced: {2 * per_class} of {len(val_labels)} images",
              "features": {k: e.card() for k, e in extractors.items()},
              "tstr_real_train": f"{args.n} balanced real training images; real+synthetic arm in the per-row JSON",
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
              "meddiff": __version__, "results": rows, "table": table}
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
