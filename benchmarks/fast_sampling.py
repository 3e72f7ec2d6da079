"""Fast sampling (issue 28): distilled students at 1/2/4 steps against the teacher's samplers, MONAI and diffusers.

One run, one machine, one model family (``--model pneumonia``: pneumonia_cond, 28 x 28, class-conditional;
``--model brain``: brain_slices_2d, 64 x 64, unconditional). Rows, all on the same network architecture (the
teacher's weights unless a student): teacher DDPM-1000, DPM-Solver++(2M) 10 and 20 (meddiff samplers), the distilled
students (their own samplers and grids), the same students with their network run by onnxruntime (``meddiff export
--format onnx``; rows only when onnxruntime is installed), MONAI's ``DDIMScheduler`` 50 steps and diffusers'
``DPMSolverMultistepScheduler`` 20 steps driving the teacher network directly (x0 clipped as meddiff does: MONAI
``clip_sample``, diffusers' final clamp).

- Latency: one image (batch 1) per call, median over ``--repeats`` (>= 5) calls, as wall time and as the process's
  CPU time (one thread: on a machine shared with other jobs the CPU time is close to the cost on an idle core, the
  wall time is what a user waited; both are reported, and the machine's load average); throughput: images/s at
  batch 64, median over the repeats. Calls are interleaved (round-robin over the rows, repeat after repeat) so drift
  in the machine's load hits every row alike. DDPM-1000 at batch 64 is timed with ``--ddpm-probe-steps`` steps and
  scaled to 1000 (each DDPM step costs the same): marked ``throughput_extrapolated``; with ``--model brain`` its batch-1
  latency is extrapolated the same way (``latency_extrapolated``; 1000 calls of ~40 ms per repeat otherwise). With
  ``--throughput-probe-steps K`` the teacher's other samplers of more than K steps are timed at batch 64 the same
  way (K steps of the same sampler, scaled; marked too): on a busy shared CPU the full batch-64 runs cost tens of
  minutes per repeat.
- Quality: ``--n`` samples per row (seed 0; class-balanced for pneumonia) against held-out real images:
  pneumonia: the class-balanced PneumoniaMNIST val split (never trained on), FID/KID on the offline ``pneumonia-cnn``
  features (meddiff.metrics.features; not Inception), k-NN precision/recall and train-synthetic-test-real
  accuracy/AUROC (meddiff.metrics.utility). brain: the 202 validation slices of brain_slices_2d's two held-out IXI
  subjects (its training data config), FID/KID on the ``random-cnn`` features (no brain-trained feature network is
  shipped; texture/intensity statistics, not anatomy), precision/recall; no TSTR (unconditional); the floor, ``--n``
  real training slices in place of samples, is reported beside the table. DDPM-1000's FID costs 1000 evaluations
  of a batch of ``--n``: by default it is not recomputed: pneumonia quotes benchmarks/README's synthesis table (same
  checkpoint, seed, n = 128 and reference: identical samples), brain leaves it empty; ``--ddpm-fid`` recomputes it.
- Inference levers on the students at batch 1 (interleaved too): ``torch.inference_mode`` instead of ``no_grad``,
  ``channels_last``, ``torch.compile``, a TorchScript export and an ONNX export under onnxruntime (the same network
  file as the onnxruntime rows; threads: torch's thread count).

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_sampling.py --out fast_sampling.json   # pneumonia
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_sampling.py --model brain --out fast_brain.json
    # --students: student checkpoints or distillation run directories (their steps_004/002/001 rounds, or the
    # consistency_<N> round of a consistency-distillation run)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

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
from meddiff.training.shipped import shipped_path  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DDPM_FID_FROM_README = {"fid": 1.36, "kid": 33.95e-3, "n": 128,
                        "source": "benchmarks/README.md, synthesis.py table (ddpm 1000, n = 128, seed 0)"}
MODELS = {
    "pneumonia": {"teacher": "pneumonia_cond", "students": ["pneumonia_cond_student"], "features": "pneumonia-cnn",
                  "ddpm_fid": DDPM_FID_FROM_README, "extrapolate_ddpm_latency": False},
    "brain": {"teacher": "brain_slices_2d", "students": ["brain_slices_2d_student"], "features": "random-cnn",
              "ddpm_fid": None, "extrapolate_ddpm_latency": True},
}
Sampler = Callable[[int, int], torch.Tensor]  # (number of images, seed) -> (n, C, H, W) in [-1, 1]


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
        cond = {CLASS_LABELS: labels} if labels is not None else {}
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
                out = model(x, torch.full((n,), float(t)), **cond)
                x = scheduler.step(out, int(t), x)[0] if kind == "monai_ddim" else scheduler.step(out, t, x).prev_sample
        return x.clamp(-1, 1)
    return run


CPU_SECONDS: dict[int, list[float]] = {}  # id(list of wall times) -> the same calls' CPU times


def timed(run: Sampler, n: int, seed: int, context=None, into: list | None = None) -> float:
    """Wall seconds of one call (appended to ``into`` if given, with the process's CPU seconds alongside: on a shared
    machine one thread's CPU time is close to what the call costs on an idle core, wall time is what a user waits)."""
    start, cpu = time.perf_counter(), time.process_time()
    with context() if context is not None else torch.no_grad():
        run(n, seed)
    wall = time.perf_counter() - start
    if into is not None:
        into.append(wall)
        CPU_SECONDS.setdefault(id(into), []).append(time.process_time() - cpu)
    return wall


def cpu_median_ms(walls: list) -> float:
    return 1e3 * statistics.median(CPU_SECONDS[id(walls)])


def quality(samples, labels, reference: dict) -> dict:
    feats = reference["extractor"](samples)
    kid_mean, kid_std = kid(reference["features"], feats, subsets=50, subset_size=min(100, len(samples)))
    precision, recall = precision_recall(reference["features"], feats)
    out = {"fid": fid(reference["features"], feats), "kid": kid_mean, "kid_std": kid_std, "precision": precision,
           "recall": recall}
    if reference.get("train_small") is not None and labels is not None:
        utility = train_synthetic_test_real((samples, labels), reference["train_small"], reference["val"], seed=0)
        out.update(tstr_accuracy=utility["synthetic"]["accuracy"], tstr_auroc=utility["synthetic"]["auroc"])
    return out


def pneumonia_reference(args, extractor) -> dict:
    data = read_medmnist(args.data or DEFAULT_DATA)
    train_images, train_labels = data["train"][0], data["train"][1].reshape(-1)
    val_images, val_labels = data["val"][0], data["val"][1].reshape(-1)
    per_class = int(np.bincount(val_labels).min())
    val = balanced(val_images, val_labels, 2 * per_class, 0)
    return {"extractor": extractor, "val": val, "features": extractor(val[0]),
            "train_small": balanced(train_images, train_labels, args.n, 1),
            "description": f"{args.data or DEFAULT_DATA} val split, class-balanced: {2 * per_class} of "
                           f"{len(val_labels)} images"}


def brain_reference(args, extractor, teacher: str) -> dict:
    """The teacher's held-out validation slices (split by subject, its training data config) and a floor: FID of
    ``--n`` real training slices against them."""
    from meddiff.data.volumes import SliceDataset

    config = yaml.safe_load((shipped_path(teacher) / "config.yaml").read_text())["data"]
    options = {k: v for k, v in config.items() if k not in ("kind", "path")}
    path = Path(args.data) if args.data else SHARED_DATA / Path(config["path"]).name
    val = SliceDataset(path, split="val", **options)
    train = SliceDataset(path, split="train", **options)
    val_images = torch.stack([val[i]["image"] for i in range(len(val))])
    picks = np.random.default_rng(1).choice(len(train), min(args.n, len(train)), replace=False)
    train_images = torch.stack([train[int(i)]["image"] for i in picks])
    features = extractor(val_images)
    floor = quality(train_images, None, {"extractor": extractor, "features": features})
    return {"extractor": extractor, "features": features, "val": None, "train_small": None,
            "floor": {"what": f"{len(picks)} real training slices in place of samples", **floor},
            "description": f"{path} validation split (subjects {', '.join(sorted(val.subjects))}): "
                           f"{len(val_images)} slices, {config['size']} x {config['size']}"}


def short_name(model: str) -> str:
    """A table label: a shipped name as is, a checkpoint inside a distillation run as run/round."""
    parts = Path(model).parts
    rounds = [i for i, part in enumerate(parts) if part.startswith(("steps_", "consistency_"))]
    return "/".join(parts[rounds[-1] - 1:rounds[-1] + 1]) if rounds and rounds[-1] > 0 else Path(model).name


def load_students(given: list[str]) -> list[tuple[str, torch.nn.Module, dict]]:
    students = []
    for name in given:
        path = Path(name)
        rounds = ([*sorted(path.glob("steps_00[124]"), reverse=True), *sorted(path.glob("consistency_*"))]
                  if (path / "distill.yaml").is_file() else [path])
        for round_dir in rounds:
            checkpoint = resolve_checkpoint(round_dir)
            model, meta = load_checkpoint(checkpoint)
            students.append((str(checkpoint), model, meta))
    students.sort(key=lambda s: -s[2]["sampling"]["steps"])
    return students


def export_students(students, directory: Path) -> dict[str, dict]:
    """{checkpoint: {"onnx": (network, meta), "torchscript": (network, meta)}}; a format is missing when its export
    is unavailable (onnx/onnxruntime not installed) and its error is recorded instead."""
    from meddiff.training.export_onnx import export_network, load_exported

    exports = {}
    for index, (path, model, meta) in enumerate(students):
        exports[path] = {}
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
            out = directory / f"student_{index}{suffix}"
            try:
                export_network(load_checkpoint(path)[0], meta, fmt, out)
                exports[path][fmt] = load_exported(out)
            except Exception as error:  # noqa: BLE001  (report why the lever is unavailable)
                exports[path][f"{fmt}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="pneumonia",
                        help="model family: pneumonia (28 x 28) or brain (64 x 64)")
    parser.add_argument("--teacher", help="default: pneumonia_cond / brain_slices_2d")
    parser.add_argument("--students", nargs="+",
                        help="student checkpoints, or a distillation run directory (its steps_004/002/001 rounds); "
                             "default: the shipped student of --model")
    parser.add_argument("--data", help="reference data: PneumoniaMNIST npz / IXI folder (default: ../shared/data)")
    parser.add_argument("--n", type=int, default=128, help="samples per row for the quality metrics")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="the slow reference (1000; fewer: smoke tests)")
    parser.add_argument("--ddpm-probe-steps", type=int, default=10)
    parser.add_argument("--throughput-probe-steps", type=int, default=0,
                        help="time the teacher's samplers of more steps at batch --batch with this many steps of the "
                             "same sampler and scale (each step is one network call at the same batch; marked *); "
                             "0: time them in full")
    parser.add_argument("--compile-steps", type=int, nargs="*",
                        help="students (by step count) that get the torch.compile lever (default: all)")
    parser.add_argument("--ddpm-latency-probe", action="store_true",
                        help="extrapolate DDPM-1000's batch-1 latency from --ddpm-probe-steps steps too (the brain "
                             "default; each DDPM step is one network call)")
    parser.add_argument("--ddpm-fid", action="store_true", help="recompute DDPM-1000's FID (1000 x batch n)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX / TorchScript rows and levers")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least five)")
    torch.manual_seed(0)
    load_before = os.getloadavg()  # the machine is shared: its load is recorded beside the timings
    preset = MODELS[args.model]
    teacher_name = args.teacher or preset["teacher"]

    teacher, teacher_meta = load_checkpoint(teacher_name)
    students = load_students(args.students or preset["students"])
    workdir = tempfile.TemporaryDirectory(prefix="fast_sampling_")
    exports = {} if args.no_export else export_students(students, Path(workdir.name))

    ddpm = {"model": teacher_name, "method": "meddiff ddpm", "steps": args.ddpm_steps,
            "run": meddiff_sampler(teacher_name, teacher, teacher_meta, "ddpm", args.ddpm_steps),
            "probe": meddiff_sampler(teacher_name, teacher, teacher_meta, "ddpm", args.ddpm_probe_steps),
            "probe_steps": args.ddpm_probe_steps,
            "latency_probe": preset["extrapolate_ddpm_latency"] or args.ddpm_latency_probe}
    rows = [
        ddpm,
        {"model": teacher_name, "method": "meddiff dpmpp_2m", "steps": 20,
         "run": meddiff_sampler(teacher_name, teacher, teacher_meta, "dpmpp_2m", 20)},
        {"model": teacher_name, "method": "meddiff dpmpp_2m", "steps": 10,
         "run": meddiff_sampler(teacher_name, teacher, teacher_meta, "dpmpp_2m", 10)},
    ]
    for path, model, meta in students:
        sampler = meta["sampling"].get("sampler", "ddim")
        rows.append({"model": path, "method": f"student {sampler} (distilled grid)", "steps": meta["sampling"]["steps"],
                     "run": meddiff_sampler(path, model, meta, None, None), "student": True})
        if "onnx" in exports.get(path, {}):
            network, exported_meta = exports[path]["onnx"]
            rows.append({"model": path, "method": f"student {sampler} + onnxruntime",
                         "steps": meta["sampling"]["steps"],
                         "run": meddiff_sampler(path, network, exported_meta, None, None), "student": True})
    rows += [
        {"model": teacher_name, "method": "MONAI DDIMScheduler", "steps": 50,
         "run": external_sampler("monai_ddim", teacher, teacher_meta, 50)},
        {"model": teacher_name, "method": "diffusers DPMSolverMultistep (dpmsolver++)", "steps": 20,
         "run": external_sampler("diffusers_dpm", teacher, teacher_meta, 20)},
    ]
    probe = args.throughput_probe_steps
    if probe:  # the teacher's long samplers at batch 64: a probe-step run of the same sampler, scaled
        for row in rows:
            if "probe" not in row and not row.get("student") and row["steps"] > probe:
                kinds = {"meddiff dpmpp_2m": None, "MONAI DDIMScheduler": "monai_ddim"}
                kind = kinds.get(row["method"], "diffusers_dpm")
                row["probe"] = (meddiff_sampler(teacher_name, teacher, teacher_meta, "dpmpp_2m", probe) if kind is None
                                else external_sampler(kind, teacher, teacher_meta, probe))
                row["probe_steps"] = probe
    for row in rows:
        row["latency_s"], row["batch_s"] = [], []
    for row in rows:  # warm-up (allocations, lazy imports)
        row.get("probe", row["run"])(1, 0)
    for repeat in range(args.repeats):
        for row in rows:
            latency_run = row["probe"] if row.get("latency_probe") else row["run"]
            timed(latency_run, 1, repeat, into=row["latency_s"])
            row["batch_s"].append(timed(row.get("probe", row["run"]), args.batch, repeat))
        print(f"timing repeat {repeat + 1}/{args.repeats} done", flush=True)

    # inference levers on students at batch 1 (interleaved too)
    levers = []
    for path, model, meta in students:
        variants = {"no_grad (default)": (meddiff_sampler(path, model, meta, None, None), None),
                    "inference_mode": (meddiff_sampler(path, model, meta, None, None), torch.inference_mode)}
        fast, _ = load_checkpoint(path)
        fast = fast.to(memory_format=torch.channels_last)
        variants["channels_last"] = (meddiff_sampler(path, fast, meta, None, None), torch.inference_mode)
        compile_s = None
        if not args.no_compile and (args.compile_steps is None or meta["sampling"]["steps"] in args.compile_steps):
            try:
                compiled = torch.compile(load_checkpoint(path)[0])
                run = meddiff_sampler(path, compiled, meta, None, None)
                start = time.perf_counter()
                with torch.inference_mode():
                    run(1, 0)
                compile_s = time.perf_counter() - start
                variants["torch.compile + inference_mode"] = (run, torch.inference_mode)
            except Exception as error:  # noqa: BLE001  (report why the lever is unavailable)
                levers.append({"model": path, "steps": meta["sampling"]["steps"], "variant": "torch.compile",
                               "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        for fmt, label in (("torchscript", "TorchScript (traced, frozen)"), ("onnx", "ONNX + onnxruntime")):
            if fmt in exports.get(path, {}):
                network, exported_meta = exports[path][fmt]
                variants[label] = (meddiff_sampler(path, network, exported_meta, None, None), torch.inference_mode)
            elif f"{fmt}_error" in exports.get(path, {}):
                levers.append({"model": path, "steps": meta["sampling"]["steps"], "variant": label,
                               "error": exports[path][f"{fmt}_error"]})
        times = {name: [] for name in variants}
        for name, (run, context) in variants.items():
            timed(run, 1, 0, context)
        for repeat in range(args.repeats):
            for name, (run, context) in variants.items():
                timed(run, 1, repeat, context, into=times[name])
        base = statistics.median(times["no_grad (default)"])
        for name, values in times.items():
            median = statistics.median(values)
            levers.append({"model": path, "steps": meta["sampling"]["steps"], "variant": name,
                           "latency_ms": 1e3 * median, "speedup": base / median, "cpu_ms": cpu_median_ms(values),
                           **({"compile_s": compile_s} if "compile" in name else {})})
        print(f"levers done for the {meta['sampling']['steps']}-step student", flush=True)

    extractor = get_feature_extractor(preset["features"])
    reference = (pneumonia_reference(args, extractor) if args.model == "pneumonia"
                 else brain_reference(args, extractor, teacher_name))
    for row in rows:
        if row is ddpm and not args.ddpm_fid and args.ddpm_steps == 1000:
            quoted = preset["ddpm_fid"]
            if quoted is not None:
                row.update({"fid": quoted["fid"], "kid": quoted["kid"], "fid_source": quoted["source"]})
            continue
        samples = row["run"](args.n, 0)
        labels = torch.arange(args.n) % teacher_meta["num_classes"] if teacher_meta.get("num_classes") else None
        row.update(quality(samples, labels, reference))
        print(f"{row['method']} {row['steps']}: FID {row['fid']:.3f}", flush=True)

    dpm20 = next(r for r in rows if r["method"] == "meddiff dpmpp_2m" and r["steps"] == 20)
    monai = next(r for r in rows if r["method"].startswith("MONAI"))
    results = []
    for row in rows:
        latency = statistics.median(row["latency_s"])
        batch_s = statistics.median(row["batch_s"])
        if "probe" in row:
            batch_s *= row["steps"] / row["probe_steps"]
            if row.get("latency_probe"):
                latency *= row["steps"] / row["probe_steps"]
        out = {"model": row["model"], "method": row["method"], "steps": row["steps"],
               "latency_ms": 1e3 * latency, "images_per_s": args.batch / batch_s,
               "latency_cpu_ms": cpu_median_ms(row["latency_s"]) * (
                   row["steps"] / row["probe_steps"] if row.get("latency_probe") else 1),
               "latency_ms_all": [round(1e3 * v, 2) for v in row["latency_s"]],
               "throughput_extrapolated": "probe" in row, "latency_extrapolated": bool(row.get("latency_probe")),
               **{k: row.get(k) for k in ("fid", "kid", "kid_std", "precision", "recall", "tstr_accuracy",
                                          "tstr_auroc", "fid_source") if row.get(k) is not None}}
        if row.get("student"):
            out["fid_ratio"] = row["fid"] / dpm20["fid"]
            out["speedup_vs_monai_ddim50"] = statistics.median(monai["latency_s"]) / latency
            quality_ok = row["steps"] <= 4 and out["fid_ratio"] <= 1.3
            out["meets_target"] = bool(quality_ok and out["latency_ms"] <= 100)
            out["meets_target_cpu_time"] = bool(quality_ok and out["latency_cpu_ms"] <= 100)
        results.append(out)

    header = ("| model | method | steps | latency ms (batch 1) | CPU ms (batch 1) | images/s (batch 64) | FID | "
              "KID x1e3 | precision | "
              "recall | TSTR acc | FID ratio vs DPM++ 20 | speed-up vs MONAI DDIM-50 |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in results:
        lines.append(f"| {short_name(r['model'])} | {r['method']} | {r['steps']} | "
                     f"{r['latency_ms']:.1f}{'*' if r['latency_extrapolated'] else ''} | "
                     f"{r['latency_cpu_ms']:.1f}{'*' if r['latency_extrapolated'] else ''} | "
                     f"{r['images_per_s']:.1f}{'*' if r['throughput_extrapolated'] else ''} | "
                     f"{fmt(r.get('fid'), '.3f')}{'**' if r.get('fid_source') else ''} | "
                     f"{fmt(None if r.get('kid') is None else 1e3 * r['kid'], '.2f')} | "
                     f"{fmt(r.get('precision'), '.2f')} | "
                     f"{fmt(r.get('recall'), '.2f')} | {fmt(r.get('tstr_accuracy'), '.3f')} | "
                     f"{fmt(r.get('fid_ratio'), '.2f')} | {fmt(r.get('speedup_vs_monai_ddim50'), '.1f')} |")
    lever_lines = ["| student steps | variant | latency ms (batch 1) | CPU ms | speed-up |", "|---|---|---|---|---|"]
    for lever in levers:
        lever_lines.append(f"| {lever['steps']} | {lever['variant']} | {fmt(lever.get('latency_ms'), '.1f')} | "
                           f"{fmt(lever.get('cpu_ms'), '.1f')} | "
                           f"{fmt(lever.get('speedup'), '.2f')}"
                           f"{' (' + lever['error'] + ')' if 'error' in lever else ''} |")
    table, lever_table = "\n".join(lines), "\n".join(lever_lines)
    floor = reference.get("floor")
    print(table + "\n\n" + lever_table + (f"\n\nfloor ({floor['what']}): FID {floor['fid']:.3f}, KID x1e3 "
                                          f"{1e3 * floor['kid']:.2f}" if floor else ""))
    try:
        import onnxruntime
        onnx = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        onnx = "onnxruntime is not installed: ONNX rows not measured"
    write_json({"benchmark": "fast_sampling", "model_family": args.model, "teacher": teacher_name,
                "n_per_row": args.n, "repeats": args.repeats, "batch": args.batch,
                "ddpm_probe_steps": args.ddpm_probe_steps, "real_reference": reference["description"],
                "features": extractor.card(), "floor": floor, "onnx": onnx,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "load_average_1_5_15_min": {"start": load_before, "end": os.getloadavg()}},
                "meddiff": __version__, "results": results, "levers": levers, "table": table,
                "lever_table": lever_table}, args.out)
    workdir.cleanup()


if __name__ == "__main__":
    main()
