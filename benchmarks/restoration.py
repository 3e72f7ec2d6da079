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
subjects are never used for tuning. The zero-shot solvers run at ``restore.SOLVER_DEFAULTS``, or with
``--tune-zero-shot`` at the ``ZERO_SHOT_GRID`` entry with the best mean val PSNR (K = 2 on the val slices; stored
under "tuning" -> setting -> "zero_shot"; the test rows then use it with K = ``--samples``).

Setting "slices3d" (missing-slice inpainting of volumes, ``restore.slices3d``): per test subject a block of
``SLICES3D_BLOCK`` axial slices centred on the brain's extent, 88 x 120 in-plane, divided by the block's
``magnitude_scale``; every second slice missing (``missing_slices_mask(every=2)``: 12 of 25, the first and last
known): an interleaved / thick-slice acquisition at twice the slice distance. Methods ``restore.SLICE_METHODS``
(linear, cubic, 3D biharmonic; ddnm and sdedit refining the linear interpolation with the axial prior). Scores
(``restore.volume_scores``) inside the missing slices, whole and brain (DLMUSE > 0), seconds per volume. The
diffusion settings are chosen on VAL volumes (13-slice blocks, 6 missing; ``SLICES3D_GRID``, best mean PSNR in the
missing slices at K = 2), stored under "tuning" -> "slices3d"; the test rows use them with K = ``--samples`` or 4.
``--planes-check`` also scores restoring the slices in the coronal planes on val (``planes_check``).
Learned rows (``restore.slices_learned``, when their models load): "slice-diffusion" (K = ``--samples`` or 4, steps
and eta at ``SLICE_LEARNED_DEFAULTS``, chosen on val by scripts/train_slices.py --tune-val) and "slice-unet", from the
shipped slices_diffusion_ixi / slices_unet_ixi or ``--slice-models DIR`` (run directories DIR/<name>), plus their
controls "<method>-untrained": the same networks with fresh random weights; ``--previous-slice-unet DIR`` adds the
rows "slice-unet-previous" of another slices_unet_ixi (a run directory or model folder: e.g. the 2-neighbour model
that the 4-neighbour one replaced).

Incremental: every finished row is written to the JSON at once (atomic); a re-run with the same --out skips rows
already there (subject, slice, setting, method). Output: FILE.json and FILE.md (mean +- std per setting and method).

    python benchmarks/restoration.py --out restoration.json                      # the whole table (hours on a CPU)
    python benchmarks/restoration.py --out dev.json --subjects 1 --slices 1 --settings sr4   # a smoke run
    python benchmarks/restoration.py --out slices.json --settings slices3d                    # missing slices
    python benchmarks/restoration.py --out slices.json --settings slices3d --slice-models runs/slice22   # + learned
    python benchmarks/restoration.py --out slices.json --settings slices3d \
        --previous-slice-unet runs/slice22/slices_unet_ixi   # + the 2-neighbour UNet that slices_unet_ixi replaced
    python benchmarks/restoration.py --out a.json --settings sr4 --figure fig.png --figure-from a.json,b.json
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
VOLUME_SETTINGS = {"slices3d": {"task": "inpaint", "every": 2}}
SLICES3D_BLOCK, SLICES3D_VAL_BLOCK = 25, 13
# diffusion settings tried on val (K = 2, 10 steps): low-pass factor / start of ddnm, noise level of sdedit
# (a first look on the same val blocks: ddnm factor 4 from start 0.4 lost 2.2 dB to linear, from factor 2 / start
# 0.2 0.5 dB; sdedit at level 0.1 0.3 dB, at 0.04 (K = 4) +0.2 dB; planes through the slice axis: below)
SLICES3D_GRID = [("ddnm", {"factor": 2, "start": 0.1}), ("ddnm", {"factor": 2, "start": 0.2}),
                 ("sdedit", {"level": 0.02}), ("sdedit", {"level": 0.05})]
# --tune-zero-shot: settings tried on the val slices for super-resolution (steps, and DPS's step size zeta / DDNM's eta)
ZERO_SHOT_GRID = {
    "dps": [{"steps": 20, "zeta": 30.0}, {"steps": 20, "zeta": 50.0}, {"steps": 40, "zeta": 30.0},
            {"steps": 20, "zeta": 30.0, "start": 0.5}, {"steps": 20, "zeta": 30.0, "start": 0.3}],
    "ddnm": [{"steps": 20, "eta": 0.85}, {"steps": 20, "eta": 1.0}, {"steps": 50, "eta": 0.85}],
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


def load_volumes(subjects: list[str], block: int) -> list[dict]:
    """[{subject, slice (the block's centre), image (88, 120, block) float32 scaled, brain bool}]: ``block`` axial
    slices centred on the extent of the DLMUSE brain, in-plane as ``load_slices`` crops."""
    out = []
    for subject in subjects:
        files = {"t1": DATA / "t1" / f"{subject}_T1.nii.gz", "seg": DATA / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"}
        vol, seg, _ = load_subject(files, ["t1"], with_seg=True, normalize_cfg="none", canonical=True, spacing=None)
        zs = np.flatnonzero((seg[0] > 0).any((0, 1)))
        centre = int(zs[0] + zs[-1]) // 2
        z0 = centre - block // 2
        top, left = (vol.shape[1] - CROP[0]) // 2, (vol.shape[2] - CROP[1]) // 2
        crop = (slice(top, top + CROP[0]), slice(left, left + CROP[1]), slice(z0, z0 + block))
        image, brain = vol[0][crop], seg[0][crop] > 0
        out.append({"subject": subject, "slice": centre, "image": (image / magnitude_scale(image)).astype(np.float32),
                    "brain": brain})
    return out


def run_volume(method: str, case: dict, setting: str, prior, params: dict, samples: int | None,
               out: Path | None = None, slice_models: dict | None = None) -> dict:
    """One missing-slice row: every ``every``-th slice of the block removed and filled by ``method``
    (``slice_models``: {row name: loaded ``SliceModel``} for the learned rows and their untrained controls)."""
    vol = case["image"]
    mask = R.missing_slices_mask(vol.shape, every=VOLUME_SETTINGS[setting]["every"]).numpy()
    kwargs = {}
    if method in ("ddnm", "sdedit"):
        kwargs = {"prior": prior, "samples": samples, **params.get(method, {})}
    if method in (slice_models or {}):
        kwargs = {"model": slice_models[method], "samples": samples if method.startswith("slice-diffusion") else None}
    start = time.perf_counter()
    name = slice_models[method].method if method in (slice_models or {}) else method
    result = R.restore(np.where(mask, 0, vol), "inpaint", name, mask=mask, **kwargs)
    seconds = time.perf_counter() - start
    missing = np.flatnonzero(mask.all((0, 1)))
    row = {"subject": case["subject"], "slice": case["slice"], "setting": setting, "method": method,
           **R.volume_scores(result.image, vol, missing, case["brain"]), "seconds": seconds, "nfe": result.nfe,
           "samples": result.settings.get("samples", 0), "missing": len(missing),
           "settings": {k: v for k, v in result.settings.items() if isinstance(v, (int, float, str))}}
    if out is not None:
        write_npy(image_file(out, row), result.image)
    return row


def tune_volumes(setting: str, val_cases: list[dict], prior) -> dict:
    """Per diffusion method the ``SLICES3D_GRID`` entry with the best mean PSNR in the missing val slices (K = 2);
    the classical rows are scored too, for the record."""
    rows = []
    for method, params in [("linear", {}), ("cubic", {}), ("biharmonic", {})] + SLICES3D_GRID:
        grid = {method: params} if params else {}
        values = [run_volume(method, c, setting, prior, grid, 2)["psnr_missing"] for c in val_cases]
        rows.append({"method": method, **params, "mean_psnr_missing": statistics.mean(values)})
        print(f"tune {setting} {method} {params}: {rows[-1]['mean_psnr_missing']:.2f} dB", flush=True)
    best = {}
    for method in ("ddnm", "sdedit"):
        top = max((r for r in rows if r["method"] == method), key=lambda r: r["mean_psnr_missing"])
        best[method] = {k: v for k, v in top.items() if k not in ("method", "mean_psnr_missing")}
    return {**best, "grid": rows}


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
        if row["setting"] not in VOLUME_SETTINGS and (row["subject"], row["slice"]) in truth \
                and image_file(out, row).is_file():
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
    if not method.endswith("-untrained"):
        kwargs.update(params.get("zero_shot", {}).get(base, {}))
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


def tune_zero_shot(setting: str, val_cases: list[dict], priors: dict, tv_lam: float) -> dict:
    """{method: the ``ZERO_SHOT_GRID`` entry with the best mean whole-image val PSNR (K = 2)}, and the grid's scores."""
    best, rows = {}, []
    for method, grid in ZERO_SHOT_GRID.items():
        if method not in R.ZERO_SHOT[SETTINGS[setting]["task"]]:
            continue
        for params in grid:
            values = [run_method(method, c, setting, priors, {"tv_lam": tv_lam, "zero_shot": {method: params}}, 2)
                      ["psnr"] for c in val_cases]
            rows.append({"method": method, **params, "mean_psnr": statistics.mean(values)})
            print(f"tune {setting} {method} {params}: {rows[-1]['mean_psnr']:.2f} dB", flush=True)
        top = max((r for r in rows if r["method"] == method), key=lambda r: r["mean_psnr"])
        best[method] = {k: v for k, v in top.items() if k not in ("method", "mean_psnr")}
    return {**best, "grid": rows}


def summary(result: dict) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        if row["setting"] not in VOLUME_SETTINGS:
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
    if not groups:  # missing-slice rows only
        return volume_summary(result)
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
    tuning = {s: t for s, t in result.get("tuning", {}).items() if s not in VOLUME_SETTINGS}
    if tuning:
        lines += ["", "TV weights (tuned on val slices unless marked default): " + ", ".join(
            f"{s} {t['tv_lam']:g}" + (" (default)" if t.get("untuned") else " (grid edge)" if t["at_grid_edge"] else "")
            for s, t in tuning.items())]
    chosen = [f"{s} {m} {t['zero_shot'][m]}" for s, t in tuning.items() if "zero_shot" in t
              for m in ZERO_SHOT_GRID if m in t["zero_shot"]]
    if chosen:
        lines += ["", "Zero-shot settings chosen on val slices (K = 2): " + "; ".join(chosen)]
    return "\n".join(lines) + "\n" + volume_summary(result)


def volume_summary(result: dict) -> str:
    """The missing-slice table (mean +- std over test volumes)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        if row["setting"] in VOLUME_SETTINGS:
            groups.setdefault((row["setting"], row["method"]), []).append(row)
    if not groups:
        return ""

    def ms(values):
        return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"

    lines = ["", "Missing slices (every second axial slice of a 25-slice block removed); scores inside the missing "
             "slices; mean ± std over test volumes.", "",
             "| setting | method | PSNR missing | PSNR missing brain | SSIM missing | SSIM missing brain | s / volume "
             "| NFE x K per slice |", "|---|---|---|---|---|---|---|---|"]
    for (setting, method), rows in groups.items():
        nfe = f"{rows[0]['nfe']} x {rows[0]['samples']}" if rows[0]["nfe"] else "-"
        lines.append(f"| {setting} | {method} | {ms([r['psnr_missing'] for r in rows])} | "
                     f"{ms([r['psnr_missing_brain'] for r in rows])} | {ms([r['ssim_missing'] for r in rows])} | "
                     f"{ms([r['ssim_missing_brain'] for r in rows])} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.1f} | {nfe} |")
    for setting in VOLUME_SETTINGS:
        t = result.get("tuning", {}).get(setting)
        if t:
            lines += ["", f"{setting}: chosen on val volumes: " + ", ".join(
                f"{m} {t[m]}" for m in ("ddnm", "sdedit") if m in t)]
    return "\n".join(lines) + "\n"


def planes_check(subjects: list[str], prior, planes: int = 6) -> dict:
    """Can the axial prior restore missing axial slices in the CORONAL planes, where they show as missing rows? Per
    val subject the full-height volume (88 x 120 x all slices, scaled by the central block's ``magnitude_scale``),
    every second slice of the central 13 missing; ``planes`` coronal planes spread over the brain; DDNM inpainting of
    the missing rows (10 steps, K = 2; from noise, and from the biharmonic start at 0.3 T) against the linear
    interpolation along the slice axis and 2D biharmonic in the plane, on the same voxels: PSNR (data range 1, the
    magnitude scale) of the pooled missing voxels."""
    errors: dict[str, list[float]] = {}
    runs = {"linear": None, "biharmonic (2D, in the plane)": ("biharmonic", {}),
            "ddnm from noise": ("ddnm", {"steps": 10, "samples": 2}),
            "ddnm from biharmonic at 0.3 T": ("ddnm", {"steps": 10, "samples": 2, "start": 0.3})}
    for subject in subjects:
        files = {"t1": DATA / "t1" / f"{subject}_T1.nii.gz", "seg": DATA / "dlmuse_seg" / f"{subject}_T1_DLMUSE.nii.gz"}
        vol, seg, _ = load_subject(files, ["t1"], with_seg=True, normalize_cfg="none", canonical=True, spacing=None)
        brain = seg[0] > 0
        zs = np.flatnonzero(brain.any((0, 1)))
        c = int(zs[0] + zs[-1]) // 2
        top = (vol.shape[1] - CROP[0]) // 2
        v, b = vol[0, top:top + CROP[0]], brain[top:top + CROP[0]]
        v = (v / magnitude_scale(v[..., c - 6:c + 7])).astype(np.float32)
        missing = np.arange(c - 5, c + 7, 2)
        lin = R.interpolate_slices(v, missing)
        cols = np.flatnonzero(b[..., c].any(0))
        for y in cols[np.linspace(0, len(cols) - 1, planes).round().astype(int)]:
            truth = v[:, y, :]
            hole = np.zeros(truth.shape, dtype=bool)
            hole[:, missing] = True
            for name, spec in runs.items():
                out = lin[:, y, :] if spec is None else R.restore(np.where(hole, 0, truth), "inpaint", spec[0],
                                                                  mask=hole, prior=prior, **spec[1]).image
                errors.setdefault(name, []).append(float(((out[:, missing] - truth[:, missing]) ** 2).mean()))
    result = {name: float(10 * np.log10(1 / np.mean(e))) for name, e in errors.items()}
    print(f"coronal planes: {result}", flush=True)
    return {"subjects": subjects, "planes": planes, "psnr_missing": result}


def load_slice_models(folder: str | None, previous_unet: str | None = None) -> dict:
    """{"slice-diffusion": SliceModel, "slice-diffusion-untrained": ..., "slice-unet": ..., "slice-unet-untrained":
    ...}: the shipped models, or the runs under ``folder`` (a missing one is left out); with ``previous_unet`` also
    "slice-unet-previous" loaded from there."""
    from meddiff.tasks.restore.slices_learned import (DEFAULT_SLICE_MODELS, SLICE_LEARNED, load_slice_model,
                                                      untrained_slice_model)

    out = {}
    for method in SLICE_LEARNED:
        source = None if folder is None else Path(folder) / DEFAULT_SLICE_MODELS[method]
        try:
            out[method] = load_slice_model(method, source)
        except Exception as error:  # not shipped / not trained in this checkout: no rows
            print(f"no {method} rows: {error}", flush=True)
            continue
        out[f"{method}-untrained"] = untrained_slice_model(out[method])
    if previous_unet is not None:
        out["slice-unet-previous"] = load_slice_model("slice-unet", previous_unet)
    return out


def run_volume_setting(setting: str, result: dict, args, prior, wanted, done: set, out: Path) -> None:
    """Tune on val volumes (once), then the test rows of a missing-slice setting."""
    if setting not in result["tuning"]:
        val = load_volumes(split_subjects("val", args.val_subjects), SLICES3D_VAL_BLOCK)
        result["tuning"][setting] = tune_volumes(setting, val, prior)
        write_json(result, out)
    if args.planes_check and "planes" not in result["tuning"][setting]:
        result["tuning"][setting]["planes"] = planes_check(split_subjects("val", args.val_subjects), prior)
        write_json(result, out)
    slice_models = load_slice_models(args.slice_models, args.previous_slice_unet)
    result["slice_models"] = {name: model.source for name, model in slice_models.items()}
    names = list(R.SLICE_METHODS) + [m for m in slice_models if not m.endswith("-untrained") or not args.no_untrained]
    for case in load_volumes(split_subjects("test", args.subjects), SLICES3D_BLOCK):
        for method in names:
            if (wanted is not None and method not in wanted and method.split("-untrained")[0] not in wanted) \
                    or (case["subject"], case["slice"], setting, method) in done:
                continue
            row = run_volume(method, case, setting, prior, result["tuning"][setting], args.samples or 4, out,
                             slice_models)
            result["rows"].append(row)
            write_json(result, out)
            print(f"{case['subject']} {setting} {method}: PSNR missing {row['psnr_missing']:.2f} (brain "
                  f"{row['psnr_missing_brain']:.2f}) SSIM {row['ssim_missing']:.3f}, {row['seconds']:.1f} s",
                  flush=True)


def _rows_with_images(jsons: list[Path], setting: str) -> dict[tuple[str, str], list[tuple[dict, Path]]]:
    """{(json stem, method): [(row, image file)]} of ``setting`` over the benchmark files ``jsons``."""
    groups: dict[tuple[str, str], list[tuple[dict, Path]]] = {}
    for path in jsons:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row["setting"] == setting and image_file(Path(path), row).is_file():
                groups.setdefault((Path(path).stem, row["method"]), []).append((row, image_file(Path(path), row)))
    return groups


def _best(groups: dict, methods: tuple[str, ...], key: str):
    """The (json stem, method) among ``methods`` with the best mean ``key``."""
    candidates = [g for g in groups if g[1] in methods]
    return max(candidates, key=lambda g: statistics.mean(r[key] for r, _ in groups[g]))


def _panel(image: np.ndarray, top: float, zoom: int = 2) -> np.ndarray:
    """(H, W) axial slice (RAS: rows left-right) -> uint8, anterior up, ``zoom`` x nearest."""
    from meddiff.report.html import to_uint8

    shown = np.rot90(np.asarray(image, np.float64))
    return to_uint8(np.kron(shown, np.ones((zoom, zoom))), 0.0, top)


def draw_figure(png: Path, jsons: list[Path], setting: str) -> None:
    """benchmarks/figures/restoration_*.png from the images kept by earlier runs (``jsons``), first test case.
    Super-resolution: input (nearest) / bicubic / TV / best diffusion / SR3 / UNet / truth / |error| of bicubic and
    of the best diffusion (x 2). slices3d: the middle missing slice: known slice below / linear / biharmonic / best
    diffusion / truth / known slice above / |error| of linear and of the best diffusion (x 2)."""
    from meddiff.report.html import labelled_row

    groups = _rows_with_images(jsons, setting)
    if not groups:
        raise SystemExit(f"no kept images of {setting} in {', '.join(map(str, jsons))}")
    first = next(iter(groups.values()))[0][0]
    subject, z = first["subject"], first["slice"]

    def image_of(group):
        return next(np.load(f) for r, f in groups[group] if r["subject"] == subject and r["slice"] == z)

    if setting in VOLUME_SETTINGS:
        case = next(c for c in load_volumes([subject], SLICES3D_BLOCK) if c["slice"] == z)
        vol = case["image"]
        missing = np.flatnonzero(R.missing_slices_mask(vol.shape, every=VOLUME_SETTINGS[setting]["every"]).numpy()
                                 .all((0, 1)))
        m = int(missing[len(missing) // 2])
        best = _best(groups, ("ddnm", "sdedit"), "psnr_missing")
        stem = next(iter(groups))[0]
        lin, bih, dif = (image_of((stem, "linear"))[..., m], image_of((stem, "biharmonic"))[..., m],
                         image_of(best)[..., m])
        truth, top = vol[..., m], float(vol.max())
        tiles = [vol[..., m - 1], lin, bih, dif, truth, vol[..., m + 1], 2 * np.abs(lin - truth),
                 2 * np.abs(dif - truth)]
        labels = ["slice below", "linear", "biharmonic", best[1], "truth", "slice above", "linear error x2",
                  f"{best[1]} error x2"]
    else:
        case = next(c for c in load_slices([subject], 3) if c["slice"] == z)
        truth, top = case["image"], float(case["image"].max())
        scale = SETTINGS[setting]["scale"]
        given = R.upsample(torch.from_numpy(degrade(case, setting)["input"]), scale, "nearest").numpy()
        best = _best(groups, ("ddnm", "dps"), "psnr")
        stem = next(iter(groups))[0]
        names = [(stem, "bicubic"), (stem, "tv"), best] + [g for g in ((stem, "sr3"), (stem, "unet")) if g in groups]
        outs = [image_of(g) for g in names]
        tiles = [given] + outs + [truth, 2 * np.abs(outs[0] - truth), 2 * np.abs(outs[2] - truth)]
        labels = ["input", "bicubic", "tv", best[1]] + [g[1] for g in names[3:]] + ["truth", "bicubic error x2",
                                                                                    f"{best[1]} error x2"]
    canvas = labelled_row([_panel(t, top) for t in tiles], labels)
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {png}: {subject} z={z}, best diffusion {best}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="FILE.json (FILE.md is written next to it)")
    parser.add_argument("--checkpoint", help="prior (default: restore.default_prior())")
    parser.add_argument("--subjects", type=int, default=3, help="test subjects (default 3)")
    parser.add_argument("--slices", type=int, default=3, help="slices per subject (default 3)")
    parser.add_argument("--val-subjects", type=int, default=2, help="val subjects for the TV weight (default 2)")
    parser.add_argument("--val-slices", type=int, default=2, help="slices per val subject (default 2)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma list of {', '.join(list(SETTINGS) + list(VOLUME_SETTINGS))}")
    parser.add_argument("--methods", help="comma list (default: every method of the task)")
    parser.add_argument("--samples", type=int, help="posterior samples K of the zero-shot methods (default per method)")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained-network control rows")
    parser.add_argument("--no-tune", action="store_true", help="use the default TV weights (restore.TV_WEIGHTS)")
    parser.add_argument("--tune-zero-shot", action="store_true",
                        help="choose the zero-shot solvers' settings on the val slices (ZERO_SHOT_GRID) first")
    parser.add_argument("--planes-check", action="store_true",
                        help="slices3d: also score DDNM in the coronal planes on val (planes_check)")
    parser.add_argument("--slice-models", help="slices3d: folder with the run directories slices_diffusion_ixi and "
                                               "slices_unet_ixi (default: the shipped models)")
    parser.add_argument("--previous-slice-unet", metavar="DIR",
                        help="slices3d: also the rows slice-unet-previous of the slices_unet_ixi in DIR")
    parser.add_argument("--figure", help="only draw the figure PNG of the first --settings entry from kept images")
    parser.add_argument("--figure-from", help="comma list of benchmark JSONs for --figure (default: --out)")
    args = parser.parse_args(argv)
    if args.figure:
        jsons = [Path(p) for p in (args.figure_from or args.out).split(",")]
        draw_figure(Path(args.figure), jsons, args.settings.split(",")[0])
        return 0
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS) - set(VOLUME_SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS) + list(VOLUME_SETTINGS)}")
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
        if setting in VOLUME_SETTINGS:
            run_volume_setting(setting, result, args, prior, wanted, done, out)
            continue
        if setting not in result["tuning"]:
            if args.no_tune:
                result["tuning"][setting] = {"tv_lam": R.TV_WEIGHTS[SETTINGS[setting]["task"]], "grid": [],
                                             "at_grid_edge": False, "untuned": True}
            else:
                val = val or load_slices(split_subjects("val", args.val_subjects), args.val_slices)
                result["tuning"][setting] = tune(setting, val)
            write_json(result, out)
        if args.tune_zero_shot and "zero_shot" not in result["tuning"][setting]:
            val = val or load_slices(split_subjects("val", args.val_subjects), args.val_slices)
            result["tuning"][setting]["zero_shot"] = tune_zero_shot(setting, val, priors,
                                                                    result["tuning"][setting]["tv_lam"])
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
