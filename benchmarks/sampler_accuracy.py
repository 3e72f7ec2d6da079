"""Sampler accuracy against NFE on targets with an exact denoiser (no training involved).

Targets: an anisotropic 16-D Gaussian (eigenvalues 0.01..4, Frechet distance to the truth) and a 4-mode 2D
Gaussian mixture (weights 0.4/0.3/0.2/0.1, total-variation error of the mode weights). Every sampler runs the
exact denoiser under a VP SDE (beta 0.1..20) on its recommended grid (``recommended_spacing``); a second table
compares grids, which is how those recommendations were chosen. Prints markdown tables and writes JSON with --out.

    python benchmarks/sampler_accuracy.py --out sampler_accuracy.json [--samples 50000]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from meddiff import __version__
from meddiff.data.io import write_json
from meddiff.diffusion import VPSDE, DiscreteSchedule, get_sampler, initial_noise, make_grid, network_evaluations, recommended_spacing
from meddiff.diffusion.analytic import anisotropic_gaussian, mixture_2d
from meddiff.metrics.distributions import frechet_distance, sample_moments

NFES = (5, 10, 20, 50, 100, 1000)
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "pc")


def steps_for(sampler: str, nfe: int) -> int | None:
    """Grid steps giving at most ``nfe`` evaluations (None if the sampler cannot)."""
    steps = {"heun": (nfe + 1) // 2, "pc": nfe // 2}.get(sampler, nfe)
    return steps if steps >= 1 and network_evaluations(sampler, steps) <= nfe else None


def run_one(target_name: str, target, schedule, sampler: str, steps: int, spacing: str | None, n: int, seed: int) -> dict:
    grid = make_grid(schedule, steps, spacing)
    g = torch.Generator().manual_seed(seed)
    x = initial_noise(grid, (n, target.dim), generator=g, dtype=torch.float32)
    start = time.perf_counter()
    samples = get_sampler(sampler)(target.denoiser(schedule), x, grid, generator=g)
    seconds = time.perf_counter() - start
    fd = frechet_distance(*sample_moments(samples), target.mean(), target.covariance())
    return {
        "target": target_name, "sampler": sampler, "schedule": type(schedule).__name__,
        "spacing": spacing, "steps": steps,
        "nfe": network_evaluations(sampler, steps), "frechet_distance": fd,
        "mode_weight_error": target.mode_weight_error(samples) if len(target.weights) > 1 else None,
        "seconds": seconds,
    }


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.2e}" if isinstance(v, float) and v < 0.01 else (f"{v:.3g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) if r[c] is not None else "-" for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON output path")
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    targets = {"gaussian16": anisotropic_gaussian(), "mixture2d": mixture_2d()}
    vp = VPSDE()
    results = []
    for sampler in SAMPLERS:
        for nfe in NFES:
            steps = steps_for(sampler, nfe)
            if steps is None:
                continue
            for name, target in targets.items():
                results.append(run_one(name, target, vp, sampler, steps, recommended_spacing(sampler, vp), args.samples, args.seed))
                r = results[-1]
                print(f"{name:10s} {sampler:9s} NFE {r['nfe']:4d}  FD {r['frechet_distance']:.2e}  "
                      f"MWE {r['mode_weight_error'] if r['mode_weight_error'] is not None else '-'}  {r['seconds']:.1f}s",
                      flush=True)
    grids = []
    for schedule, spacings in ((vp, ("uniform", "logsnr", "karras")),
                               (DiscreteSchedule("linear"), ("trailing", "leading", "linspace", "logsnr", "karras"))):
        for sampler in ("ddim", "dpmpp_2m", "heun"):
            for nfe in (10, 20):
                for spacing in spacings:
                    grids.append(run_one("gaussian16", targets["gaussian16"], schedule, sampler,
                                         steps_for(sampler, nfe), spacing, args.samples, args.seed))

    def by(target, sampler, nfe):
        return next(r for r in results if (r["target"], r["sampler"], r["nfe"]) == (target, sampler, nfe))

    reference = {t: by(t, "ddpm", 1000) for t in targets}
    verdicts = []
    for sampler in ("dpmpp_2m", "heun"):
        for r in (r for r in results if r["sampler"] == sampler and r["nfe"] <= 20):
            ref = reference[r["target"]]
            metric = "frechet_distance" if r["target"] == "gaussian16" else "mode_weight_error"
            verdicts.append({"target": r["target"], "sampler": sampler, "nfe": r["nfe"], "metric": metric,
                             "value": r[metric], "ddpm_1000": ref[metric], "ratio_to_ddpm_1000": r[metric] / ref[metric],
                             "reaches_ddpm_1000": r[metric] <= ref[metric]})
    report = {"meddiff": __version__, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "samples": args.samples, "seed": args.seed, "results": results, "grids": grids, "verdicts": verdicts}
    cols = ["target", "sampler", "spacing", "nfe", "frechet_distance", "mode_weight_error", "seconds"]
    print("\n## Samplers (VP SDE, recommended grid, exact denoiser)\n")
    print(table(results, cols))
    print("\n## Time grids (16-D Gaussian)\n")
    print(table(grids, ["schedule", "sampler", "nfe", "spacing", "frechet_distance"]))
    print("\n## Does a fast solver at <= 20 NFE reach DDPM-1000?\n")
    print(table(verdicts, ["target", "sampler", "nfe", "metric", "value", "ddpm_1000", "ratio_to_ddpm_1000", "reaches_ddpm_1000"]))
    if args.out:
        write_json(report, args.out)


if __name__ == "__main__":
    main()
