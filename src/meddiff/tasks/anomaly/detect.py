"""Anomaly maps of an input (``detect_array``) and `meddiff detect` over files (``run_detect``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.anomaly.data import Placement, brain_masks, model_inputs, read_inputs
from meddiff.tasks.anomaly.methods import Detector, check_input, load_detector
from meddiff.tasks.anomaly.outputs import write_outputs, write_scores
from meddiff.tasks.anomaly.postprocess import (THRESHOLDS, Result, filter_maps, image_score, intensity_map,
                                               pick_threshold, residual_map, segment)

MIN_BRAIN = 0.01   # MR slices with less brain than this fraction get no map (zero): no tissue to heal


def detect_array(detector: Detector, image: np.ndarray, *, mr: bool = True, median: int | None = None,
                 spacing: Sequence[float] | None = None, batch: int = 16, generator: torch.Generator | None = None,
                 progress: str | None = None) -> Result:
    """Anomaly map of one input ``image`` (C, H, W) or a volume (C, H, W, Z) sliced along the last axis.

    ``mr``: skull-stripped MR (per-slice robust normalisation, brain mask = any contrast > 0); else an 8-bit image
    (x / 127.5 - 1, mask everywhere). Maps and reconstructions are resized back to the input's shape; the
    segmentation is left to ``segment``. ``median``: filter size in pixels (None: ``auto_median``). The map is the
    detector's ``residual_map`` at the model's size (the mean over its K draws), resized; the reconstruction is the
    mean of the K draws. Slices are processed ``batch`` (slice, draw) pairs at a time; MR slices with less than
    ``MIN_BRAIN`` of brain are skipped (map 0, reconstruction = input).
    ``spacing``: the in-plane pixel spacing in mm; with it, and a detector that knows its training pixel size
    (``pixel_mm``: the BraTS models), slices are resampled to that size and centred on the model's canvas
    (``Placement``) instead of being stretched to fill it. ``progress``: a label to show a progress bar (slices,
    s/slice, ETA) on stderr, None for none.
    """
    image = np.asarray(image, dtype=np.float32)
    volume = image.ndim == 4
    slices = np.moveaxis(image, -1, 0) if volume else image[None]            # [S,C,H,W]
    masks = brain_masks(slices, mr)
    if detector.method == "intensity":
        anomaly = intensity_map(np.moveaxis(slices, 0, 1), masks)            # z-score over the whole input
        healthy = np.zeros_like(slices)
        seconds = 0.0
    else:
        check_input(detector, slices.shape[1:])
        model_in = model_inputs(slices, masks, mr)
        keep = np.nonzero(masks.reshape(len(masks), -1).mean(1) >= (MIN_BRAIN if mr else 0))[0]   # no brain: no map
        anomaly = np.zeros(masks.shape, np.float32)
        healthy = np.array(model_in, copy=True)
        # one work item per (slice, draw): K draws of few slices fill a batch as well as many slices do
        items = [(i, k) for i in keep for k in range(detector.samples)]
        diff_sum = torch.zeros((len(masks), 1, *detector.image_size))
        rec_sum = torch.zeros((len(masks), slices.shape[1], *detector.image_size))
        size = detector.image_size
        where = (Placement.at_pixel_size(model_in.shape[-2:], spacing, detector.pixel_mm, size)
                 if spacing is not None and detector.pixel_mm else Placement.whole(size))
        small = where.to_canvas(torch.from_numpy(model_in[keep]), size) if len(keep) else None
        row_of = {int(i): n for n, i in enumerate(keep)}
        from tqdm import tqdm

        start = time.perf_counter()
        bar = tqdm(total=len(keep), desc=progress, unit="slice", disable=progress is None, leave=False)
        for b in range(0, len(items), batch):
            idx = torch.tensor([i for i, _ in items[b:b + batch]])
            x = small[[row_of[int(i)] for i in idx]]
            rec = detector.heal(x.to(detector.device), generator).float().cpu().clamp(-1, 1)
            diff_sum.index_add_(0, idx, residual_map(x, rec, detector.map_channels, detector.residual))
            rec_sum.index_add_(0, idx, rec)
            bar.update(sum(1 for _, k in items[b:b + batch] if k == detector.samples - 1))
        bar.close()
        if len(keep):      # mean over the K draws, at the model's size, then back to the input's grid
            out = model_in.shape[-2:]
            anomaly[keep] = where.from_canvas(diff_sum[keep] / detector.samples, size, out, 0.0)[:, 0].numpy()
            healthy[keep] = where.from_canvas(rec_sum[keep] / detector.samples, size, out, -1.0).numpy()
        seconds = (time.perf_counter() - start) / max(len(keep), 1)
    anomaly = filter_maps(anomaly, masks, median)
    scores = np.array([image_score(a, m) for a, m in zip(anomaly, masks)])
    if volume:
        return Result(np.moveaxis(anomaly, 0, -1), np.moveaxis(healthy, 0, -1), np.zeros(image.shape[1:], np.uint8),
                      scores, np.moveaxis(masks, 0, -1), seconds)
    return Result(anomaly[0], healthy[0], np.zeros(image.shape[1:], np.uint8), scores, masks[0], seconds)


def run_detect(method: str, input_path: str | Path, out_dir: str | Path, *, checkpoint=None, classifier=None,
               noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
               threshold: str = "otsu", threshold_value: float | None = None, healthy: str | Path | None = None,
               median: int | None = None, min_size: int = 10, seed: int = 0, device: str = "auto",
               map_contrasts: Sequence[str | int] | None = None, residual: str | None = None,
               samples: int | None = None, settings: str = "default", progress: bool = False) -> list[dict]:
    """`meddiff detect`: maps, reconstructions, segmentations and overlays for every input, and scores.csv
    (one row per input, per slice for volumes). Returns the rows. Options left at None take the method's defaults
    (``load_detector``). ``progress``: a bar per input on stderr."""
    detector = load_detector(method, checkpoint, classifier, noise_level=noise_level, guidance_scale=guidance_scale,
                             steps=steps, seed=seed, device=device, map_contrasts=map_contrasts, residual=residual,
                             samples=samples, settings=settings)
    check_choice("threshold", threshold, THRESHOLDS)
    if threshold == "percentile" and healthy is None:
        raise MeddiffError("--threshold percentile needs --healthy PATH (healthy images for the reference maps)")
    generator = torch.Generator().manual_seed(seed)
    inputs = read_inputs(input_path, detector.channels)
    healthy_maps = None
    if threshold == "percentile":
        refs = read_inputs(healthy, detector.channels)
        healthy_maps = [(r := detect_array(detector, i.image, mr=i.mr, median=median, spacing=i.spacing,
                                           generator=generator)).anomaly[r.mask] for i in refs]
    out = Path(out_dir)
    rows = []
    for number, item in enumerate(inputs, 1):
        result = detect_array(detector, item.image, mr=item.mr, median=median, spacing=item.spacing, generator=generator,
                              progress=f"{item.name} ({number}/{len(inputs)})" if progress else None)
        tau = pick_threshold(result.anomaly, result.mask, threshold, threshold_value, healthy_maps)
        segment(result, tau, min_size)
        write_outputs(item, result, out)
        for z, score in enumerate(result.scores):
            rows.append({"input": item.name, "slice": z if item.image.ndim == 4 else "", "score": float(score),
                         "threshold": tau})
    write_scores(rows, out / "scores.csv")
    return rows
