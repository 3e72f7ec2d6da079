"""Restoration benchmark (issue 22): super-resolution, inpainting and denoising of IXI T1 slices, every method of
``meddiff.tasks.restore`` against the truth.

Data: whole axial IXI T1 slices at 2 mm (RAS, 90 x 120) of the TEST subjects of configs/splits/ixi_t1_2mm_dlmuse.json
(the first ``--subjects``, sorted; ``--slices`` per subject spread over the slices with a large DLMUSE brain area,
``mri_ixi.pick_slices``), centre-cropped to 88 x 120 (a multiple of 8, so 4x SR divides it) and divided by their own
``magnitude_scale`` (the prior's training scale). Brain mask: DLMUSE labels > 0 of the same slice.
Settings (``SETTINGS``): 2x and 4x SR by area averaging (the default degradation: the mean over s x s blocks); box
inpainting (one box of 10 % of the slice at a seeded random position) and random strokes (``stroke_mask``); Gaussian
noise of 2, 5 and 10 % of the slice's intensity range (its max; min 0). Every degradation is seeded per slice.
Methods: every baseline, zero-shot method and trained network of the task (``restore.METHODS``; bm3d only when the
package is installed; sr3 and unet, the shipped 4x models of scripts/train_sr.py, only at the scale they were trained
for, 4x: there is no 2x model), plus the control rows "<method>-untrained": the zero-shot methods and sr3 with the
same network untrained (``mri.untrained_prior``, ``restore.untrained_sr3``), what the training adds.
Scores (``restore.scores``): PSNR and SSIM over the whole image and the brain mask (data range: the slice max), PSNR
in the hole for inpainting, seconds per slice, NFE per sample; and per setting and method a patch FID over all its
test slices (``patch_fid``: 28 x 28 patches at stride 14 of the restored and the true slices, v = 2 x - 1, embedded by
the project's offline "random-cnn" features, ``meddiff.metrics.features``; whole slices would be resized to the
extractor's 28 x 28 input, which erases the detail super-resolution restores, and 9 slices are too few for a 128-d
covariance). Restored images are kept in FILE.images/ for it.
Weights: the TV weight is tuned per setting on slices of the VAL subjects (``--val-subjects``, the same slice rule)
over ``TV_GRID`` (best mean whole-image PSNR), stored under "tuning" in the JSON and reused on resume; the test
subjects are never used for tuning. The zero-shot solvers run at ``restore.SOLVER_DEFAULTS`` (not tuned yet).

Incremental: every finished row is written to the JSON at once (atomic); a re-run with the same --out skips rows
already there (subject, slice, setting, method). Output: FILE.json and FILE.md (mean +- std per setting and method).

    python benchmarks/restoration.py --out restoration.json                      # the whole table (hours on a CPU)
    python benchmarks/restoration.py --out dev.json --subjects 1 --slices 1 --settings sr4   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from meddiff.data.io import write_json
from meddiff.data.transforms import magnitude_scale
from meddiff.data.volumes import load_subject
from meddiff.files import atomic_path, write_npy
from meddiff.tasks import mri
from meddiff.tasks import restore as R

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mri_ixi import DATA, pick_slices, split_subjects  # noqa: E402

CROP = (88, 120)
SETTINGS = {
    "sr2": {"task": "super-resolution", "scale": 2},
    "sr4": {"task": "super-resolution", "scale": 4},
    "box": {"task": "inpaint", "mask": "box"},
    "strokes": {"task": "inpaint", "mask": "strokes"},
    "noise2": {"task": "denoise", "percent": 2},
    "noise5": {"task": "denoise", "percent": 5},
    "noise10": {"task": "denoise", "percent": 10},
}
BOX_FRACTION = 0.1
TV_GRID = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
KEY = ("subject", "slice", "setting", "method")


def load_slices(subjects: list[str], per_subject: int) -> list[dict]:
    """[{subject, slice, image (88, 120) float32 scaled, brain (88, 120) bool}]"""
    out = []
    for subject in subjects:
        files = {"t1": DATA / "t1" / f"{subject}_T1.nii.gz", "seg": DATA / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"}
        vol, seg, _ = load_subject(files, ["t1"], with_seg=True, normalize_cfg="none", canonical=True, spacing=None)
        for z in pick_slices(seg[0] > 0, per_subject):
            image, brain = vol[0, :, :, z], seg[0, :, :, z] > 0
            top, left = (image.shape[0] - CROP[0]) // 2, (image.shape[1] - CROP[1]) // 2
            image = image[top:top + CROP[0], left:left + CROP[1]]
            brain = brain[top:top + CROP[0], left:left + CROP[1]]
            image = (image / magnitude_scale(image)).astype(np.float32)
            out.append({"subject": subject, "slice": int(z), "image": image, "brain": brain})
    return out


def degrade(case: dict, setting: str) -> dict:
    """The measured input and restore() keywords of one slice and setting (seeded by subject, slice and setting)."""
    spec, image = SETTINGS[setting], case["image"]
    seed = zlib.crc32(f"{case['subject']}:{case['slice']}:{setting}".encode()) % 2**31
    if spec["task"] == "super-resolution":
        return {"input": R.degrade_sr(image, spec["scale"]).numpy(), "scale": spec["scale"]}
    if spec["task"] == "inpaint":
        hole = (R.box_mask(image.shape, BOX_FRACTION, seed=seed) if spec["mask"] == "box"
                else R.stroke_mask(image.shape, seed=seed)).numpy()
        return {"input": np.where(hole, 0, image).astype(np.float32), "mask": hole}
    sigma = spec["percent"] / 100 * float(image.max() - min(image.min(), 0))
    return {"input": R.add_noise(image, sigma, seed=seed).numpy(), "sigma": sigma}


def methods_for(setting: str, wanted: list[str] | None, untrained: bool, learned: dict) -> list[str]:
    """The method rows of ``setting``; ``learned``: {name: loaded SRModel} (shipped ones; their scale only)."""
    spec = SETTINGS[setting]
    task = spec["task"]
    fits = [m for m in R.LEARNED[task] if m in learned and learned[m].scale == spec.get("scale")]
    names = [m for m in R.METHODS[task] if (m != "bm3d" or _has_bm3d()) and (m not in R.LEARNED[task] or m in fits)]
    names += [f"{m}-untrained" for m in R.ZERO_SHOT[task] + tuple(m for m in fits if m == "sr3")] if untrained else []
    return [m for m in names if wanted is None or m in wanted or m.split("-untrained")[0] in wanted]


def load_learned() -> dict:
    """{"sr3": SRModel, "sr3-untrained": ..., "unet": ...} for the shipped models (a missing one is left out)."""
    out = {}
    for name in R.DEFAULT_MODELS:
        try:
            out[name] = R.load_sr_model(name)
        except Exception as error:  # not shipped in this checkout: no rows
            print(f"no {name} rows: {error}", flush=True)
    if "sr3" in out:
        out["sr3-untrained"] = R.untrained_sr3(out["sr3"])
    return out


PATCH, STRIDE = 28, 14


def patches(image: np.ndarray) -> torch.Tensor:
    """(H, W) slice on its magnitude scale -> (N, 1, 28, 28) patches at stride 14 of v = 2 x - 1."""
    v = torch.from_numpy(2 * np.asarray(image, np.float32) - 1)
    tiles = v.unfold(0, PATCH, STRIDE).unfold(1, PATCH, STRIDE)  # (nh, nw, 28, 28)
    return tiles.reshape(-1, 1, PATCH, PATCH)


def patch_fid(restored: list[np.ndarray], truths: list[np.ndarray], extractor) -> float:
    """FID between the patches of the restored slices and those of the true slices (same slices)."""
    from meddiff.metrics.generative import fid

    fake = torch.cat([patches(x) for x in restored])
    real = torch.cat([patches(x) for x in truths])
    return float(fid(extractor(real), extractor(fake)))


def image_file(out: Path, row: dict) -> Path:
    return out.with_suffix(".images") / f"{row['subject']}_{row['slice']}_{row['setting']}_{row['method']}.npy"


def add_fids(result: dict, cases: list[dict], out: Path) -> None:
    """result["fid"][setting][method] = patch FID over the test slices whose restored images are kept."""
    from meddiff.metrics.features import get_feature_extractor

    extractor = get_feature_extractor("random-cnn")
    truth = {(c["subject"], c["slice"]): c["image"] for c in cases}
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        if (row["subject"], row["slice"]) in truth and image_file(out, row).is_file():
            groups.setdefault((row["setting"], row["method"]), []).append(row)
    fids = {}
    for (setting, method), rows in groups.items():
        restored = [np.load(image_file(out, r)) for r in rows]
        fids.setdefault(setting, {})[method] = patch_fid(restored, [truth[(r["subject"], r["slice"])] for r in rows],
                                                         extractor)
    result["fid"] = {"features": extractor.card(), "patch": PATCH, "stride": STRIDE, "values": fids}


def _has_bm3d() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def run_method(method: str, case: dict, setting: str, priors: dict, params: dict, samples: int | None,
               learned: dict | None = None, out: Path | None = None) -> dict:
    spec = SETTINGS[setting]
    given = degrade(case, setting)
    base = method.split("-untrained")[0]
    kwargs = {k: v for k, v in given.items() if k != "input"}
    if base in R.ZERO_SHOT[spec["task"]]:
        kwargs.update(prior=priors["untrained" if method.endswith("-untrained") else "trained"], samples=samples)
    if base in R.LEARNED[spec["task"]]:
        kwargs.update(model=learned[method], samples=samples if base == "sr3" else None)
    if base == "tv":
        kwargs["lam"] = params["tv_lam"]
    start = time.perf_counter()
    result = R.restore(given["input"], spec["task"], base, **kwargs)
    seconds = time.perf_counter() - start
    score = R.scores(result.image, case["image"], case["brain"], given.get("mask"))
    row = {"subject": case["subject"], "slice": case["slice"], "setting": setting, "method": method, **score,
           "seconds": seconds, "nfe": result.nfe, "samples": result.settings.get("samples", 0),
           "settings": {k: v for k, v in result.settings.items() if isinstance(v, (int, float, str, list))}}
    if out is not None:
        write_npy(image_file(out, row), result.image)
    return row


def tune(setting: str, val_cases: list[dict]) -> dict:
    """TV weight with the best mean whole-image PSNR on the val slices."""
    task = SETTINGS[setting]["task"]
    rows = []
    for lam in TV_GRID:
        values = []
        for case in val_cases:
            given = degrade(case, setting)
            kwargs = {k: v for k, v in given.items() if k != "input"}
            out = R.restore(given["input"], task, "tv", lam=lam, **kwargs).image
            values.append(R.scores(out, case["image"], case["brain"])["psnr"])
        rows.append({"lam": lam, "mean_psnr": statistics.mean(values)})
        print(f"tune {setting} tv lam={lam:g}: {rows[-1]['mean_psnr']:.2f} dB", flush=True)
    best = max(rows, key=lambda r: r["mean_psnr"])
    return {"tv_lam": best["lam"], "grid": rows, "at_grid_edge": best["lam"] in (TV_GRID[0], TV_GRID[-1])}


def summary(result: dict) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault((row["setting"], row["method"]), []).append(row)

    def ms(values):
        return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else \
            f"{values[0]:.2f}"

    lines = [f"Restoration benchmark: prior {result['prior']}, {len(result['cases'])} test slice(s); mean ± std over "
             "slices (benchmarks/restoration.py).", "",
             "| setting | method | PSNR | SSIM | PSNR brain | SSIM brain | PSNR hole | patch FID | s / slice "
             "| NFE x K |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fids = result.get("fid", {}).get("values", {})
    for (setting, method), rows in groups.items():
        hole = ms([r["psnr_hole"] for r in rows]) if "psnr_hole" in rows[0] else ""
        fid = fids.get(setting, {}).get(method)
        lines.append(f"| {setting} | {method} | {ms([r['psnr'] for r in rows])} | {ms([r['ssim'] for r in rows])} | "
                     f"{ms([r['psnr_brain'] for r in rows])} | {ms([r['ssim_brain'] for r in rows])} | {hole} | "
                     f"{'' if fid is None else f'{fid:.3f}'} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.1f} | {rows[0]['nfe']} x {rows[0]['samples']} |")
    if fids:
        lines += ["", "Patch FID: 28 x 28 patches at stride 14 of the restored vs the true test slices, random-cnn "
                      "features (meddiff.metrics.features; texture statistics, not anatomy); lower is closer."]
    if result.get("learned"):
        lines += ["", "Trained networks: " + ", ".join(f"{k} {v}" for k, v in result["learned"].items())]
    tuning = result.get("tuning", {})
    if tuning:
        lines += ["", "TV weights (tuned on val slices unless marked default): " + ", ".join(
            f"{s} {t['tv_lam']:g}" + (" (default)" if t.get("untuned") else " (grid edge)" if t["at_grid_edge"] else "")
            for s, t in tuning.items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="FILE.json (FILE.md is written next to it)")
    parser.add_argument("--checkpoint", help="prior (default: restore.default_prior())")
    parser.add_argument("--subjects", type=int, default=3, help="test subjects (default 3)")
    parser.add_argument("--slices", type=int, default=3, help="slices per subject (default 3)")
    parser.add_argument("--val-subjects", type=int, default=2, help="val subjects for the TV weight (default 2)")
    parser.add_argument("--val-slices", type=int, default=2, help="slices per val subject (default 2)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--methods", help="comma list (default: every method of the task)")
    parser.add_argument("--samples", type=int, help="posterior samples K of the zero-shot methods (default per method)")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained-network control rows")
    parser.add_argument("--no-tune", action="store_true", help="use the default TV weights (restore.TV_WEIGHTS)")
    args = parser.parse_args(argv)
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    wanted = args.methods.split(",") if args.methods else None
    out = Path(args.out)
    checkpoint = str(args.checkpoint or R.default_prior())
    result = json.loads(out.read_text()) if out.is_file() else {"prior": checkpoint, "rows": [], "tuning": {}}
    if result["prior"] != checkpoint:
        raise SystemExit(f"{out} holds rows of prior {result['prior']}; use another --out")
    prior = R.restore_prior(checkpoint)
    priors = {"trained": prior, "untrained": mri.untrained_prior(prior)}
    learned = load_learned()
    result["learned"] = {name: model.source for name, model in learned.items()}
    cases = load_slices(split_subjects("test", args.subjects), args.slices)
    result["cases"] = [{"subject": c["subject"], "slice": c["slice"]} for c in cases]
    val = None
    done = {tuple(r[k] for k in KEY) for r in result["rows"]}
    for setting in settings:
        if setting not in result["tuning"]:
            if args.no_tune:
                result["tuning"][setting] = {"tv_lam": R.TV_WEIGHTS[SETTINGS[setting]["task"]], "grid": [],
                                             "at_grid_edge": False, "untuned": True}
            else:
                val = val or load_slices(split_subjects("val", args.val_subjects), args.val_slices)
                result["tuning"][setting] = tune(setting, val)
            write_json(result, out)
        for case in cases:
            for method in methods_for(setting, wanted, not args.no_untrained, learned):
                if (case["subject"], case["slice"], setting, method) in done:
                    continue
                row = run_method(method, case, setting, priors, result["tuning"][setting], args.samples, learned, out)
                result["rows"].append(row)
                write_json(result, out)
                extra = f", hole {row['psnr_hole']:.2f}" if "psnr_hole" in row else ""
                print(f"{case['subject']} z={case['slice']} {setting} {method}: PSNR {row['psnr']:.2f} "
                      f"(brain {row['psnr_brain']:.2f}{extra}) SSIM {row['ssim']:.3f}, {row['seconds']:.1f} s, "
                      f"NFE {row['nfe']}", flush=True)
    add_fids(result, cases, out)
    write_json(result, out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(summary(result))
    print(summary(result))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
