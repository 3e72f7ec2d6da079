"""Brain parcellation benchmark (issue 25): the label-efficient method (Baranchuk et al. 2022: pixel-MLP ensemble on
the decoder features of the shipped prior brain_t1_ixi), the same pipeline on a RANDOM-WEIGHT copy of the prior
network (control) and a supervised MONAI UNet trained for the same wall-clock time, each with 1, 5 and 20 labelled
train subjects (nested: the first N of the split's train list), on the 10 TEST subjects of
configs/splits/ixi_t1_2mm_dlmuse.json (whole volumes, every axial slice; never used for tuning).

Scores per subject and class: Dice, HD95 (mm, MONAI); per subject: expected calibration error of the top-class
probability and the Pearson r of the uncertainty (entropy of the mean probabilities) with the 0/1 error, both over the
reference brain dilated by 2 voxels; seconds per volume (features + classifier, or the UNet).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation.py --out runs/seg/benchmark.json
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation.py --select --out runs/seg/select.json

``--select``: the feature blocks and t chosen on the VAL subjects (5 labelled train subjects, one MLP, every 6th
brain slice of 3 val subjects), written as a table; the chosen values go into configs/segmentation.yaml by hand.
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
from meddiff.tasks.prior import load_prior, untrained_prior  # noqa: E402
from meddiff.tasks.segment import (CLASS_NAMES, NUM_CLASSES, DiffusionFeatures, SlicePrep, UNetSegmenter,  # noqa: E402
                                   dice_per_class, label_slices, load_labelled, load_split, score_volume,
                                   segment_volume, volume_slices)
from meddiff.tasks.segment.pipeline import model_to_volume, volume_to_model  # noqa: E402
from meddiff.tasks.segment.train import (fit_classifier, fit_supervised, labelled_slices, load_config,  # noqa: E402
                                         subject_pixels, train_subjects)

METHODS = ("features", "random-features", "unet", "ddep", "ddep-random", "none")
DEFAULT_METHODS = ("features", "random-features", "unet")


def _diffusion_config(path):
    from meddiff.files import read_yaml_mapping

    return read_yaml_mapping(Path(path), "diffusion segmentation config")


def _fit_ddep(prior, data, dcfg, seconds, pretrained=True, t=None, train=None, log=None, clock="wall", bf16=False):
    """DDeP on the slices of ``data``: the prior's network (or, ``pretrained`` False, the same architecture from
    random weights) with a 10-class head, fine-tuned for ``seconds`` -> (DDePNet, steps)."""
    from meddiff.tasks.segment.ddep import DDePNet, build_ddep, fit_ddep

    d = dcfg["ddep"]
    t = float(d["t"] if t is None else t)
    train = d["train"] if train is None else train
    model = (DDePNet(prior.denoiser.model, NUM_CLASSES, t, seed=0) if pretrained
             else build_ddep(prior.meta["network"], NUM_CLASSES, t, seed=0))
    images = torch.cat([x.images for x in data])
    labels = torch.cat([x.labels for x in data])
    return fit_ddep(model, images, labels, seconds=seconds, train=train, batch=int(d["batch"]), lr=float(d["lr"]),
                    head_lr=float(d["head_lr"]), seed=0, log=log, clock=clock, bf16=bf16)


class _Shared:
    """Several ensembles on one feature pass: ``predict`` returns the probabilities of each (list)."""

    def __init__(self, extractor, ensembles):
        self.extractor, self.ensembles = extractor, ensembles
        self.seconds = [0.0] * len(ensembles)
        self.feature_seconds = 0.0

    @torch.no_grad()
    def predict_all(self, slices, batch=8):
        outs = [[] for _ in self.ensembles]
        for i in range(0, slices.shape[0], batch):
            t0 = time.perf_counter()
            f = self.extractor(slices[i:i + batch])
            self.feature_seconds += time.perf_counter() - t0
            for k, e in enumerate(self.ensembles):
                t0 = time.perf_counter()
                outs[k].append(e.predict_maps(f))
                self.seconds[k] += time.perf_counter() - t0
        return [torch.cat(o) for o in outs]


def _summary(rows):
    out = {}
    for r in rows:
        out.setdefault((r["method"], r["labelled"]), []).append(r)
    table = []
    for (method, n), rs in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        dice = np.array([r["dice"] for r in rs], dtype=float)
        hd = np.array([r["hd95"] for r in rs], dtype=float)
        table.append({"method": method, "labelled": n, "subjects": len(rs),
                      "mean_dice": float(np.nanmean(dice)), "dice_sd_over_subjects": float(np.std([r["mean_dice"] for r in rs])),
                      "dice_per_class": [float(v) for v in np.nanmean(dice, 0)],
                      "mean_hd95_mm": float(np.nanmean(hd)), "hd95_per_class_mm": [float(v) for v in np.nanmean(hd, 0)],
                      "hd95_missing": int(np.isnan(hd).sum()),
                      "ece": float(np.mean([r["ece"] for r in rs])),
                      "uncertainty_error_pearson": float(np.nanmean([r["uncertainty_error_pearson"] for r in rs])),
                      "seconds_per_volume": float(np.mean([r["seconds"] for r in rs])),
                      "train_seconds": rs[0].get("train_seconds"), "unet_steps": rs[0].get("unet_steps"),
                      "nfe_per_slice": rs[0].get("nfe_per_slice")})
    return table


def _markdown(table, header):
    lines = [header, "", "| method | labelled subjects | test subjects | mean Dice | HD95 (mm) | ECE | r(uncertainty, error) "
             "| s / volume | train s | train steps | NFE / slice |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        steps, nfe = t.get("unet_steps"), t.get("nfe_per_slice")
        lines.append(f"| {t['method']} | {t['labelled']} | {t['subjects']} | {t['mean_dice']:.3f} | "
                     f"{t['mean_hd95_mm']:.1f} | {t['ece']:.3f} | {t['uncertainty_error_pearson']:.2f} | "
                     f"{t['seconds_per_volume']:.1f} | {t['train_seconds']:.0f} | {'' if steps is None else steps} | "
                     f"{1 if nfe is None else nfe} |")
    lines += ["", "Dice per class (mean over test subjects):", "",
              "| method | N | " + " | ".join(CLASS_NAMES[1:]) + " |", "|---|---|" + "---|" * (NUM_CLASSES - 1)]
    for t in table:
        lines.append(f"| {t['method']} | {t['labelled']} | " + " | ".join(f"{v:.3f}" for v in t["dice_per_class"]) + " |")
    return "\n".join(lines) + "\n"


def _add_cleaned(rows, probs, sub, cleanup: bool) -> None:
    """With --cleanup: the same prediction after ``meddiff segment``'s default clean-up, as "<method> + clean-up"."""
    if not cleanup:
        return
    from meddiff.tasks.segment.postprocess import DEFAULT_CLEANUP, MIN_FRACTION, clean_labels

    t0 = time.perf_counter()
    labels = clean_labels(probs.argmax(0), probs, DEFAULT_CLEANUP, MIN_FRACTION)
    extra = time.perf_counter() - t0
    base = rows[-1]
    rows.append({**base, "method": f"{base['method']} + clean-up",
                 **score_volume(probs, sub.labels, sub.spacing, labels=labels), "seconds": base["seconds"] + extra})


def _medsegdiff_rows(rows, seg, name, sub, prep, samples, cleanup, train_info, ks=None):
    """Rows of a MedSegDiff sampler on one subject: K label samples per slice once, fused over the first k of them
    for each k in ``ks`` (default: 1 and K), each scored (vote frequencies as the probabilities)."""
    from meddiff.tasks.segment.medsegdiff import fuse_votes, nfe

    t0 = time.perf_counter()
    slices, keep = volume_to_model(sub.image, prep, sub.name)
    labels = seg.sample_labels(torch.from_numpy(slices[keep]), samples) if keep else None
    seconds = time.perf_counter() - t0
    for k in sorted(set(ks or (1, samples))):
        freq = fuse_votes(labels[:k], NUM_CLASSES)[1].movedim(0, 1).numpy()
        probs = model_to_volume(freq, keep, sub.image.shape, prep, NUM_CLASSES)
        rows.append({"method": f"{name} (K={k}, {seg.steps} DDIM steps)", "subject": sub.name, **train_info,
                     **score_volume(probs, sub.labels, sub.spacing), "seconds": seconds * k / samples,
                     "nfe_per_slice": nfe(seg.steps, k), "samples": k})
        _add_cleaned(rows, probs, sub, cleanup)


def run_benchmark(args, cfg):
    torch.manual_seed(0)
    prior = load_prior(cfg["prior"])
    prep = SlicePrep.from_prior_meta(prior.meta)
    fc = cfg["features"]
    methods = set(args.methods)
    nets = {"diffusion features": prior, "random-weight prior features": untrained_prior(prior, seed=0)}
    nets = {k: v for k, v in nets.items() if {"diffusion features": "features",
                                               "random-weight prior features": "random-features"}[k] in methods}
    counts = sorted(args.labelled)
    reused = []
    if args.reuse:  # a new prior: the random-weight and UNet rows do not depend on its weights; keep them
        old = json.loads(Path(args.reuse).read_text())
        if old["config"] != cfg or sorted({r["labelled"] for r in old["rows"]}) != counts:
            raise SystemExit(f"--reuse {args.reuse}: another config or other labelled counts; run without --reuse")
        reused = [r for r in old["rows"] if r["method"] != "diffusion features"]
        del nets["random-weight prior features"]
    subjects = train_subjects(cfg, max(counts))
    t0 = time.perf_counter()
    data = labelled_slices(cfg, subjects, prep)
    load_seconds = time.perf_counter() - t0
    print(f"{len(subjects)} labelled subjects, {sum(d.images.shape[0] for d in data)} slices ({load_seconds:.0f} s)",
          flush=True)
    ensembles, budget = {}, {}
    for name, p in nets.items():
        ext = DiffusionFeatures(p.denoiser.model, p.schedule, fc["blocks"], fc["timesteps"], fc["seed"])
        pixels = [subject_pixels(ext, d, cfg, seed=i) for i, d in enumerate(data)]
        for n in counts:
            ens, fit_s = fit_classifier(pixels[:n], cfg, seed=0)
            feat_s = sum(px.seconds for px in pixels[:n])
            ensembles[(name, n)] = (ext, ens, feat_s + fit_s)
            if name == "diffusion features":
                budget[n] = feat_s + fit_s
            print(f"{name}, {n} labelled: features {feat_s:.0f} s + classifier {fit_s:.0f} s", flush=True)
    for n in counts:
        if args.seconds is not None:
            budget[n] = args.seconds
        elif n not in budget and methods & {"unet", "ddep", "ddep-random"}:
            raise SystemExit("--seconds is needed when the diffusion-feature method (whose training time sets the "
                             "budget) is not among --methods")
    ddeps = {}
    if methods & {"ddep", "ddep-random"}:
        dcfg = _diffusion_config(args.diffusion_config)
        for n in counts:
            for name, pre in (("DDeP", True), ("DDeP random-weight", False)):
                if ("ddep" if pre else "ddep-random") in methods:
                    model, steps = _fit_ddep(prior, data[:n], dcfg, budget[n], pretrained=pre, clock=args.clock,
                                             bf16=args.bf16)
                    ddeps[(name, n)] = (model, steps)
                    print(f"{name}, {n} labelled: {steps} steps in {budget[n]:.0f} s", flush=True)
    unets = {}
    for n in (counts if not reused and "unet" in methods else []):
        net, steps = fit_supervised(data[:n], cfg, seconds=budget[n], seed=0, clock=args.clock, bf16=args.bf16)
        unets[n] = (net, steps)
        print(f"UNet, {n} labelled: {steps} steps in {budget[n]:.0f} s", flush=True)
    test = load_split(cfg["data"]["split_file"])["test"][: args.test_subjects]
    msd = []
    if args.medsegdiff:
        from meddiff.tasks.segment import load_segmenter
        from meddiff.tasks.segment.medsegdiff import MedSegDiffSegmenter, random_network

        loaded = load_segmenter(args.medsegdiff)
        if loaded.meta["method"] != "medsegdiff":
            raise SystemExit(f"--medsegdiff {args.medsegdiff}: a {loaded.meta['method']} checkpoint")
        tr = loaded.meta["training"]
        info = {"labelled": tr["labelled_subjects"], "train_seconds": tr["train_seconds"], "unet_steps": tr["steps"]}
        seg = loaded.segmenter
        if args.msd_steps:
            seg = MedSegDiffSegmenter(seg.network, seg.schedule, seg.num_classes, args.msd_steps)
        msd.append(("MedSegDiff", seg, info, test))
        control = MedSegDiffSegmenter(random_network(loaded.meta["medsegdiff"]["network"]), seg.schedule,
                                      seg.num_classes, seg.steps)
        msd.append(("MedSegDiff random-weight", control, {**info, "unet_steps": 0, "train_seconds": 0},
                    test[: args.msd_control_subjects]))
    shipped = None
    if args.shipped:
        from meddiff.tasks.segment import load_segmenter

        shipped = load_segmenter(args.shipped)
    rows = []
    for s in test:
        sub = load_labelled(cfg["data"]["path"], s)
        t0 = time.perf_counter()
        slices, keep = volume_to_model(sub.image, prep, s)
        slices = torch.from_numpy(slices[keep])
        prep_seconds = time.perf_counter() - t0
        for name in nets:
            shared = _Shared(ensembles[(name, counts[0])][0], [ensembles[(name, n)][1] for n in counts])
            outs = shared.predict_all(slices)
            for k, n in enumerate(counts):
                t0 = time.perf_counter()
                probs = model_to_volume(outs[k].numpy(), keep, sub.image.shape, prep, NUM_CLASSES)
                back = time.perf_counter() - t0
                sc = score_volume(probs, sub.labels, sub.spacing)
                rows.append({"method": name, "labelled": n, "subject": s, **sc,
                             "seconds": prep_seconds + shared.feature_seconds + shared.seconds[k] + back,
                             "train_seconds": ensembles[(name, n)][2]})
                _add_cleaned(rows, probs, sub, args.cleanup)
        for (name, n), (model, steps) in ddeps.items():
            from meddiff.tasks.segment.ddep import DDePSegmenter

            t0 = time.perf_counter()
            p = segment_volume(sub.image, DDePSegmenter(model), prep)
            rows.append({"method": name, "labelled": n, "subject": s, **score_volume(p, sub.labels, sub.spacing),
                         "seconds": time.perf_counter() - t0, "train_seconds": budget[n], "unet_steps": steps})
            _add_cleaned(rows, p, sub, args.cleanup)
        for n in unets:
            t0 = time.perf_counter()
            p = segment_volume(sub.image, UNetSegmenter(unets[n][0]), prep)
            sec = time.perf_counter() - t0
            rows.append({"method": "supervised UNet", "labelled": n, "subject": s, **score_volume(p, sub.labels, sub.spacing),
                         "seconds": sec, "train_seconds": budget[n], "unet_steps": unets[n][1]})
            _add_cleaned(rows, p, sub, args.cleanup)
        for name, seg, info, subjects_for in msd:
            if s in subjects_for:
                _medsegdiff_rows(rows, seg, name, sub, prep, args.samples, args.cleanup, info)
        if shipped is not None:
            t0 = time.perf_counter()
            p = segment_volume(sub.image, shipped.segmenter, shipped.prep)
            rows.append({"method": f"shipped {args.shipped} ({shipped.meta['method']})", "subject": s,
                         "labelled": shipped.meta["training"]["labelled_subjects"],
                         **score_volume(p, sub.labels, sub.spacing), "seconds": time.perf_counter() - t0,
                         "train_seconds": shipped.meta["training"].get("total_seconds"),
                         "unet_steps": shipped.meta["training"].get("steps")})
        done = [r for r in rows if r["subject"] == s]
        print(s, " ".join(f"{r['method'][:6]}/{r['labelled']}:{r['mean_dice']:.3f}" for r in done), flush=True)
    rows += [r for r in reused if r["subject"] in test]
    table = _summary(rows)
    fp = __import__("meddiff.tasks.segment.pipeline", fromlist=["prior_fingerprint"]).prior_fingerprint(cfg["prior"])
    result = {"config": cfg, "methods": sorted(methods), "budget_seconds": budget, "clock": args.clock,
              "bf16_training": args.bf16,
              "diffusion_config": _diffusion_config(args.diffusion_config) if ddeps else None, "prior": fp, "reused_rows_from": args.reuse, "classes": list(CLASS_NAMES), "test_subjects": test,
              "train_subjects": subjects, "torch_threads": torch.get_num_threads(), "summary": table, "rows": rows}
    return result, _markdown(table, f"Brain parcellation on {len(test)} test subjects (prior {cfg['prior']} step "
                                    f"{fp['step']}, sha256 {fp['sha256'][:12]})")


def run_select(args, cfg):
    """Blocks x t on VAL: 5 labelled train subjects, one MLP per setting, Dice over every 6th brain slice of 3 val
    subjects (pixels of those slices, 2D)."""
    prior = load_prior(cfg["prior"])
    prep = SlicePrep.from_prior_meta(prior.meta)
    subjects = train_subjects(cfg, 5)
    data = labelled_slices(cfg, subjects, prep)
    val = load_split(cfg["data"]["split_file"])["val"][:3]
    vx, vy = [], []
    for s in val:
        sub = load_labelled(cfg["data"]["path"], s)
        idx = sub.brain_slices(prep)[::6]
        vx.append(volume_slices(sub.image, prep, idx))
        vy.append(label_slices(sub.labels, prep, idx))
    vx, vy = torch.from_numpy(np.concatenate(vx)), np.concatenate(vy)
    one = {**cfg, "classifier": {**cfg["classifier"], "members": 1}}
    block_sets = [[0, 1, 2, 3], [1, 2, 3], [0, 1, 2], [0, 1], [1, 2], [2, 3]]
    widths = [128, 128, 64, 32]
    rows = []
    cache_train, cache_val = {}, {}
    for t in args.timesteps:
        ext = DiffusionFeatures(prior.denoiser.model, prior.schedule, [0, 1, 2, 3], [t], 0)
        cache_train[t] = [subject_pixels(ext, d, cfg, seed=i) for i, d in enumerate(data)]
        cache_val[t] = torch.cat([ext(vx[i:i + 8]).half() for i in range(0, vx.shape[0], 8)])
        print(f"t={t}: features done", flush=True)
    settings = [([t], b) for t in args.timesteps for b in block_sets]
    if len(args.timesteps) > 1:
        settings.append((list(args.timesteps[:2]), [0, 1, 2, 3]))
    for ts, blocks in settings:
        cols = torch.cat([torch.arange(sum(widths[:b]), sum(widths[:b + 1])) for b in blocks])
        from meddiff.tasks.segment.train import PixelSet

        px = [PixelSet(torch.cat([cache_train[t][i].features[:, cols] for t in ts], 1), cache_train[ts[0]][i].labels, 0)
              for i in range(len(data))]
        ens, fit_s = fit_classifier(px, one, seed=0)
        f = torch.cat([cache_val[t][:, cols] for t in ts], 1)
        pred = torch.cat([ens.predict_maps(f[i:i + 8].float()).argmax(1) for i in range(0, f.shape[0], 8)]).numpy()
        d = dice_per_class(pred, vy, NUM_CLASSES)
        rows.append({"timesteps": ts, "blocks": blocks, "val_mean_dice": float(np.nanmean(d)), "dice": d,
                     "fit_seconds": fit_s})
        print(rows[-1]["timesteps"], blocks, f"{rows[-1]['val_mean_dice']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["val_mean_dice"])
    lines = [f"Feature selection on {len(val)} VAL subjects (every 6th brain slice, 2D Dice), 5 labelled train "
             "subjects, one MLP per setting", "", "| t | blocks | val mean Dice |", "|---|---|---|"]
    lines += [f"| {r['timesteps']} | {r['blocks']} | {r['val_mean_dice']:.3f} |" for r in rows]
    lines += ["", f"best: t {best['timesteps']}, blocks {best['blocks']}"]
    return {"val_subjects": val, "train_subjects": subjects, "rows": rows, "best": best}, "\n".join(lines) + "\n"


def _val_slices(cfg, prep, subjects=3, every=6):
    """Every ``every``-th brain slice of the first ``subjects`` VAL subjects: images (S, 1, H, W), labels (S, H, W)."""
    val = load_split(cfg["data"]["split_file"])["val"][:subjects]
    vx, vy = [], []
    for s in val:
        sub = load_labelled(cfg["data"]["path"], s)
        idx = sub.brain_slices(prep)[::every]
        vx.append(volume_slices(sub.image, prep, idx))
        vy.append(label_slices(sub.labels, prep, idx))
    return val, torch.from_numpy(np.concatenate(vx)), np.concatenate(vy)


def run_select_ddep(args, cfg):
    """DDeP's t and fine-tuned part on VAL: 5 labelled train subjects, each candidate fine-tuned for the config's
    ``select.seconds``, 2D Dice over every 6th brain slice of 3 val subjects (as ``--select``)."""
    from meddiff.tasks.segment.ddep import DDePSegmenter

    dcfg = _diffusion_config(args.diffusion_config)
    sel = dcfg["ddep"]["select"]
    prior = load_prior(cfg["prior"])
    prep = SlicePrep.from_prior_meta(prior.meta)
    subjects = train_subjects(cfg, 5)
    data = labelled_slices(cfg, subjects, prep)
    val, vx, vy = _val_slices(cfg, prep)
    rows = []
    for t, part in sel["candidates"]:
        model, steps = _fit_ddep(prior, data, dcfg, float(sel["seconds"]), t=t, train=part, clock=args.clock,
                                 bf16=args.bf16)
        pred = DDePSegmenter(model).predict(vx).argmax(1).numpy()
        d = dice_per_class(pred, vy, NUM_CLASSES)
        rows.append({"t": float(t), "train": part, "steps": steps, "val_mean_dice": float(np.nanmean(d)), "dice": d})
        print(f"t {t} {part}: {steps} steps, val Dice {rows[-1]['val_mean_dice']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["val_mean_dice"])
    lines = [f"DDeP selection on {len(val)} VAL subjects (every 6th brain slice, 2D Dice), 5 labelled train subjects, "
             f"{sel['seconds']} s of fine-tuning each", "", "| t | fine-tuned | steps | val mean Dice |",
             "|---|---|---|---|"]
    lines += [f"| {r['t']:g} | {r['train']} | {r['steps']} | {r['val_mean_dice']:.3f} |" for r in rows]
    lines += ["", f"best: t {best['t']:g}, {best['train']}"]
    return {"val_subjects": val, "train_subjects": subjects, "rows": rows, "best": best}, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON output; a markdown table is written beside it (.md)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "segmentation.yaml"))
    parser.add_argument("--labelled", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--test-subjects", type=int, default=10)
    parser.add_argument("--reuse", help="keep the random-weight-prior and UNet rows of this earlier --out JSON (same "
                        "config): only the trained prior's rows are recomputed (after new prior weights)")
    parser.add_argument("--shipped", help="also score this segmentation checkpoint (e.g. brain_parcellation_ixi)")
    parser.add_argument("--select", action="store_true", help="choose feature blocks and t on the val subjects")
    parser.add_argument("--cleanup", action="store_true",
                        help="also score every prediction after meddiff segment's default clean-up (extra rows)")
    parser.add_argument("--timesteps", type=float, nargs="+", default=[10, 50, 150, 300],
                        help="--select: t values to try")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                        help=f"methods to train and score (default: {' '.join(DEFAULT_METHODS)}; none: only --medsegdiff / "
                        "--shipped)")
    parser.add_argument("--seconds", type=float, help="wall-clock training budget of the UNet and DDeP at every "
                        "labelled count (default: the diffusion-feature method's training time at that count)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what --seconds measures for the UNet and DDeP: wall-clock time, or this process's CPU "
                        "time (on a shared machine: the wall time it would take alone)")
    parser.add_argument("--bf16", action="store_true", help="train the UNet and DDeP under CPU bfloat16 autocast")
    parser.add_argument("--diffusion-config", default=str(ROOT / "configs" / "segmentation" / "diffusion.yaml"),
                        help="DDeP / MedSegDiff settings")
    parser.add_argument("--select-ddep", action="store_true", help="choose DDeP's t and fine-tuned part on val")
    parser.add_argument("--medsegdiff", help="also score this MedSegDiff checkpoint (scripts/train_segmentation_"
                        "medsegdiff.py) with K = --samples and K = 1, and its random-weight control")
    parser.add_argument("--samples", type=int, default=5, help="--medsegdiff: ensemble size K")
    parser.add_argument("--msd-steps", type=int, help="--medsegdiff: DDIM steps (default: the checkpoint's)")
    parser.add_argument("--msd-control-subjects", type=int, default=3,
                        help="--medsegdiff: test subjects for the random-weight control (the first N)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    start = time.perf_counter()
    run = run_select if args.select else run_select_ddep if args.select_ddep else run_benchmark
    result, md = run(args, cfg)
    result["wall_seconds"] = time.perf_counter() - start
    out = Path(args.out)
    write_text(out, json.dumps(result, indent=1, default=float))
    write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
