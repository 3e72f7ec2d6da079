"""Train the DDM temporal-interpolation model (issue 26) on the rat cardiac cine (../shared/data/rat_cardiac_cine:
8 frames, 192 x 192, ONE animal), or its ablation without the diffusion part (``--no-diffusion``), in one command.

Protocol: frames 1, 3 and 5 are held out (the benchmark interpolates frame k from k - 1 and k + 1 at gamma 0.5).
Training uses every ordered pair (source, target) of the other frames 0, 2, 4, 6, 7: no pair has a held-out frame
as an endpoint or as a target. Pairs (k - 1, k + 1) such as (0, 2) ARE trained on: they show the endpoints of a
test interpolation, never its middle frame. Same subject, same slice: this measures interpolation within one
sequence, not generalisation to new animals. Augmentation (same for both frames of a pair): the 8 flips/rotations
of the square, an intensity factor in [0.8, 1.25] and a gamma in [0.7, 1.4]. Nothing held out is used to pick the
model: the EMA weights at the end of the time budget are saved.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_ddm.py --minutes 45 \\
        --out src/meddiff/assets/checkpoints/ddm_rat_cine          # the shipped model (its README is kept)
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_ddm.py --no-diffusion --steps 2393 \\
        --minutes 60 --out runs/ddm/no_diffusion                   # the ablation, same steps
"""

from __future__ import annotations

import argparse
import itertools
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
from meddiff.tasks.register.diffusemorph import (DiffuseMorph, DiffuseMorphConfig, diffusemorph_loss,  # noqa: E402
                                                 pair_scale, save_diffusemorph)
from meddiff.tasks.register.training import checkpoint_files, mean_row, optimiser_step  # noqa: E402

DATA = "/work/shared/data/rat_cardiac_cine/cine_rat_8fr.npy"
HELD_OUT = (1, 3, 5)
LOG_COLUMNS = {"loss": 5, "diffusion": 5, "similarity": 5, "smoothness": 6, "meeting": 5}  # name: decimals


def training_pairs(frames: int, held_out) -> list[tuple[int, int]]:
    """Ordered (source, target) pairs of the frames that are not held out."""
    keep = [k for k in range(frames) if k not in set(held_out)]
    return list(itertools.permutations(keep, 2))


def shipped_card(name: str, config: DiffuseMorphConfig, parameters: int) -> dict:
    """The ``shipped`` block of meta.json (``meddiff checkpoints list``)."""
    kind = "DDM" if config.diffusion else "DDM ablation without the diffusion part"
    return {"name": name, "description": f"{kind} temporal interpolation of 2D cardiac cine frames (diffusion UNet "
                                         "latent -> deformation UNet -> SVF; latent scaled by the time)",
            "trained_on": "rat_cardiac_cine: frames 0, 2, 4, 6, 7 of ONE rat (frames 1, 3, 5 held out)",
            "default_for": ["interpolate --method ddm"], "parameters": parameters}


def augment(pair: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """pair (2, H, W) scaled -> the same flip/rotation and intensity change on both frames."""
    pair = torch.rot90(pair, int(rng.integers(4)), (1, 2))
    if rng.random() < 0.5:
        pair = pair.flip(2)
    pair = pair.clamp_min(0) ** float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    return pair * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--held-out", type=int, nargs="+", default=list(HELD_OUT))
    parser.add_argument("--no-diffusion", action="store_true", help="ablation: deformation network on (source, "
                                                                    "target) alone, velocity scaled by gamma")
    parser.add_argument("--minutes", type=float, default=50.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the time budget only)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--registration-weight", type=float, default=10.0, help="lambda")
    parser.add_argument("--reg-weight", type=float, default=1.0, help="smoothness weight")
    parser.add_argument("--kernel", type=int, default=7, help="LNCC window on the 96 x 96 loss grid")
    parser.add_argument("--meeting-weight", type=float, default=0.0,
                        help="symmetric half-way term (0: the papers' loss); each batch then holds its pairs and "
                             "their reverses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--snapshot-minutes", type=float, default=10.0, help="save the EMA to OUT/snapshot")
    parser.add_argument("--out", default="runs/ddm/ddm")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning)  # MONAI's deprecation notes on every loss call
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cine = np.load(args.data).astype(np.float32)
    pairs = training_pairs(cine.shape[0], args.held_out)
    scaled = {p: torch.from_numpy(np.stack([cine[p[0]], cine[p[1]]]) / pair_scale(cine[p[0]], cine[p[1]]))
              for p in pairs}
    config = DiffuseMorphConfig(diffusion=not args.no_diffusion, kernel=args.kernel, reg_weight=args.reg_weight,
                                registration_weight=args.registration_weight,
                                meeting_weight=args.meeting_weight)
    net = DiffuseMorph(config)
    averager = EMA(net, args.ema, warmup=False)  # constant decay, no warm-up
    ema = averager.module
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    out = Path(args.out)
    rows, running = [], []
    start, step, last_snapshot = time.time(), 0, time.time()
    print(f"{len(pairs)} training pairs {pairs}; held out {args.held_out}; "
          f"{sum(p.numel() for p in net.parameters())} parameters", flush=True)

    def meta(elapsed: float) -> dict:
        return {"channels": 1, "image_size": list(cine.shape[1:]), "step": step, "training": {
            "data": "rat_cardiac_cine (cine_rat_8fr.npy, one healthy rat, 8 frames)", "held_out_frames": args.held_out,
            "train_pairs": [list(p) for p in pairs], "minutes": round(elapsed / 60, 1), "batch": args.batch,
            "lr": args.lr, "ema": args.ema, "seed": args.seed,
            "loss": "eps MSE + lambda x (LNCC + reg_weight x DiffusionLoss(ddf)) [+ meeting_weight x lambda x LNCC of "
                    "the two half-way warps], on the 96 x 96 grid",
            "augmentation": "dihedral (8), intensity x [0.8, 1.25], gamma [0.7, 1.4]"},
            "shipped": shipped_card(Path(args.out).name, config, sum(p.numel() for p in net.parameters()))}

    while True:
        count = args.batch // 2 if args.meeting_weight > 0 else args.batch
        batch = [augment(scaled[pairs[int(rng.integers(len(pairs)))]], rng) for _ in range(count)]
        if args.meeting_weight > 0:  # the reverse pairs in the second half
            batch += [pair.flip(0) for pair in batch]
        x = torch.stack(batch)  # (B, 2, H, W)
        loss, parts = diffusemorph_loss(net, x[:, :1], x[:, 1:], gen)
        step = optimiser_step(net, opt, averager, loss, step)
        running.append((float(loss), parts["diffusion"], parts["similarity"], parts["smoothness"],
                        parts.get("meeting", 0.0)))
        elapsed = time.time() - start
        done = elapsed > args.minutes * 60 or (args.steps and step >= args.steps)
        if step % args.log_every == 0 or done:
            rows.append(mean_row(step, elapsed, running, LOG_COLUMNS))
            running = []
            print(rows[-1], flush=True)
        if not done and time.time() - last_snapshot > args.snapshot_minutes * 60:
            save_diffusemorph(out / "snapshot", ema, meta(elapsed))
            last_snapshot = time.time()
        if done:
            break
    command = "nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_ddm.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    save_diffusemorph(out, ema, meta(elapsed), checkpoint_files(out, asdict(config), args, rows, command))
    print(f"saved {out}: {step} steps, {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
