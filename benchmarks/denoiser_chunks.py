"""Seconds for the prior network on a batch of 16 samples, as one batch and in chunks (``ModelDenoiser``'s
``cpu_chunk_pixels``, ``tasks/prior.py`` CPU_CHUNK_PIXELS): on a CPU, large batches outgrow the caches.

    OMP_NUM_THREADS=2 python benchmarks/denoiser_chunks.py --threads 2 --sizes 96x120 232x184 --out runs/chunks.json

Prints and writes mean seconds per 16 samples (3 repeats after a warm-up) for each chunk size.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from meddiff.data.io import write_json
from meddiff.tasks import mri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="brain_t1_ixi")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["96x120", "232x184"])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 8, 4, 2, 1])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = mri.load_prior(args.checkpoint).denoiser.model
    rows = []
    with torch.no_grad():
        for text in args.sizes:
            h, w = map(int, text.split("x"))
            x, t = torch.randn(16, 1, h, w, generator=torch.Generator().manual_seed(0)), torch.full((16,), 200.0)
            for size in args.chunks:
                net(x[:size], t[:size])  # warm-up
                start = time.perf_counter()
                for _ in range(3):
                    for i in range(0, 16, size):
                        net(x[i:i + size], t[i:i + size])
                seconds = (time.perf_counter() - start) / 3
                rows.append({"size": text, "chunk": size, "seconds_per_16": seconds, "threads": args.threads})
                print(f"{text} chunks of {size}: {seconds:.2f} s per 16 samples", flush=True)
    write_json({"rows": rows, "checkpoint": args.checkpoint, "torch": torch.__version__}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
