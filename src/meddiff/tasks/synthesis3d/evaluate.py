"""Label fidelity of generated heads: segment each with a segmentation model trained on real data (the shipped
``brain_parcellation_ixi``, with ``meddiff segment``'s default clean-up) and score the Dice per merged class against
the label map the head was generated from (Med-DDPM's evaluation, Dorjsembe et al. 2024)."""

from __future__ import annotations

import numpy as np
import torch

from meddiff.errors import MeddiffError
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


AXES = ("sagittal", "coronal", "axial")  # RAS volumes (X, Y, Z): slices cut along X, Y, Z
MS_SSIM_3D_WEIGHTS = (0.0448, 0.2856, 0.3001)  # the first three of Wang et al.'s five exponents: heads are ~90 voxels


def orthogonal_slices(volumes: list[np.ndarray], every: int = 4, min_foreground: float = 0.2,
                      threshold: float = -0.8) -> dict[str, torch.Tensor]:
    """RAS volumes (X, Y, Z) in model range [-1, 1] -> {axis name: (N, 1, h, w) float32 slices}: every ``every``-th
    slice along each axis whose fraction of voxels above ``threshold`` (non-air) is at least ``min_foreground``, the
    2.5D sampling of 3D generative-model evaluation (features of 2D slices of all three orientations)."""
    out = {}
    for axis, name in enumerate(AXES):
        planes = [np.take(v, i, axis=axis) for v in volumes for i in range(0, v.shape[axis], every)]
        planes = [p for p in planes if (p > threshold).mean() >= min_foreground]
        out[name] = torch.from_numpy(np.stack(planes).astype(np.float32))[:, None]
    return out


def distribution_scores(real: list[np.ndarray], fake: list[np.ndarray], extractor, every: int = 4) -> dict:
    """2.5D FID, KID and k-NN precision / recall of ``fake`` against ``real`` heads (RAS, model range): each metric
    per orientation (sagittal, coronal, axial slices, ``orthogonal_slices``) and their mean ("2.5D"), on the
    features of ``extractor`` (``meddiff.metrics.features``; report its name with the numbers)."""
    from meddiff.metrics.generative import fid, kid, precision_recall

    real_slices, fake_slices = orthogonal_slices(real, every), orthogonal_slices(fake, every)
    per_axis = {}
    for name in AXES:
        a, b = extractor(real_slices[name]), extractor(fake_slices[name])
        precision, recall = precision_recall(a, b)
        per_axis[name] = {"fid": fid(a, b), "kid": kid(a, b, subsets=50)[0], "precision": precision,
                          "recall": recall, "real_slices": len(a), "fake_slices": len(b)}
    mean = {k: float(np.mean([per_axis[n][k] for n in AXES])) for k in ("fid", "kid", "precision", "recall")}
    return {**mean, "per_axis": per_axis, "features": extractor.name, "every": every}


def ms_ssim_diversity(volumes: list[np.ndarray]) -> float:
    """Mean 3D MS-SSIM (3 scales) over all pairs of RAS heads in model range (data range 2): lower = more diverse;
    the usual diversity score of 3D generative models (e.g. Dorjsembe et al. 2024, Pinaya et al. 2022)."""
    from meddiff.metrics.image import ms_ssim

    if len(volumes) < 2:
        raise MeddiffError(f"MS-SSIM diversity needs at least two volumes, got {len(volumes)}")
    t = [torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in volumes]
    values = [float(ms_ssim(t[i], t[j], 2.0, weights=MS_SSIM_3D_WEIGHTS, spatial_dims=3))
              for i in range(len(t)) for j in range(i + 1, len(t))]
    return float(np.mean(values))
