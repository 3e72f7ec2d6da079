"""Held-out loss and FID of a prior's training checkpoints against steps (issue 21: does more training pay?).

For every kept checkpoint of a run (and step 0: the same network freshly initialised, the untrained control) the
EMA weights are scored on the config's validation subjects (split by subject; the test subjects are not touched):
- held-out loss: the training objective (its parametrisation, min-SNR weighting) at ``--times`` evenly spaced t
  (50, 150, ..., 950 for 10) on ``--val-slices`` evenly spaced validation slices, the same noise (seed 0) for every
  checkpoint; per-t values kept in the JSON (the low-t ones are what the MRI solvers use);
- FID / KID (``--fid-at`` steps only; sampling is the expensive part): ``--samples`` DPM-Solver++ 20-step samples
  against all validation slices on random-cnn features, with the floor (as many training slices in place of the
  samples: what a perfect model would score);
- training seconds to reach the step, from the run's log.csv (elapsed_s).
Results are cached in ``--out`` by step, so a re-run after more training only scores the new checkpoints.
``--also C ...`` scores further checkpoints (paths or shipped names) as rows named after them: the shipped weights
that a sitting started from (``run.init_from``), to compare the sitting's checkpoints with its starting point.

    OMP_NUM_THREADS=2 python benchmarks/prior_heldout.py --config configs/brain_t1_ixi.yaml \
        --run-dir runs/shipped/brain_t1_ixi --fid-at 400 800 1200 1600 --out runs/brain_t1_ixi_heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def evenly(n_total: int, n: int) -> list[int]:
    return sorted(set(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int).tolist()))


def elapsed_at(run_dir: Path, step: int) -> float | None:
    """Training seconds at ``step`` from log.csv (the last logged row at or before it, over all sittings)."""
    log = run_dir / "log.csv"
    if not log.is_file():
        return None
    rows = [line.split(",") for line in log.read_text().split()[1:]]
    total, offset, last = None, 0.0, 0.0
    for r in rows:  # a resumed sitting restarts elapsed_s at 0: add the earlier sittings' time
        if len(r) <= 5 or int(r[0]) > step:
            continue
        elapsed = float(r[5])
        if elapsed < last:
            offset += last
        last = elapsed
        total = offset + elapsed
    return total


@torch.no_grad()
def heldout_loss(model, meta, config, val: torch.Tensor, times: list[int]) -> dict[int, float]:
    from meddiff.diffusion import make_schedule
    from meddiff.diffusion.losses import diffusion_loss

    schedule = make_schedule(meta["schedule"])
    g = torch.Generator().manual_seed(0)
    per_t = {}
    for t in times:
        noise = torch.randn(val.shape, generator=g)
        total = 0.0
        for i in range(0, len(val), 32):
            x = val[i:i + 32]
            total += float(diffusion_loss(model, x, schedule, meta["prediction"],
                                          min_snr_gamma=config["diffusion"].get("min_snr_gamma"),
                                          t=torch.full((len(x),), float(t)), noise=noise[i:i + 32])) * len(x)
        per_t[t] = total / len(val)
    return per_t


def fid_scores(checkpoint, model, meta, val: torch.Tensor, train: torch.Tensor, samples: int) -> dict:
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.metrics.generative import fid, kid
    from meddiff.tasks.synthesis import generate

    fake, _ = generate(checkpoint, samples, steps=20, seed=0, model=model, meta=meta, batch_size=32)
    extractor = get_feature_extractor("random-cnn")
    f_val, f_fake, f_train = extractor(val), extractor(fake.clamp(-1, 1.5)), extractor(train)
    k, k_std = kid(f_val, f_fake, subsets=100, subset_size=min(100, samples), seed=0)
    floor_k, _ = kid(f_val, f_train, subsets=100, subset_size=min(100, samples), seed=0)
    return {"fid": fid(f_val, f_fake), "kid": k, "kid_std": k_std, "fid_floor": fid(f_val, f_train),
            "kid_floor": floor_k, "samples": samples}


def main(argv=None) -> int:
    from meddiff.data import build_dataset
    from meddiff.data.io import write_json
    from meddiff.nets import build_network
    from meddiff.training import list_checkpoints, load_checkpoint, load_config
    from meddiff.training.checkpoint import resolve_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-slices", type=int, default=64)
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--fid-at", type=int, nargs="*", default=[], help="steps that also get FID / KID")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="*", help="only these checkpoint steps (default: all kept)")
    parser.add_argument("--also", nargs="*", default=[], metavar="CHECKPOINT",
                        help="further checkpoints (paths or shipped names) scored as rows named after them; with "
                             "--fid-at also, they get FID too")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    run_dir = Path(args.run_dir)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    val_set = build_dataset(config["data"], split="val")
    val_all = torch.stack([val_set[i]["image"] for i in range(len(val_set))]).float()
    val = val_all[evenly(len(val_all), args.val_slices)]
    times = [round((i + 0.5) * 1000 / args.times) for i in range(args.times)]
    train_set = build_dataset({k: v for k, v in config["data"].items() if k != "augment"}, split="train")
    train = torch.stack([train_set[i]["image"] for i in evenly(len(train_set), args.samples)]).float()
    checkpoints = {int(p.name.split("_")[-1]): p for p in list_checkpoints(run_dir / "checkpoints")}
    wanted = [0] + sorted(s for s in checkpoints if args.steps is None or s in args.steps) + list(args.also)
    for step in wanted:
        row = result["rows"].get(str(step), {})
        also = isinstance(step, str)  # a checkpoint from --also, not a step of this run
        need_fid = (step in args.fid_at or (also and bool(args.fid_at))) and "fid" not in row
        if "heldout_loss" in row and not also:
            row["train_seconds"] = elapsed_at(run_dir, step) if step else 0.0
        if "heldout_loss" in row and not need_fid:
            continue
        start = time.perf_counter()
        if also:
            checkpoint = resolve_checkpoint(step)
            model, meta = load_checkpoint(checkpoint)
        elif step == 0:
            _, meta = load_checkpoint(checkpoints[max(checkpoints)])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_network(meta["network"]).eval()
            checkpoint = checkpoints[max(checkpoints)]
        else:
            checkpoint = checkpoints[step]
            model, meta = load_checkpoint(checkpoint)
        if "heldout_loss" not in row:
            per_t = heldout_loss(model, meta, config, val, times)
            row.update({"step": step, "heldout_loss": float(np.mean(list(per_t.values()))),
                        "heldout_loss_per_t": per_t, "heldout_loss_low_t": float(np.mean([v for t, v in per_t.items()
                                                                                        if t < 250])),
                        "train_seconds": None if also else elapsed_at(run_dir, step) if step else 0.0})
        if need_fid:
            row.update(fid_scores(checkpoint, model, meta, val_all, train, args.samples))
        row["score_seconds"] = time.perf_counter() - start
        result["rows"][str(step)] = row
        result.update({"config": args.config, "run_dir": str(run_dir), "val_slices": len(val),
                       "val_subjects": sorted(val_set.subjects), "times": times, "torch": torch.__version__})
        write_json(result, out)
        print(f"step {step}: held-out loss {row['heldout_loss']:.4f} (t < 250: {row['heldout_loss_low_t']:.4f})"
              + (f", FID {row['fid']:.3f} (floor {row['fid_floor']:.3f}), KID {row['kid']:.4f}" if "fid" in row
                 else "") + f" [{row['score_seconds']:.0f} s]", flush=True)
    lines = ["| step | training time (min) | held-out loss | held-out loss t < 250 | FID | KID |", "|---|---|---|---|---|---|"]
    for key in sorted(result["rows"], key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)):
        r = result["rows"][key]
        minutes = f"{r['train_seconds'] / 60:.0f}" if r.get("train_seconds") is not None else "?"
        fid_text = f"{r['fid']:.3f} (floor {r['fid_floor']:.3f})" if "fid" in r else ""
        kid_text = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if "kid" in r else ""
        lines.append(f"| {r['step']}{' (untrained)' if r['step'] == 0 else ''} | {minutes} | {r['heldout_loss']:.4f} | "
                     f"{r['heldout_loss_low_t']:.4f} | {fid_text} | {kid_text} |")
    table = "\n".join(lines)
    from meddiff.files import write_text

    write_text(out.with_suffix(".md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
