"""The anomaly section of the demo report: one unseen BraTS slice per method, figure and pixel metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from meddiff.tasks.anomaly.data import brats_npz_subjects, normalise_mr
from meddiff.tasks.anomaly.detect import detect_array
from meddiff.tasks.anomaly.methods import MR_DEFAULTS, load_detector

PAPER_ANODDPM = "anoddpm (paper settings)"

def report_section(out_dir: str | Path, *, methods: Sequence[str] = ("intensity", "autoencoder", "anoddpm",
                                                                    "anoddpm-gaussian", "wolleb", PAPER_ANODDPM),
                   brats_slices: str | Path | None = None, seed: int = 0, log=print) -> dict:
    """Demo-report section: one BraTS slice per method as input FLAIR | healthy reconstruction (FLAIR) | anomaly
    map | ground truth, and its pixel metrics, on ``brats_slices`` (npz in the layout of the shipped
    `assets/brats2020_slices`, the default: BraTS 2020 subjects the shipped models never saw). Each method runs with
    its defaults (``MR_DEFAULTS``, chosen on development data); ``PAPER_ANODDPM`` is AnoDDPM with the paper's
    settings."""
    from PIL import Image

    from meddiff.data.assets import asset_path
    from meddiff.metrics.segmentation import auroc, best_dice
    from meddiff.report.html import labelled_row, to_uint8
    from meddiff.files import write_png

    path = Path(brats_slices) if brats_slices else asset_path("brats2020_slices/brats_slices.npz")
    subject = brats_npz_subjects(path)[0]
    image, seg, where = subject.image[..., :1], subject.seg[..., :1], f"{subject.name} (not used in training)"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = [], []
    for method in methods:
        start = time.perf_counter()
        detector = (load_detector("anoddpm", seed=seed, settings="paper", device="cpu") if method == PAPER_ANODDPM
                    else load_detector(method, seed=seed, device="cpu"))
        result = detect_array(detector, image, spacing=subject.spacing, generator=torch.Generator().manual_seed(seed))
        mask = result.mask[..., 0]
        anomaly, truth = result.anomaly[..., 0], seg[..., 0]
        recon = result.healthy[-1, ..., 0] if method != "intensity" else normalise_mr(image[..., 0])[-1]
        panels = [to_uint8(np.rot90(normalise_mr(image[..., 0])[-1]), -1, 1), to_uint8(np.rot90(recon), -1, 1),
                  to_uint8(np.rot90(anomaly), 0, max(float(anomaly.max()), 1e-6)), to_uint8(np.rot90(truth), 0, 1)]
        rows.append(labelled_row(panels, [f"{method}: input FLAIR", "healthy (FLAIR)", "anomaly map", "tumour"]))
        table.append({"method": method, "pixel_auroc": auroc(anomaly[mask], truth[mask]),
                      "best_dice": best_dice(anomaly[mask], truth[mask])[0],
                      "seconds": round(time.perf_counter() - start, 1)})
        log(f"  anomaly {method:16s} pixel AUROC {table[-1]['pixel_auroc']:.3f}  best Dice {table[-1]['best_dice']:.3f}  "
            f"{table[-1]['seconds']:.1f}s")
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    figure = write_png(out / "anomaly.png", canvas)
    tuned = MR_DEFAULTS["anoddpm"]
    text = (f"Unsupervised tumour detection on {where}, one slice; models are the shipped BraTS ones (48 x 48, "
            "trained on one subject), each method with its defaults. 'intensity' is the z-scored FLAIR baseline "
            "(Meissen et al. 2021): the diffusion methods must beat it to be worth using. 'anoddpm' reads the "
            f"positive FLAIR residual averaged over {tuned['samples']} reconstructions from t_lambda = "
            f"{tuned['noise_level']:g} ({tuned['steps']} steps; chosen on development slices): its 'healthy' image "
            f"(the mean of the {tuned['samples']}) only dims the tumour, and the map reads how consistently the model "
            "pulls bright tissue towards healthy intensity. 'anoddpm (paper settings)' is the paper's map (sum over "
            "contrasts of |x - x_h|, one reconstruction from t_lambda = 250). Metrics inside the brain mask of this "
            "slice only; benchmarks/README.md has the full evaluation, whole volumes included.")
    return {"title": "Anomaly detection (Wolleb, AnoDDPM, autoencoder, FLAIR baseline)", "text": text,
            "table": table, "figure": figure}
