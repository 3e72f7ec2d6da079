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
test slices. Diffusion rows come when a CT prior exists (issue 23).
Metrics: PSNR / SSIM in HU after clipping both images to the [-1000, 1000] window (data range 2000), within a body
mask (reference > -500 HU, largest connected component, holes filled); seconds per slice (one slice at a time, the
projector's one-off matrix build excluded and reported per setting).

    python benchmarks/ct_reconstruction.py --out runs/ct.json               # writes runs/ct.json + runs/ct.md
    python benchmarks/ct_reconstruction.py --dev-slices 1 --test-slices 2 --out runs/ct_check.json
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
from meddiff.metrics.image import psnr, ssim
from meddiff.physics.ct import ParallelBeamCT, fbp, simulate_sinogram, sirt, tv, view_angles
from meddiff.physics.ct.dose import MU_WATER

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
WINDOW = (-1000.0, 1000.0)


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


def body_mask(hu: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage

    labels, count = ndimage.label((hu > -500).numpy())
    if count == 0:
        return torch.ones_like(hu, dtype=torch.bool)
    largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))))
    return torch.from_numpy(ndimage.binary_fill_holes(labels == largest))


def score(x_hu: torch.Tensor, ref_hu: torch.Tensor, mask: torch.Tensor) -> dict:
    a, b = x_hu.clamp(*WINDOW)[None, None].double(), ref_hu.clamp(*WINDOW)[None, None].double()
    m = mask.double()
    return {"psnr": float(psnr(a, b, data_range=2000.0, mask=m)), "ssim": float(ssim(a, b, data_range=2000.0, mask=m))}


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


def run_setting(name: str, hu: torch.Tensor, pixel: float, seeds: list[int], sirt_iters, tv_lams) -> tuple[list, float]:
    views, arc, i0 = SETTINGS[name]
    angles = view_angles(views, arc)
    size = hu.shape[-1]
    op = ParallelBeamCT(size, angles)
    t = time.perf_counter()
    op.matrices("cpu", torch.float32)
    build = time.perf_counter() - t
    rows = []
    for k in range(len(hu)):
        generator = torch.Generator().manual_seed(seeds[k])  # the slice index: same noise for every method
        sino, _ = simulate_sinogram(hu[k], op, pixel_size=pixel, i0=i0, generator=generator)
        y = sino / (MU_WATER * pixel)  # water units
        mask = body_mask(hu[k])
        for method, (x, seconds) in reconstructions(op, y, angles, size, sirt_iters, tv_lams).items():
            rows.append({"setting": name, "slice": seeds[k], "method": method, "seconds": seconds,
                         **score(1000.0 * (x - 1.0), hu[k], mask)})
    return rows, build


def mean_by(rows: list[dict], key: str, method: str) -> float:
    return statistics.mean(r[key] for r in rows if r["method"] == method)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--dev-slices", type=int, default=3, help="slices of the dev block for tuning (default 3)")
    parser.add_argument("--test-slices", type=int, default=6, help="slices of the test block (default 6)")
    parser.add_argument("--size", type=int, default=256, help="in-plane size after 2^k x 2^k averaging (default 256)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    if not SERIES.is_dir():
        print(f"error: {SERIES} not found (the shared data folder sits beside the checkout)", file=sys.stderr)
        return 1
    if 512 % args.size:
        print("error: --size must divide 512", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    dev_idx, test_idx = pick("dev", args.dev_slices), pick("test", args.test_slices)
    hu_all, pixel = load_slices(dev_idx + test_idx, args.size)
    dev, test = hu_all[:len(dev_idx)], hu_all[len(dev_idx):]
    results = {"blocks": BLOCKS, "dev_slices": dev_idx, "test_slices": test_idx, "size": args.size,
               "pixel_mm": pixel, "settings": {k: SETTINGS[k] for k in args.settings}, "mu_water_per_mm": MU_WATER,
               "tuned": {}, "dev_rows": [], "test_rows": [], "build_seconds": {}}
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
        results["test_rows"] += rows
        for method in ("fbp", "fbp-hann", "sirt", "tv"):
            print(f"  {method:9s} PSNR {mean_by(rows, 'psnr', method):6.2f} dB  SSIM "
                  f"{mean_by(rows, 'ssim', method):.4f}  {mean_by(rows, 'seconds', method):6.2f} s/slice", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(results, out)
    lines = [f"CT baselines, chest CT test block slices {test_idx} ({args.size}x{args.size}, {pixel:.3f} mm), "
             "PSNR/SSIM in HU within the body mask, window [-1000, 1000]; weights tuned on dev slices "
             f"{dev_idx}.", "", "| setting | method | PSNR (dB) | SSIM | s/slice | tuned |",
             "|---|---|---|---|---|---|"]
    for name in args.settings:
        rows = [r for r in results["test_rows"] if r["setting"] == name]
        tuned = results["tuned"][name]
        for method in ("fbp", "fbp-hann", "sirt", "tv"):
            note = {"sirt": f"{tuned['sirt_iters']} iterations", "tv": f"lam {tuned['tv_lam']:g}"}.get(method, "")
            lines.append(f"| {name} | {method} | {mean_by(rows, 'psnr', method):.2f} | "
                         f"{mean_by(rows, 'ssim', method):.4f} | {mean_by(rows, 'seconds', method):.2f} | {note} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
