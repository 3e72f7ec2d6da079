"""The shipped CT prior ``ct_chest_prior``: held-out loss of a ``meddiff train`` run's checkpoints on the dev block,
and the export of its EMA weights into src/meddiff/assets/checkpoints/ct_chest_prior/.

Training itself is plain ``meddiff train`` (one thread, resumable):
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/meddiff train --config configs/ct_chest_prior.yaml [--resume]
Then:
    .venv/bin/python scripts/train_ct_prior.py dev-loss [--watch]   # runs/ct_prior/dev_loss.csv, per checkpoint
    .venv/bin/python scripts/train_ct_prior.py export                 # ships the latest checkpoint

Held-out loss: the v-prediction MSE (unweighted; the same noise, seeded per time, for every checkpoint) of the EMA
weights on all 13 slices of the dev block (sorted slices 62-74, never trained on) at ``TIMES``; step 0 is the same
network freshly initialised (the untrained control).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

CONFIG = "configs/ct_chest_prior.yaml"
RUN = Path("runs/ct_prior/ct_chest_prior")
TIMES = (20, 100, 300, 600, 900)
NAME = "ct_chest_prior"
TRAIN_COMMAND = f"nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/meddiff train --config {CONFIG}"


def dev_slices() -> torch.Tensor:
    """The dev block as the prior sees it (v = HU / 1000, 128 x 128), (13, 1, 128, 128)."""
    import yaml

    from meddiff.data import build_dataset

    data = yaml.safe_load(Path(CONFIG).read_text())["data"]
    dataset = build_dataset({**data, "augment": None}, split="val")
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


@torch.no_grad()
def held_out_loss(model, meta: dict, x0: torch.Tensor, times=TIMES) -> list[float]:
    from meddiff.diffusion import make_schedule
    from meddiff.diffusion.losses import diffusion_loss

    schedule = make_schedule(meta["schedule"])
    out = []
    for t in times:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1000 + t))
        out.append(float(diffusion_loss(model, x0, schedule, meta["prediction"], t=torch.full((len(x0),), float(t)),
                                        noise=noise)))
    return out


def score_run(path: Path) -> None:
    from meddiff.nets import build_network
    from meddiff.training import list_checkpoints
    from meddiff.training.checkpoint import load_checkpoint

    done = set()
    if path.is_file():
        done = {int(r["step"]) for r in csv.DictReader(path.open())}
    x0 = None
    rows = []
    checkpoints = list_checkpoints(RUN / "checkpoints")
    for checkpoint in checkpoints:
        model, meta = load_checkpoint(checkpoint)
        step = int(meta["step"])
        if x0 is None:
            x0 = dev_slices()
            if 0 not in done:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    fresh = build_network(meta["network"]).eval()
                rows.append((0, held_out_loss(fresh, meta, x0)))
        if step not in done:
            rows.append((step, held_out_loss(model, meta, x0)))
    if rows:
        new = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "mean"] + [f"t{t}" for t in TIMES])
            for step, losses in rows:
                writer.writerow([step, f"{np.mean(losses):.5f}"] + [f"{v:.5f}" for v in losses])
                print(f"step {step}: dev v-MSE {np.mean(losses):.4f} ({', '.join(f'{v:.4f}' for v in losses)})",
                      flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    loss = sub.add_parser("dev-loss")
    loss.add_argument("--out", default="runs/ct_prior/dev_loss.csv")
    loss.add_argument("--watch", action="store_true", help="score new checkpoints every minute until the run ends")
    export = sub.add_parser("export")
    export.add_argument("--description", default="CT prior (chest, 128x128 at 2.26 mm, v = HU/1000) for "
                                                  "reconstruct --modality ct")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "dev-loss":
        while True:
            score_run(Path(args.out))
            if not args.watch or (RUN / "DONE").exists():
                return 0
            time.sleep(60)
    from meddiff.training import list_checkpoints
    from meddiff.training.shipped import export_checkpoint

    checkpoint = list_checkpoints(RUN / "checkpoints")[-1]
    shipped = export_checkpoint(checkpoint, NAME, command=TRAIN_COMMAND + "\n" + shlex.join(
        [".venv/bin/python", "scripts/train_ct_prior.py", "export"]), description=args.description,
        default_for=["reconstruct-ct"], trained_on="chest CT TCIA CPTAC C3N-00247, sorted slices 0-59 (train block); "
        "dev 62-74 and test 77-98 held out (one patient)")
    print(f"shipped {checkpoint} -> {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
