"""Does the faster UNet layout of train_throughput.py learn as well? Trainings on real data, at the same steps, or
(``--layouts``, one run per layout) each for its own steps to compare at equal training time.

`train_throughput.py` times a deeper layout at the plain loops' parameter count, one level deeper with capacity
moved off the full-size level: 2D channels [32, 64, 128, 128] (4.33 M parameters) against [64, 128, 128] (4.44 M),
3D [16, 32, 64, 64] (2.94 M) against [32, 64, 64] (2.92 M). This trains both layouts with meddiff's Trainer with
the same seed, data order, optimiser and schedule, each in its own process on one thread (run side by side):
2D on the IXI T1 slices of configs/brain_slices_2d.yaml (64x64, split by subject), 3D unconditionally on the
AdrenalMNIST3D train split of configs/adrenal3d.yaml resized to 32^3. The EMA weights are scored on held-out data
(2D: the held-out subjects' slices; 3D: the val split):

- held-out loss: the training objective (v-prediction, min-SNR-5 weighted) at ``--times`` evenly spaced t (2D:
  50, 150, ..., 950) with the same noise (seed 0) for both layouts; per-t values are kept in the JSON;
- FID / KID of ``--samples`` DPM-Solver++ samples (20 steps, seed 0) against the held-out images, random-cnn
  features (3D: of the three central planes), plus the floor: as many training images in place of samples;
- seconds per step of the training loop, from the images/s logged in log.csv.

    python benchmarks/layout_quality.py --dims 2 --out layout_quality_2d.json [--steps 500] [--batch 16] [--samples 128]
    python benchmarks/layout_quality.py --dims 3 --out layout_quality_3d.json [--steps 300] [--batch 4]
    python benchmarks/layout_quality.py --dims 2 --steps 184 --layouts same_layout --run-dir R --out F.json  # equal time
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {  # dims: {name: (channels, attention_levels)}, as in train_throughput.py
    2: {"same_layout": ([64, 128, 128], [False, False, True]),
        "deeper": ([32, 64, 128, 128], [False, False, False, True])},
    3: {"same_layout": ([32, 64, 64], [False, False, True]),
        "deeper": ([16, 32, 64, 64], [False, False, False, True])},
}
LAYOUT_NAMES = ["same_layout", "deeper"]  # the keys of LAYOUTS[dims], for the command line
CONFIGS = {2: "brain_slices_2d.yaml", 3: "adrenal3d.yaml"}
DEFAULTS = {2: {"steps": 500, "batch": 16, "samples": 128, "times": 10},  # 3D: a forward pass costs ~30 GFLOP
            3: {"steps": 300, "batch": 4, "samples": 32, "times": 5}}


def layout_config(dims: int, name: str, steps: int, batch: int, seed: int = 0) -> dict:
    from meddiff.training import load_config

    config = load_config(REPO / "configs" / CONFIGS[dims])
    channels, attention = LAYOUTS[dims][name]
    config["model"].update({"channels": channels, "attention_levels": attention})
    if dims == 3:  # unconditional, at the benchmark's 32^3 (four levels need a multiple of 16)
        config["model"].update({"num_classes": None})
        config["model"].pop("class_dropout", None)
        config["data"]["size"] = 32
    for key in ("path", "cache_dir"):  # relative to the repository, wherever this runs from
        if key in config["data"]:
            config["data"][key] = str(REPO / config["data"][key])
    config["schedule"]["warmup_steps"] = max(1, steps // 20)
    config["run"].update({"name": name, "seed": seed, "steps": steps, "batch_size": batch,
                          "checkpoint_every": max(1, steps // 4),
                          "keep_checkpoints": 4, "sample_every": steps, "log_every": 25, "progress": False})
    return config


def checkpoint_at(run: Path, step: int) -> Path | None:
    from meddiff.training import list_checkpoints

    found = [c for c in list_checkpoints(run / "checkpoints") if c.name == f"step_{step:08d}"]
    return found[0] if found else None


def seconds_per_step(run: Path, step: int, batch: int) -> float:
    """Mean seconds per step of the training loop up to ``step``, from the logged images/s (survives a resume)."""
    rows = [line.split(",") for line in (run / "log.csv").read_text().split()[1:]]
    rates = [float(r[4]) for r in rows if int(r[0]) <= step]
    return sum(batch / r for r in rates) / len(rates)


def evaluate(dims: int, name: str, steps: int, batch: int, run_dir: Path, num_samples: int, num_times: int,
             step: int) -> dict:
    import torch

    from meddiff.data import build_dataset
    from meddiff.diffusion import make_schedule
    from meddiff.diffusion.losses import diffusion_loss
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.metrics.generative import fid, kid
    from meddiff.tasks.synthesis import generate
    from meddiff.training import load_checkpoint

    config = layout_config(dims, name, steps, batch)
    checkpoint = checkpoint_at(run_dir / name, step)
    if checkpoint is None:
        raise SystemExit(f"{run_dir / name} has no checkpoint of step {step} (kept: every steps/4, the last 4)")
    model, meta = load_checkpoint(checkpoint)
    schedule = make_schedule(meta["schedule"])
    val = torch.stack([item["image"] for item in build_dataset(config["data"], split="val")]).float()
    g = torch.Generator().manual_seed(0)
    per_t = {}
    with torch.no_grad():
        for t in [round((i + 0.5) * 1000 / num_times) for i in range(num_times)]:
            noise = torch.randn(val.shape, generator=g)
            losses = [diffusion_loss(model, val[i:i + 64], schedule, meta["prediction"],
                                     min_snr_gamma=config["diffusion"]["min_snr_gamma"],
                                     t=torch.full((len(val[i:i + 64]),), t), noise=noise[i:i + 64]) * len(val[i:i + 64])
                      for i in range(0, len(val), 64)]
            per_t[t] = float(sum(losses) / len(val))
    samples, _ = generate(checkpoint, num_samples, steps=20, seed=0, model=model, meta=meta)
    extractor = get_feature_extractor("random-cnn")
    f_val, f_fake = extractor(val), extractor(samples.clamp(-1, 1))
    kid_mean, kid_std = kid(f_val, f_fake, subsets=100, subset_size=min(100, num_samples), seed=0)
    return {"layout": name, "dims": dims, "channels": LAYOUTS[dims][name][0], "step": step,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "checkpoint": str(checkpoint),
            "heldout_loss": sum(per_t.values()) / len(per_t), "heldout_loss_per_t": per_t,
            "fid": fid(f_val, f_fake), "kid": kid_mean, "kid_std": kid_std,
            "seconds_per_step": seconds_per_step(run_dir / name, step, batch), "val_images": len(val),
            "samples": num_samples}


def floor(dims: int, num_samples: int) -> dict:
    """FID / KID of ``num_samples`` random training images against the held-out ones: what a perfect model would score."""
    import torch

    from meddiff.data import build_dataset
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.metrics.generative import fid, kid

    config = layout_config(dims, "deeper", 1, 1)
    train_set = build_dataset(config["data"], split="train")
    chosen = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:num_samples]
    real = torch.stack([train_set[int(i)]["image"] for i in chosen]).float()
    val = torch.stack([item["image"] for item in build_dataset(config["data"], split="val")]).float()
    extractor = get_feature_extractor("random-cnn")
    f_val, f_real = extractor(val), extractor(real)
    kid_mean, kid_std = kid(f_val, f_real, subsets=100, subset_size=min(100, num_samples), seed=0)
    return {"fid": fid(f_val, f_real), "kid": kid_mean, "kid_std": kid_std}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--dims", type=int, choices=[2, 3], default=2)
    parser.add_argument("--steps", type=int, help="training steps (default: 500 in 2D, 300 in 3D)")
    parser.add_argument("--batch", type=int, help="batch size (default: 16 in 2D, 4 in 3D)")
    parser.add_argument("--samples", type=int, help="samples for FID / KID (default: 128 in 2D, 32 in 3D)")
    parser.add_argument("--times", type=int, help="evenly spaced t of the held-out loss (default: 10 in 2D, 5 in 3D)")
    parser.add_argument("--run-dir", help="default: runs/layout_quality/<dims>d")
    parser.add_argument("--at", type=int, nargs="+", metavar="STEP",
                        help="score the checkpoints of these steps (multiples of steps/4; default: the last); a layout "
                             "whose run lacks one is trained (resumed) until it has it")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUT_NAMES, default=LAYOUT_NAMES,
                        help="train and score only these (e.g. each layout for its own number of steps, to compare at "
                             "equal training time, in two runs with their own --run-dir)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, data order, noise)")
    parser.add_argument("--train", choices=LAYOUT_NAMES, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    args.steps = args.steps or DEFAULTS[args.dims]["steps"]
    args.batch = args.batch or DEFAULTS[args.dims]["batch"]
    args.samples = args.samples or DEFAULTS[args.dims]["samples"]
    args.times = args.times or DEFAULTS[args.dims]["times"]
    run_dir = Path(args.run_dir or f"runs/layout_quality/{args.dims}d").resolve()
    args.at = args.at or [args.steps]
    if args.train:
        import torch

        from meddiff.training import list_checkpoints, train

        torch.set_num_threads(1)
        run = run_dir / args.train
        train(layout_config(args.dims, args.train, args.steps, args.batch, args.seed), run_dir=run,
              resume=bool(list_checkpoints(run / "checkpoints")))
        return 0

    from meddiff.data import build_dataset

    for split in ("train", "val"):  # fill the slice cache once, before two processes read it
        build_dataset(layout_config(args.dims, "deeper", args.steps, args.batch)["data"], split=split)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = {name: subprocess.Popen([sys.executable, __file__, "--train", name, "--dims", str(args.dims),
                                    "--steps", str(args.steps), "--batch", str(args.batch), "--run-dir", str(run_dir),
                                    "--seed", str(args.seed)],
                                   env=env)
            for name in args.layouts if any(checkpoint_at(run_dir / name, step) is None for step in args.at)}
    failed = [name for name, job in jobs.items() if job.wait()]
    if failed:
        print(f"training failed for {failed}; see {run_dir}", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(2)
    results = []
    for step in args.at:
        for name in args.layouts:  # minutes per checkpoint on CPU: say where it is
            start = time.perf_counter()
            results.append(evaluate(args.dims, name, args.steps, args.batch, run_dir, args.samples, args.times, step))
            print(f"scored {name} step {step}: held-out loss {results[-1]['heldout_loss']:.4f}, "
                  f"FID {results[-1]['fid']:.3f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    base = floor(args.dims, args.samples)
    print("| layout | channels | params (M) | step | s / step (1 thread) | held-out loss | FID | KID |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['channels']} | {r['params_m']:.2f} | {r['step']} | {r['seconds_per_step']:.2f} | "
              f"{r['heldout_loss']:.4f} | {r['fid']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} |")
    print(f"| floor: {args.samples} training images | | | | | | {base['fid']:.3f} | {base['kid']:.4f} ± {base['kid_std']:.4f} |")
    if args.out:
        from meddiff.data.io import write_json

        write_json({"results": results, "floor": base, "dims": args.dims, "steps": args.steps, "batch": args.batch,
                    "held_out_times": args.times, "seed": args.seed, "layouts": args.layouts,
                    "torch": torch.__version__}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
