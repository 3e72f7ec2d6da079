"""Guided distillation (issue 28; Meng et al. 2023): classifier-free guidance at 1 network evaluation per step.

For each guidance scale s, one run on one machine, the same 28 x 28 network family (shipped ``pneumonia_cond``):
- teacher + CFG, DPM-Solver++(2M) 20 and 10 steps (two evaluations per step when s != 1): the quality reference;
- the first-round guided student (``guided/`` of a `meddiff distill --guidance-range` run: the scale a network input),
  DPM-Solver++(2M) 20 steps, one evaluation per step;
- the guided students of the progressive rounds (their own DDIM grids: 4 and 2 steps);
- controls: the teacher's own weights + CFG on the 4-step student grid (the method without distillation), the
  4-step student with its guidance embedding zeroed (the scale input removed: s ignored), and a random-weight
  network of the student's layout (the same pipeline, untrained);
- at s = 1, the shipped ``pneumonia_cond_student`` (distilled at the fixed scale 1).

Quality: ``--n`` class-balanced samples (seed 0) against the class-balanced PneumoniaMNIST val split (never trained
on), FID/KID/precision/recall on the offline ``pneumonia-cnn`` features (not Inception), TSTR accuracy (a small CNN
trained on the samples, tested on the val images); ``fid_ratio`` = FID / the teacher's DPM-Solver++ 20 + CFG FID at
the same s. Latency: batch 1, median of ``--repeats`` interleaved calls, wall and process CPU time (one thread);
throughput at batch ``--batch``. JSON rows: model, method, guidance_scale, steps, nfe, latency_ms, latency_cpu_ms,
images_per_s, fid, kid, precision, recall, tstr_accuracy, fid_ratio; a markdown table is printed and stored.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/guided_distillation.py \\
        --run runs/distill_guided_pneumonia --scales 1 2 3 --out guided.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_sampling import cpu_median_ms, pneumonia_reference, quality, timed  # noqa: E402

from meddiff import __version__  # noqa: E402
from meddiff.data.io import write_json  # noqa: E402
from meddiff.metrics.features import get_feature_extractor  # noqa: E402
from meddiff.nets import build_network  # noqa: E402
from meddiff.tasks.synthesis import generate  # noqa: E402
from meddiff.training import load_checkpoint  # noqa: E402
from meddiff.training.checkpoint import resolve_checkpoint  # noqa: E402
from meddiff.training.shipped import shipped_path  # noqa: E402


def sampler(checkpoint, model, meta, scale: float, name: str | None, steps: int | None, times=None):
    """(n, seed) -> samples (n, 1, 28, 28) by `meddiff sample`'s path at guidance ``scale``; ``times`` replaces the
    meta's sampling grid (the teacher on the student's grid)."""
    if times is not None:
        meta = {**meta, "sampling": {"sampler": "ddim", "steps": len(times), "times": times, "spacing": "trailing"}}

    def run(n: int, seed: int) -> torch.Tensor:
        return generate(checkpoint, n, sampler=name, steps=steps, guidance_scale=scale, seed=seed, model=model,
                        meta=meta, batch_size=max(n, 1))[0]
    return run


def zeroed_guidance(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a guidance-input network whose scale embedding outputs zero (the scale input removed)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.guidance_embed[2].weight.zero_()
        model.guidance_embed[2].bias.zero_()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `meddiff distill --guidance-range` run directory")
    parser.add_argument("--teacher", default="pneumonia_cond")
    parser.add_argument("--fixed-student", default="pneumonia_cond_student",
                        help="the student distilled at the fixed scale 1 (row at s = 1; '' to skip)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--data", help="PneumoniaMNIST npz (default: ../shared/data)")
    parser.add_argument("--n", type=int, default=256, help="samples per row for the quality metrics")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least five)")
    torch.manual_seed(0)
    load_before = os.getloadavg()
    run_dir = Path(args.run)
    teacher, teacher_meta = load_checkpoint(args.teacher)
    first_path = resolve_checkpoint(run_dir / "guided")
    first, first_meta = load_checkpoint(first_path)
    students = []
    for round_dir in sorted(run_dir.glob("steps_00[124]"), reverse=True):
        path = resolve_checkpoint(round_dir)
        students.append((f"{run_dir.name}/{round_dir.name}", path, *load_checkpoint(path)))
    low, high = first_meta["sampling"]["guidance_range"]
    four = next((s for s in students if s[3]["sampling"]["steps"] == 4), students[0])
    random_net = build_network(four[3]["network"]).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # MONAI zero-initialises its output layer: a random network must not output zeros
        for parameter in random_net.parameters():
            parameter.normal_(0.0, 0.05, generator=generator)

    rows = []
    for scale in args.scales:
        if not low <= scale <= high:
            parser.error(f"--scales {scale:g} is outside the students' range {low:g} to {high:g}")
        cfg = 1 if scale == 1 else 2
        add = lambda **row: rows.append({"guidance_scale": scale, **row})  # noqa: E731
        for steps in (20, 10):
            add(model=args.teacher, method="teacher + CFG, dpmpp_2m", steps=steps, nfe=cfg * steps,
                run=sampler(args.teacher, teacher, teacher_meta, scale, "dpmpp_2m", steps), reference=steps == 20)
        add(model=f"{run_dir.name}/guided", method="guided student (round 1), dpmpp_2m", steps=20, nfe=20,
            run=sampler(first_path, first, first_meta, scale, "dpmpp_2m", 20))
        for label, path, model, meta in students:
            steps = meta["sampling"]["steps"]
            add(model=label, method="guided student, ddim (distilled grid)", steps=steps, nfe=steps,
                run=sampler(path, model, meta, scale, None, None), student=True)
        times = four[3]["sampling"]["times"]
        add(model=args.teacher, method="control: teacher + CFG on the student's grid", steps=len(times),
            nfe=cfg * len(times), run=sampler(args.teacher, teacher, teacher_meta, scale, "ddim", None, times))
        add(model=four[0], method="control: student, scale input zeroed", steps=len(times), nfe=len(times),
            run=sampler(four[1], zeroed_guidance(four[2]), four[3], scale, None, None))
        add(model="random weights", method="control: random-weight student network", steps=len(times),
            nfe=len(times), run=sampler(four[1], random_net, four[3], scale, None, None))
        if scale == 1 and args.fixed_student and shipped_path(args.fixed_student) is not None:
            model, meta = load_checkpoint(args.fixed_student)
            add(model=args.fixed_student, method="student distilled at s = 1 (fixed), ddim", steps=4, nfe=4,
                run=sampler(args.fixed_student, model, meta, 1.0, None, None), student=True)

    for row in rows:
        row["latency_s"], row["batch_s"] = [], []
        row["run"](1, 0)  # warm-up
    for repeat in range(args.repeats):
        for row in rows:
            timed(row["run"], 1, repeat, into=row["latency_s"])
            row["batch_s"].append(timed(row["run"], args.batch, repeat))
        print(f"timing repeat {repeat + 1}/{args.repeats} done", flush=True)

    extractor = get_feature_extractor("pneumonia-cnn")
    reference = pneumonia_reference(args, extractor)
    labels = torch.arange(args.n) % teacher_meta["num_classes"]
    for row in rows:
        row.update(quality(row["run"](args.n, 0), labels, reference))
        print(f"s {row['guidance_scale']:g} {row['method']} {row['steps']}: FID {row['fid']:.3f}", flush=True)

    results = []
    for row in rows:
        ref = next(r for r in rows if r.get("reference") and r["guidance_scale"] == row["guidance_scale"])
        out = {k: row[k] for k in ("model", "method", "guidance_scale", "steps", "nfe")}
        out.update({"latency_ms": 1e3 * statistics.median(row["latency_s"]),
                    "latency_cpu_ms": cpu_median_ms(row["latency_s"]),
                    "images_per_s": args.batch / statistics.median(row["batch_s"]),
                    **{k: row[k] for k in ("fid", "kid", "kid_std", "precision", "recall", "tstr_accuracy")},
                    "fid_ratio": row["fid"] / ref["fid"]})
        if row.get("student"):
            out["meets_target"] = bool(out["steps"] <= 4 and out["fid_ratio"] <= 1.3 and out["latency_ms"] <= 100)
        results.append(out)

    header = ("| s | model | method | steps | NFE | latency ms (batch 1) | CPU ms | images/s (batch 64) | FID | "
              "KID x1e3 | precision | recall | TSTR acc | FID / teacher CFG DPM++ 20 |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        lines.append(f"| {r['guidance_scale']:g} | {r['model']} | {r['method']} | {r['steps']} | {r['nfe']} | "
                     f"{r['latency_ms']:.1f} | {r['latency_cpu_ms']:.1f} | {r['images_per_s']:.1f} | {r['fid']:.3f} | "
                     f"{1e3 * r['kid']:.2f} | {r['precision']:.2f} | {r['recall']:.2f} | {r['tstr_accuracy']:.3f} | "
                     f"{r['fid_ratio']:.2f} |")
    table = "\n".join(lines)
    print(table)
    write_json({"benchmark": "guided_distillation", "run": str(run_dir), "teacher": args.teacher,
                "guidance_range": [low, high], "n_per_row": args.n, "repeats": args.repeats, "batch": args.batch,
                "real_reference": reference["description"], "features": extractor.card(),
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "load_average_1_5_15_min": {"start": load_before, "end": os.getloadavg()}},
                "meddiff": __version__, "results": results, "table": table}, args.out)


if __name__ == "__main__":
    main()
