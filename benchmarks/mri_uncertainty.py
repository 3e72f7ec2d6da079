"""MRI uncertainty benchmark: does the per-pixel std over the K posterior samples track the real error?

In-domain data: axial slices of the IXI T1 validation subjects (configs/splits/ixi_t1_2mm_dlmuse.json, "val" only;
the test subjects are never read), 2 mm RAS 90 x 120, simulated as 8-coil k-space (``meddiff.physics.simulate_kspace``:
birdcage maps, smooth phase, k-space noise ``--noise`` x image max), undersampled along the first axis (gaussian 4x,
equispaced 8x, 8 % ACS, mask seed 100 + slice index: development masks). Reference: the RSS of the fully sampled
noisy k-space (as benchmarks/mri_reconstruction.py). Per solver setting: PSNR (whole image and foreground = RSS > 0.1
max), Pearson correlation of the std map with |error| over the foreground (target >= 0.5; "bound": the most any std
map reaches if the error is Gaussian given its std, ``gaussian_bound``; "4x4": the same correlation of RMS values
over 4 x 4 pixel tiles, ``block_pearson``), seconds per slice and network evaluations; a calibration plot
(``mri.calibration_plot``, RMS error per std decile) per setting, pooled over all slices.

    OMP_NUM_THREADS=1 python benchmarks/mri_uncertainty.py --out runs/mri_uncertainty
    OMP_NUM_THREADS=1 python benchmarks/mri_uncertainty.py --settings ddnm mc-ddpm --subjects 1 --slices 1 --out /tmp/u
    OMP_NUM_THREADS=1 python benchmarks/mri_uncertainty.py --checkpoint runs/shipped/brain_t1_ixi --out runs/mri_unc

``--checkpoint``: a prior (run directory, checkpoint or shipped name; default: the brain_t1_ixi run when it has a
checkpoint, else the shipped reconstruct prior). Writes uncertainty.json, uncertainty.md and calibration_<name>.png.

Measured 2026-12-06 (brain_t1_ixi at step 200 of 1600, 9 slices x 2 masks, K = 4, one thread, 12 min; command in
the mcddpm docstring): fg PSNR / Pearson / bound / Pearson 4x4 tiles / s per slice:
zero-filled 20.89 / - / 0.420 / - / 0.0; cs-wavelet 23.71 / - / 0.422 / - / 0.5; ddnm 23.70 / 0.081 / 0.424 / 0.305 /
2.7; ddnm-s0.2 22.83 / 0.101 / 0.416 / 0.296 / 5.7; mc-ddpm (default, 0.1 of T) 23.73 / 0.115 / 0.426 / 0.338 / 5.0;
mc-ddpm-s0.05 23.89 / 0.105 / 0.426 / 0.337 / 3.8; mc-ddpm-s0.3 23.20 / 0.115 / 0.421 / 0.312 / 7.1; mc-ddpm-s1
22.55 / 0.107 / 0.414 / 0.302 / 14.0. The 0.5 target is above the bound on 139 of the 144 (slice, mask, setting)
rows (bound 0.28-0.51): no std map can meet it at the pixel level on this data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.data.io import write_json
from meddiff.files import write_png
from meddiff.metrics.image import psnr
from meddiff.physics import ifft2c, make_mask, rss
from meddiff.physics.simulate import simulate_kspace
from meddiff.tasks import mri
from meddiff.training import training_steps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ixi_t1_2mm_dlmuse"
SPLIT = ROOT / "configs" / "splits" / "ixi_t1_2mm_dlmuse.json"
RUN = ROOT / "runs" / "shipped" / "brain_t1_ixi"
MASKS = [("gaussian", 4), ("equispaced", 8)]
ACS_FRACTION = 0.08
FOREGROUND = 0.1
DEV_MASK_SEED = 100
# name -> (method, parameters). The first rows are each solver at its defaults; the others raise the start level
# (fraction of the diffusion time the noised CS image starts from), the knob that sets the spread of the samples.
SETTINGS = {
    "zero-filled": ("zero-filled", {}),
    "cs-wavelet": ("cs-wavelet", {}),
    "ddnm": ("ddnm", {}),
    "ddnm-s0.2": ("ddnm", {"start": 0.2, "steps": 10}),
    "ddnm-s0.3": ("ddnm", {"start": 0.3, "steps": 12}),
    "mc-ddpm": ("mc-ddpm", {}),
    "mc-ddpm-s0.05": ("mc-ddpm", {"start": 0.05, "steps": 6}),
    "mc-ddpm-s0.3": ("mc-ddpm", {"start": 0.3, "steps": 12}),
    "mc-ddpm-s1": ("mc-ddpm", {"start": 1.0, "steps": 25}),
}
PEARSON_TARGET = 0.5
BLOCK = 4  # tiles of 4 x 4 pixels (8 mm) for the regional correlation


def val_slices(subjects: int, per_subject: int) -> list[tuple[str, int, np.ndarray]]:
    """(subject, z, magnitude (90, 120)) of ``per_subject`` axial slices around the middle of each of the first
    ``subjects`` validation subjects (RAS, the prior's orientation and scale convention)."""
    from meddiff.data.volumes import load_subject

    names = json.loads(SPLIT.read_text())["val"][:subjects]
    out = []
    for name in names:
        vol, _, _ = load_subject({"t1": DATA / "t1" / f"{name}_T1.nii.gz"}, ["t1"], with_seg=False,
                                 normalize_cfg="none", canonical=True, spacing=None)
        fg = (vol[0] > 0.1 * vol[0].max()).reshape(-1, vol.shape[-1]).mean(0)  # foreground fraction per z
        zs = np.flatnonzero(fg > 0.5 * fg.max())
        mid, half = (zs[0] + zs[-1]) // 2, max((zs[-1] - zs[0]) // 4, 1)
        picks = np.linspace(mid - half, mid + half, per_subject).round().astype(int) if per_subject > 1 else [mid]
        out += [(name, int(z), np.ascontiguousarray(vol[0, :, :, z], dtype=np.float32)) for z in picks]
    return out


def pearson(std: np.ndarray, error: np.ndarray) -> float:
    return float(np.corrcoef(std, error)[0, 1]) if std.std() > 0 and error.std() > 0 else float("nan")


def gaussian_bound(error: np.ndarray) -> float:
    """The highest Pearson(std, |error|) any std map can reach if the error is Gaussian given its std, e = sigma z:
    from the coefficient of variation r of |e|, the CV of sigma is c = sqrt((2/pi)(1 + r^2) - 1) and the best
    correlation (sigma itself) is c / r. A nearly white error field (r near sqrt(pi/2 - 1) = 0.76) leaves little
    to predict, whatever the sampler."""
    r = float(error.std() / error.mean())
    c2 = (2 / np.pi) * (1 + r * r) - 1
    return float(np.sqrt(max(c2, 0.0)) / r)


def block_pearson(std: np.ndarray, error: np.ndarray, fg: np.ndarray, block: int = BLOCK) -> float:
    """Pearson of the RMS std and the RMS |error| over ``block`` x ``block`` pixel tiles at least half foreground:
    does the map find the regions with large errors (the per-pixel error is close to white noise)."""
    h, w = (s // block * block for s in std.shape)

    def tiles(a):
        return a[:h, :w].reshape(h // block, block, w // block, block).mean((1, 3))

    keep = tiles(fg.astype(np.float64)) >= 0.5
    rms_std = np.sqrt(tiles(std.astype(np.float64) ** 2))
    return pearson(rms_std[keep], np.sqrt(tiles(error.astype(np.float64) ** 2))[keep])


def run(prior, slices, settings, noise: float, samples: int | None, log=print) -> dict:
    rows, pooled = [], {name: ([], []) for name in settings}
    for index, (subject, z, image) in enumerate(slices):
        kspace, _ = simulate_kspace(image, 8, noise, seed=index)
        ref = rss(ifft2c(kspace))  # fully sampled RSS reference
        top = float(ref.max())
        fg = ref > FOREGROUND * top
        for pattern, accel in MASKS:
            mask = make_mask(tuple(kspace.shape[-2:]), accel, pattern, acs_fraction=ACS_FRACTION,
                             seed=DEV_MASK_SEED + index, axis=-2)
            maps = mri.make_problem(kspace, mask).maps
            for name in settings:
                method, params = SETTINGS[name]
                extra = {} if method in mri.BASELINES else {"prior": prior, "samples": samples}
                result = mri.reconstruct(kspace, mask, method, maps=maps, seed=index, **extra, **params)
                x = torch.from_numpy(result.image)
                row = {"setting": name, "method": method, "subject": subject, "z": z, "mask": f"{pattern}{accel}",
                       "psnr": float(psnr(x, ref, top)), "psnr_fg": float(psnr(x, ref, top, mask=fg)),
                       "seconds": result.seconds, "nfe": result.nfe}
                full_err = np.abs(result.image - ref.numpy())
                err = full_err[fg.numpy()]
                row["pearson_bound"] = gaussian_bound(err)
                if result.std is not None and float(result.std.max()) > 0:
                    s = result.std[fg.numpy()]
                    row["pearson"] = pearson(s, err)
                    row["pearson_block"] = block_pearson(result.std, full_err, fg.numpy())
                    row["mean_std_fg"] = float(s.mean())
                    pooled[name][0].append(s)
                    pooled[name][1].append(err)
                rows.append(row)
                log(f"{subject} z={z} {pattern}{accel} {name}: PSNR {row['psnr']:.2f} fg {row['psnr_fg']:.2f} "
                    f"pearson {row.get('pearson', float('nan')):.3f} (bound {row['pearson_bound']:.3f}, "
                    f"{BLOCK}x{BLOCK} tiles {row.get('pearson_block', float('nan')):.3f}) {row['seconds']:.1f} s")
    return {"rows": rows, "pooled": pooled}


def summarise(rows, settings) -> list[dict]:
    out = []
    for name in settings:
        mine = [r for r in rows if r["setting"] == name]
        if not mine:
            continue
        entry = {"setting": name, "method": mine[0]["method"], "params": SETTINGS[name][1], "n": len(mine)}
        for key in ("psnr", "psnr_fg", "pearson", "pearson_bound", "pearson_block", "seconds", "nfe", "mean_std_fg"):
            values = [r[key] for r in mine if key in r and np.isfinite(r[key])]
            if values:
                entry[key] = statistics.mean(values)
                if key == "pearson":
                    entry["pearson_min"] = min(values)
        for mask in sorted({r["mask"] for r in mine}):
            values = [r["pearson"] for r in mine if r["mask"] == mask and "pearson" in r]
            if values:
                entry[f"pearson_{mask}"] = statistics.mean(values)
            entry[f"psnr_fg_{mask}"] = statistics.mean(r["psnr_fg"] for r in mine if r["mask"] == mask)
        out.append(entry)
    return out


def markdown(summary, masks) -> str:
    cols = ["PSNR dB", "fg PSNR dB"] + [f"fg PSNR {m}" for m in masks] + ["Pearson", "min"] + \
        [f"Pearson {m}" for m in masks] + ["bound", f"Pearson {BLOCK}x{BLOCK}", "s/slice", "NFE"]
    lines = ["| setting | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for e in summary:
        def f(key, fmt="{:.2f}"):
            return fmt.format(e[key]) if key in e else "-"
        cells = [f("psnr"), f("psnr_fg")] + [f(f"psnr_fg_{m}") for m in masks] + \
            [f("pearson", "{:.3f}"), f("pearson_min", "{:.3f}")] + [f(f"pearson_{m}", "{:.3f}") for m in masks] + \
            [f("pearson_bound", "{:.3f}"), f("pearson_block", "{:.3f}"), f("seconds", "{:.1f}"), f("nfe", "{:.0f}")]
        lines.append(f"| {e['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_checkpoint() -> str | None:
    from meddiff.training.checkpoint import list_checkpoints

    return str(RUN) if (RUN / "checkpoints").is_dir() and list_checkpoints(RUN / "checkpoints") else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="prior (default: latest brain_t1_ixi checkpoint, else the shipped one)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--subjects", type=int, default=3, help="first N validation subjects (default 3)")
    parser.add_argument("--slices", type=int, default=3, help="axial slices per subject (default 3)")
    parser.add_argument("--samples", type=int, help="posterior samples K (default: each solver's default)")
    parser.add_argument("--noise", type=float, default=0.005, help="k-space noise std x image max (default 0.005)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or default_checkpoint()
    prior = mri.load_prior(checkpoint)
    from meddiff.training.checkpoint import resolve_checkpoint

    source = str(resolve_checkpoint(checkpoint)) if checkpoint else "shipped reconstruct default"
    print(f"prior: {source} (step {prior.meta.get('step')})", flush=True)
    slices = val_slices(args.subjects, args.slices)
    start = time.perf_counter()
    result = run(prior, slices, args.settings, args.noise, args.samples,
                 log=lambda *a: print(*a, flush=True))
    summary = summarise(result["rows"], args.settings)
    masks = [f"{p}{a}" for p, a in MASKS]
    for name, (stds, errs) in result["pooled"].items():
        if stds:
            write_png(out / f"calibration_{name}.png", mri.calibration_plot(np.concatenate(stds),
                                                                            np.concatenate(errs)))
    table = markdown(summary, masks)
    write_json({
        "prior": source, "prior_step": training_steps(prior.meta), "noise": args.noise,
        "slices": [(s, z) for s, z, _ in slices], "masks": masks, "acs_fraction": ACS_FRACTION,
        "mask_seed": f"{DEV_MASK_SEED} + slice index", "foreground": FOREGROUND, "pearson_target": PEARSON_TARGET,
        "command": "python benchmarks/mri_uncertainty.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": time.perf_counter() - start, "summary": summary, "rows": result["rows"]}, out / "uncertainty.json")
    (out / "uncertainty.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
