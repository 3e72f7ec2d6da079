"""MRI reconstruction benchmark: the classical baselines and the four diffusion solvers on the ESPIRiT brain slice.

Retrospective undersampling of the fully sampled 8-coil k-space (230 x 180): 1D Gaussian / equispaced at 4x and 8x
with 8 % ACS along ky, 2D Poisson disc 8x; mask seeds 0-2 (``--seeds``; the diffusion solvers may use fewer,
``--diffusion-seeds``, stated in the JSON). PSNR / SSIM / NMSE of the magnitude against the fully sampled RSS (whole
image and foreground "fg" = RSS > 0.1 max, as benchmarks/mri_baselines.py), seconds per slice (coil calibration
excluded, as there), network evaluations, and for the diffusion solvers the agreement of the per-pixel std with the
real error (Pearson correlation over the foreground; binned calibration: RMS error per std decile).

Controls that show what the prior adds: "<solver>-untrained" runs the solver with the same network freshly initialised
(``mri.untrained_prior``: it predicts 0, no image knowledge), "cs-dc" is the L1-wavelet CS image after the one
data-consistency step every solver ends with.

    python benchmarks/mri_reconstruction.py --out mri_reconstruction.json
    python benchmarks/mri_reconstruction.py --tune ddnm --out tune.json   # grid (defaults included) on dev seed 100
    python benchmarks/mri_reconstruction.py --combine rss --out rss.json  # every output as RSS of DC coil images

In-domain (``--domain ixi``, issue 21; benchmarks/mri_ixi.py): simulated 8-coil k-space of whole axial IXI T1
test-subject slices (90 x 120, 2 mm; the true image is the reference), Gaussian / equispaced 4x and 8x, 8 % ACS;
the classical baselines with the CS / TV weights tuned on val-subject slices, CS with the true coil maps, every
diffusion solver and the controls. Rows are written as they finish and skipped on a re-run with the same --out
(resume; split runs with --methods). The table pairs it with the out-of-domain ESPIRiT row of the same prior:

    python benchmarks/mri_reconstruction.py --domain espirit --checkpoint CKPT --out mri_espirit.json
    python benchmarks/mri_reconstruction.py --domain ixi --checkpoint CKPT --out mri_ixi.json --ood mri_espirit.json
    python benchmarks/mri_reconstruction.py --domain ixi --subjects 1 --slices 2 --settings gaussian:4 --seeds 0 \
        --diffusion-seeds 0 --out small.json                            # a small development run
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
import mri_ixi  # noqa: E402
from mri_baselines import ACS_FRACTION, FOREGROUND, SETTINGS, load_slice, scores  # noqa: E402

from meddiff.physics import cs_wavelet, make_mask  # noqa: E402
from meddiff.tasks import mri  # noqa: E402
from meddiff.training import training_steps  # noqa: E402

DEV_SEED = 100
UNTRAINED_SEED = 0
# Extra rows: name -> (method, parameters, prior). "untrained": the shipped network freshly initialised; a solver
# that scores the same with it refines its start image without using the prior.
VARIANTS = {"ddnm-from-noise": ("ddnm", {"start": 1.0, "steps": 10, "samples": 2, "eta": 0.85}, "shipped"),
            **{f"{m}-untrained": (m, {}, "untrained") for m in mri.SOLVERS}}
CONTROLS = ("cs-dc",)  # L1-wavelet CS + the solvers' final data-consistency step
# Tuning grids on the development mask seed; {} is the current default, so the script reproduces (or overturns) it.
# Every entry runs with the shipped and the untrained prior.
STARTS = [{}, {"start": 0.03, "steps": 4}, {"start": 0.05, "steps": 5}, {"start": 0.1, "steps": 8},
          {"start": 0.2, "steps": 12}]
TUNE_GRID = {
    "pc": STARTS + [{"snr": 0.02}, {"snr": 0.1}],
    "dps": STARTS + [{"zeta": 0.3}, {"zeta": 3.0}],
    "ddnm": STARTS + [{"eta": 0.5}, {"eta": 1.0}],
    "coarse-to-fine": [{}, {"start": 0.05, "refine_start": 0.03}, {"start": 0.1, "steps": 6, "refine_start": 0.05},
                       {"start": 0.2, "steps": 10, "refine_start": 0.1, "refine_steps": 4}],
}
PRIOR_MATTERS_DB = 0.5  # "the prior matters": shipped beats untrained by at least this (mean foreground PSNR)


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


def cs_dc(problem: mri.MRIProblem, combine: str = "sense") -> torch.Tensor:
    """L1-wavelet CS followed by the one data-consistency step that ends every solver (``RealImageModel.finish``):
    S^H F^H((1 - M) F S x + M y) for "sense"; "rss" already combines the data-consistent coil images."""
    x = cs_wavelet(problem.op, problem.y)
    return mri.combine_coils(problem, x if combine == "rss" else problem.op.dc_step(x, problem.y, 1.0), combine)[0]


def run_one(kspace, ref, mask, maps, name, priors, seed, params=None, combine="sense", prior="shipped"
            ) -> tuple[dict, mri.Reconstruction]:
    """One row: ``priors`` maps "shipped" / "untrained" to a Prior; ``prior`` picks one for a plain solver name (a
    VARIANTS name brings its own)."""
    if name == "cs-dc":
        start = time.perf_counter()
        image = cs_dc(mri.make_problem(kspace, mask, maps=maps), combine)
        result = mri.Reconstruction(image.numpy(), None, 0, time.perf_counter() - start,
                                    {"method": "cs-dc", "combine": combine})
    else:
        method, variant, which = VARIANTS.get(name, (name, {}, prior))
        result = mri.reconstruct(kspace, mask, method, prior=priors[which] if method in mri.SOLVERS else None,
                                 maps=maps, seed=seed, combine=combine, **{**variant, **(params or {})})
        if method in mri.SOLVERS:
            result.settings["prior"] = which
    row = {"method": name, "seconds": result.seconds, "nfe": result.nfe,
           "samples": result.settings.get("samples", 0), **scores(torch.from_numpy(result.image), ref)}
    if result.std is not None and row["samples"] > 1:
        row.update(uncertainty(result.image, result.std, ref.numpy()))
    row["settings"] = {k: v for k, v in result.settings.items() if k != "method"}
    return row, result


def benchmark(kspace, ref, priors, methods, seeds, diffusion_seeds, combine="sense") -> dict:
    rows = []
    for (pattern, accel), seed in itertools.product(SETTINGS, seeds):
        mask, maps, calib = problem_for(kspace, pattern, accel, seed)
        for method in methods:
            if (method in mri.SOLVERS or method in VARIANTS) and seed not in diffusion_seeds:
                continue
            row, _ = run_one(kspace, ref, mask, maps, method, priors, seed, combine=combine)
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


def tune(kspace, ref, priors, method, settings, combine="sense") -> dict:
    """Every TUNE_GRID entry (the defaults first) with the shipped and the untrained prior on development seed
    DEV_SEED, against CS and CS + DC. "best": the highest mean foreground PSNR; "best_prior_matters": the same among
    the entries whose shipped prior beats the untrained one by PRIOR_MATTERS_DB."""
    problems = [(p, a, *problem_for(kspace, p, a, DEV_SEED)[:2]) for p, a in settings]
    controls = {}
    for name in ("cs-wavelet", "cs-dc"):
        values = [run_one(kspace, ref, mask, maps, name, priors, DEV_SEED, combine=combine)[0]
                  for _, _, mask, maps in problems]
        controls[name] = {"psnr": [v["psnr"] for v in values], "psnr_fg": [v["psnr_fg"] for v in values],
                          "mean_psnr_fg": statistics.mean(v["psnr_fg"] for v in values),
                          "mean_psnr": statistics.mean(v["psnr"] for v in values)}
        print(f"{name}: fg PSNR {[round(v, 2) for v in controls[name]['psnr_fg']]}", flush=True)
    rows = []
    for params in TUNE_GRID[method]:
        row = {"params": params, "settings": {}}
        for which in ("shipped", "untrained"):
            values = [run_one(kspace, ref, mask, maps, method, priors, DEV_SEED, params, combine, which)[0]
                      for _, _, mask, maps in problems]
            row[which] = {"psnr": [v["psnr"] for v in values], "psnr_fg": [v["psnr_fg"] for v in values],
                          "seconds": [v["seconds"] for v in values],
                          "mean_psnr": statistics.mean(v["psnr"] for v in values),
                          "mean_psnr_fg": statistics.mean(v["psnr_fg"] for v in values)}
            row["settings"] = values[0]["settings"]
        row["mean_psnr_fg"] = row["shipped"]["mean_psnr_fg"]
        row["prior_gain_fg"] = row["shipped"]["mean_psnr_fg"] - row["untrained"]["mean_psnr_fg"]
        row["prior_gain"] = row["shipped"]["mean_psnr"] - row["untrained"]["mean_psnr"]
        row["vs_cs_fg"] = row["shipped"]["mean_psnr_fg"] - controls["cs-wavelet"]["mean_psnr_fg"]
        row["vs_cs"] = row["shipped"]["mean_psnr"] - controls["cs-wavelet"]["mean_psnr"]
        rows.append(row)
        print(f"{method} {params or 'defaults'}: fg {[round(v, 2) for v in row['shipped']['psnr_fg']]} "
              f"untrained {[round(v, 2) for v in row['untrained']['psnr_fg']]}; mean fg gain over untrained "
              f"{row['prior_gain_fg']:+.2f} dB (whole {row['prior_gain']:+.2f}), vs CS {row['vs_cs_fg']:+.2f} "
              f"(whole {row['vs_cs']:+.2f}); {statistics.mean(row['shipped']['seconds']):.1f}s", flush=True)
    matters = [r for r in rows if r["prior_gain_fg"] >= PRIOR_MATTERS_DB]
    return {"method": method, "dev_seed": DEV_SEED, "settings": settings, "controls": controls, "grid": rows,
            "best": max(rows, key=lambda r: r["mean_psnr_fg"]),
            "best_prior_matters": max(matters, key=lambda r: r["mean_psnr_fg"]) if matters else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--domain", choices=("espirit", "ixi"), default="espirit",
                        help="espirit: the real 8-coil ESPIRiT slice (out of the prior's domain); ixi: simulated "
                        "k-space of IXI T1 test-subject slices (benchmarks/mri_ixi.py)")
    parser.add_argument("--methods", nargs="+", default=None,
                        choices=list(mri.METHODS) + list(CONTROLS) + list(VARIANTS) + [mri_ixi.TRUE_MAPS],
                        help=f"default: every method and control ({mri_ixi.TRUE_MAPS} only with --domain ixi)")
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
    ixi = parser.add_argument_group("--domain ixi")
    ixi.add_argument("--subjects", type=int, default=3, help="first N test subjects (sorted)")
    ixi.add_argument("--slices", type=int, default=5, help="axial slices per subject")
    ixi.add_argument("--val-subjects", type=int, default=3, help="val subjects whose slices tune the CS / TV weights")
    ixi.add_argument("--val-slices", type=int, help="slices per val subject for the tuning (default: --slices)")
    ixi.add_argument("--settings", nargs="+", default=[f"{p}:{a}" for p, a in mri_ixi.SETTINGS],
                     help="pattern:acceleration masks")
    ixi.add_argument("--noise-sd", type=float, default=mri_ixi.NOISE_SD, help="k-space noise sd / slice max")
    ixi.add_argument("--steps", type=int, help="override every diffusion solver's steps (development runs)")
    ixi.add_argument("--samples", type=int, help="override every diffusion solver's samples (development runs)")
    ixi.add_argument("--no-tune", action="store_true", help="keep the physics default CS / TV weights")
    ixi.add_argument("--solver-init-lambda", choices=("tuned", "default"), default="tuned",
                     help="L1-wavelet weight of the CS image the diffusion solvers start from")
    ixi.add_argument("--ood", help="JSON of a --domain espirit run of the same prior: its table is added to the .md")
    args = parser.parse_args(argv)
    if args.methods is None:
        args.methods = None if args.domain == "ixi" else list(mri.METHODS) + list(CONTROLS) + list(VARIANTS)
    elif args.domain == "espirit" and mri_ixi.TRUE_MAPS in args.methods:
        parser.error(f"{mri_ixi.TRUE_MAPS} needs the simulation's true maps: --domain ixi")
    if args.domain == "ixi" and (args.tune or args.merge):
        parser.error("--tune / --merge are --domain espirit options (ixi resumes into --out instead of merging)")
    torch.set_num_threads(args.threads)
    prior = mri.load_prior(args.checkpoint)
    priors = {"shipped": prior, "untrained": mri.untrained_prior(prior, UNTRAINED_SEED)}
    if args.domain == "ixi":
        result = mri_ixi.run(args, priors, prior, run_one, VARIANTS)
        text = mri_ixi.markdown(result)
        if args.ood:
            ood = json.loads(Path(args.ood).read_text())
            if ood.get("prior") != result["prior"]:
                text += f"\nWARNING: the out-of-domain run used another prior ({ood.get('prior')}).\n"
            text += (f"\nOut of domain: the real 8-coil ESPIRiT slice (230 x 180, 1 mm), prior {ood.get('prior')} "
                     f"(step {ood.get('prior_meta_step')}):\n\n" + markdown(ood["summary"]) + "\n")
        Path(args.out).with_suffix(".md").write_text(text)
        print(text)
        return 0
    kspace, ref = load_slice()
    if args.tune:
        settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.tune_settings]
        result = tune(kspace.numpy(), ref, priors, args.tune, settings, args.combine)
    else:
        result = benchmark(kspace.numpy(), ref, priors, args.methods, args.seeds, args.diffusion_seeds, args.combine)
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
                   "prior_meta_step": training_steps(prior.meta), "seeds": args.seeds,
                   "diffusion_seeds": args.diffusion_seeds, "variants": VARIANTS, "untrained_seed": UNTRAINED_SEED,
                   "data": "mri_kspace_brain_8ch (ESPIRiT demo, 8 coils, 230x180)"})
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
