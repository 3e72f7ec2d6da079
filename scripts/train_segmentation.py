"""Train the shipped brain parcellation model (issue 25) in one command: the label-efficient method (pixel-MLP
ensemble on the decoder features of the shipped prior, Baranchuk et al. 2022) on the first N labelled train subjects
of configs/splits/ixi_t1_2mm_dlmuse.json, written as a segmentation checkpoint (meta.json with the prior's name and
ema.safetensors sha256, ema.safetensors, labels.json, config.yaml, log.csv, command.txt; an existing README.md model
card is kept).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation.py --labelled 20 \\
        --out src/meddiff/assets/checkpoints/brain_parcellation_ixi
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from meddiff.tasks.prior import load_prior  # noqa: E402
from meddiff.tasks.segment import DiffusionFeatures, FeatureSegmenter, SlicePrep, save_segmenter  # noqa: E402
from meddiff.tasks.segment.train import (feature_meta, fit_classifier, labelled_slices, load_config,  # noqa: E402
                                         subject_pixels, train_subjects)

NAME = "brain_parcellation_ixi"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/segmentation.yaml")
    parser.add_argument("--labelled", type=int, default=20, help="labelled train subjects (the first N)")
    parser.add_argument("--out", default=f"src/meddiff/assets/checkpoints/{NAME}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = load_config(args.config)
    prior = load_prior(cfg["prior"])
    prep = SlicePrep.from_prior_meta(prior.meta)
    subjects = train_subjects(cfg, args.labelled)
    data = labelled_slices(cfg, subjects, prep)
    fc = cfg["features"]
    ext = DiffusionFeatures(prior.denoiser.model, prior.schedule, fc["blocks"], fc["timesteps"], fc["seed"])
    pixels = [subject_pixels(ext, d, cfg, seed=i) for i, d in enumerate(data)]
    rows = []
    ens, fit_s = fit_classifier(pixels, cfg, seed=0, log=lambda r: rows.append(r))
    seconds = time.perf_counter() - start
    log = io.StringIO()
    writer = csv.DictWriter(log, fieldnames=["member", "step", "loss"])
    writer.writeheader()
    writer.writerows(rows)
    command = ("nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation.py "
               f"--config {args.config} --labelled {args.labelled} --out {args.out}")
    n_slices = sum(d.images.shape[0] for d in data)
    meta = feature_meta(cfg, prior.meta, prep, ens, subjects,
                        {"labelled_subjects": len(subjects), "slices": n_slices,
                         "pixels": int(sum(p.labels.numel() for p in pixels)),
                         "feature_seconds": sum(p.seconds for p in pixels), "fit_seconds": fit_s,
                         "total_seconds": seconds, "torch_threads": 1, "command": command})
    params = sum(v.numel() for k, v in ens.state_dict().items() if v.is_floating_point())
    meta["shipped"] = {"name": NAME, "description": "Brain parcellation (10 merged DLMUSE classes) of 2 mm T1 "
                       f"volumes: pixel-MLP ensemble on {cfg['prior']} decoder features (Baranchuk et al. 2022)",
                       "trained_on": f"{len(subjects)} labelled IXI subjects ({n_slices} axial slices, DLMUSE labels; "
                       "ixi_t1_2mm_dlmuse train split)", "default_for": ["segment"], "parameters": params,
                       "weights_dtype": "float16"}
    out = Path(args.out)
    files = {"config.yaml": yaml.safe_dump(cfg, sort_keys=False), "log.csv": log.getvalue(),
             "command.txt": command + "\n"}
    if (out / "README.md").is_file():
        files["README.md"] = (out / "README.md").read_text()
    save_segmenter(out, FeatureSegmenter(ext, ens), meta=meta, files=files)
    print(f"wrote {out}: {len(subjects)} subjects, {n_slices} slices, features "
          f"{meta['training']['feature_seconds']:.0f} s + classifier {fit_s:.0f} s, {seconds:.0f} s in all; prior "
          f"{meta['prior']['name']} step {meta['prior']['step']} sha256 {meta['prior']['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
