"""Temporal interpolation benchmark (issue 26): the held-out frames of the rat cardiac cine
(../shared/data/rat_cardiac_cine, 8 frames of 192 x 192, ONE animal, one slice): frame k (1, 3, 5) is interpolated
at gamma 0.5 from frames k - 1 and k + 1, which the DDM models were trained on (as endpoints and as targets; see
scripts/train_ddm.py: no held-out frame was ever an endpoint or a target). Same animal, same sequence: this measures
interpolation within one sequence, not across subjects.

Rows (``meddiff.tasks.register.interpolate``):
- ``linear``: the mean of the two frames;
- ``registration``: frame k-1 warped along exp(0.5 v), v a classical SVF registration k-1 -> k+1 (LNCC +
  smoothness, 300 Adam steps); ``registration_bidir``: blended with frame k+1 warped back along its own SVF;
- ``ddm``: the DDM model, latent scaled by 0.5, frame k-1 warped (the paper's way); ``ddm_bidir``: blended with
  frame k+1 warped back (latent of the reverse pair scaled by 0.5);
- ``ddm_random``: the same pipeline with random weights (control; MONAI's diffusion UNet zero-initialises its
  output, so the latent is 0 and the field the identity: frame k-1 itself);
- ``no_diffusion`` (+ ``_bidir``): the ablation without the diffusion part (deformation network on (source,
  target), velocity scaled by 0.5), trained with the same steps, batch, pairs and augmentation.

``--oracle`` adds two bounds that USE THE TRUE FRAME (for context, not methods): ``oracle_forward`` registers frame
k-1 to frame k itself (SVF, as ``registration``) and warps it all the way: the best a one-sided warp of frame k-1
can do with this registration; ``oracle_bidir`` blends that with frame k+1 registered to frame k.

Scores: PSNR (dB, peak = the true frame's maximum) and SSIM (same range) over the whole frame against the true
frame, seconds per interpolated frame (one CPU thread, model loading excluded).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_ddm.py --no-diffusion --steps 2393 \\
        --minutes 60 --lr 5e-3 --ema 0.99 --out runs/ddm/no_diffusion      # the ablation (a few minutes)
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interpolation.py --checkpoint ddm_rat_cine \\
        --ablation runs/ddm/no_diffusion --oracle --out runs/ddm/bench.json \\
        --figure benchmarks/figures/interp_rat_cine.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from meddiff.files import write_png, write_text  # noqa: E402
from meddiff.metrics.image import psnr, ssim  # noqa: E402
from meddiff.tasks.register.diffusemorph import (DiffuseMorph, LoadedDiffuseMorph,  # noqa: E402
                                                 load_diffusemorph)
from meddiff.tasks.register.interpolate import ddm, linear, registration  # noqa: E402

DATA = "/work/shared/data/rat_cardiac_cine/cine_rat_8fr.npy"
TARGET_DB = 2.0  # issue 26: DDM beats linear interpolation by >= 2 dB on the held-out frames


def scores(x: np.ndarray, truth: np.ndarray) -> dict:
    peak = float(truth.max())
    a, b = torch.from_numpy(x).double(), torch.from_numpy(truth).double()
    return {"psnr": float(psnr(a, b, data_range=peak)), "ssim": float(ssim(a, b, data_range=peak))}


def methods(ddm_model, ablation) -> dict:
    torch.manual_seed(0)
    random = DiffuseMorph(ddm_model.config).eval()
    rows = {"linear": lambda a, b: linear(a, b, [0.5])[0],
            "registration": lambda a, b: registration(a, b, [0.5])[0],
            "registration_bidir": lambda a, b: registration(a, b, [0.5], bidirectional=True)[0],
            "ddm": lambda a, b: ddm(ddm_model, a, b, [0.5])[0],
            "ddm_bidir": lambda a, b: ddm(ddm_model, a, b, [0.5], bidirectional=True)[0],
            "ddm_random": lambda a, b: ddm(random, a, b, [0.5])[0]}
    if ablation is not None:
        rows["no_diffusion"] = lambda a, b: ddm(ablation, a, b, [0.5])[0]
        rows["no_diffusion_bidir"] = lambda a, b: ddm(ablation, a, b, [0.5], bidirectional=True)[0]
    return rows


def markdown(result: dict) -> str:
    frames = result["held_out"]
    head = ("| method | " + " | ".join(f"frame {k} PSNR / SSIM" for k in frames)
            + " | mean PSNR (dB) | mean SSIM | vs linear (dB) | s / frame |")
    lines = [head, "|" + "---|" * (len(frames) + 5)]
    base = result["summary"]["linear"]["psnr"]
    for name, s in result["summary"].items():
        per = result["per_frame"][name]
        cells = " | ".join(f"{per[str(k)]['psnr']:.2f} / {per[str(k)]['ssim']:.3f}" for k in frames)
        lines.append(f"| {name} | {cells} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['psnr'] - base:+.2f} | "
                     f"{s['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def figure(path: str, cine: np.ndarray, outputs: dict, frames) -> None:
    """One row per held-out frame: k-1, truth, linear, DDM, DDM bidirectional, k+1, |linear error|, |DDM
    bidirectional error| (errors x 4; display range: the cine's 99.9th percentile)."""
    peak = float(np.percentile(cine, 99.9))
    rows = []
    for k in frames:
        truth = cine[k]
        lin, d, db = outputs["linear"][k], outputs["ddm"][k], outputs["ddm_bidir"][k]
        tiles = [cine[k - 1], truth, lin, d, db, cine[k + 1], 4 * np.abs(lin - truth), 4 * np.abs(db - truth)]
        rows.append(np.concatenate([np.clip(t / peak, 0, 1) for t in tiles], axis=1))
    write_png(path, (255 * np.concatenate(rows, axis=0)).astype(np.uint8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--held-out", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--checkpoint", default="ddm_rat_cine", help="DDM checkpoint (folder or shipped name)")
    parser.add_argument("--ablation", default="",
                        help="the no-diffusion ablation's checkpoint (trained by scripts/train_ddm.py --no-diffusion; "
                             "left out: no ablation rows)")
    parser.add_argument("--oracle", action="store_true", help="add the oracle bounds (they use the true frame)")
    parser.add_argument("--only", nargs="+", help="run only these rows (linear is always run)")
    parser.add_argument("--out", default="runs/ddm/bench.json")
    parser.add_argument("--figure", help="PNG strip per held-out frame")
    args = parser.parse_args(argv)

    cine = np.load(args.data).astype(np.float32)
    loaded: LoadedDiffuseMorph = load_diffusemorph(args.checkpoint)
    ablation = load_diffusemorph(args.ablation).net if args.ablation else None
    rows = methods(loaded.net, ablation)
    if args.only:
        rows = {k: v for k, v in rows.items() if k in set(args.only) | {"linear"}}
    per_frame, outputs, summary = {}, {}, {}
    truth_of = {}
    if args.oracle:
        rows["oracle_forward"] = lambda a, b: registration(a, truth_of["k"], [1.0])[0]
        rows["oracle_bidir"] = lambda a, b: 0.5 * (registration(a, truth_of["k"], [1.0])[0]
                                                   + registration(b, truth_of["k"], [1.0])[0])
    for name, fn in rows.items():
        per_frame[name], outputs[name], secs = {}, {}, []
        for k in args.held_out:
            truth_of["k"] = cine[k]  # read by the oracle rows only
            start = time.perf_counter()
            with torch.no_grad() if not name.startswith(("registration", "oracle")) else torch.enable_grad():
                x = fn(cine[k - 1], cine[k + 1])
            secs.append(time.perf_counter() - start)
            outputs[name][k] = x
            per_frame[name][str(k)] = scores(x, cine[k])
        summary[name] = {"psnr": float(np.mean([v["psnr"] for v in per_frame[name].values()])),
                         "ssim": float(np.mean([v["ssim"] for v in per_frame[name].values()])),
                         "seconds": float(np.mean(secs))}
        print(name, {k: round(v, 3) for k, v in summary[name].items()}, flush=True)
    base = summary["linear"]["psnr"]
    verdict = {name: summary[name]["psnr"] - base for name in summary if name.startswith("ddm")}
    result = {"data": args.data, "held_out": args.held_out, "gamma": 0.5, "checkpoint": str(loaded.folder),
              "checkpoint_steps": loaded.meta.get("step"), "ablation": args.ablation or None,
              "target_db_over_linear": TARGET_DB, "gain_over_linear_db": verdict,
              "target_met": {k: bool(v >= TARGET_DB) for k, v in verdict.items()},
              "summary": summary, "per_frame": per_frame, "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    write_text(out, json.dumps(result, indent=1) + "\n")
    write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    if args.figure and {"ddm", "ddm_bidir"} <= set(outputs):
        figure(args.figure, cine, outputs, args.held_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
