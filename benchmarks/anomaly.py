"""Anomaly-detection benchmark: every method (Wolleb, AnoDDPM simplex / Gaussian, autoencoder, FLAIR-intensity
baseline) on BraTS subjects not used in training (pixel Dice / best Dice / AUROC / AUPRC), slices of the training
subject (image-level AUROC, flagged "seen") and held-out PneumoniaMNIST val X-rays (image-level AUROC; the test split is kept out of the shared data), with time per slice.

    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --prepare-data runs/anomaly_data   # training folders (once)
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out benchmarks/anomaly.json      # the table in README.md

Extra settings (``--sweep``) run Wolleb at other guidance scales / noise levels and AnoDDPM at other t_lambda.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from meddiff.data.io import write_json
from meddiff.tasks.anomaly import METHODS, load_detector, markdown_table, run_evaluation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sweep(log=print) -> dict:
    """Wolleb (L, s) and AnoDDPM t_lambda variations on the unseen BraTS subjects."""
    from meddiff.tasks.anomaly import brats_npz_subjects, evaluate

    subjects = brats_npz_subjects(SHARED / "brats_slices_2d" / "brats_slices.npz")
    settings = [("wolleb", 500, 10.0), ("wolleb", 500, 1000.0), ("wolleb", 250, 100.0),
                ("anoddpm", 100, None), ("anoddpm", 500, None), ("anoddpm-gaussian", 100, None),
                ("anoddpm-gaussian", 500, None)]
    out = {}
    for method, level, scale in settings:
        metrics = evaluate(load_detector(method, noise_level=level, guidance_scale=scale), subjects)
        key = f"{method} L={level}" + (f" s={scale:g}" if scale is not None else "")
        out[key] = metrics
        log(f"{key:32s} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON results file")
    parser.add_argument("--prepare-data", metavar="DIR", help="write the training folders to DIR and exit")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chest-per-class", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="also vary Wolleb's L and s and AnoDDPM's t_lambda")
    args = parser.parse_args(argv)
    if args.prepare_data:
        from meddiff.tasks.anomaly import prepare_training_data

        counts = prepare_training_data(args.prepare_data, SHARED / "brats_case_1",
                                       SHARED / "medmnist" / "pneumoniamnist.npz")
        print(f"wrote {counts} to {args.prepare_data}")
        return 0
    torch.manual_seed(0)
    start = time.time()
    results = run_evaluation(args.methods, brats_test=SHARED / "brats_slices_2d" / "brats_slices.npz",
                             brats_case=SHARED / "brats_case_1", pneumonia=SHARED / "medmnist" / "pneumoniamnist.npz",
                             chest_per_class=args.chest_per_class)
    report = {"results": results, "environment": {"torch": torch.__version__, "python": platform.python_version(),
                                                  "threads": torch.get_num_threads(), "device": "cpu",
                                                  "wall_s": round(time.time() - start, 1)}}
    if args.sweep:
        report["sweep"] = sweep()
    print(markdown_table(results))
    if args.out:
        print(f"wrote {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
