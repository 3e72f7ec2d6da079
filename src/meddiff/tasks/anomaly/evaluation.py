"""Evaluation harness: pixel metrics against tumour masks, image-level AUROC over slices and X-rays, every method on
the BraTS and chest sets (``run_evaluation``), and the markdown table of the results."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.anomaly.data import Subject, brats_case_subject, brats_npz_subjects, pneumonia_subjects
from meddiff.tasks.anomaly.detect import detect_array
from meddiff.tasks.anomaly.methods import (CHEST_MODELS, DEFAULT_MODELS, DIFFUSION_METHODS, METHODS,
                                           STOCHASTIC_METHODS, Detector, load_detector)
from meddiff.tasks.anomaly.postprocess import pick_threshold, segment

def evaluate(detector: Detector, subjects: Sequence[Subject], *, median: int | None = None, min_size: int = 10,
             seed: int = 0) -> dict:
    """Pixel-level metrics inside the brain mask over all subjects (AUROC, AUPRC, best Dice, Dice at the Otsu
    threshold of each subject's maps), image-level AUROC over slices (when both classes occur), seconds per slice."""
    from meddiff.metrics.segmentation import auroc, detection_metrics, dice

    generator = torch.Generator().manual_seed(seed)
    maps, labels, predictions, slice_scores, slice_labels, seconds = [], [], [], [], [], []
    for subject in subjects:
        result = detect_array(detector, subject.image, mr=subject.mr, median=median, spacing=subject.spacing,
                              generator=generator)
        tau = pick_threshold(result.anomaly, result.mask, "otsu")
        segment(result, tau, min_size)
        if subject.seg is not None:
            maps.append(result.anomaly[result.mask])
            labels.append(subject.seg[result.mask])
            predictions.append(result.segmentation[result.mask])
        slice_scores.append(result.scores)
        slice_labels.append(subject.labels_per_slice())
        seconds.append(result.seconds_per_slice)
    out = {"slices": int(sum(len(s) for s in slice_scores)), "seconds_per_slice": float(np.mean(seconds))}
    if maps and np.concatenate(labels).any():
        maps, labels = np.concatenate(maps), np.concatenate(labels)
        metrics = detection_metrics(maps, labels)
        out.update({"pixel_auroc": metrics["auroc"], "pixel_auprc": metrics["auprc"],
                    "best_dice": metrics["best_dice"], "dice_otsu": dice(np.concatenate(predictions), labels)})
    scores, truth = np.concatenate(slice_scores), np.concatenate(slice_labels)
    if truth.any() and not truth.all():
        out["image_auroc"] = auroc(scores, truth)
    return out


EVAL_SETS = ("brats_unseen", "brats_seen", "chest")


def run_evaluation(methods: Sequence[str] = METHODS, *, brats_test: str | Path | None = None,
                   brats_case: str | Path | None = None, pneumonia: str | Path | None = None,
                   seen_slices: Sequence[int] = tuple(range(20, 121, 5)), chest_per_class: int = 50,
                   noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
                   seed: int = 0, map_contrasts: Sequence[str | int] | None = None, residual: str | None = None,
                   samples: int | None = None, checkpoint: str | Path | None = None,
                   classifier: str | Path | None = None, settings: str = "default", log=print) -> dict:
    """Every method on: "brats_unseen" (``brats_test`` npz: subjects not used in training; pixel metrics),
    "brats_seen" (``seen_slices`` of the training case ``brats_case``: image-level AUROC, flagged as seen), and
    "chest" (``chest_per_class`` normal + pneumonia held-out PneumoniaMNIST val images: image-level AUROC).
    Options left at None take each method's defaults (``load_detector``; ``settings="paper"``: the papers').
    ``map_contrasts`` / ``residual`` apply to every method but the intensity baseline (on chest X-rays the
    contrasts are left out: one channel); ``samples`` to the AnoDDPM methods. ``checkpoint`` / ``classifier``
    replace the shipped BraTS models of the one method in ``methods`` (e.g. a model you trained)."""
    if (checkpoint or classifier) and len(methods) != 1:
        raise MeddiffError("--checkpoint / --classifier evaluate one model: give exactly one of --methods")
    if (checkpoint or classifier) and pneumonia is not None:
        raise MeddiffError("--checkpoint / --classifier replace the BraTS models; skip the chest X-ray set with "
                           "--pneumonia ''")
    sets = {}
    if brats_test is not None:
        sets["brats_unseen"] = brats_npz_subjects(brats_test)
    if brats_case is not None:
        sets["brats_seen"] = [brats_case_subject(brats_case, slices=seen_slices)]
    if pneumonia is not None:
        sets["chest"] = pneumonia_subjects(pneumonia, per_class=chest_per_class, seed=seed)
    results: dict = {}
    for name, subjects in sets.items():
        for method in methods:
            model, clf = CHEST_MODELS[method] if name == "chest" else DEFAULT_MODELS.get(method, (None, None))
            model, clf = checkpoint or model, classifier or clf
            options = {} if method == "intensity" else {
                "map_contrasts": None if name == "chest" else map_contrasts, "residual": residual,
                "samples": samples if method in STOCHASTIC_METHODS else None}
            detector = load_detector(method, model, clf, noise_level=noise_level, guidance_scale=guidance_scale,
                                     steps=steps, seed=seed, settings=settings, **options)
            metrics = evaluate(detector, subjects, seed=seed)
            diffusion = method in DIFFUSION_METHODS
            metrics.update({"checkpoint": str(model) if model else None, "classifier": str(clf) if clf else None,
                            "noise_level": detector.noise_level if diffusion else None,
                            "guidance_scale": detector.guidance_scale if method == "wolleb" else None,
                            "steps": detector.steps if diffusion else None,
                            "map": None if method == "intensity" else {
                                "channels": detector.map_channels, "residual": detector.residual,
                                "samples": detector.samples}})
            results.setdefault(name, {})[method] = metrics
            log(f"{name:13s} {method:17s} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                                         if isinstance(v, float)))
    return results


def markdown_table(results: dict) -> str:
    """One markdown table per evaluation set: a row per method, a column per metric."""
    columns = ("pixel_auroc", "pixel_auprc", "best_dice", "dice_otsu", "image_auroc", "seconds_per_slice")
    lines = []
    for name, by_method in results.items():
        present = [c for c in columns if any(c in m for m in by_method.values())]
        lines += [f"**{name}**", "", "| method | " + " | ".join(present) + " |",
                  "|---|" + "---:|" * len(present)]
        for method, metrics in by_method.items():
            cells = [f"{metrics[c]:.3f}" if c in metrics else "" for c in present]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
