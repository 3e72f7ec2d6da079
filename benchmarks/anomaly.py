"""Anomaly-detection benchmark: every method (Wolleb, AnoDDPM simplex / Gaussian, autoencoder, FLAIR-intensity
baseline) on BraTS subjects not used in training (pixel Dice / best Dice / AUROC / AUPRC), slices of the training
subject (image-level AUROC, flagged "seen") and held-out PneumoniaMNIST val X-rays (image-level AUROC; the test split is kept out of the shared data), with time per slice.

    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --prepare-data runs/anomaly_data   # training folders (once)
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out benchmarks/anomaly.json      # the table in README.md
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out anomaly.json --select-map   # + the map-setting selection
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --classifier-check runs/anomaly_data  # Wolleb classifier by t
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out chest.json --methods ... --select-chest  # chest map choice
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out v.json --no-slices --volumes    # whole volumes, both settings
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --out s.json --no-slices --select-speed  # K / steps / Wolleb s

The slice evaluation runs each method with its defaults (``MR_DEFAULTS`` for the BraTS models), or the papers'
settings with ``--paper-settings``. ``--volumes`` runs every method on whole BraTS volumes (both are the training
subject TCGA-FG-6692, at 1 mm and as the embedded 2 mm crop: the shared data hold no unseen whole volume), pixel
metrics over the whole volume next to those over its tumour slices only, with wall and CPU seconds per volume.

Extra settings (``--sweep``) run Wolleb at other guidance scales / noise levels and AnoDDPM at other t_lambda.
``--select-map`` chooses each method's anomaly-map setting (contrasts summed, absolute or positive residual, K
reconstructions averaged, AnoDDPM t_lambda) on a development set, the slices z = 20..120 (step 5) of the training
subject, whose tumour the healthy models never saw (they train on its tumour-free slices and mirrored healthy
halves; Wolleb's classifier did see these slices' image-level labels, so its development numbers are optimistic), by
best Dice there; then scores the chosen setting once on the unseen subjects.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from meddiff.data.io import write_json
from meddiff.tasks.anomaly import METHODS, load_detector, markdown_table, run_evaluation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ASSETS = Path(__file__).resolve().parents[1] / "src" / "meddiff" / "assets"


def sweep(log=print) -> dict:
    """Wolleb (L, s) and AnoDDPM t_lambda variations on the unseen BraTS subjects."""
    from meddiff.tasks.anomaly import brats_npz_subjects, evaluate

    subjects = brats_npz_subjects(SHARED / "brats_slices_2d" / "brats_slices.npz")
    settings = [("wolleb", 500, 10.0), ("wolleb", 500, 1000.0), ("wolleb", 250, 100.0),
                ("anoddpm", 100, None), ("anoddpm", 500, None), ("anoddpm-gaussian", 100, None),
                ("anoddpm-gaussian", 500, None)]
    out = {}
    for method, level, scale in settings:
        metrics = evaluate(load_detector(method, noise_level=level, guidance_scale=scale, settings="paper"), subjects)
        key = f"{method} L={level}" + (f" s={scale:g}" if scale is not None else "")
        out[key] = metrics
        log(f"{key:32s} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    return out


MAP_SETTINGS = {"all |x - x_h| (paper)": (None, "abs"), "flair |x - x_h|": (("flair",), "abs"),
                "flair max(x - x_h, 0)": (("flair",), "positive"), "all max(x - x_h, 0)": (None, "positive")}
SELECT_LEVELS = {"anoddpm": (20, 30, 45, 60, 100, 250), "anoddpm-gaussian": (20, 30, 45, 60, 100, 250),
                 "autoencoder": (None,), "wolleb": (250, 500)}


def dev_reconstructions(detector, subject, draws: int, seed: int = 0):
    """Model-space inputs (S, C, h, w), ``draws`` healthy reconstructions of them, brain masks (S, H, W)."""
    import numpy as np

    from meddiff.tasks.anomaly import brain_masks, model_inputs, to_model_size

    slices = np.moveaxis(subject.image, -1, 0)
    masks = brain_masks(slices)
    x = to_model_size(torch.from_numpy(model_inputs(slices, masks)), detector.image_size)
    generator = torch.Generator().manual_seed(seed)
    recs = [detector.heal(x, generator).float().clamp(-1, 1) for _ in range(draws)]
    return x, recs, masks


def select_map(methods=tuple(SELECT_LEVELS), log=print) -> dict:
    """Grid of map settings per method on the development slices (pixel metrics inside the brain mask, the same
    median filter as ``detect``), the best by Dice, and that setting scored on the unseen subjects."""
    import numpy as np
    import torch.nn.functional as F

    from meddiff.metrics.segmentation import detection_metrics
    from meddiff.tasks.anomaly import (STOCHASTIC_METHODS, brats_case_subject, brats_npz_subjects, contrast_indices,
                                       evaluate, filter_maps, load_detector, residual_map)

    dev = brats_case_subject(SHARED / "brats_case_1", slices=range(20, 121, 5))
    test = brats_npz_subjects(SHARED / "brats_slices_2d" / "brats_slices.npz")
    labels_of = np.moveaxis(dev.seg, -1, 0)
    grid, selected = [], {}
    for method in (m for m in SELECT_LEVELS if m in methods):
        for level in SELECT_LEVELS[method]:
            detector = load_detector(method, noise_level=level, settings="paper")      # 25 steps, s = 100
            stochastic = method in STOCHASTIC_METHODS
            x, recs, masks = dev_reconstructions(detector, dev, 16 if stochastic else 1)
            labels = labels_of[masks]
            for setting, (contrasts, residual) in MAP_SETTINGS.items():
                channels = contrast_indices(contrasts, detector.channels)
                for k in ((1, 4, 16) if stochastic else (1,)):
                    diff = torch.stack([residual_map(x, r, channels, residual) for r in recs[:k]]).mean(0)
                    maps = F.interpolate(diff, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                    maps = filter_maps(maps.numpy(), masks)
                    metrics = detection_metrics(maps[masks], labels)
                    row = {"method": method, "noise_level": level, "map": setting, "samples": k,
                           "dev_pixel_auroc": metrics["auroc"], "dev_best_dice": metrics["best_dice"]}
                    grid.append(row)
                    log(f"dev {method:17s} L={level} {setting:24s} K={k} AUROC {row['dev_pixel_auroc']:.3f} "
                        f"best Dice {row['dev_best_dice']:.3f}")
                    if row["dev_best_dice"] > selected.get(method, {}).get("dev_best_dice", -1):
                        selected[method] = row
    for method, row in selected.items():
        contrasts, residual = MAP_SETTINGS[row["map"]]
        detector = load_detector(method, noise_level=row["noise_level"], map_contrasts=contrasts or ["all"],
                                 residual=residual, samples=row["samples"], settings="paper")
        row["unseen"] = evaluate(detector, test)
        log(f"unseen {method:17s} (chosen: L={row['noise_level']} {row['map']} K={row['samples']}) "
            + " ".join(f"{k}={v:.3f}" for k, v in row["unseen"].items() if isinstance(v, float)))
    dev_flair = evaluate(load_detector("intensity"), [dev])
    return {"development": "brats_case_1 slices 20..120 step 5", "grid": grid, "selected": selected,
            "intensity_dev": dev_flair, "intensity_unseen": evaluate(load_detector("intensity"), test),
            "intensity_unseen_at_model_size": intensity_at_size(test, (48, 48)),
            "intensity_dev_at_model_size": intensity_at_size([dev], (48, 48))}


# sampler steps -> reconstructions drawn (K = 1, 2, 4, ... up to it); 25 steps at K = 16 is the 2026-11-25 selection
SPEED_GRID = {"anoddpm": {10: 16, 5: 16, 3: 32, 2: 32, 1: 32}, "anoddpm-gaussian": {10: 16, 5: 16, 3: 16, 2: 16, 1: 16}}


def select_speed(methods=tuple(SPEED_GRID), log=print) -> dict:
    """Development best Dice of each AnoDDPM method's default map (``MR_DEFAULTS``: t_lambda, contrasts, residual) by
    sampler steps and K reconstructions (K draws computed once per step count, the first k averaged), with the CPU
    seconds per slice and draw: the defaults take the best development Dice within 32 network calls per slice."""
    import numpy as np
    import torch.nn.functional as F

    from meddiff.metrics.segmentation import detection_metrics
    from meddiff.tasks.anomaly import brats_case_subject, filter_maps, residual_map
    from meddiff.tasks.anomaly.methods import MR_DEFAULTS

    dev = brats_case_subject(SHARED / "brats_case_1", slices=range(20, 121, 5))
    labels_of = np.moveaxis(dev.seg, -1, 0)
    rows = []
    for method in methods:
        for steps, draws in SPEED_GRID[method].items():
            detector = load_detector(method, steps=steps, samples=1, device="cpu")
            cpu = time.process_time()
            x, recs, masks = dev_reconstructions(detector, dev, draws)
            cpu = (time.process_time() - cpu) / draws / len(x)
            for k in (k for k in (1, 2, 4, 8, 16, 32) if k <= draws):
                diff = torch.stack([residual_map(x, r, detector.map_channels, detector.residual)
                                    for r in recs[:k]]).mean(0)
                maps = F.interpolate(diff, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                maps = filter_maps(maps.numpy(), masks)
                metrics = detection_metrics(maps[masks], labels_of[masks])
                rows.append({"method": method, "noise_level": MR_DEFAULTS[method]["noise_level"], "steps": steps,
                             "samples": k, "dev_pixel_auroc": metrics["auroc"], "dev_best_dice": metrics["best_dice"],
                             "cpu_s_per_slice": cpu * k})
                log(f"speed {method:17s} steps={steps:2d} K={k:2d} dev AUROC {metrics['auroc']:.3f} best Dice "
                    f"{metrics['best_dice']:.3f} {cpu * k:.2f} CPU-s/slice")
    return {"development": "brats_case_1 slices 20..120 step 5", "grid": rows}


def select_wolleb(levels=(250, 500), scales=(0.0, 10.0, 100.0), log=print) -> dict:
    """Wolleb on the development slices by L and guidance scale s, for each map (the classifier saw these slices'
    labels, so the numbers are optimistic), with the mean signed FLAIR residual x - x_h inside the tumour: positive
    means the guidance dims the lesion (heals it), negative that it brightens it."""
    import numpy as np
    import torch.nn.functional as F

    from meddiff.metrics.segmentation import detection_metrics
    from meddiff.tasks.anomaly import brats_case_subject, contrast_indices, filter_maps, residual_map

    dev = brats_case_subject(SHARED / "brats_case_1", slices=range(20, 121, 5))
    labels_of = np.moveaxis(dev.seg, -1, 0)
    tumour = F.interpolate(torch.from_numpy(labels_of[:, None].astype(np.float32)), size=(48, 48), mode="area")[:, 0] > 0.5
    rows = []
    for level in levels:
        for scale in scales:
            detector = load_detector("wolleb", noise_level=level, guidance_scale=scale, device="cpu")
            x, recs, masks = dev_reconstructions(detector, dev, 1)
            signed = float((x - recs[0])[:, 2][tumour].mean())
            for setting, (contrasts, residual) in MAP_SETTINGS.items():
                diff = residual_map(x, recs[0], contrast_indices(contrasts, 3), residual)
                maps = F.interpolate(diff, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                metrics = detection_metrics(filter_maps(maps.numpy(), masks)[masks], labels_of[masks])
                rows.append({"noise_level": level, "guidance_scale": scale, "map": setting,
                             "dev_pixel_auroc": metrics["auroc"], "dev_best_dice": metrics["best_dice"],
                             "flair_x_minus_healthy_in_tumour": signed})
                log(f"wolleb dev L={level} s={scale:g} {setting:24s} AUROC {metrics['auroc']:.3f} best Dice "
                    f"{metrics['best_dice']:.3f} (FLAIR x - x_h in tumour {signed:+.3f})")
    return {"development": "brats_case_1 slices 20..120 step 5", "grid": rows}


CHEST_GRID = {"anoddpm": ((60, 250), (1, 4)), "anoddpm-gaussian": ((60, 250), (1, 4)), "wolleb": ((250, 500), (1,)),
              "autoencoder": ((None,), (1,))}


def select_chest(methods=tuple(CHEST_GRID), per_class: int = 50, log=print) -> dict:
    """Chest X-rays: each method's map setting (absolute or positive residual, K, noise level) chosen by image-level
    AUROC on development val images disjoint from the evaluation ones, then scored once on those."""
    from meddiff.tasks.anomaly import CHEST_MODELS, evaluate, pneumonia_subjects

    npz = SHARED / "medmnist" / "pneumoniamnist.npz"
    dev = pneumonia_subjects(npz, per_class=per_class, development=True)
    test = pneumonia_subjects(npz, per_class=per_class)
    grid, selected = [], {}
    for method in (m for m in CHEST_GRID if m in methods):
        levels, draws = CHEST_GRID[method]
        for level in levels:
            for residual in ("abs", "positive"):
                for k in draws:
                    options = {"noise_level": level, "residual": residual, "samples": k}
                    detector = load_detector(method, *CHEST_MODELS[method], **options)
                    row = {"method": method, **options, "dev_image_auroc": evaluate(detector, dev)["image_auroc"]}
                    grid.append(row)
                    log(f"chest dev {method:17s} L={level} {residual:8s} K={k} image AUROC {row['dev_image_auroc']:.3f}")
                    if row["dev_image_auroc"] > selected.get(method, {}).get("dev_image_auroc", -1):
                        selected[method] = row
    for method, row in selected.items():
        options = {key: row[key] for key in ("noise_level", "residual", "samples")}
        row["test_image_auroc"] = evaluate(load_detector(method, *CHEST_MODELS[method], **options), test)["image_auroc"]
        log(f"chest test {method:17s} (chosen: L={row['noise_level']} {row['residual']} K={row['samples']}) "
            f"image AUROC {row['test_image_auroc']:.3f}")
    return {"development": f"{per_class} + {per_class} PneumoniaMNIST val images disjoint from the evaluation ones",
            "grid": grid, "selected": selected}


VOLUMES = {"brats_case_1": SHARED / "brats_case_1",                                     # 1 mm, 240 x 240 x 155
           "brats_tcga_2mm": ASSETS / "brats_tcga_2mm" / "TCGA-FG-6692"}                 # 2 mm crop, 76 x 88 x 68


def volume_metrics(detector, subject, seed: int = 0, min_size: int = 10) -> dict:
    """One whole volume as `meddiff detect` runs it (every axial slice, Otsu threshold over the volume): pixel AUROC /
    AUPRC / best Dice / Dice at Otsu inside the brain, the same restricted to the slices with tumour (what a slice
    benchmark sees), image-level AUROC over slices, and wall / CPU seconds for the volume."""
    from meddiff.metrics.segmentation import auroc, detection_metrics, dice
    from meddiff.tasks.anomaly import detect_array, pick_threshold, segment

    wall, cpu = time.perf_counter(), time.process_time()
    result = detect_array(detector, subject.image, spacing=subject.spacing, generator=torch.Generator().manual_seed(seed))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    segment(result, pick_threshold(result.anomaly, result.mask, "otsu"), min_size)
    mask, seg = result.mask, subject.seg
    tumour = seg.reshape(-1, seg.shape[-1]).any(0)                                          # (Z,)
    whole = detection_metrics(result.anomaly[mask], seg[mask])
    on_tumour = mask & tumour
    part = detection_metrics(result.anomaly[on_tumour], seg[on_tumour])
    brain = mask.reshape(-1, mask.shape[-1]).mean(0)
    return {"slices": int(mask.shape[-1]), "slices_with_map": int((brain >= 0.01).sum()),
            "pixel_auroc": whole["auroc"], "pixel_auprc": whole["auprc"], "best_dice": whole["best_dice"],
            "dice_otsu": dice(result.segmentation[mask], seg[mask]),
            "tumour_slices_pixel_auroc": part["auroc"], "tumour_slices_best_dice": part["best_dice"],
            "image_auroc": auroc(result.scores, tumour), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}

def whole_volumes(methods=METHODS, settings=("default", "paper"), volumes=tuple(VOLUMES), log=print) -> dict:
    """Every method on whole volumes of the BraTS case in ``VOLUMES`` with its default settings and the papers'.
    Both volumes are the training (development) subject TCGA-FG-6692: the shared data hold no unseen whole volume."""
    from meddiff.tasks.anomaly import brats_case_subject

    out = {}
    for name in volumes:
        subject = brats_case_subject(VOLUMES[name])
        for method in methods:
            for setting in (("default",) if method == "intensity" else settings):
                detector = load_detector(method, settings=setting, device="cpu")
                row = {"settings": setting, **volume_metrics(detector, subject),
                       "map": {"noise_level": detector.noise_level, "steps": detector.steps,
                               "channels": detector.map_channels, "residual": detector.residual,
                               "samples": detector.samples}}
                out.setdefault(name, {})[f"{method} ({setting})"] = row
                log(f"volume {name:15s} {method:17s} {setting:8s} " + " ".join(
                    f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return out


def volume_table(results: dict) -> str:
    """Markdown: a row per volume and method."""
    columns = ("pixel_auroc", "pixel_auprc", "best_dice", "dice_otsu", "tumour_slices_pixel_auroc",
               "tumour_slices_best_dice", "image_auroc", "slices_with_map", "wall_s", "cpu_s")
    lines = ["| volume | method | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for name, rows in results.items():
        for method, row in rows.items():
            cells = [f"{row[c]:.3f}" if isinstance(row[c], float) and c not in ("wall_s", "cpu_s") else str(row[c])
                     for c in columns]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intensity_at_size(subjects, size) -> dict:
    """The FLAIR z-score baseline computed at the models' size and resized back (area down, bilinear up), scored like
    every map: what a perfect FLAIR-like map loses to the 48 x 48 models' resolution alone."""
    import numpy as np
    import torch.nn.functional as F

    from meddiff.metrics.segmentation import detection_metrics
    from meddiff.tasks.anomaly import brain_masks, filter_maps, intensity_map, to_model_size

    maps, labels = [], []
    for subject in subjects:
        slices = np.moveaxis(subject.image, -1, 0)
        masks = brain_masks(slices)
        z = torch.from_numpy(intensity_map(np.moveaxis(slices, 0, 1), masks)[:, None])
        z = F.interpolate(to_model_size(z, size), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        z = filter_maps(z[:, 0].numpy(), masks)
        maps.append(z[masks])
        labels.append(np.moveaxis(subject.seg, -1, 0)[masks])
    metrics = detection_metrics(np.concatenate(maps), np.concatenate(labels))
    return {"pixel_auroc": metrics["auroc"], "pixel_auprc": metrics["auprc"], "best_dice": metrics["best_dice"]}


def classifier_separation(data_dir: str | Path, classifier: str = "brats_classifier", log=print) -> dict:
    """How well the Wolleb classifier separates its own training slices (``data_dir`` from ``--prepare-data``) at
    diffusion times t: mean p(tumour) per class and image-level AUROC on x_t (noise seed 0). A classifier that cannot
    separate them here gives guidance gradients that edit normal tissue."""
    import numpy as np

    from meddiff.data import build_dataset
    from meddiff.diffusion.schedules import make_schedule
    from meddiff.metrics.segmentation import detection_metrics
    from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint

    model, meta = load_checkpoint(resolve_checkpoint(classifier))
    dataset = build_dataset({"kind": "folder", "path": str(Path(data_dir) / "brats"), "classes": True,
                             "val_fraction": 0.0}, split="all")
    items = [dataset[i] for i in range(len(dataset))]                        # read each slice once
    x = torch.stack([item["image"] for item in items]).float()
    tumour = np.array([int(item["label"]) == 1 for item in items])
    schedule = make_schedule(meta["schedule"])
    generator = torch.Generator().manual_seed(0)
    out = {}
    for t in (0, 100, 250, 500, 750):
        times = torch.full((len(x),), float(t))
        alpha, sigma = (v.float()[:, None, None, None] for v in schedule.alpha_sigma(times))
        x_t = alpha * x + sigma * torch.randn(x.shape, generator=generator)
        with torch.no_grad():
            p = torch.softmax(model(x_t, times).float(), -1)[:, 1].numpy()
        out[t] = {"p_tumour_on_tumour": float(p[tumour].mean()), "p_tumour_on_healthy": float(p[~tumour].mean()),
                  "auroc": detection_metrics(p, tumour)["auroc"]}
        log(f"classifier t={t:4d}: mean p(tumour) {out[t]['p_tumour_on_tumour']:.2f} on tumour slices, "
            f"{out[t]['p_tumour_on_healthy']:.2f} on healthy; AUROC {out[t]['auroc']:.3f}")
    return out


def selection_table(selection: dict) -> str:
    """Markdown: per method the setting chosen on the development slices, its Dice there and on unseen subjects."""
    lines = ["| method | chosen on development | dev best Dice | unseen pixel AUROC | unseen AUPRC | unseen best Dice "
             "| unseen Dice (Otsu) | s / slice |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method, row in selection["selected"].items():
        u = row["unseen"]
        level = "" if row["noise_level"] is None else f"L = {row['noise_level']}, "
        setting = row["map"].replace("|", "\\|")                               # a table cell
        lines.append(f"| {method} | {level}{setting}, K = {row['samples']} | {row['dev_best_dice']:.3f} | "
                     f"{u['pixel_auroc']:.3f} | {u['pixel_auprc']:.3f} | {u['best_dice']:.3f} | {u['dice_otsu']:.3f} | "
                     f"{u['seconds_per_slice']:.2f} |")
    flair, unseen, small = (selection[k] for k in ("intensity_dev", "intensity_unseen", "intensity_unseen_at_model_size"))
    small_dev = selection.get("intensity_dev_at_model_size", {}).get("best_dice")
    small_dev = "" if small_dev is None else f"{small_dev:.3f}"
    lines.append(f"| intensity (FLAIR z-score) | - | {flair['best_dice']:.3f} | {unseen['pixel_auroc']:.3f} | "
                 f"{unseen['pixel_auprc']:.3f} | {unseen['best_dice']:.3f} | {unseen['dice_otsu']:.3f} | 0.00 |")
    lines.append(f"| intensity at 48 x 48, resized back | - | {small_dev} | {small['pixel_auroc']:.3f} | {small['pixel_auprc']:.3f} | "
                 f"{small['best_dice']:.3f} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON results file")
    parser.add_argument("--prepare-data", metavar="DIR", help="write the training folders to DIR and exit")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to run (also restricts --select-map)")
    parser.add_argument("--chest-per-class", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="also vary Wolleb's L and s and AnoDDPM's t_lambda")
    parser.add_argument("--classifier-check", metavar="DIR",
                        help="print how well brats_classifier separates the training slices in DIR by t, and exit")
    parser.add_argument("--select-chest", action="store_true",
                        help="also choose each method's chest X-ray map setting on development val images")
    parser.add_argument("--select-map", action="store_true",
                        help="also choose each method's map setting on the development slices, score it on unseen")
    parser.add_argument("--select-speed", action="store_true",
                        help="also score AnoDDPM's default map by K reconstructions and sampler steps, and Wolleb by "
                             "L and guidance scale, on the development slices (the choices behind the defaults)")
    parser.add_argument("--volumes", nargs="*", choices=list(VOLUMES), metavar="VOLUME",
                        help=f"also run every method on whole BraTS volumes (defaults and paper settings): "
                             f"{', '.join(VOLUMES)} (no name: all)")
    parser.add_argument("--volume-settings", nargs="+", default=["default", "paper"], choices=["default", "paper"],
                        help="settings run on the volumes (default: both)")
    parser.add_argument("--no-slices", action="store_true", help="skip the slice evaluation (e.g. with --volumes)")
    parser.add_argument("--paper-settings", dest="settings", action="store_const", const="paper", default="default",
                        help="slice evaluation with the papers' settings instead of each method's defaults")
    args = parser.parse_args(argv)
    if args.prepare_data:
        from meddiff.tasks.anomaly import prepare_training_data

        counts = prepare_training_data(args.prepare_data, SHARED / "brats_case_1",
                                       SHARED / "medmnist" / "pneumoniamnist.npz")
        print(f"wrote {counts} to {args.prepare_data}")
        return 0
    if args.classifier_check:
        from meddiff.errors import MeddiffError

        try:
            classifier_separation(args.classifier_check)
        except MeddiffError as error:
            sys.exit(f"--classifier-check: {error}; write the training folders first with --prepare-data DIR")
        return 0
    torch.manual_seed(0)
    start = time.time()
    results = {} if args.no_slices else run_evaluation(
        args.methods, brats_test=SHARED / "brats_slices_2d" / "brats_slices.npz", brats_case=SHARED / "brats_case_1",
        pneumonia=SHARED / "medmnist" / "pneumoniamnist.npz", chest_per_class=args.chest_per_class,
        settings=args.settings)
    report = {"results": results, "settings": args.settings,
              "environment": {"torch": torch.__version__, "python": platform.python_version(),
                              "threads": torch.get_num_threads(), "device": "cpu",
                              "wall_s": round(time.time() - start, 1)}}
    if args.volumes is not None:
        report["volumes"] = whole_volumes(args.methods, args.volume_settings, args.volumes or tuple(VOLUMES))
        print(volume_table(report["volumes"]))
    if args.select_speed:
        report["select_speed"] = select_speed()
        report["select_wolleb"] = select_wolleb()
    if args.sweep:
        report["sweep"] = sweep()
    if args.select_map:
        report["select_map"] = select_map(args.methods)
        print(selection_table(report["select_map"]))
    if args.select_chest:
        report["select_chest"] = select_chest(args.methods, args.chest_per_class)
    print(markdown_table(results))
    if args.out:
        print(f"wrote {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
