"""Sampler accuracy against NFE on targets with an exact denoiser (no training involved).

Targets: an anisotropic 16-D Gaussian (eigenvalues 0.01..4, Frechet distance to the truth) and a 4-mode 2D
Gaussian mixture (weights 0.4/0.3/0.2/0.1, total-variation error of the mode weights). Every sampler runs the
exact denoiser under a VP SDE (beta 0.1..20) on its recommended grid (``recommended_spacing``). A second table
compares the time grids per schedule, sampler and NFE on the 16-D Gaussian, which is how those recommendations
are chosen: exactly for the deterministic samplers (the exact denoiser is affine in x, so the output law is the
affine push-forward of the prior; no sampling noise), by Monte Carlo with --samples for ddpm and pc. Prints
markdown tables and writes JSON with --out.

    python benchmarks/sampler_accuracy.py --out sampler_accuracy.json [--samples 50000]
    python benchmarks/sampler_accuracy.py --grids-only --samples 20000 --out grids.json   # the grid table only
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from meddiff import __version__
from meddiff.data.io import write_json
from meddiff.diffusion import (
    VESDE,
    VPSDE,
    DiscreteSchedule,
    get_sampler,
    initial_noise,
    make_grid,
    network_evaluations,
    recommended_spacing,
)
from meddiff.diffusion.timesteps import CONTINUOUS_SPACINGS, DISCRETE_SPACINGS
from meddiff.errors import MeddiffError
from meddiff.diffusion.analytic import anisotropic_gaussian, mixture_2d
from meddiff.metrics.distributions import frechet_distance, sample_moments

NFES = (5, 10, 20, 50, 100, 1000)
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "pc")
GRID_NFES = (10, 20, 50)
GRID_SAMPLERS = ("ddim", "dpmpp_2m", "heun", "ddpm", "pc")  # euler is ddim with eta = 0: the same numbers
DETERMINISTIC = ("ddim", "euler", "dpmpp_2m", "heun")
SPACINGS = ("uniform", "logsnr", "karras", "trailing", "leading", "linspace")


def grid_schedules() -> dict:
    """The schedules of the grid table: recommended_spacing distinguishes continuous, discrete and zero-SNR ones."""
    return {"VP SDE": VPSDE(), "VE SDE": VESDE(), "DDPM linear T=1000": DiscreteSchedule("linear"),
            "DDPM scaled_linear T=1000": DiscreteSchedule("scaled_linear"), "DDPM cosine T=1000": DiscreteSchedule("cosine"),
            "DDPM linear T=1000, zero terminal SNR": DiscreteSchedule("linear", zero_terminal_snr=True)}


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


def exact_frechet(target, schedule, sampler: str, steps: int, spacing: str) -> float:
    """Exact Frechet distance of a deterministic sampler's output for a Gaussian target: with an affine denoiser the
    sampler is an affine map x_T -> A x_T + b, read off by pushing 0 and the basis vectors through it (float64)."""
    grid = make_grid(schedule, steps, spacing)
    std = grid.prior_std()
    basis = torch.cat([torch.zeros(1, target.dim), torch.eye(target.dim)]).double()
    out = get_sampler(sampler)(target.denoiser(schedule), basis * std, grid)
    offset, matrix = out[0], (out[1:] - out[0]).T / std
    return frechet_distance(offset, std**2 * matrix @ matrix.T, target.mean(), target.covariance())


def grid_comparison(target, samples: int, seed: int) -> list[dict]:
    """One row per (schedule, sampler, NFE): Frechet distance on each valid grid, the best grid and the recommended one."""
    rows = []
    for schedule_name, schedule in grid_schedules().items():
        spacings = DISCRETE_SPACINGS if schedule.is_discrete else CONTINUOUS_SPACINGS
        for sampler in GRID_SAMPLERS:
            for nfe in GRID_NFES:
                steps = steps_for(sampler, nfe)
                errors = {}
                for spacing in spacings:
                    try:
                        if sampler in DETERMINISTIC:
                            errors[spacing] = exact_frechet(target, schedule, sampler, steps, spacing)
                        else:
                            errors[spacing] = run_one("gaussian16", target, schedule, sampler, steps, spacing,
                                                      samples, seed)["frechet_distance"]
                    except MeddiffError:  # e.g. log-SNR grids or heun from SNR = 0 on zero-terminal-SNR schedules
                        continue
                best = min(errors, key=errors.get)
                recommended = recommended_spacing(sampler, schedule)
                rows.append({"schedule": schedule_name, "sampler": sampler, "nfe": network_evaluations(sampler, steps),
                             "method": "exact" if sampler in DETERMINISTIC else f"monte carlo, {samples} samples",
                             **{sp: errors.get(sp) for sp in SPACINGS}, "best": best, "recommended": recommended,
                             "recommended_over_best": errors[recommended] / errors[best] if recommended in errors else None})
                print(f"{schedule_name:38s} {sampler:9s} NFE {rows[-1]['nfe']:3d}  best {best:9s} recommended "
                      f"{recommended:9s}  " + "  ".join(f"{k} {v:.3g}" for k, v in errors.items()), flush=True)
    return rows


def grid_table(rows: list[dict]) -> str:
    """Markdown table of grid_comparison rows, the best grid of each row in bold."""
    lines = ["| schedule | sampler | NFE | " + " | ".join(SPACINGS) + " | recommended | recommended / best |",
             "|" + "---|" * (len(SPACINGS) + 5)]
    for r in rows:
        cells = [("**{}**" if sp == r["best"] else "{}").format(f"{r[sp]:.3g}") if r[sp] is not None else ""
                 for sp in SPACINGS]
        ratio = f"{r['recommended_over_best']:.2f}" if r["recommended_over_best"] is not None else "-"
        lines.append(f"| {r['schedule']} | {r['sampler']} | {r['nfe']} | " + " | ".join(cells)
                     + f" | {r['recommended']} | {ratio} |")
    return "\n".join(lines)


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
    parser.add_argument("--grids-only", action="store_true", help="only the grid table (about a minute at 20000 samples)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    targets = {"gaussian16": anisotropic_gaussian(), "mixture2d": mixture_2d()}
    vp = VPSDE()
    if args.grids_only:
        grids = grid_comparison(targets["gaussian16"], args.samples, args.seed)
        print("\n## Time grids (16-D Gaussian)\n")
        print(grid_table(grids))
        if args.out:
            write_json({"meddiff": __version__, "torch": torch.__version__, "samples": args.samples, "seed": args.seed,
                        "grids": grids}, args.out)
        return
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
    grids = grid_comparison(targets["gaussian16"], args.samples, args.seed)

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
    print(grid_table(grids))
    print("\n## Does a fast solver at <= 20 NFE reach DDPM-1000?\n")
    print(table(verdicts, ["target", "sampler", "nfe", "metric", "value", "ddpm_1000", "ratio_to_ddpm_1000", "reaches_ddpm_1000"]))
    if args.out:
        write_json(report, args.out)


if __name__ == "__main__":
    main()
