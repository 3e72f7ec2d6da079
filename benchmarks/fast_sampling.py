"""Fast sampling (issue 28): distilled students at 1/2/4 steps against the teacher's samplers, MONAI and diffusers.

One run, one machine. Rows, all on the same network architecture (the teacher's weights unless a student):
teacher DDPM-1000, DPM-Solver++(2M) 10 and 20 (meddiff samplers), the progressive-distillation students at 4, 2 and
1 DDIM steps (their own grids), MONAI's ``DDIMScheduler`` 50 steps and diffusers' ``DPMSolverMultistepScheduler`` 20
steps driving the teacher network directly (x0 clipped as meddiff does: MONAI ``clip_sample``, diffusers'
final clamp).

- Latency: one image (batch 1) per call, median over ``--repeats`` (>= 5) calls; throughput: images/s at batch 64,
  median over the repeats. Calls are interleaved (round-robin over the rows, repeat after repeat) so drift in the
  machine's load hits every row alike. DDPM-1000 at batch 64 is timed with ``--ddpm-probe-steps`` steps and scaled
  to 1000 (each DDPM step costs the same): marked ``throughput_extrapolated``.
- Quality: ``--n`` class-balanced samples per row (seed 0) against the class-balanced PneumoniaMNIST val split (never
  trained on): FID and KID on the offline ``pneumonia-cnn`` features (meddiff.metrics.features; not Inception),
  k-NN precision/recall and train-synthetic-test-real accuracy/AUROC (meddiff.metrics.utility). DDPM-1000's FID
  costs 1000 evaluations of a batch of ``--n``: by default it is not recomputed and the row quotes benchmarks/README's
  synthesis table (same checkpoint, seed, n = 128 and reference: identical samples); ``--ddpm-fid`` recomputes it.
- Inference levers on the 4- and 1-step students at batch 1: ``torch.inference_mode`` instead of ``no_grad``,
  ``channels_last``, ``torch.compile`` (ONNX: only if onnxruntime is installed).

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_sampling.py --students runs/distill/pneumonia_cond_stage2 \
        --out fast_sampling.json      # a distillation run directory (its 4/2/1-step rounds); default: the shipped
                                      # pneumonia_cond_student only
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthesis import DEFAULT_DATA, balanced  # noqa: E402  (the same reference set as benchmarks/synthesis.py)

from meddiff import __version__  # noqa: E402
from meddiff.data.io import read_medmnist, write_json  # noqa: E402
from meddiff.metrics.features import get_feature_extractor  # noqa: E402
from meddiff.metrics.generative import fid, kid, precision_recall  # noqa: E402
from meddiff.metrics.utility import train_synthetic_test_real  # noqa: E402
from meddiff.nets import CLASS_LABELS  # noqa: E402
from meddiff.tasks.synthesis import class_labels_for, generate  # noqa: E402
from meddiff.training import load_checkpoint  # noqa: E402
from meddiff.training.checkpoint import resolve_checkpoint  # noqa: E402

DDPM_FID_FROM_README = {"fid": 1.36, "kid": 33.95e-3, "n": 128,
                        "source": "benchmarks/README.md, synthesis.py table (ddpm 1000, n = 128, seed 0)"}
Sampler = Callable[[int, int], torch.Tensor]  # (number of images, seed) -> (n, 1, 28, 28) in [-1, 1]


def meddiff_sampler(checkpoint, model, meta, sampler: str | None, steps: int | None) -> Sampler:
    """`meddiff sample`'s path (tasks.synthesis.generate): x0 clamped, classes in turn."""
    def run(n: int, seed: int) -> torch.Tensor:
        return generate(checkpoint, n, sampler=sampler, steps=steps, seed=seed, model=model, meta=meta,
                        batch_size=max(n, 1))[0]
    return run


def external_sampler(kind: str, model, meta, steps: int) -> Sampler:
    """MONAI DDIM or diffusers DPM-Solver++ (v-prediction, linear betas, 1000 steps) over the same network."""
    def run(n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((n, meta["channels"], *meta["image_size"]), generator=generator)
        labels = class_labels_for(meta, n, None)
        if kind == "monai_ddim":
            from monai.networks.schedulers import DDIMScheduler
            scheduler = DDIMScheduler(1000, "linear_beta", clip_sample=True, prediction_type="v_prediction")
            scheduler.set_timesteps(steps)
        else:
            from diffusers import DPMSolverMultistepScheduler
            scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                    prediction_type="v_prediction", algorithm_type="dpmsolver++",
                                                    solver_order=2, final_sigmas_type="zero")
            scheduler.set_timesteps(steps)
        with torch.no_grad():
            for t in scheduler.timesteps:
                out = model(x, torch.full((n,), float(t)), **{CLASS_LABELS: labels})
                x = scheduler.step(out, int(t), x)[0] if kind == "monai_ddim" else scheduler.step(out, t, x).prev_sample
        return x.clamp(-1, 1)
    return run


def timed(run: Sampler, n: int, seed: int, context=None) -> float:
    start = time.perf_counter()
    with context() if context is not None else torch.no_grad():
        run(n, seed)
    return time.perf_counter() - start


def quality(samples, labels, reference: dict) -> dict:
    feats = reference["extractor"](samples)
    kid_mean, kid_std = kid(reference["features"], feats, subsets=50, subset_size=min(100, len(samples)))
    precision, recall = precision_recall(reference["features"], feats)
    utility = train_synthetic_test_real((samples, labels), reference["train_small"], reference["val"], seed=0)
    return {"fid": fid(reference["features"], feats), "kid": kid_mean, "kid_std": kid_std, "precision": precision,
            "recall": recall, "tstr_accuracy": utility["synthetic"]["accuracy"],
            "tstr_auroc": utility["synthetic"]["auroc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pneumonia_cond")
    parser.add_argument("--students", nargs="+", default=["pneumonia_cond_student"],
                        help="student checkpoints, or a distillation run directory (its steps_004/002/001 rounds)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--n", type=int, default=128, help="samples per row for the quality metrics (half per class)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="the slow reference (1000; fewer: smoke tests)")
    parser.add_argument("--ddpm-probe-steps", type=int, default=10)
    parser.add_argument("--ddpm-fid", action="store_true", help="recompute DDPM-1000's FID (1000 x batch n)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least five)")
    torch.manual_seed(0)

    teacher, teacher_meta = load_checkpoint(args.teacher)
    students = []
    for given in args.students:
        path = Path(given)
        rounds = sorted(path.glob("steps_00[124]"), reverse=True) if (path / "distill.yaml").is_file() else [path]
        for round_dir in rounds:
            checkpoint = resolve_checkpoint(round_dir)
            model, meta = load_checkpoint(checkpoint)
            students.append((str(checkpoint), model, meta))
    students.sort(key=lambda s: -s[2]["sampling"]["steps"])

    rows = [
        {"model": args.teacher, "method": "meddiff ddpm", "steps": args.ddpm_steps,
         "run": meddiff_sampler(args.teacher, teacher, teacher_meta, "ddpm", args.ddpm_steps),
         "probe": meddiff_sampler(args.teacher, teacher, teacher_meta, "ddpm", args.ddpm_probe_steps)},
        {"model": args.teacher, "method": "meddiff dpmpp_2m", "steps": 20,
         "run": meddiff_sampler(args.teacher, teacher, teacher_meta, "dpmpp_2m", 20)},
        {"model": args.teacher, "method": "meddiff dpmpp_2m", "steps": 10,
         "run": meddiff_sampler(args.teacher, teacher, teacher_meta, "dpmpp_2m", 10)},
        *({"model": path, "method": "student ddim (distilled grid)", "steps": meta["sampling"]["steps"],
           "run": meddiff_sampler(path, model, meta, None, None), "student": True} for path, model, meta in students),
        {"model": args.teacher, "method": "MONAI DDIMScheduler", "steps": 50,
         "run": external_sampler("monai_ddim", teacher, teacher_meta, 50)},
        {"model": args.teacher, "method": "diffusers DPMSolverMultistep (dpmsolver++)", "steps": 20,
         "run": external_sampler("diffusers_dpm", teacher, teacher_meta, 20)},
    ]
    for row in rows:
        row["latency_s"], row["batch_s"] = [], []
    for row in rows:  # warm-up (allocations, lazy imports)
        row["run"](1, 0)
    for repeat in range(args.repeats):
        for row in rows:
            row["latency_s"].append(timed(row["run"], 1, repeat))
            row["batch_s"].append(timed(row.get("probe", row["run"]), args.batch, repeat))
        print(f"timing repeat {repeat + 1}/{args.repeats} done", flush=True)

    # inference levers on students at batch 1 (interleaved too)
    levers = []
    for path, model, meta in students:
        if meta["sampling"]["steps"] not in (1, 4):
            continue
        variants = {"no_grad (default)": (meddiff_sampler(path, model, meta, None, None), None),
                    "inference_mode": (meddiff_sampler(path, model, meta, None, None), torch.inference_mode)}
        fast, _ = load_checkpoint(path)
        fast = fast.to(memory_format=torch.channels_last)
        variants["channels_last"] = (meddiff_sampler(path, fast, meta, None, None), torch.inference_mode)
        if not args.no_compile:
            try:
                compiled = torch.compile(load_checkpoint(path)[0])
                run = meddiff_sampler(path, compiled, meta, None, None)
                start = time.perf_counter()
                with torch.inference_mode():
                    run(1, 0)
                compile_s = time.perf_counter() - start
                variants["torch.compile + inference_mode"] = (run, torch.inference_mode)
            except Exception as error:  # noqa: BLE001  (report why the lever is unavailable)
                compile_s = None
                levers.append({"model": path, "steps": meta["sampling"]["steps"], "variant": "torch.compile",
                               "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        times = {name: [] for name in variants}
        for name, (run, context) in variants.items():
            timed(run, 1, 0, context)
        for repeat in range(args.repeats):
            for name, (run, context) in variants.items():
                times[name].append(timed(run, 1, repeat, context))
        base = statistics.median(times["no_grad (default)"])
        for name, values in times.items():
            median = statistics.median(values)
            levers.append({"model": path, "steps": meta["sampling"]["steps"], "variant": name,
                           "latency_ms": 1e3 * median, "speedup": base / median,
                           **({"compile_s": compile_s} if "compile" in name else {})})
        print(f"levers done for the {meta['sampling']['steps']}-step student", flush=True)

    data = read_medmnist(args.data)
    train_images, train_labels = data["train"][0], data["train"][1].reshape(-1)
    val_images, val_labels = data["val"][0], data["val"][1].reshape(-1)
    per_class = int(np.bincount(val_labels).min())
    val = balanced(val_images, val_labels, 2 * per_class, 0)
    extractor = get_feature_extractor("pneumonia-cnn")
    reference = {"extractor": extractor, "val": val, "features": extractor(val[0]),
                 "train_small": balanced(train_images, train_labels, args.n, 1)}
    for row in rows:
        if row["steps"] == 1000 and row["method"] == "meddiff ddpm" and not args.ddpm_fid:
            row.update({"fid": DDPM_FID_FROM_README["fid"], "kid": DDPM_FID_FROM_README["kid"],
                        "fid_source": DDPM_FID_FROM_README["source"]})
            continue
        samples = row["run"](args.n, 0)
        labels = torch.arange(args.n) % 2
        row.update(quality(samples, labels, reference))
        print(f"{row['method']} {row['steps']}: FID {row['fid']:.3f}", flush=True)

    dpm20 = next(r for r in rows if r["method"] == "meddiff dpmpp_2m" and r["steps"] == 20)
    monai = next(r for r in rows if r["method"].startswith("MONAI"))
    results = []
    for row in rows:
        latency = statistics.median(row["latency_s"])
        batch_s = statistics.median(row["batch_s"])
        if "probe" in row:
            batch_s *= row["steps"] / args.ddpm_probe_steps
        out = {"model": row["model"], "method": row["method"], "steps": row["steps"],
               "latency_ms": 1e3 * latency, "images_per_s": args.batch / batch_s,
               "latency_ms_all": [round(1e3 * v, 2) for v in row["latency_s"]],
               "throughput_extrapolated": "probe" in row,
               **{k: row.get(k) for k in ("fid", "kid", "kid_std", "precision", "recall", "tstr_accuracy",
                                          "tstr_auroc", "fid_source") if row.get(k) is not None}}
        if row.get("student"):
            out["fid_ratio"] = row["fid"] / dpm20["fid"]
            out["speedup_vs_monai_ddim50"] = statistics.median(monai["latency_s"]) / latency
            out["meets_target"] = bool(row["steps"] <= 4 and out["fid_ratio"] <= 1.3 and out["latency_ms"] <= 100)
        results.append(out)

    header = ("| model | method | steps | latency ms (batch 1) | images/s (batch 64) | FID | KID x1e3 | precision | "
              "recall | TSTR acc | FID ratio vs DPM++ 20 | speed-up vs MONAI DDIM-50 |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in results:
        lines.append(f"| {Path(r['model']).name if '/' in r['model'] else r['model']} | {r['method']} | {r['steps']} | "
                     f"{r['latency_ms']:.1f} | {r['images_per_s']:.1f}{'*' if r['throughput_extrapolated'] else ''} | "
                     f"{fmt(r.get('fid'), '.2f')}{'**' if r.get('fid_source') else ''} | "
                     f"{fmt(None if r.get('kid') is None else 1e3 * r['kid'], '.1f')} | {fmt(r.get('precision'), '.2f')} | "
                     f"{fmt(r.get('recall'), '.2f')} | {fmt(r.get('tstr_accuracy'), '.3f')} | "
                     f"{fmt(r.get('fid_ratio'), '.2f')} | {fmt(r.get('speedup_vs_monai_ddim50'), '.1f')} |")
    lever_lines = ["| student steps | variant | latency ms (batch 1) | speed-up |", "|---|---|---|---|"]
    for lever in levers:
        lever_lines.append(f"| {lever['steps']} | {lever['variant']} | {fmt(lever.get('latency_ms'), '.1f')} | "
                           f"{fmt(lever.get('speedup'), '.2f')}{' (' + lever['error'] + ')' if 'error' in lever else ''} |")
    table, lever_table = "\n".join(lines), "\n".join(lever_lines)
    print(table + "\n\n" + lever_table)
    try:
        import onnxruntime  # noqa: F401
        onnx = "installed (not measured by this script)"
    except ImportError:
        onnx = "onnxruntime is not installed: ONNX export not measured"
    write_json({"benchmark": "fast_sampling", "teacher": args.teacher, "n_per_row": args.n, "repeats": args.repeats,
                "batch": args.batch, "ddpm_probe_steps": args.ddpm_probe_steps,
                "real_reference": f"{args.data} val split, class-balanced: {2 * per_class} of {len(val_labels)} images",
                "features": extractor.card(), "onnx": onnx,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "torch": torch.__version__, "threads": torch.get_num_threads()},
                "meddiff": __version__, "results": results, "levers": levers, "table": table,
                "lever_table": lever_table}, args.out)


if __name__ == "__main__":
    main()
