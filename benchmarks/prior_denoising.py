"""How well an MRI prior denoises the fully sampled test slice: one x0 prediction at several noise levels.

The RSS reference of ../shared/data/mri_kspace_brain_8ch is scaled as `meddiff reconstruct` scales images for the
prior (its 99.5th foreground percentile -> [-1, 1]), padded to 232 x 180, noised to x_t = alpha x + sigma n
(seed 0) and denoised once; PSNR (peak-to-peak 2) over the foreground (RSS > 0.1 max) before (x_t / alpha) and
after, per checkpoint.

    python benchmarks/prior_denoising.py brain_mri_prior [other checkpoints ...] [--out FILE.json]

"untrained" stands for the shipped prior's network freshly initialised (``mri.untrained_prior``, seed 0): the
no-knowledge control, whose x0 prediction is alpha x_t.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from meddiff.data.io import write_json
from meddiff.tasks import mri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mri_baselines import FOREGROUND, load_slice  # noqa: E402

TIMES = (5, 10, 20, 40, 80, 150)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b)[mask] ** 2).mean()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories, run directories or shipped names; "
                        "'untrained': the shipped prior's network freshly initialised")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _, ref = load_slice()
    scale = float(torch.quantile(ref[ref > 0.1 * ref.max()].double(), mri.SCALE_PERCENTILE / 100))
    x = torch.full((1, 1, 232, ref.shape[1]), -1.0)
    x[0, 0, 1:-1] = (2 * ref / scale - 1).clamp(-1, 1.5)
    fg = torch.zeros_like(x, dtype=torch.bool)
    fg[0, 0, 1:-1] = ref > FOREGROUND * ref.max()
    results = []
    for checkpoint in args.checkpoints:
        prior = mri.untrained_prior(mri.load_prior()) if checkpoint == "untrained" else mri.load_prior(checkpoint)
        g = torch.Generator().manual_seed(0)
        for t in TIMES:
            tt = torch.tensor([float(t)])
            alpha, sigma = (float(v) for v in prior.schedule.alpha_sigma(tt))
            xt = alpha * x + sigma * torch.randn(x.shape, generator=g)
            with torch.no_grad():
                x0 = prior.denoiser(xt, tt)
            results.append({"checkpoint": checkpoint, "t": t, "sigma_over_alpha": sigma / alpha,
                            "psnr_in": psnr(xt / alpha, x, fg), "psnr_out": psnr(x0, x, fg)})
    print("| checkpoint | t | sigma / alpha | PSNR in (dB) | PSNR out (dB) |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['checkpoint']} | {r['t']} | {r['sigma_over_alpha']:.3f} | {r['psnr_in']:.1f} | {r['psnr_out']:.1f} |")
    if args.out:
        write_json({"results": results, "torch": torch.__version__, "noise_seed": 0}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
