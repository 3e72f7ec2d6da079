"""CT reconstruction baselines on the shared chest CT series (one patient, TCIA CPTAC C3N-00247, 99 axial slices).

Data: ``../shared/data/ct_chest_dicom/dicom`` read with ``meddiff.data.io.read_dicom_series`` (HU, sorted inferior
to superior), each 512 x 512 slice (0.564 mm pixels) averaged 2 x 2 to 256 x 256 (1.13 mm; ``--size``), values below
-1000 HU set to -1000 (air). The series is one patient, so it is split by contiguous slice blocks with 2-slice gaps:
``BLOCKS`` train 0-59 (reserved for the CT prior of a later increment), dev 62-74 (tuning), test 77-98 (reported);
slices are taken evenly spaced within a block. Results on the test block are therefore not on an unseen patient.

Settings (parallel beam, detector spacing = pixel, ``meddiff.physics.ct`` noise model: Poisson counts + electronic
noise variance 10, -log): 30 and 60 views over 180 degrees and 120 views over a 120-degree arc at full dose
I0 = 1e5, and 180 views at low dose I0 = 1e4 photons per ray.
Methods: FBP (ramp; Hann too), SIRT (iterations tuned over 50/100/200/400 on the dev slices), TV (Chambolle-Pock,
200 iterations, weight tuned over ``TV_GRID`` on the dev slices), each setting tuned separately, then fixed for the
test slices. ``--lowdose-unet DIR`` adds the supervised low-dose baseline to the low-dose-1e4 setting: a residual UNet
from the Hann FBP to the slice, trained on the train block at 128 x 128 (``scripts/train_ct_prior.py lowdose-unet``;
``meddiff.tasks.ct.lowdose``), so with ``--size 128``.
Diffusion rows (``--diffusion``, issue 23) use the shipped prior ``ct_chest_prior`` (trained on the train block only,
128 x 128 slices, so run them with ``--size 128``): DDNM, DPS and PC slice by slice on the same slices (with
``--samples K`` the image is the mean of K samples, an estimate of the posterior mean), and
DiffusionMBIR on a contiguous stack of ``--stack`` slices from the middle of each block (with FBP and TV of the same
slices beside it). Each solver's candidate settings (``CANDIDATES``) are scored on the dev slices and the best (PSNR)
is fixed for the test slices. Controls on the test block, with the tuned settings: every solver with a random-weight
prior of the same architecture (``-untrained``: ``meddiff.tasks.prior.untrained_prior``; MONAI zero-initialises the
output layer, so it predicts x0 = alpha_t x_t, no image knowledge: the solver without its learned part), and MBIR
without its z term (``mbir-no-ztv``: lam_z = 0).
Metrics: PSNR / SSIM in HU after clipping both images to the [-1000, 1000] window (data range 2000), within a body
mask (reference > -500 HU, largest connected component, holes filled); seconds per slice (one slice at a time, the
projector's one-off matrix build excluded and reported per setting).

    python benchmarks/ct_reconstruction.py --out runs/ct.json               # writes runs/ct.json + runs/ct.md
    python benchmarks/ct_reconstruction.py --dev-slices 1 --test-slices 2 --out runs/ct_check.json
    python benchmarks/ct_reconstruction.py --size 128 --diffusion ddnm dps pc mbir --out runs/ct_diffusion.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.data.io import read_dicom_series, write_json
from meddiff.physics.ct import ParallelBeamCT, fbp, simulate_sinogram, sirt, tv, view_angles
from meddiff.physics.ct.dose import MU_WATER
from meddiff.tasks.ct import CTProblem, solve, solve_stack
from meddiff.tasks.ct.evaluation import body_mask, error_figure, score
from meddiff.tasks.prior import load_prior, untrained_prior
from meddiff.training import training_steps

SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct_chest_dicom" / "dicom"
BLOCKS = {"train": (0, 60), "dev": (62, 75), "test": (77, 99)}  # [start, stop) in sorted slice order
SETTINGS = {  # name: (views, arc in degrees, I0)
    "sparse-30": (30, 180.0, 1e5),
    "sparse-60": (60, 180.0, 1e5),
    "limited-120": (120, 120.0, 1e5),
    "low-dose-1e4": (180, 180.0, 1e4),
}
TV_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
SIRT_GRID = (50, 100, 200, 400)
CLASSICAL = ("fbp", "fbp-hann", "sirt", "tv")
UNET = "unet (supervised)"
DIFFUSION = ("ddnm", "dps", "pc", "mbir")
CANDIDATES = {  # dev grid per solver: overrides of meddiff.tasks.ct.SOLVER_DEFAULTS. Every run starts from the TV
    # image (the setting's tuned weight) noised to a small ``start`` (t = 20 / 50 of 1000: 79 / 173 HU of noise; at
    # 0.15-0.5 a probe on dev slice 68 lost 3-4 dB to TV): full runs from noise (50+ network evaluations per slice
    # at 0.7 s each on this session's shared CPU) were out of budget
    "ddnm": [{"start": 0.02, "steps": 10, "cg_iters": 10}, {"start": 0.05, "steps": 10, "cg_iters": 10}],
    "dps": [{"start": 0.05, "steps": 10, "zeta": 0.05}, {"start": 0.05, "steps": 10, "zeta": 0.3}],
    "pc": [{"start": 0.05, "steps": 10, "snr": 0.05, "cg_iters": 10}],
    "mbir": [{"start": 0.05, "steps": 10, "lam_z": 0.002}, {"start": 0.05, "steps": 10, "lam_z": 0.01}],
}


def load_slices(indices: list[int], size: int) -> tuple[torch.Tensor, float]:
    volume, meta = read_dicom_series(SERIES)
    hu = torch.from_numpy(volume[indices].astype(np.float32)).clamp_min(-1000.0)
    factor = hu.shape[-1] // size
    if factor > 1:
        hu = torch.nn.functional.avg_pool2d(hu[:, None], factor)[:, 0]
    return hu, float(meta.spacing[-1]) * factor


def pick(block: str, n: int) -> list[int]:
    start, stop = BLOCKS[block]
    return [int(round(v)) for v in np.linspace(start, stop - 1, n + 2)[1:-1]] if n else []


def reconstructions(op, y: torch.Tensor, angles, size: int, sirt_iters, tv_lams) -> dict:
    """name -> (water-unit image, seconds); SIRT at each iteration count (continued), TV at each weight."""
    out = {}
    for name, filt in (("fbp", "ramp"), ("fbp-hann", "hann")):
        t = time.perf_counter()
        out[name] = (fbp(y, angles, size, filter=filt), time.perf_counter() - t)
    x, done, spent = None, 0, 0.0
    for iters in sorted(sirt_iters):
        t = time.perf_counter()
        x = sirt(op, y, iters=iters - done, x0=x)
        spent += time.perf_counter() - t
        done = iters
        out[f"sirt-{iters}"] = (x, spent)
    for lam in tv_lams:
        t = time.perf_counter()
        out[f"tv-{lam:g}"] = (tv(op, y, lam=lam), time.perf_counter() - t)
    return out


def measure(name: str, hu: torch.Tensor, pixel: float, seeds: list[int]):
    """The setting's operator, angles, seconds to build its matrices, and per slice the noisy sinogram in water units
    (V, D) (noise seeded by the slice index: the same for every method)."""
    views, arc, i0 = SETTINGS[name]
    angles = view_angles(views, arc)
    op = ParallelBeamCT(hu.shape[-1], angles)
    t = time.perf_counter()
    op.matrices("cpu", torch.float32)
    build = time.perf_counter() - t
    ys = []
    for k in range(len(hu)):
        generator = torch.Generator().manual_seed(seeds[k])
        sino, _ = simulate_sinogram(hu[k], op, pixel_size=pixel, i0=i0, generator=generator)
        ys.append(sino / (MU_WATER * pixel))
    return op, angles, build, ys


def run_setting(name: str, hu: torch.Tensor, pixel: float, seeds: list[int], sirt_iters, tv_lams) -> tuple[list, float]:
    op, angles, build, ys = measure(name, hu, pixel, seeds)
    size = hu.shape[-1]
    rows = []
    for k in range(len(hu)):
        y = ys[k]
        mask = body_mask(hu[k])
        for method, (x, seconds) in reconstructions(op, y, angles, size, sirt_iters, tv_lams).items():
            rows.append({"setting": name, "slice": seeds[k], "method": method, "seconds": seconds,
                         **score(1000.0 * (x - 1.0), hu[k], mask)})
    return rows, build


def unet_rows(name: str, hu: torch.Tensor, pixel: float, seeds: list[int], folder: str) -> list[dict]:
    """Rows of the supervised low-dose UNet (``meddiff.tasks.ct.lowdose``) on the Hann FBP of each slice's sinogram
    (the same noisy sinograms as every other method)."""
    from meddiff.tasks.ct.lowdose import denoise
    from meddiff.training.regression import load_regression

    model = load_regression(folder)
    _, angles, _, ys = measure(name, hu, pixel, seeds)
    rows = []
    for k in range(len(hu)):
        t = time.perf_counter()
        v = denoise(model, fbp(ys[k], angles, hu.shape[-1], filter="hann")[None] - 1.0)[0]
        rows.append({"setting": name, "slice": seeds[k], "method": UNET, "seconds": time.perf_counter() - t,
                     **score(1000.0 * v, hu[k], body_mask(hu[k]))})
    return rows


def diffusion_rows(name: str, hu: torch.Tensor, pixel: float, seeds: list[int], runs: dict,
                   keep: dict | None = None) -> list[dict]:
    """Rows of the 2D solvers: ``runs`` maps a row label to (solver, settings, prior); every slice of ``hu`` alone.
    ``keep``: label -> list that collects the HU images (for the figure)."""
    op, angles, _, ys = measure(name, hu, pixel, seeds)
    rows = []
    for k in range(len(hu)):
        mask = body_mask(hu[k])
        problem = CTProblem(op, ys[k][None], angles, pixel, MU_WATER)
        for label, (method, settings, which) in runs.items():
            t = time.perf_counter()
            images, nfe, _ = solve(method, problem, which, seed=seeds[k], **settings)
            image = images.mean(0, keepdim=True)  # K samples -> their mean (K = 1: the sample)
            seconds = time.perf_counter() - t
            rows.append({"setting": name, "slice": seeds[k], "method": label, "seconds": seconds, "nfe": nfe,
                         **score(image[0], hu[k], mask)})
            if keep is not None:
                keep.setdefault(label, []).append(image[0])
            print(f"    {label:18s} slice {seeds[k]:3d}  PSNR {rows[-1]['psnr']:6.2f}  {seconds:6.1f} s", flush=True)
    return rows


def stack_rows(name: str, hu: torch.Tensor, pixel: float, seeds: list[int], runs: dict, tv_lam: float) -> list[dict]:
    """Rows of DiffusionMBIR on the stack ``hu`` (D, H, W) (``runs``: label -> (settings, prior)), and of FBP (ramp,
    Hann) and TV (weight ``tv_lam``) on the same slices; seconds per slice = stack seconds / D."""
    op, angles, _, ys = measure(name, hu, pixel, seeds)
    y = torch.stack(ys)
    masks = [body_mask(h) for h in hu]
    out = {}
    t = time.perf_counter()
    out["fbp (stack)"] = (1000.0 * (fbp(y, angles, hu.shape[-1]) - 1.0), time.perf_counter() - t)
    t = time.perf_counter()
    out["fbp-hann (stack)"] = (1000.0 * (fbp(y, angles, hu.shape[-1], filter="hann") - 1.0), time.perf_counter() - t)
    t = time.perf_counter()
    out["tv (stack)"] = (1000.0 * (tv(op, y, lam=tv_lam) - 1.0), time.perf_counter() - t)
    for label, (settings, which) in runs.items():
        t = time.perf_counter()
        image, _, _ = solve_stack(CTProblem(op, y, angles, pixel, MU_WATER), which, seed=0, **settings)
        out[label] = (image[0], time.perf_counter() - t)
    rows = []
    for label, (images, seconds) in out.items():
        for k in range(len(hu)):
            rows.append({"setting": name, "slice": seeds[k], "method": label, "seconds": seconds / len(hu),
                         "z_jump_hu": float((images[1:] - images[:-1]).abs().mean()),
                         **score(images[k], hu[k], masks[k])})
        print(f"    {label:18s} stack {seeds[0]}-{seeds[-1]}  PSNR {mean_by(rows, 'psnr', label):6.2f}  "
              f"{seconds / len(hu):6.1f} s/slice", flush=True)
    return rows


def contiguous(block: str, n: int) -> list[int]:
    """``n`` consecutive slices from the middle of a block (the MBIR stack)."""
    start, stop = BLOCKS[block]
    first = start + max(0, (stop - start - n) // 2)
    return list(range(first, min(first + n, stop)))


def mean_by(rows: list[dict], key: str, method: str) -> float:
    return statistics.mean(r[key] for r in rows if r["method"] == method)


def run_diffusion(results: dict, name: str, args, prior, control, hu: dict, idx: dict, pixel: float,
                  keep: dict | None) -> None:
    """Dev tuning, then test rows with the controls, of the diffusion solvers in ``args.diffusion`` for one setting;
    appends to ``results`` (diffusion_dev_rows, diffusion_test_rows, diffusion_tuned)."""
    flat = [m for m in args.diffusion if m != "mbir"]
    tuned = results["diffusion_tuned"].setdefault(name, {})
    init = {"init": "tv", "init_lam": results["tuned"][name]["tv_lam"]}
    grid = {m: [{**init, **c} for c in CANDIDATES[m]] for m in args.diffusion}
    if args.samples > 1:  # the 2D solvers' images are the mean of K samples (a posterior-mean estimate)
        grid.update({m: [{**c, "samples": args.samples} for c in grid[m]] for m in flat})
    if flat:
        print(f"[{name}] diffusion: tuning {', '.join(flat)} on dev slices {idx['ddev']}", flush=True)
        runs = {f"{m}#{i}": (m, c, prior) for m in flat for i, c in enumerate(grid[m])}
        rows = diffusion_rows(name, hu["ddev"], pixel, idx["ddev"], runs)
        results["diffusion_dev_rows"] += rows
        for m in flat:
            best = max(range(len(grid[m])), key=lambda i: mean_by(rows, "psnr", f"{m}#{i}"))
            tuned[m] = grid[m][best]
        print(f"[{name}] tuned: {tuned}; testing on {idx['test']}", flush=True)
        runs = {}
        for m in flat:
            runs[m] = (m, tuned[m], prior)
            if args.controls:
                runs[f"{m}-untrained"] = (m, tuned[m], control)
        results["diffusion_test_rows"] += diffusion_rows(name, hu["test"], pixel, idx["test"], runs, keep)
    if "mbir" in args.diffusion:
        lam = results["tuned"][name]["tv_lam"]
        print(f"[{name}] mbir: tuning on the dev stack {idx['sdev']}", flush=True)
        runs = {f"mbir#{i}": (c, prior) for i, c in enumerate(grid["mbir"])}
        rows = stack_rows(name, hu["sdev"], pixel, idx["sdev"], runs, lam)
        results["diffusion_dev_rows"] += rows
        best = grid["mbir"][max(range(len(grid["mbir"])), key=lambda i: mean_by(rows, "psnr", f"mbir#{i}"))]
        tuned["mbir"] = best
        runs = {"mbir": (best, prior), "mbir-no-ztv": ({**best, "lam_z": 0.0}, prior)}
        if args.controls:
            runs["mbir-untrained"] = (best, control)
        print(f"[{name}] mbir tuned {best}; test stack {idx['stest']}", flush=True)
        results["diffusion_test_rows"] += stack_rows(name, hu["stest"], pixel, idx["stest"], runs, lam)


def markdown(results: dict, args, test_idx, dev_idx, pixel) -> str:
    lines = [f"CT baselines, chest CT test block slices {test_idx} ({args.size}x{args.size}, {pixel:.3f} mm), "
             "PSNR/SSIM in HU within the body mask, window [-1000, 1000]; weights tuned on dev slices "
             f"{dev_idx}.", "", "| setting | method | PSNR (dB) | SSIM | s/slice | tuned |",
             "|---|---|---|---|---|---|"]
    for name in results["tuned"]:  # the settings measured so far (written after each)
        rows = [r for r in results["test_rows"] if r["setting"] == name]
        tuned = results["tuned"][name]
        for method in CLASSICAL + ((UNET,) if any(r["method"] == UNET for r in rows) else ()):
            note = {"sirt": f"{tuned['sirt_iters']} iterations", "tv": f"lam {tuned['tv_lam']:g}",
                    UNET: "train block, 180 views, I0 1e4"}.get(method, "")
            lines.append(f"| {name} | {method} | {mean_by(rows, 'psnr', method):.2f} | "
                         f"{mean_by(rows, 'ssim', method):.4f} | {mean_by(rows, 'seconds', method):.2f} | {note} |")
        rows = [r for r in results.get("diffusion_test_rows", []) if r["setting"] == name]
        tuned = results.get("diffusion_tuned", {}).get(name, {})
        for method in dict.fromkeys(r["method"] for r in rows):
            base = method.split("-")[0].split(" ")[0]
            note = ""
            if base in tuned and "(stack)" not in method:
                note = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in tuned[base].items())
            if method.startswith("mbir-no-ztv"):
                note = "as mbir, lam_z 0"
            stack = {r["slice"] for r in rows if r["method"] == method}
            first = next(r for r in rows if r["method"] == method)
            where = f" (stack {min(stack)}-{max(stack)})" if "z_jump_hu" in first and "(stack)" not in method else ""
            lines.append(f"| {name} | {method}{where} | {mean_by(rows, 'psnr', method):.2f} | "
                         f"{mean_by(rows, 'ssim', method):.4f} | {mean_by(rows, 'seconds', method):.2f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--dev-slices", type=int, default=3, help="slices of the dev block for tuning (default 3)")
    parser.add_argument("--test-slices", type=int, default=6, help="slices of the test block (default 6)")
    parser.add_argument("--size", type=int, default=256, help="in-plane size after 2^k x 2^k averaging (default 256)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--diffusion", nargs="*", default=[], choices=DIFFUSION,
                        help="diffusion solvers to add (default none; the prior is trained at 128: use --size 128)")
    parser.add_argument("--diffusion-settings", nargs="*", help="settings that get diffusion rows (default: all)")
    parser.add_argument("--diffusion-dev-slices", type=int, default=2, help="dev slices for the solvers (default 2)")
    parser.add_argument("--stack", type=int, default=4, help="consecutive slices of the MBIR stack (default 4)")
    parser.add_argument("--samples", type=int, default=1, help="samples per slice of DDNM/DPS/PC, their mean is the "
                                                                "image (default 1)")
    parser.add_argument("--lowdose-unet", help="folder of the supervised low-dose UNet (scripts/train_ct_prior.py "
                                               "lowdose-unet): a row in the low-dose-1e4 setting")
    parser.add_argument("--prior", default="ct_chest_prior", help="prior checkpoint (default: the shipped one)")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="skip the random-weight-prior rows")
    parser.add_argument("--figure", help="PNG: reference, FBP, TV, best diffusion and error maps (first test slice "
                                         "of the first diffusion setting)")
    args = parser.parse_args(argv)
    if not SERIES.is_dir():
        print(f"error: {SERIES} not found (the shared data folder sits beside the checkout)", file=sys.stderr)
        return 1
    if 512 % args.size:
        print("error: --size must divide 512", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    idx = {"dev": pick("dev", args.dev_slices), "test": pick("test", args.test_slices)}
    if args.diffusion:
        idx.update(ddev=pick("dev", args.diffusion_dev_slices), sdev=contiguous("dev", args.stack),
                   stest=contiguous("test", args.stack))
    every = sorted({i for v in idx.values() for i in v})
    hu_all, pixel = load_slices(every, args.size)
    hu = {k: hu_all[[every.index(i) for i in v]] for k, v in idx.items()}
    dev_idx, test_idx, dev, test = idx["dev"], idx["test"], hu["dev"], hu["test"]
    results = {"blocks": BLOCKS, "dev_slices": dev_idx, "test_slices": test_idx, "size": args.size,
               "pixel_mm": pixel, "settings": {k: SETTINGS[k] for k in args.settings}, "mu_water_per_mm": MU_WATER,
               "tuned": {}, "dev_rows": [], "test_rows": [], "build_seconds": {}}
    prior = control = None
    if args.diffusion:
        prior = load_prior(args.prior)
        control = untrained_prior(prior, seed=0)
        results.update(prior=str(args.prior), prior_image_size=prior.meta.get("image_size"),
                       prior_step=training_steps(prior.meta), candidates={m: CANDIDATES[m] for m in args.diffusion},
                       diffusion_slices={k: idx[k] for k in ("ddev", "sdev", "stest")}, diffusion_tuned={},
                       diffusion_dev_rows=[], diffusion_test_rows=[])
    diffusion_settings = args.diffusion_settings if args.diffusion_settings is not None else args.settings
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep: dict = {}
    for name in args.settings:
        print(f"[{name}] tuning on dev slices {dev_idx}", flush=True)
        rows, build = run_setting(name, dev, pixel, dev_idx, SIRT_GRID, TV_GRID)
        results["dev_rows"] += rows
        best_sirt = max(SIRT_GRID, key=lambda i: mean_by(rows, "psnr", f"sirt-{i}"))
        best_tv = max(TV_GRID, key=lambda lam: mean_by(rows, "psnr", f"tv-{lam:g}"))
        results["tuned"][name] = {"sirt_iters": best_sirt, "tv_lam": best_tv}
        print(f"[{name}] tuned: sirt {best_sirt} iterations, tv lam {best_tv:g}; testing on {test_idx}", flush=True)
        rows, build = run_setting(name, test, pixel, test_idx, (best_sirt,), (best_tv,))
        results["build_seconds"][name] = build
        for r in rows:
            r["method"] = {f"sirt-{best_sirt}": "sirt", f"tv-{best_tv:g}": "tv"}.get(r["method"], r["method"])
        if args.lowdose_unet and name == "low-dose-1e4":
            rows += unet_rows(name, test, pixel, test_idx, args.lowdose_unet)
        results["test_rows"] += rows
        for method in CLASSICAL + ((UNET,) if any(r["method"] == UNET for r in rows) else ()):
            print(f"  {method:9s} PSNR {mean_by(rows, 'psnr', method):6.2f} dB  SSIM "
                  f"{mean_by(rows, 'ssim', method):.4f}  {mean_by(rows, 'seconds', method):6.2f} s/slice", flush=True)
        if args.diffusion and name in diffusion_settings:
            first = args.figure and "figure" not in results
            run_diffusion(results, name, args, prior, control, hu, idx, pixel, keep if first else None)
            if first:
                flat = [m for m in args.diffusion if m != "mbir"]
                rows = [r for r in results["diffusion_test_rows"] if r["setting"] == name]
                best = max(flat, key=lambda m: mean_by(rows, "psnr", m)) if flat else None
                op, angles, _, ys = measure(name, test[:1], pixel, test_idx[:1])
                images = {"FBP": 1000.0 * (fbp(ys[0], angles, args.size) - 1.0),
                          "TV": 1000.0 * (tv(op, ys[0], lam=best_tv) - 1.0)}
                if best:
                    images[best.upper()] = keep[best][0]
                error_figure(args.figure, test[0], images)
                results["figure"] = {"path": args.figure, "setting": name, "slice": test_idx[0],
                                     "panels": ["reference"] + list(images), "error_window_hu": [0, 300]}
        write_json(results, out)  # after every setting: a partial run keeps what it measured
        out.with_suffix(".md").write_text(markdown(results, args, test_idx, dev_idx, pixel))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
