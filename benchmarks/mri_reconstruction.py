"""MRI reconstruction benchmark: the classical baselines and the four diffusion solvers on the ESPIRiT brain slice.

Retrospective undersampling of the fully sampled 8-coil k-space (230 x 180): 1D Gaussian / equispaced at 4x and 8x
with 8 % ACS along ky, 2D Poisson disc 8x; mask seeds 0-2 (``--seeds``; the diffusion solvers may use fewer,
``--diffusion-seeds``, stated in the JSON). PSNR / SSIM / NMSE of the magnitude against the fully sampled RSS (whole
image and foreground "fg" = RSS > 0.1 max, as benchmarks/mri_baselines.py), seconds per slice (coil calibration
excluded, as there), network evaluations, and for the diffusion solvers the agreement of the per-pixel std with the
real error (Pearson correlation over the foreground; binned calibration: RMS error per std decile).

    python benchmarks/mri_reconstruction.py --out mri_reconstruction.json
    python benchmarks/mri_reconstruction.py --tune ddnm --out tune.json   # parameter grid on development seed 100
    python benchmarks/mri_reconstruction.py --combine rss --out rss.json  # every output as RSS of DC coil images
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.data.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mri_baselines import ACS_FRACTION, FOREGROUND, SETTINGS, load_slice, scores  # noqa: E402

from meddiff.physics import make_mask  # noqa: E402
from meddiff.tasks import mri  # noqa: E402

DEV_SEED = 100
# Extra rows: a solver with other parameters, to show what the defaults (refining the CS image) are compared with.
VARIANTS = {"ddnm-from-noise": ("ddnm", {"start": 1.0, "steps": 10, "samples": 2, "eta": 0.85})}
TUNE_GRID = {
    "pc": [{"snr": s, "steps": n} for s, n in itertools.product((0.02, 0.05, 0.1), (20, 30))],
    "dps": [{"zeta": z} for z in (0.3, 1.0, 3.0)],
    "ddnm": [{"eta": e, "steps": n} for e, n in itertools.product((0.5, 0.85, 1.0), (20, 30))],
    "coarse-to-fine": [{"refine_start": r, "steps": n} for r, n in itertools.product((0.1, 0.2, 0.3), (10, 20))],
}


def uncertainty(image: np.ndarray, std: np.ndarray, ref: np.ndarray) -> dict:
    """Pearson correlation of std and |error| on the foreground, and RMS error per std decile (calibration)."""
    fg = ref > FOREGROUND * ref.max()
    err, s = np.abs(image - ref)[fg], std[fg]
    corr = float(np.corrcoef(s, err)[0, 1]) if s.std() > 0 else float("nan")
    edges = np.quantile(s, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
    bins = [{"std": float(s[which == b].mean()), "rms_error": float(np.sqrt((err[which == b] ** 2).mean()))}
            for b in range(10) if (which == b).any()]
    return {"std_error_corr": corr, "calibration": bins}


def problem_for(kspace, pattern, accel, seed):
    mask = make_mask(tuple(kspace.shape[-2:]), accel, pattern, acs_fraction=ACS_FRACTION, seed=seed, axis=-2)
    start = time.perf_counter()
    problem = mri.make_problem(kspace, mask)
    return mask, problem.maps, time.perf_counter() - start


def run_one(kspace, ref, mask, maps, name, prior, seed, params=None, combine="sense"
            ) -> tuple[dict, mri.Reconstruction]:
    method, variant = VARIANTS.get(name, (name, {}))
    result = mri.reconstruct(kspace, mask, method, prior=prior if method in mri.SOLVERS else None, maps=maps,
                             seed=seed, combine=combine, **{**variant, **(params or {})})
    row = {"method": name, "seconds": result.seconds, "nfe": result.nfe,
           "samples": result.settings.get("samples", 0), **scores(torch.from_numpy(result.image), ref)}
    if result.std is not None and method in mri.SOLVERS and row["samples"] > 1:
        row.update(uncertainty(result.image, result.std, ref.numpy()))
    row["settings"] = {k: v for k, v in result.settings.items() if k != "method"}
    return row, result


def benchmark(kspace, ref, prior, methods, seeds, diffusion_seeds, combine="sense") -> dict:
    rows = []
    for (pattern, accel), seed in itertools.product(SETTINGS, seeds):
        mask, maps, calib = problem_for(kspace, pattern, accel, seed)
        for method in methods:
            if (method in mri.SOLVERS or method in VARIANTS) and seed not in diffusion_seeds:
                continue
            row, _ = run_one(kspace, ref, mask, maps, method, prior, seed, combine=combine)
            row.update({"pattern": pattern, "acceleration": accel, "seed": seed, "calibration_seconds": calib,
                        "realised_acceleration": mask.numel() / float(mask.sum())})
            rows.append(row)
            print(f"{pattern} {accel}x seed {seed} {method}: PSNR {row['psnr']:.2f} fg {row['psnr_fg']:.2f} "
                  f"SSIM {row['ssim']:.4f} {row['seconds']:.1f}s nfe {row['nfe']}"
                  + (f" corr {row['std_error_corr']:.2f}" if "std_error_corr" in row else ""), flush=True)
    return {"rows": rows, "summary": summarise(rows, methods)}


def summarise(rows, methods) -> list[dict]:
    out = []
    for (pattern, accel), method in itertools.product(SETTINGS, methods):
        sel = [r for r in rows if r["pattern"] == pattern and r["acceleration"] == accel and r["method"] == method]
        if not sel:
            continue
        keys = ["psnr", "ssim", "nmse", "psnr_fg", "ssim_fg", "seconds", "nfe"] + \
            (["std_error_corr"] if "std_error_corr" in sel[0] else [])
        agg = {k: (statistics.mean(r[k] for r in sel), statistics.pstdev(r[k] for r in sel)) for k in keys}
        out.append({"pattern": pattern, "acceleration": accel, "method": method, "n": len(sel),
                    "seeds": [r["seed"] for r in sel],
                    **{f"{k}_mean": v[0] for k, v in agg.items()}, **{f"{k}_std": v[1] for k, v in agg.items()}})
    return out


def markdown(summary) -> str:
    lines = ["| mask | method | seeds | PSNR (dB) | SSIM | NMSE | PSNR fg | SSIM fg | s / slice | NFE "
             "| std-error corr |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        corr = f"{r['std_error_corr_mean']:.2f}" if "std_error_corr_mean" in r else ""
        lines.append(f"| {r['pattern']} {r['acceleration']}x | {r['method']} | {r['n']} | {r['psnr_mean']:.2f} ± "
                     f"{r['psnr_std']:.2f} | {r['ssim_mean']:.4f} | {r['nmse_mean']:.4f} | {r['psnr_fg_mean']:.2f} | "
                     f"{r['ssim_fg_mean']:.4f} | {r['seconds_mean']:.1f} | {r['nfe_mean']:.0f} | {corr} |")
    return "\n".join(lines)


def tune(kspace, ref, prior, method, settings) -> dict:
    problems = [(p, a, *problem_for(kspace, p, a, DEV_SEED)[:2]) for p, a in settings]
    rows = []
    for params in TUNE_GRID[method]:
        values = [run_one(kspace, ref, mask, maps, method, prior, DEV_SEED, params)[0] for _, _, mask, maps in problems]
        rows.append({"params": params, "psnr": [v["psnr"] for v in values], "psnr_fg": [v["psnr_fg"] for v in values],
                     "seconds": [v["seconds"] for v in values],
                     "mean_psnr_fg": statistics.mean(v["psnr_fg"] for v in values)})
        print(f"{method} {params}: fg PSNR {[round(v, 2) for v in rows[-1]['psnr_fg']]} "
              f"{statistics.mean(rows[-1]['seconds']):.1f}s", flush=True)
    return {"method": method, "dev_seed": DEV_SEED, "settings": settings, "grid": rows,
            "best": max(rows, key=lambda r: r["mean_psnr_fg"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--methods", nargs="+", default=list(mri.METHODS) + list(VARIANTS),
                        choices=list(mri.METHODS) + list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask seeds for every method")
    parser.add_argument("--diffusion-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="mask seeds for the diffusion solvers (a subset of --seeds when time is short)")
    parser.add_argument("--checkpoint", help="prior (default: the shipped brain prior)")
    parser.add_argument("--tune", choices=mri.SOLVERS, help="grid-search one solver on development seed 100")
    parser.add_argument("--tune-settings", nargs="+", default=["gaussian:4", "equispaced:8"],
                        help="pattern:acceleration settings used by --tune")
    parser.add_argument("--merge", nargs="*", default=[], help="earlier result JSON files whose rows are added "
                        "(e.g. the diffusion solvers on more seeds, run separately)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", choices=mri.COMBINES, default="sense",
                        help="output magnitude of every method (meddiff reconstruct --combine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kspace, ref = load_slice()
    prior = mri.load_prior(args.checkpoint)
    if args.tune:
        settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.tune_settings]
        result = tune(kspace.numpy(), ref, prior, args.tune, settings)
    else:
        result = benchmark(kspace.numpy(), ref, prior, args.methods, args.seeds, args.diffusion_seeds, args.combine)
        done = {(r["pattern"], r["acceleration"], r["seed"], r["method"]) for r in result["rows"]}
        for path in args.merge:
            rows = json.loads(Path(path).read_text())["rows"]
            result["rows"] += [r for r in rows if (r["pattern"], r["acceleration"], r["seed"], r["method"]) not in done]
        methods = list(dict.fromkeys(args.methods + [r["method"] for r in result["rows"]]))
        result["summary"] = summarise(result["rows"], methods)
        result["merged"] = args.merge
        print(markdown(result["summary"]))
    result.update({"solver_defaults": mri.SOLVER_DEFAULTS, "acs_fraction": ACS_FRACTION, "torch": torch.__version__,
                   "threads": args.threads, "combine": args.combine, "prior": str(args.checkpoint or "shipped default for reconstruct"),
                   "prior_meta_step": prior.meta.get("step"), "seeds": args.seeds,
                   "diffusion_seeds": args.diffusion_seeds, "variants": VARIANTS,
                   "data": "mri_kspace_brain_8ch (ESPIRiT demo, 8 coils, 230x180)"})
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
