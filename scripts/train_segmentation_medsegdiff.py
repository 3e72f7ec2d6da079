"""Train the MedSegDiff-style parcellation model (issue 25; ``meddiff.tasks.segment.medsegdiff``): a conditional
diffusion UNet over the one-hot label map of the first N labelled train subjects of
configs/splits/ixi_t1_2mm_dlmuse.json, for a wall-clock budget, written as a segmentation checkpoint (meta.json with
method "medsegdiff", ema.safetensors float16, labels.json, config.yaml, log.csv, command.txt) that
``meddiff segment --checkpoint OUT --samples K`` and benchmarks/segmentation.py --medsegdiff OUT run. The checkpoint
is rewritten every ``save_every_seconds`` (an interrupted run leaves a usable one).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation_medsegdiff.py \\
        --out runs/seg25/medsegdiff
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

from meddiff.diffusion import make_schedule  # noqa: E402
from meddiff.files import csv_text, read_yaml_mapping  # noqa: E402
from meddiff.nets import build_network  # noqa: E402
from meddiff.tasks.prior import load_prior  # noqa: E402
from meddiff.tasks.segment import NUM_CLASSES, SlicePrep, save_segmenter  # noqa: E402
from meddiff.tasks.segment.medsegdiff import (MedSegDiffSegmenter, checkpoint_meta, fit_medsegdiff,  # noqa: E402
                                              network_config)
from meddiff.tasks.segment.train import labelled_slices, load_config, train_subjects  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/segmentation.yaml")
    parser.add_argument("--diffusion-config", default="configs/segmentation/diffusion.yaml")
    parser.add_argument("--seconds", type=float, help="wall-clock budget (default: the config's)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (reproducible runs)")
    parser.add_argument("--labelled", type=int, help="labelled train subjects (default: the config's)")
    parser.add_argument("--out", default="runs/seg25/medsegdiff")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = load_config(args.config)
    mcfg = dict(read_yaml_mapping(Path(args.diffusion_config), "diffusion segmentation config")["medsegdiff"])
    if args.labelled:
        mcfg["labelled"] = args.labelled
    seconds = float(args.seconds if args.seconds is not None else mcfg["seconds"])
    prior = load_prior(cfg["prior"])  # its slice preprocessing only
    prep = SlicePrep.from_prior_meta(prior.meta)
    subjects = train_subjects(cfg, int(mcfg["labelled"]))
    data = labelled_slices(cfg, subjects, prep)
    images, labels = torch.cat([d.images for d in data]), torch.cat([d.labels for d in data])
    print(f"{len(subjects)} subjects, {images.shape[0]} slices ({time.perf_counter() - start:.0f} s)", flush=True)
    netcfg = network_config(NUM_CLASSES, prep.image_size, mcfg["network"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(netcfg)
    schedule = make_schedule(mcfg["schedule"])
    command = ("nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_segmentation_medsegdiff.py "
               f"--config {args.config} --diffusion-config {args.diffusion_config} --labelled {mcfg['labelled']} "
               + (f"--max-steps {args.max_steps} " if args.max_steps else f"--seconds {seconds:g} ")
               + f"--out {args.out}")
    rows: list[dict] = []
    out = Path(args.out)
    params = sum(p.numel() for p in net.parameters())

    def save(ema, steps, train_seconds):
        meta = checkpoint_meta(cfg, mcfg, prep, subjects, {
            "labelled_subjects": len(subjects), "slices": int(images.shape[0]), "steps": steps,
            "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start, "torch_threads": 1,
            "parameters": params, "command": command})
        files = {"config.yaml": yaml.safe_dump({"segmentation": cfg, "medsegdiff": mcfg}, sort_keys=False),
                 "log.csv": csv_text(rows), "command.txt": command + "\n"}
        if (out / "README.md").is_file():
            files["README.md"] = (out / "README.md").read_text()
        seg = MedSegDiffSegmenter(ema, schedule, NUM_CLASSES, int(mcfg["sampling_steps"]))
        save_segmenter(out, seg, meta=meta, files=files)

    def log(row):
        rows.append(row)
        if row["step"] % 100 == 0:
            print(row, flush=True)

    def checkpoint(ema, steps, train_seconds):
        save(ema, steps, train_seconds)
        print(f"saved {out} at step {steps} ({train_seconds:.0f} s)", flush=True)

    net, ema, done_steps = fit_medsegdiff(
        net, images, labels, schedule, seconds=seconds, batch=int(mcfg["batch"]), lr=float(mcfg["lr"]),
        ema_decay=float(mcfg["ema_decay"]), seed=0, max_steps=args.max_steps, log=log, checkpoint=checkpoint,
        checkpoint_every=float(mcfg.get("save_every_seconds", 600)))
    spent = time.perf_counter() - start
    print(f"wrote {out}: {done_steps} steps in {spent:.0f} s, {params} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
