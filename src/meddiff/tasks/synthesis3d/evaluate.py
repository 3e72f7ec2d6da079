"""Label fidelity of generated heads: segment each with a segmentation model trained on real data (the shipped
``brain_parcellation_ixi``, with ``meddiff segment``'s default clean-up) and score the Dice per merged class against
the label map the head was generated from (Med-DDPM's evaluation, Dorjsembe et al. 2024)."""

from __future__ import annotations

import numpy as np

from meddiff.tasks.segment.postprocess import DEFAULT_CLEANUP


def segment_head(volume_ras: np.ndarray, segmenter, cleanup: str = DEFAULT_CLEANUP) -> np.ndarray:
    """A RAS head (X, Y, Z) in model range or file intensities -> merged labels (X, Y, Z) int64."""
    from meddiff.tasks.segment.pipeline import segment_volume
    from meddiff.tasks.segment.postprocess import clean_labels

    v = np.clip(np.asarray(volume_ras, dtype=np.float32), -1.0, None) + 1.0  # magnitudes: air 0
    probs = segment_volume(v, segmenter.segmenter, segmenter.prep)
    return clean_labels(probs.argmax(0), probs, cleanup).astype(np.int64)


def label_fidelity(volume_ras: np.ndarray, labels_ras: np.ndarray, segmenter, num_classes: int = 10) -> dict:
    """{"dice": mean over the foreground classes present, "per_class": [Dice of class 1..K-1]} of the segmentation
    of ``volume_ras`` against ``labels_ras`` (both RAS, same grid)."""
    from meddiff.tasks.segment.evaluate import dice_per_class

    per_class = dice_per_class(segment_head(volume_ras, segmenter), np.asarray(labels_ras), num_classes)
    return {"dice": float(np.nanmean(per_class)), "per_class": per_class}
