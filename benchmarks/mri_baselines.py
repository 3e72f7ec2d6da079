"""Classical MRI reconstruction baselines on the fully sampled 8-coil ESPIRiT brain slice.

Retrospective undersampling (1D Gaussian and equispaced at 4x and 8x with 8 % ACS along ky, 2D Poisson disc 8x),
3 mask seeds; zero-filled RSS, CG-SENSE, CS-wavelet (FISTA) and CS-TV (ADMM) with ESPIRiT maps calibrated from the
sampled centre; PSNR / SSIM / NMSE of the magnitude against the fully sampled RSS (data range = max RSS, whole image)
and seconds per slice (calibration excluded, reported separately). "fg" columns restrict PSNR / SSIM to the
foreground (RSS > 0.1 max), where the background noise texture of the RSS reference does not count.

    python benchmarks/mri_baselines.py --out mri_baselines.json
    python benchmarks/mri_baselines.py --tune --out mri_tuning.json   # weight grid on development mask seed 100
    python benchmarks/mri_baselines.py --compare-maps --out maps.json # CG-SENSE / CS with ESPIRiT vs low-res maps
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.data.io import write_json

from meddiff.metrics.image import nmse, psnr, ssim
from meddiff.physics import (MultiCoilMRI, centre_block, cg_sense, cs_tv, cs_wavelet, estimate_sensitivity_maps,
                             make_mask, zero_filled_rss)

SETTINGS = [("gaussian", 4), ("gaussian", 8), ("equispaced", 4), ("equispaced", 8), ("poisson", 8)]
TEST_SEEDS = (0, 1, 2)
DEV_SEEDS = (100,)  # development masks for tuning, disjoint from TEST_SEEDS
ACS_FRACTION = 0.08
FOREGROUND = 0.1  # foreground metrics: pixels with RSS > 0.1 max (53 % of the slice)
METHODS = ("zero_filled", "cg_sense", "cs_wavelet", "cs_tv")
GRID = {
    "cg_sense": [{"iters": i, "lam": lam} for i, lam in itertools.product((5, 10, 20), (0.0, 0.01, 0.05))],
    "cs_wavelet": [{"lam": lam} for lam in (0.0005, 0.001, 0.002, 0.004, 0.008)],
    "cs_tv": [{"lam": lam, "rho": rho} for lam, rho in itertools.product((0.0005, 0.001, 0.002, 0.004),
                                                                        (0.02, 0.05, 0.2))],
}


def load_slice() -> tuple[torch.Tensor, torch.Tensor]:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mri_kspace_brain_8ch"
    if not shared.is_dir():
        from meddiff.data import asset_path
        shared = asset_path("kspace_brain_8ch")
    return torch.from_numpy(np.load(shared / "kspace.npy")), torch.from_numpy(np.load(shared / "rss_reference.npy"))


def problem(kspace: torch.Tensor, pattern: str, accel: int, seed: int, maps_method: str = "espirit"):
    mask = make_mask(tuple(kspace.shape[-2:]), accel, pattern, acs_fraction=ACS_FRACTION, seed=seed, axis=-2)
    y = kspace * mask
    start = time.perf_counter()
    maps = estimate_sensitivity_maps(y, acs=centre_block(mask), method=maps_method)
    return MultiCoilMRI(maps, mask), y, mask, time.perf_counter() - start


def reconstruct(method: str, op, y, **params) -> torch.Tensor:
    if method == "zero_filled":
        return zero_filled_rss(y)
    return {"cg_sense": cg_sense, "cs_wavelet": cs_wavelet, "cs_tv": cs_tv}[method](op, y, **params).abs()


def scores(x: torch.Tensor, ref: torch.Tensor) -> dict:
    top = float(ref.max())
    fg = ref > FOREGROUND * top
    return {"psnr": float(psnr(x, ref, top)), "ssim": float(ssim(x, ref, top)), "nmse": float(nmse(x, ref)),
            "psnr_fg": float(psnr(x, ref, top, mask=fg)), "ssim_fg": float(ssim(x, ref, top, mask=fg))}


def tune(kspace, ref) -> dict:
    problems = [(p, a, s, *problem(kspace, p, a, s)[:2]) for (p, a) in SETTINGS for s in DEV_SEEDS]
    result = {}
    for method, grid in GRID.items():
        rows = []
        for params in grid:
            values = [scores(reconstruct(method, op, y, **params), ref)["psnr"] for (_, _, _, op, y) in problems]
            rows.append({"params": params, "mean_psnr": statistics.mean(values), "psnr": values})
            print(f"{method} {params}: mean PSNR {rows[-1]['mean_psnr']:.2f}", flush=True)
        best = max(rows, key=lambda r: r["mean_psnr"])
        print(f"best {method}: {best['params']} ({best['mean_psnr']:.2f} dB)", flush=True)
        result[method] = {"grid": rows, "best": best}
    return {"dev_seeds": list(DEV_SEEDS), "settings": SETTINGS, "tuning": result}


def benchmark(kspace, ref) -> dict:
    rows = []
    for (pattern, accel), seed in itertools.product(SETTINGS, TEST_SEEDS):
        op, y, mask, calib_s = problem(kspace, pattern, accel, seed)
        for method in METHODS:
            start = time.perf_counter()
            x = reconstruct(method, op, y)
            seconds = time.perf_counter() - start
            rows.append({"pattern": pattern, "acceleration": accel, "realised_acceleration": mask.numel() / float(mask.sum()),
                         "seed": seed, "method": method, "seconds": seconds, "calibration_seconds": calib_s,
                         **scores(x, ref)})
            print(f"{pattern} {accel}x seed {seed} {method}: PSNR {rows[-1]['psnr']:.2f} SSIM {rows[-1]['ssim']:.4f} "
                  f"{seconds:.2f}s", flush=True)
    return {"rows": rows, "summary": summarise(rows)}


def compare_maps(kspace, ref, seeds=TEST_SEEDS, methods=("cg_sense", "cs_wavelet")) -> dict:
    """CG-SENSE and CS-wavelet with ESPIRiT maps against low-resolution (ACS / RSS) maps on the same masks: the
    foreground and whole-image PSNR difference (ESPIRiT minus low-res) per setting, mean and range over ``seeds``."""
    rows = []
    for (pattern, accel), seed in itertools.product(SETTINGS, seeds):
        for maps_method in ("espirit", "lowres"):
            op, y, mask, calib_s = problem(kspace, pattern, accel, seed, maps_method)
            for method in methods:
                rows.append({"pattern": pattern, "acceleration": accel, "seed": seed, "maps": maps_method,
                             "method": method, "calibration_seconds": calib_s,
                             **scores(reconstruct(method, op, y), ref)})
    summary = []
    for (pattern, accel), method in itertools.product(SETTINGS, methods):
        def pick(maps_method, key):
            return [r[key] for r in rows if (r["pattern"], r["acceleration"], r["method"], r["maps"]) ==
                    (pattern, accel, method, maps_method)]
        diff_fg = [a - b for a, b in zip(pick("espirit", "psnr_fg"), pick("lowres", "psnr_fg"))]
        diff = [a - b for a, b in zip(pick("espirit", "psnr"), pick("lowres", "psnr"))]
        summary.append({"pattern": pattern, "acceleration": accel, "method": method,
                        "espirit_psnr_fg": statistics.mean(pick("espirit", "psnr_fg")),
                        "lowres_psnr_fg": statistics.mean(pick("lowres", "psnr_fg")),
                        "diff_fg_mean": statistics.mean(diff_fg), "diff_fg_min": min(diff_fg),
                        "diff_fg_max": max(diff_fg), "diff_mean": statistics.mean(diff)})
    print("| mask | method | fg PSNR ESPIRiT | fg PSNR low-res | ESPIRiT - low-res fg (min..max) | whole image |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['pattern']} {r['acceleration']}x | {r['method']} | {r['espirit_psnr_fg']:.2f} | "
              f"{r['lowres_psnr_fg']:.2f} | {r['diff_fg_mean']:+.2f} ({r['diff_fg_min']:+.2f}..{r['diff_fg_max']:+.2f})"
              f" | {r['diff_mean']:+.2f} |")
    return {"seeds": list(seeds), "rows": rows, "summary": summary}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for (pattern, accel), method in itertools.product(SETTINGS, METHODS):
        sel = [r for r in rows if r["pattern"] == pattern and r["acceleration"] == accel and r["method"] == method]
        agg = {k: (statistics.mean(r[k] for r in sel), statistics.pstdev(r[k] for r in sel))
               for k in ("psnr", "ssim", "nmse", "psnr_fg", "ssim_fg", "seconds")}
        out.append({"pattern": pattern, "acceleration": accel, "method": method, "n": len(sel),
                    **{f"{k}_mean": v[0] for k, v in agg.items()}, **{f"{k}_std": v[1] for k, v in agg.items()}})
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| mask | method | PSNR (dB) | SSIM | NMSE | PSNR fg | SSIM fg | s / slice |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['pattern']} {r['acceleration']}x | {r['method']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} "
                     f"| {r['ssim_mean']:.4f} ± {r['ssim_std']:.4f} | {r['nmse_mean']:.4f} | {r['psnr_fg_mean']:.2f} "
                     f"| {r['ssim_fg_mean']:.4f} | {r['seconds_mean']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--tune", action="store_true", help="grid-search the weights on development seeds instead")
    parser.add_argument("--compare-maps", action="store_true",
                        help="CG-SENSE and CS-wavelet with ESPIRiT vs low-resolution coil maps on the test seeds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kspace, ref = load_slice()
    from meddiff.physics.baselines import DEFAULTS
    if args.compare_maps:
        result = compare_maps(kspace, ref)
        result.update({"acs_fraction": ACS_FRACTION, "torch": torch.__version__, "threads": args.threads})
        write_json(result, args.out)
        return 0
    result = tune(kspace, ref) if args.tune else benchmark(kspace, ref)
    result.update({"defaults": DEFAULTS, "acs_fraction": ACS_FRACTION, "torch": torch.__version__,
                   "threads": args.threads, "data": "mri_kspace_brain_8ch (ESPIRiT demo, 8 coils, 230x180)"})
    if not args.tune:
        print(markdown(result["summary"]))
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
