"""MR contrast translation benchmark (issue 24): T1 -> T2 and T1 -> FLAIR on the held-out MS patient19 (Lesjak et
al. 2017; never used for training or tuning), with the shipped t1_to_t2_flair models.

Rows per method and target: histogram matching (identity + matching to the training target histogram), the
supervised UNet (L1, same pairs and wall time as Palette), Palette (K samples -> mean; DDIM), Palette with RANDOM
weights (control: same network freshly initialised). SDEdit has no row: it needs an unconditional T2 / FLAIR prior and
none was trained (see the model card). Scores in model space ([-1, 1]; the real target normalised within the brain
mask as the training targets were): PSNR (data range 2) and SSIM inside the brain mask, FID on offline random-cnn
slice features (texture statistics only; 57 slices, so noisy), lesion contrast-to-noise ratio (lesions vs a 2-voxel
shell of normal-appearing brain, real vs synthetic), for K > 1 the Pearson r of the per-voxel std over the samples with
the absolute error, network evaluations per slice (x samples) and seconds per slice
(this CPU, one thread, a shared machine). Slices: every axial slice at 2 mm with >= 5 % brain (as in training).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/translation.py --out runs/translate/bench.json
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

from meddiff.files import write_text  # noqa: E402
from meddiff.tasks.translate.data import DATA_ROOT, load_subject, slice_indices, slice_stack  # noqa: E402
from meddiff.tasks.translate.evaluation import scores  # noqa: E402
from meddiff.tasks.translate.methods import untrained_copy  # noqa: E402
from meddiff.tasks.translate.pipeline import load_translator, translate_slices  # noqa: E402

SIZE = (96, 112)


def evaluate(translator, subject, method: str, *, steps: int, samples: int, seed: int, fid: bool) -> list[dict]:
    """One row per target contrast of ``translator`` for ``method`` on ``subject``."""
    keep = slice_indices(subject)
    cond = torch.from_numpy(slice_stack(subject, [subject.images[c] for c in translator.source], SIZE, keep))
    real = slice_stack(subject, [subject.images[c] for c in translator.targets], SIZE, keep)
    mask = slice_stack(subject, [subject.mask], SIZE, keep, fill=0.0)[:, 0] > 0.5
    lesion = None
    if subject.lesion is not None:
        lesion = slice_stack(subject, [subject.lesion], SIZE, keep, fill=0.0)[:, 0] > 0.5
    start = time.perf_counter()
    mean, std, nfe, settings = translate_slices(translator, cond, mask, method, steps=steps, samples=samples,
                                                seed=seed)
    seconds = time.perf_counter() - start
    rows = []
    for i, target in enumerate(translator.targets):
        row = {"subject": subject.name, "target": target, "method": method,
               "nfe_per_slice": nfe * settings.get("samples", 1), "seconds_per_slice": seconds / len(keep),
               "slices": len(keep), **{k: v for k, v in settings.items()}}
        row.update(scores(mean[:, i].numpy(), real[:, i], mask, lesion, "random-cnn" if fid else None))
        if std is not None:
            sd = std[:, i].numpy()[mask]
            row["mean_std_brain"] = float(sd.mean())
            if sd.std() > 0:  # does the sample spread flag the errors? Pearson r of std and |error| over the brain
                err = np.abs(mean[:, i].numpy()[mask] - real[:, i][mask])
                row["r_std_error"] = float(np.corrcoef(sd, err)[0, 1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| subject | target | method | PSNR (dB) | SSIM | FID (random-cnn) | lesion CNR synth (real) | "
             "r(std, abs error) | NFE/slice | s/slice |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cnr = f"{r['cnr_synthetic']:.2f} ({r['cnr_real']:.2f})" if "cnr_real" in r else "-"
        fid = f"{r['fid']:.3f}" if "fid" in r else "-"
        corr = f"{r['r_std_error']:.2f}" if "r_std_error" in r else "-"
        lines.append(f"| {r['subject']} | {r['target']} | {r['label']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {fid} | "
                     f"{cnr} | {corr} | {r['nfe_per_slice']} | {r['seconds_per_slice']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output; a markdown table is written beside it (.md)")
    parser.add_argument("--checkpoint", default="t1_to_t2_flair")
    parser.add_argument("--subject", default="ms:patient19", help="held-out subject (default ms:patient19)")
    parser.add_argument("--steps", type=int, default=20, help="Palette DDIM steps (default 20)")
    parser.add_argument("--samples", type=int, default=4, help="Palette samples K (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DATA_ROOT), help="shared data folder")
    parser.add_argument("--also-train-subject", action="store_true",
                        help="also score the training subject ms:patient07 (seen in training: an upper reference)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    translator = load_translator(args.checkpoint)
    contrasts = translator.source + translator.targets
    subjects = [args.subject] + (["ms:patient07"] if args.also_train_subject else [])
    rows = []
    for name in subjects:
        subject = load_subject(name, contrasts, source=translator.source[0], root=args.data)
        for label, method, tr, kw in (
                ("histogram matching", "histogram", translator, {}),
                ("supervised UNet (L1)", "unet", translator, {}),
                (f"Palette ({args.steps} DDIM steps, K={args.samples})", "palette", translator,
                 {"samples": args.samples}),
                (f"Palette ({args.steps} DDIM steps, K=1)", "palette", translator, {"samples": 1}),
                (f"Palette, random weights (control, K={args.samples})", "palette",
                 type(translator)(**{**translator.__dict__, "net": untrained_copy(translator.net)}),
                 {"samples": args.samples})):
            kw = {"steps": args.steps, "samples": None, "seed": args.seed, "fid": True, **kw}
            for row in evaluate(tr, subject, method, **kw):
                row["label"] = label
                rows.append(row)
    result = {"checkpoint": str(translator.path), "subjects": subjects, "rows": rows,
              "wall_seconds": time.perf_counter() - start, "torch_threads": 1,
              "note": "model space [-1, 1]; PSNR data range 2; scores inside the brain mask"}
    out = Path(args.out)
    write_text(out, json.dumps(result, indent=1))
    md = table(rows)
    write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')} in {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
