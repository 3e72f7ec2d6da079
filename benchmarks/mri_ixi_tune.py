"""Tune the diffusion solvers' settings in-domain (issue 21): a grid of (solver, settings) on IXI *val* slices.

Simulated 8-coil k-space of val-subject slices (``mri_ixi.load_cases``: the test subjects are never used here),
development mask seed 100 (the benchmark's test seeds are 0-2), CS start image with the val-tuned weight (0.002 at
4x, 0.001 at 8x, ``mri_reconstruction.py --domain ixi`` tuning). Reports mean PSNR (whole image and foreground),
the gain over L1-wavelet CS on the same slices and seconds per slice, for each grid entry; the best entry per
setting is what the solver defaults should be (or what a user passes).

    OMP_NUM_THREADS=1 python benchmarks/mri_ixi_tune.py --checkpoint brain_t1_ixi --out runs/mri_ixi_tune.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mri_baselines import scores  # noqa: E402
from mri_ixi import cs_init_lambda, load_cases, mask_for, split_subjects  # noqa: E402

from meddiff.data.io import write_json  # noqa: E402
from meddiff.files import write_text  # noqa: E402
from meddiff.physics import cs_wavelet  # noqa: E402
from meddiff.tasks import mri  # noqa: E402
from meddiff.training import training_steps  # noqa: E402

DEV_SEED = 100
LAMBDA = {4: 0.002, 8: 0.001}  # val-tuned CS weights (mri_reconstruction.py --domain ixi, tuning section)
GRID = [
    ("ddnm", {}), ("ddnm", {"start": 0.1, "steps": 10, "samples": 2}), ("ddnm", {"start": 0.3, "steps": 30, "samples": 1}),
    ("ddnm", {"start": 1.0, "steps": 100, "samples": 1, "eta": 0.85}),
    ("pc", {}), ("pc", {"start": 0.1, "steps": 10, "samples": 2}), ("pc", {"start": 0.3, "steps": 30, "samples": 1}),
    ("dps", {}), ("dps", {"start": 0.1, "steps": 10, "samples": 2, "zeta": 1.0}),
    ("coarse-to-fine", {}), ("mc-ddpm", {}), ("mc-ddpm", {"start": 0.3, "steps": 30, "samples": 1}),
    # 12-17 (session 13, the annealed prior): more samples in the posterior mean, starts just around the defaults
    ("ddnm", {"samples": 8}), ("ddnm", {"start": 0.05, "steps": 6}), ("ddnm", {"start": 0.02, "steps": 3}),
    ("mc-ddpm", {"start": 0.05, "steps": 6}), ("mc-ddpm", {"samples": 8}), ("pc", {"start": 0.02, "steps": 4}),
    # 18-20: the posterior mean over more samples (the gain of 4 -> 8 samples was the largest above)
    ("mc-ddpm", {"samples": 16}), ("mc-ddpm", {"start": 0.05, "steps": 6, "samples": 16}), ("ddnm", {"samples": 16}),
    # 21-26 (session 20): mc-ddpm's steps and start by acceleration (solvers.py, HIGH_ACCELERATION_DEFAULTS), run with
    # --slices 2 --settings gaussian:4 equispaced:4 gaussian:8 equispaced:8 --only 21 22 23 24 25 26
    ("mc-ddpm", {"start": 0.1, "steps": 16}), ("mc-ddpm", {"start": 0.1, "steps": 24}),
    ("mc-ddpm", {"start": 0.15, "steps": 12}), ("mc-ddpm", {"start": 0.2, "steps": 16}),
    ("mc-ddpm", {"start": 0.25, "steps": 20}), ("mc-ddpm", {"start": 0.3, "steps": 24}),
    # 27-29 (session 21): at 8x, more samples in the posterior mean at twice the cost (27) or at the cost of the
    # default (samples x steps = 160: 28, 29); run with --slices 2 --settings gaussian:8 equispaced:8 --only 25 27 28 29
    # when 8 samples were the 8x default; 27 is the default since, so entry 30 (8 samples named) reproduces 25
    ("mc-ddpm", {"start": 0.25, "steps": 20, "samples": 16}), ("mc-ddpm", {"start": 0.25, "steps": 14, "samples": 12}),
    ("mc-ddpm", {"start": 0.25, "steps": 10, "samples": 16}), ("mc-ddpm", {"start": 0.25, "steps": 20, "samples": 8}),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["gaussian:4", "equispaced:8"])
    parser.add_argument("--only", nargs="*", help="grid entries by index")
    args = parser.parse_args(argv)
    prior = mri.load_prior(args.checkpoint)
    cases = load_cases(split_subjects("val", args.subjects), args.slices)
    grid = [GRID[int(i)] for i in args.only] if args.only else GRID
    rows = []
    for setting in args.settings:
        pattern, accel = setting.split(":")[0], int(setting.split(":")[1])
        problems = [(c, mask_for(c, pattern, accel, DEV_SEED)) for c in cases]
        cs = []
        for c, mask in problems:
            problem = mri.make_problem(c.kspace, mask)
            image = mri.combine_coils(problem, cs_wavelet(problem.op, problem.y, lam=LAMBDA[accel]))[0]
            cs.append(scores(image, c.image))
        cs_psnr = statistics.mean(s["psnr"] for s in cs)
        cs_fg = statistics.mean(s["psnr_fg"] for s in cs)
        print(f"{setting} cs-wavelet: {cs_psnr:.2f} dB (fg {cs_fg:.2f})", flush=True)
        for method, params in grid:
            values, seconds = [], []
            with cs_init_lambda(LAMBDA[accel]):
                for c, mask in problems:
                    start = time.perf_counter()
                    result = mri.reconstruct(c.kspace.numpy(), mask, method, prior=prior, seed=0, **params)
                    seconds.append(time.perf_counter() - start)
                    values.append(scores(torch.from_numpy(result.image), c.image))
            row = {"setting": setting, "method": method, "params": params,
                   "psnr": statistics.mean(v["psnr"] for v in values),
                   "psnr_fg": statistics.mean(v["psnr_fg"] for v in values), "seconds": statistics.mean(seconds)}
            row.update({"vs_cs": row["psnr"] - cs_psnr, "vs_cs_fg": row["psnr_fg"] - cs_fg})
            rows.append(row)
            print(f"{setting} {method} {params or 'defaults'}: {row['psnr']:.2f} dB ({row['vs_cs']:+.2f} vs CS), fg "
                  f"{row['psnr_fg']:.2f} ({row['vs_cs_fg']:+.2f}), {row['seconds']:.1f} s", flush=True)
            write_json({"rows": rows, "checkpoint": args.checkpoint, "prior_step": training_steps(prior.meta),
                        "cases": [f"{c.subject} z{c.slice}" for c in cases], "dev_seed": DEV_SEED,
                        "lambda": LAMBDA}, args.out)
    lines = ["| setting | method | settings | PSNR | vs CS | PSNR fg | vs CS fg | s / slice |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['method']} | {r['params'] or 'defaults'} | {r['psnr']:.2f} | {r['vs_cs']:+.2f} | "
              f"{r['psnr_fg']:.2f} | {r['vs_cs_fg']:+.2f} | {r['seconds']:.1f} |" for r in rows]
    write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
