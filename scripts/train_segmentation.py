"""Train the shipped brain parcellation model (issue 25) in one command, on the first N labelled train subjects of
configs/splits/ixi_t1_2mm_dlmuse.json, written as a segmentation checkpoint (meta.json, ema.safetensors, labels.json,
config.yaml, log.csv, command.txt; an existing README.md model card is kept). Two methods:

- ``--method unet`` (shipped: the better one at 20 labelled subjects in benchmarks/segmentation.py): the supervised
  MONAI UNet, ``--steps`` steps (the benchmark's count at its wall-clock budget; fixed steps make it reproducible);
- ``--method diffusion_features``: the pixel-MLP ensemble on the decoder features of the config's prior (Baranchuk et
  al. 2022); the checkpoint stores the prior's name and ema.safetensors sha256 and refuses another prior.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation.py --method unet --steps 1572 \\
        --labelled 20 --out src/meddiff/assets/checkpoints/brain_parcellation_ixi
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from meddiff.files import csv_text  # noqa: E402
from meddiff.tasks.prior import load_prior  # noqa: E402
from meddiff.tasks.segment import (DiffusionFeatures, FeatureSegmenter, SlicePrep, UNetSegmenter,  # noqa: E402
                                   save_segmenter)
from meddiff.tasks.segment.train import (feature_meta, fit_classifier, fit_supervised, labelled_slices,  # noqa: E402
                                         load_config, subject_pixels, train_subjects, unet_meta)

NAME = "brain_parcellation_ixi"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/segmentation.yaml")
    parser.add_argument("--method", choices=("unet", "diffusion_features"), default="unet")
    parser.add_argument("--steps", type=int, default=1572, help="unet: training steps")
    parser.add_argument("--labelled", type=int, default=20, help="labelled train subjects (the first N)")
    parser.add_argument("--out", default=f"src/meddiff/assets/checkpoints/{NAME}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = load_config(args.config)
    prior = load_prior(cfg["prior"])  # its preprocessing (the prior's weights are used by diffusion_features only)
    prep = SlicePrep.from_prior_meta(prior.meta)
    subjects = train_subjects(cfg, args.labelled)
    data = labelled_slices(cfg, subjects, prep)
    n_slices = sum(d.images.shape[0] for d in data)
    rows: list[dict] = []
    command = ("nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation.py "
               f"--config {args.config} --method {args.method} "
               + (f"--steps {args.steps} " if args.method == "unet" else "")
               + f"--labelled {args.labelled} --out {args.out}")
    if args.method == "unet":
        net, steps = fit_supervised(data, cfg, seconds=float("inf"), seed=0, log=rows.append, max_steps=args.steps)
        seconds = time.perf_counter() - start
        segmenter = UNetSegmenter(net)
        meta = unet_meta(cfg, prep, subjects, {"labelled_subjects": len(subjects), "slices": n_slices,
                                               "steps": steps, "total_seconds": seconds, "torch_threads": 1,
                                               "command": command})
        params = sum(p.numel() for p in net.parameters())
        what = f"supervised MONAI UNet (DiceCE, {steps} steps)"
        summary = f"{steps} steps"
    else:
        fc = cfg["features"]
        ext = DiffusionFeatures(prior.denoiser.model, prior.schedule, fc["blocks"], fc["timesteps"], fc["seed"])
        pixels = [subject_pixels(ext, d, cfg, seed=i) for i, d in enumerate(data)]
        ens, fit_s = fit_classifier(pixels, cfg, seed=0, log=rows.append)
        seconds = time.perf_counter() - start
        segmenter = FeatureSegmenter(ext, ens)
        meta = feature_meta(cfg, prior.meta, prep, ens, subjects,
                            {"labelled_subjects": len(subjects), "slices": n_slices,
                             "pixels": int(sum(p.labels.numel() for p in pixels)),
                             "feature_seconds": sum(p.seconds for p in pixels), "fit_seconds": fit_s,
                             "total_seconds": seconds, "torch_threads": 1, "command": command})
        params = sum(v.numel() for v in ens.state_dict().values() if v.is_floating_point())
        what = f"pixel-MLP ensemble on {cfg['prior']} decoder features (Baranchuk et al. 2022)"
        summary = f"prior {meta['prior']['name']} step {meta['prior']['step']} sha256 {meta['prior']['sha256'][:12]}"
    meta["shipped"] = {"name": NAME, "description": f"Brain parcellation (10 merged DLMUSE classes) of 2 mm T1 "
                       f"volumes: {what}", "trained_on": f"{len(subjects)} labelled IXI subjects ({n_slices} axial "
                       "slices, DLMUSE labels; ixi_t1_2mm_dlmuse train split)", "default_for": ["segment"],
                       "parameters": params, "weights_dtype": "float16"}
    out = Path(args.out)
    files = {"config.yaml": yaml.safe_dump(cfg, sort_keys=False), "log.csv": csv_text(rows), "command.txt": command + "\n"}
    if (out / "README.md").is_file():
        files["README.md"] = (out / "README.md").read_text()
    save_segmenter(out, segmenter, meta=meta, files=files)
    print(f"wrote {out}: {args.method}, {len(subjects)} subjects, {n_slices} slices, {seconds:.0f} s; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
