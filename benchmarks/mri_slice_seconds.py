"""Seconds per slice of a diffusion MRI solver at its defaults, alone on the machine (issue 21's <= 30 s per slice).

benchmarks/mri_reconstruction.py reports seconds under whatever load it runs with (one thread per process, two
processes on the 2-core CPU); this script times ``mri.reconstruct`` for the first ``--slices`` test slices of the
first IXI test subject (``mri_ixi.load_cases``), one mask, with ``--threads`` threads and nothing else running, for
each ``--samples`` value (the defaults' K first), and reports PSNR so the rows can be matched with the table.

    OMP_NUM_THREADS=2 python benchmarks/mri_slice_seconds.py --threads 2 --setting gaussian:8 --samples 16 8 \
        --out runs/mri_seconds.json
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
from meddiff.tasks import mri  # noqa: E402
from meddiff.training import training_steps  # noqa: E402

LAMBDA = {4: 0.002, 8: 0.001}  # the val-tuned CS weights of the benchmark (its "tuning" section)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="brain_t1_ixi")
    parser.add_argument("--method", default="mc-ddpm", choices=mri.SOLVERS)
    parser.add_argument("--setting", default="gaussian:8", help="PATTERN:ACCELERATION")
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pattern, accel = args.setting.split(":")[0], int(args.setting.split(":")[1])
    prior = mri.load_prior(args.checkpoint)
    rows = []
    for case in load_cases(split_subjects("test", 1), args.slices):
        mask = mask_for(case, pattern, accel, 0)
        for samples in args.samples:
            with cs_init_lambda(LAMBDA[accel]):
                start = time.perf_counter()
                result = mri.reconstruct(case.kspace.numpy(), mask, args.method, prior=prior, seed=0, samples=samples)
                seconds = time.perf_counter() - start
            score = scores(torch.from_numpy(result.image), case.image)
            rows.append({"case": f"{case.subject} z{case.slice}", "samples": samples, "seconds": seconds,
                         "psnr": score["psnr"], "settings": result.settings})
            print(f"{case.subject} z{case.slice} {args.method} K={samples}: {seconds:.1f} s, {score['psnr']:.2f} dB",
                  flush=True)
    summary = {k: statistics.mean(r["seconds"] for r in rows if r["samples"] == k) for k in args.samples}
    print("mean seconds per slice: " + ", ".join(f"K={k} {v:.1f} s" for k, v in summary.items()))
    write_json({"rows": rows, "mean_seconds": summary, "threads": args.threads, "setting": args.setting,
                "checkpoint": args.checkpoint, "prior_steps": training_steps(prior.meta),
                "torch": torch.__version__}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
