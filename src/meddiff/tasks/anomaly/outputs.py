"""What `meddiff detect` writes: maps, reconstructions and segmentations (npy, NIfTI for volumes), an overlay PNG
per input and scores.csv; every file goes to a temporary name first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddiff.tasks.anomaly.data import Input
from meddiff.tasks.anomaly.postprocess import Result

def _overlay(image: np.ndarray, segmentation: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """RGB uint8 panel pair: the last channel in grey with the segmentation in red | the anomaly map."""
    from meddiff.report.html import to_uint8

    grey = to_uint8(image[-1])
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[segmentation > 0] = (0.5 * rgb[segmentation > 0] + [127, 0, 0]).astype(np.uint8)
    heat = to_uint8(anomaly, 0.0, max(float(anomaly.max()), 1e-6))
    panels = [np.rot90(p) for p in (rgb, np.stack([heat, heat // 3, 255 - heat], axis=-1))]   # NIfTI x -> columns
    zoom = max(1, 256 // max(rgb.shape[:2]))
    return np.concatenate(panels, axis=1).repeat(zoom, axis=0).repeat(zoom, axis=1)


def write_outputs(item: Input, result: Result, out_dir: Path) -> list[Path]:
    """<name>_anomaly.npy (+ .nii.gz for volumes), _healthy.npy, _segmentation.npy (+ .nii.gz), _overlay.png."""
    from PIL import Image

    from meddiff.data.io import atomic_path, write_nifti
    from meddiff.files import write_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, array in (("anomaly", result.anomaly), ("healthy", result.healthy.astype(np.float32)),
                          ("segmentation", result.segmentation)):
        target = out_dir / f"{item.name}_{suffix}.npy"
        with atomic_path(target) as tmp:
            np.save(tmp, array)
        written.append(target)
        if item.image.ndim == 4 and suffix != "healthy":
            written.append(write_nifti(out_dir / f"{item.name}_{suffix}.nii.gz", array, item.affine))
    if item.image.ndim == 4:   # the slice with the highest score
        z = int(np.argmax(result.scores))
        panel = _overlay(item.image[..., z], result.segmentation[..., z], result.anomaly[..., z])
    else:
        panel = _overlay(item.image, result.segmentation, result.anomaly)
    written.append(write_png(out_dir / f"{item.name}_overlay.png", Image.fromarray(np.ascontiguousarray(panel))))
    return written


SCORE_COLUMNS = ("input", "slice", "score", "threshold")


def write_scores(rows: list[dict], target: Path) -> Path:
    """scores.csv: one row per input (per slice for volumes) with its image-level score and the threshold used."""
    import csv

    from meddiff.data.io import atomic_path

    with atomic_path(target) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return target
