"""Unsupervised anomaly detection: translate an image to its "healthy" counterpart and read the lesion off the
difference.

Methods (all through the core samplers and hooks; no sampler loop of their own):
- "wolleb": Wolleb et al., MICCAI 2022, "Diffusion models for medical anomaly detection": deterministic DDIM
  encoding to noise level L (``invert_ddim``), then DDIM decoding with classifier guidance towards "healthy"
  (``ClassifierGuidance``, scale s); anomaly map = sum over channels of |x - x_healthy| (the paper's default).
- "anoddpm" / "anoddpm-gaussian": Wyatt et al., CVPR-W 2022, "AnoDDPM": a model trained on healthy images
  only, with simplex (or Gaussian) noise; partial diffusion to t_lambda and ancestral reconstruction (Alg. 2).
- "autoencoder": reconstruction error of a plain convolutional autoencoder (Baur et al. 2021).
- "intensity": the trivial baseline of Meissen et al. 2021 ("Challenging current semi-supervised anomaly
  segmentation methods for brain MRI"): the per-volume z-scored FLAIR intensity inside the brain mask.
Anomaly map options (``residual_map``): the contrasts summed (e.g. FLAIR only), the absolute or the positive
residual (lesions brighter than healthy tissue, as tumour in FLAIR/T2), and for the stochastic AnoDDPM the mean
over K reconstructions with independent noise. Post-processing: brain mask, median filter, threshold (Otsu /
healthy-percentile / fixed), connected components, image-level score. BraTS models take 3 contrasts (t1ce, t2,
flair) at 48 x 48; chest X-ray models 1 x 28 x 28.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.diffusion import ClassifierGuidance, ModelDenoiser, make_schedule
from meddiff.diffusion.noise import make_noise
from meddiff.diffusion.samplers import invert_ddim, sample_ddim, sample_ddpm
from meddiff.diffusion.timesteps import TimeGrid
from meddiff.errors import MeddiffError, check_choice

# model channels -> contrasts of a BraTS case folder, in channel order (the shipped BraTS models use 3)
CONTRASTS_BY_CHANNELS = {3: ("t1ce", "t2", "flair"), 4: ("t1", "t1ce", "t2", "flair"), 1: ("flair",)}
HEALTHY, DISEASED = 0, 1  # classifier labels: class folders 0_healthy, 1_diseased (sorted order)
METHODS = ("wolleb", "anoddpm", "anoddpm-gaussian", "autoencoder", "intensity")
DIFFUSION_METHODS = ("wolleb", "anoddpm", "anoddpm-gaussian")
STOCHASTIC_METHODS = ("anoddpm", "anoddpm-gaussian")  # a new reconstruction per draw: --samples K applies
# shipped models used when --checkpoint / --classifier are left out: (BraTS, chest X-ray)
DEFAULT_MODELS = {
    "wolleb": ("brats_anoddpm_gaussian", "brats_classifier"),   # the healthy Gaussian DDPM as Wolleb's prior
    "anoddpm": ("brats_anoddpm", None),
    "anoddpm-gaussian": ("brats_anoddpm_gaussian", None),
    "autoencoder": ("brats_autoencoder", None),
}
# chest X-ray models (28 x 28 PneumoniaMNIST): the lead's class-conditional pneumonia_cond serves as Wolleb's
# unconditional model (null class) and, conditioned on "normal", as the Gaussian-noise AnoDDPM healthy model
CHEST_MODELS = {
    "wolleb": ("pneumonia_cond", "chestxray_classifier"),
    "anoddpm": ("chestxray_anoddpm", None),
    "anoddpm-gaussian": ("pneumonia_cond", None),
    "autoencoder": ("chestxray_autoencoder", None),
    "intensity": (None, None),
}
THRESHOLDS = ("otsu", "percentile", "fixed")
RESIDUALS = ("abs", "positive")
# AnoDDPM map chosen on development slices of the training subject (benchmarks/anomaly.py --select-map): FLAIR's
# positive residual averaged over 16 reconstructions from t_lambda = 30; unseen BraTS best Dice 0.917 vs 0.732
TUNED_MR_ANODDPM = {"noise_level": 30.0, "map_contrasts": ("flair",), "residual": "positive", "samples": 16}
MR_SCALE = 3.0  # MR slices: x / (MR_SCALE * median of the brain) -> [0, 1] -> [-1, 1]; tissue lands near -0.3


# ------------------------------------------------------------------------------------------- preprocessing
def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Brain mask of a skull-stripped MR slice stack (C, *spatial): any contrast > 0 -> bool (*spatial)."""
    return np.any(np.asarray(image) > 0, axis=0)


def normalise_mr(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-slice, per-contrast robust scaling of (C, H, W) raw MR to [-1, 1]: x / (3 median(x | brain)), clipped.

    The median is dominated by normal tissue even in tumour slices, unlike a 99.5 percentile that lands in a
    bright FLAIR lesion; background maps to -1.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = foreground_mask(image) if mask is None else mask
    out = np.full(image.shape, -1.0, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][mask]
        if values.size:
            scale = MR_SCALE * max(float(np.median(values)), 1e-6)
            out[c] = np.where(mask, 2 * np.clip(image[c] / scale, 0, 1) - 1, -1.0)
    return out


def to_model_size(x: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, *size): area averaging when shrinking, bilinear otherwise."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = all(s <= h for s, h in zip(size, x.shape[-2:]))
    return F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="bilinear",
                                                                                 align_corners=False)


def mirror_healthy_half(image: np.ndarray, seg: np.ndarray, centre: float) -> np.ndarray | None:
    """A pseudo-healthy slice: the hemisphere without tumour mirrored across the midline x = ``centre`` onto the
    one with it (image (C, X, Y), seg (X, Y)); None when the tumour crosses the midline."""
    xs = np.nonzero(seg.any(axis=1))[0]
    if xs.size == 0:
        return image.copy()
    width = image.shape[1]
    mirror = np.clip(np.round(2 * centre - np.arange(width)).astype(int), 0, width - 1)
    out = image.copy()
    if xs.max() < centre:       # tumour left of the midline: take the right half
        left = np.arange(width) < centre
        out[:, left] = image[:, mirror[left]]
    elif xs.min() > centre:
        right = np.arange(width) > centre
        out[:, right] = image[:, mirror[right]]
    else:
        return None
    return out


def prepare_training_data(out_dir: str | Path, brats_case: str | Path, pneumonia_npz: str | Path,
                          size: int = 48, min_brain: float = 0.05) -> dict:
    """Write the anomaly training folders (PNG, uint8 = model space [-1, 1] mapped to 0..255) under ``out_dir``:

    - ``brats/0_healthy``: axial slices of the BraTS case without tumour, plus every tumour slice with the
      tumour hemisphere replaced by the mirrored healthy one (so mid-brain anatomy has healthy examples);
    - ``brats/1_diseased``: slices with tumour (label 1). Contrasts ``CONTRASTS_BY_CHANNELS[3]`` as RGB;
    - ``chest/normal``: PneumoniaMNIST training images labelled normal (AnoDDPM trains on healthy only).
    Returns the counts. The split is by subject: this one BraTS case trains, other subjects test.
    """
    from meddiff.data import read_image, read_medmnist
    from meddiff.data.io import atomic_path, write_png
    from meddiff.data.volumes import discover_subjects

    out = Path(out_dir)
    subjects = discover_subjects(brats_case)
    if len(subjects) != 1:
        raise MeddiffError(f"{brats_case}: expected one BraTS case, found {len(subjects)}")
    name, files = next(iter(subjects.items()))
    contrasts = CONTRASTS_BY_CHANNELS[3]
    volume = np.stack([read_image(files[c], expect_ndim=3)[0].astype(np.float32) for c in contrasts])
    seg = read_image(files["seg"], expect_ndim=3)[0] > 0
    brain = foreground_mask(volume)
    xs = np.nonzero(brain.any(axis=(1, 2)))[0]
    centre = (xs[0] + xs[-1]) / 2
    counts = {"healthy": 0, "mirrored": 0, "diseased": 0, "chest_normal": 0}

    def save(array: np.ndarray, path: Path) -> None:
        x = torch.from_numpy(normalise_mr(array))[None]
        small = to_model_size(x, (size, size))[0].numpy()
        with atomic_path(path) as tmp:
            write_png(tmp, np.round((small + 1) * 127.5).clip(0, 255).astype(np.uint8))

    for z in range(volume.shape[-1]):
        if brain[..., z].mean() < min_brain:
            continue
        image, lesion = volume[..., z], seg[..., z]
        if lesion.any():
            save(image, out / "brats" / "1_diseased" / f"{name}_z{z:03d}.png")
            counts["diseased"] += 1
            healthy = mirror_healthy_half(image, lesion, centre)
            if healthy is not None:
                save(healthy, out / "brats" / "0_healthy" / f"{name}_z{z:03d}m.png")
                counts["mirrored"] += 1
        else:
            save(image, out / "brats" / "0_healthy" / f"{name}_z{z:03d}.png")
            counts["healthy"] += 1
    images, labels = read_medmnist(pneumonia_npz)["train"]
    for i in np.nonzero(labels.reshape(-1) == 0)[0]:
        with atomic_path(out / "chest" / "normal" / f"train_{i:05d}.png") as tmp:
            write_png(tmp, images[i])
        counts["chest_normal"] += 1
    return counts


# ------------------------------------------------------------------------------------------- the methods
def partial_grid(schedule, level: float, steps: int) -> TimeGrid:
    """Decreasing grid of at most ``steps`` integer times from ``level`` down to 0 (then clean): the part of the
    chain that Wolleb's encoding/decoding and AnoDDPM's partial diffusion visit (t = 0 included, as in their code)."""
    if not 0 < level <= schedule.t_max:
        raise MeddiffError(f"noise level {level} must be in (0, {schedule.t_max:g}] (the schedule's time range)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MeddiffError(f"steps={steps!r} must be an integer >= 1")
    times = np.unique(np.round(np.linspace(level, 0, steps)))[::-1]
    return TimeGrid.from_times(schedule, times.copy())


def _read_training_noise(checkpoint: Path) -> dict | None:
    """diffusion.noise of the config a checkpoint was trained with (shipped folder or run directory), or None."""
    import yaml

    for config in (checkpoint / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if config.is_file():
            return (yaml.safe_load(config.read_text()).get("diffusion") or {}).get("noise")
    return None


@dataclass
class Detector:
    """A loaded anomaly method: ``heal(x)`` maps model-space images (B, C, h, w) to their healthy counterparts."""

    method: str
    model: torch.nn.Module | None = None
    meta: dict = field(default_factory=dict)
    classifier: torch.nn.Module | None = None
    noise_level: float = 500.0
    guidance_scale: float = 100.0
    steps: int = 25
    noise: dict | None = None
    seed: int = 0
    device: str = "cpu"
    map_channels: tuple[int, ...] | None = None   # channels summed in the anomaly map (None: all)
    residual: str = "abs"                           # "abs": |x - x_h|; "positive": max(x - x_h, 0)
    samples: int = 1                                # AnoDDPM: reconstructions per input, residuals averaged

    @property
    def channels(self) -> int | None:
        return None if self.model is None else int(self.meta["channels"])

    @property
    def image_size(self) -> tuple[int, ...] | None:
        return None if self.model is None else tuple(int(s) for s in self.meta["image_size"])

    def _cond(self, batch: int, label: int) -> dict:
        if not self.meta.get("num_classes"):
            return {}
        from meddiff.nets import CLASS_LABELS

        return {CLASS_LABELS: torch.full((batch,), label, dtype=torch.long, device=self.device)}

    @torch.no_grad()
    def heal(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Healthy reconstruction of x (B, C, *image_size) in model space [-1, 1]."""
        if self.method == "autoencoder":
            return self.model(x, torch.zeros(len(x), device=x.device))
        schedule = make_schedule(self.meta["schedule"])
        denoiser = ModelDenoiser(self.model, schedule, self.meta["prediction"])
        if self.method == "wolleb":   # null class = the unconditional model
            return wolleb_heal(denoiser, self.classifier, schedule, x, self.noise_level, self.guidance_scale,
                               self.steps, cond=self._cond(len(x), int(self.meta.get("num_classes") or 0)))
        return anoddpm_heal(denoiser, schedule, x, self.noise_level, self.steps, noise=self.noise,
                            generator=generator, cond=self._cond(len(x), HEALTHY))


def residual_map(x: Tensor, healthy: Tensor, channels: Sequence[int] | None = None, residual: str = "abs") -> Tensor:
    """Anomaly map (B, 1, ...) of inputs x and their healthy reconstructions (B, C, ...): |x - x_h| (``"abs"``,
    Wolleb et al.) or max(x - x_h, 0) (``"positive"``: only tissue brighter than its healthy counterpart, e.g.
    tumour and oedema in FLAIR), summed over ``channels`` (None: all)."""
    check_choice("residual", residual, RESIDUALS)
    diff = x - healthy
    if channels is not None:
        diff = diff[:, list(channels)]
    diff = diff.abs() if residual == "abs" else diff.clamp(min=0)
    return diff.sum(1, keepdim=True)


def wolleb_heal(denoiser, classifier, schedule, x: Tensor, level: float, scale: float, steps: int, *,
                cond: dict | None = None) -> Tensor:
    """Wolleb et al. 2022, Alg. 1: deterministic DDIM encoding of x (B, C, ...) to time ``level`` (L), then DDIM
    decoding with classifier guidance of scale s towards label HEALTHY."""
    grid = partial_grid(schedule, level, steps)
    x_level = invert_ddim(denoiser, x, grid, cond=cond)
    guide = ClassifierGuidance(classifier, schedule, torch.full((len(x),), HEALTHY), scale)
    return sample_ddim(denoiser, x_level, grid, hook=guide, cond=cond)


def anoddpm_heal(denoiser, schedule, x: Tensor, level: float, steps: int, *, noise: dict | None = None,
                 generator: torch.Generator | None = None, cond: dict | None = None) -> Tensor:
    """AnoDDPM (Wyatt et al. 2022, Alg. 2): partial diffusion x_t = alpha x + sigma z to t_lambda = ``level`` with
    z simplex (``noise`` config) or Gaussian (None) noise, then ancestral DDPM steps back to 0 with the same noise."""
    grid = partial_grid(schedule, level, steps)
    noise_fn = make_noise(noise)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(grid.times[0]))))
    x_t = alpha * x + sigma * noise_fn(tuple(x.shape), generator).to(x.device, x.dtype)
    return sample_ddpm(denoiser, x_t, grid, generator=generator, noise_fn=noise_fn if noise else None, cond=cond)


def load_detector(method: str, checkpoint: str | Path | None = None, classifier: str | Path | None = None, *,
                  noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
                  seed: int = 0, device: str = "cpu", map_contrasts: Sequence[str | int] | None = None,
                  residual: str = "abs", samples: int = 1) -> Detector:
    """Load a method's networks (shipped BraTS models when ``checkpoint``/``classifier`` are None).

    Defaults follow the papers: Wolleb L = 500, s = 100; AnoDDPM t_lambda = 250 (of 1000); ``steps`` grid points;
    the map sums |x - x_h| over all channels. ``map_contrasts``: contrast names of the model's BraTS convention
    (e.g. ["flair"]) or channel indices; ``residual`` "abs" / "positive"; ``samples`` K > 1 for AnoDDPM only.
    """
    check_choice("method", method, METHODS)
    check_choice("residual", residual, RESIDUALS)
    if int(samples) < 1:
        raise MeddiffError(f"--samples must be at least 1, got {samples}")
    if int(samples) > 1 and method not in STOCHASTIC_METHODS:
        raise MeddiffError(f"--samples {samples}: only the stochastic AnoDDPM methods draw several reconstructions; "
                           f"--method {method} is deterministic (leave --samples at 1)")
    if method == "intensity":
        if map_contrasts is not None or residual != "abs":
            raise MeddiffError("--map-contrasts / --residual do not apply to --method intensity (it reads the "
                               "FLAIR z-score directly)")
        return Detector(method)
    from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint

    default, default_classifier = DEFAULT_MODELS[method]
    path = resolve_checkpoint(checkpoint or default)
    model, meta = load_checkpoint(path, device=device)
    expected = "autoencoder" if method == "autoencoder" else "unet"
    if meta["network"].get("kind") != expected:
        raise MeddiffError(f"--method {method} needs a {expected} checkpoint, but {path} holds a "
                           f"{meta['network'].get('kind')} ({meta.get('task')})")
    detector = Detector(method, model, meta, seed=seed, device=device,
                        noise_level=float(noise_level if noise_level is not None else (500 if method == "wolleb" else 250)),
                        guidance_scale=float(100.0 if guidance_scale is None else guidance_scale),
                        steps=int(steps or 25), residual=residual, samples=int(samples),
                        map_channels=contrast_indices(map_contrasts, int(meta["channels"])))
    if method in STOCHASTIC_METHODS:
        noise = _read_training_noise(path)
        simplex = bool(noise) and noise.get("kind") == "simplex"
        if (method == "anoddpm") != simplex:
            trained = "simplex" if simplex else "Gaussian"
            raise MeddiffError(f"{path} was trained with {trained} noise; use --method "
                               f"{'anoddpm' if simplex else 'anoddpm-gaussian'} with it (AnoDDPM samples with the "
                               "noise the model was trained on)")
        detector.noise = noise if simplex else None
    if method == "wolleb":
        cpath = resolve_checkpoint(classifier or default_classifier)
        detector.classifier, cmeta = load_checkpoint(cpath, device=device)
        if cmeta.get("task") != "classifier":
            raise MeddiffError(f"--classifier {cpath} is not a noise-aware classifier (task {cmeta.get('task')!r})")
        if cmeta["channels"] != meta["channels"] or list(cmeta["image_size"]) != list(meta["image_size"]):
            raise MeddiffError(f"classifier {cpath} ({cmeta['channels']} x {cmeta['image_size']}) does not match the "
                               f"diffusion model {path} ({meta['channels']} x {meta['image_size']})")
    return detector


def contrast_indices(contrasts: Sequence[str | int] | None, channels: int) -> tuple[int, ...] | None:
    """Channel indices of ``contrasts`` (names of the BraTS convention for ``channels`` or indices); None: all."""
    if contrasts is None:
        return None
    names = CONTRASTS_BY_CHANNELS.get(channels, ())
    out = []
    for c in contrasts:
        if isinstance(c, int) or str(c).isdigit():
            index = int(c)
        elif str(c).lower() in names:
            index = names.index(str(c).lower())
        else:
            raise MeddiffError(f"--map-contrasts {c!r}: the checkpoint's {channels} channel(s) are "
                               f"{', '.join(names) if names else 'unnamed'}; give one of those or a channel index")
        if not 0 <= index < channels:
            raise MeddiffError(f"--map-contrasts {c!r}: channel index out of range for a {channels}-channel model")
        out.append(index)
    if not out:
        raise MeddiffError("--map-contrasts is empty: name at least one contrast (or leave it out for all)")
    return tuple(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------- maps, post-processing
@dataclass
class Result:
    """Per input: anomaly map (*spatial), healthy reconstruction (C, *spatial) in model space, segmentation (*spatial)
    uint8, image-level score(s) (one per slice for volumes), and the brain mask (*spatial)."""

    anomaly: np.ndarray
    healthy: np.ndarray
    segmentation: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    seconds_per_slice: float = 0.0


def median_filter(maps: np.ndarray, size: int) -> np.ndarray:
    """Median filter over the last two axes of (..., H, W) with a size x size window (0 or 1: unchanged)."""
    if size <= 1:
        return maps
    from scipy.ndimage import median_filter as scipy_median

    return scipy_median(maps, size=(1,) * (maps.ndim - 2) + (size, size), mode="nearest")


def connected_components(segmentation: np.ndarray, min_size: int = 0) -> tuple[np.ndarray, int]:
    """(segmentation without components smaller than ``min_size`` voxels, number of components kept);
    8-connected in 2D, 26-connected in 3D."""
    from scipy.ndimage import label

    labels, count = label(segmentation, structure=np.ones((3,) * segmentation.ndim))
    if count == 0:
        return segmentation.astype(np.uint8), 0
    sizes = np.bincount(labels.reshape(-1))[1:]
    keep = np.r_[False, sizes >= max(min_size, 1)]
    return keep[labels].astype(np.uint8), int(keep.sum())


def image_score(anomaly: np.ndarray, mask: np.ndarray, top: float = 0.01) -> float:
    """Image-level anomaly score: mean of the top ``top`` fraction of map values inside the mask (0 if empty)."""
    values = anomaly[mask]
    if values.size == 0:
        return 0.0
    k = max(1, int(math.ceil(top * values.size)))
    return float(np.sort(values)[-k:].mean())


def intensity_map(image: np.ndarray, mask: np.ndarray, channel: int = -1) -> np.ndarray:
    """Meissen et al. 2021 baseline: z-scored intensity of ``channel`` (FLAIR) over the whole input (volume, or stack
    of slices of one subject) inside the brain mask; 0 outside. image (C, *spatial), mask (*spatial)."""
    values = image[channel][mask].astype(np.float64)
    if values.size < 2:
        return np.zeros(mask.shape, np.float32)
    z = (image[channel] - values.mean()) / max(values.std(), 1e-12)
    return np.where(mask, z, 0.0).astype(np.float32)


def pick_threshold(maps: np.ndarray, masks: np.ndarray, how: str = "otsu", value: float | None = None,
                    healthy_maps: np.ndarray | None = None) -> float:
    """Threshold for binarising anomaly maps: "otsu" on the in-mask values, "percentile" = the ``value``-th
    percentile (default 99) of healthy maps' in-mask values, or "fixed" = ``value``."""
    from meddiff.metrics.segmentation import otsu_threshold

    check_choice("threshold", how, THRESHOLDS)
    if how == "fixed":
        if value is None:
            raise MeddiffError("threshold 'fixed' needs a value (--threshold-value)")
        return float(value)
    if how == "percentile":
        if healthy_maps is None:
            raise MeddiffError("threshold 'percentile' needs anomaly maps of healthy images (--healthy PATH)")
        return float(np.percentile(np.concatenate([m.reshape(-1) for m in healthy_maps]), 99.0 if value is None else value))
    return otsu_threshold(maps[masks])


def auto_median(shape: Sequence[int]) -> int:
    """Median window for a slice of ``shape`` (H, W): 5 px per 240 px (5 mm on 1 mm BraTS), odd, 1 = none."""
    return max(1, int(round(5 * min(shape) / 240)) | 1)


def brain_masks(slices: np.ndarray, mr: bool = True) -> np.ndarray:
    """Masks (S, H, W) of slices (S, C, H, W): the brain of skull-stripped MR, everything for 8-bit images."""
    if not mr:
        return np.ones((len(slices),) + slices.shape[-2:], bool)
    return np.stack([foreground_mask(s) for s in slices])


def model_inputs(slices: np.ndarray, masks: np.ndarray, mr: bool = True) -> np.ndarray:
    """Raw slices (S, C, H, W) -> model space [-1, 1] at their own size: ``normalise_mr`` per slice, or x / 127.5 - 1."""
    return np.stack([normalise_mr(s, m) if mr else s / 127.5 - 1 for s, m in zip(slices, masks)])


def filter_maps(maps: np.ndarray, masks: np.ndarray, median: int | None = None) -> np.ndarray:
    """Post-processing every map gets: median filter (None: ``auto_median``), zero outside the mask. (S, H, W)."""
    median = auto_median(masks.shape[-2:]) if median is None else median
    return np.where(masks, median_filter(np.asarray(maps, np.float32), median), 0.0).astype(np.float32)


def detect_array(detector: Detector, image: np.ndarray, *, mr: bool = True, median: int | None = None,
                 batch: int = 16, generator: torch.Generator | None = None, progress: str | None = None) -> Result:
    """Anomaly map of one input ``image`` (C, H, W) or a volume (C, H, W, Z) sliced along the last axis.

    ``mr``: skull-stripped MR (per-slice robust normalisation, brain mask = any contrast > 0); else an 8-bit image
    (x / 127.5 - 1, mask everywhere). Maps and reconstructions are resized back to the input's shape; the
    segmentation is left to ``segment``. ``median``: filter size in pixels (None: ``auto_median``). The map is the
    detector's ``residual_map`` at the model's size, resized; the reconstruction is the mean of its K draws.
    ``progress``: a label to show a progress bar (slices, s/slice, ETA) on stderr, None for none.
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
        keep = np.nonzero(masks.reshape(len(masks), -1).mean(1) >= (0.01 if mr else 0))[0]
        anomaly = np.zeros(masks.shape, np.float32)
        healthy = np.array(model_in, copy=True)
        from tqdm import tqdm

        start = time.perf_counter()
        bar = tqdm(total=len(keep), desc=progress, unit="slice", disable=progress is None, leave=False)
        for i in range(0, len(keep), batch):
            idx = keep[i:i + batch]
            full = torch.from_numpy(model_in[idx])
            x = to_model_size(full, detector.image_size).to(detector.device)
            recs = [detector.heal(x, generator).float().cpu().clamp(-1, 1) for _ in range(detector.samples)]
            diff = torch.stack([residual_map(x.cpu(), r, detector.map_channels, detector.residual)
                                for r in recs]).mean(0)                        # mean residual over K draws
            rec = torch.stack(recs).mean(0)
            size = tuple(full.shape[-2:])
            anomaly[idx] = F.interpolate(diff, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
            healthy[idx] = F.interpolate(rec, size=size, mode="bilinear", align_corners=False).numpy()
            bar.update(len(idx))
        bar.close()
        seconds = (time.perf_counter() - start) / max(len(keep), 1)
    anomaly = filter_maps(anomaly, masks, median)
    scores = np.array([image_score(a, m) for a, m in zip(anomaly, masks)])
    if volume:
        return Result(np.moveaxis(anomaly, 0, -1), np.moveaxis(healthy, 0, -1), np.zeros(image.shape[1:], np.uint8),
                      scores, np.moveaxis(masks, 0, -1), seconds)
    return Result(anomaly[0], healthy[0], np.zeros(image.shape[1:], np.uint8), scores, masks[0], seconds)


def segment(result: Result, threshold: float, min_size: int = 0) -> Result:
    """Binary segmentation: map >= threshold inside the mask, small connected components removed."""
    seg, _ = connected_components((result.anomaly >= threshold) & result.mask, min_size)
    result.segmentation = seg
    return result


def check_input(detector: Detector, shape: Sequence[int]) -> None:
    """Refuse an input the checkpoint was not trained for: channel count, or a size smaller than its training size
    or of another aspect ratio (another modality, e.g. a 28 x 28 X-ray given to a 48 x 48 BraTS model)."""
    channels, spatial = int(shape[0]), tuple(int(s) for s in shape[1:])
    if channels != detector.channels:
        contrasts = CONTRASTS_BY_CHANNELS.get(detector.channels)
        hint = f" (BraTS contrasts {', '.join(contrasts)}: give a case folder)" if contrasts and detector.channels > 1 else ""
        raise MeddiffError(f"the input has {channels} channel(s) but the checkpoint was trained on {detector.channels}"
                           f"{hint}; use a checkpoint for this modality")
    size = detector.image_size
    if any(s < m for s, m in zip(spatial, size)) or abs(math.log((spatial[0] / spatial[1]) / (size[0] / size[1]))) > 0.3:
        raise MeddiffError(f"the input is {spatial[0]} x {spatial[1]} but the checkpoint was trained on "
                           f"{size[0]} x {size[1]} images (inputs must be at least that large, same aspect ratio); "
                           "is it another modality than the checkpoint's?")


# ------------------------------------------------------------------------------------------- inputs and outputs
@dataclass
class Input:
    """One input: image (C, H, W) or volume (C, H, W, Z) as read, whether it is MR, and its NIfTI affine."""

    name: str
    image: np.ndarray
    mr: bool
    affine: np.ndarray | None = None


def _contrasts_for(channels: int | None) -> tuple[str, ...]:
    if channels is None:          # the intensity baseline reads FLAIR only
        return ("flair",)
    if channels not in CONTRASTS_BY_CHANNELS:
        raise MeddiffError(f"no BraTS contrast convention for a {channels}-channel model "
                           f"(known: {sorted(CONTRASTS_BY_CHANNELS)} channels)")
    return CONTRASTS_BY_CHANNELS[channels]


def read_case(files: dict[str, Path], name: str, channels: int | None) -> Input:
    """Stack a BraTS case's contrasts in the model's channel order; missing contrasts or shapes that differ raise."""
    from meddiff.data import read_image

    contrasts = _contrasts_for(channels)
    missing = [c for c in contrasts if c not in files]
    if missing:
        raise MeddiffError(f"case {name}: contrast(s) {', '.join(missing)} missing (found "
                           f"{', '.join(sorted(files)) or 'none'}); the checkpoint needs {', '.join(contrasts)} "
                           f"as <case>_<contrast>.nii.gz")
    arrays, metas = zip(*(read_image(files[c], expect_ndim=3) for c in contrasts))
    shapes = {c: a.shape for c, a in zip(contrasts, arrays)}
    if len(set(shapes.values())) > 1:
        raise MeddiffError(f"case {name}: contrasts differ in shape ({', '.join(f'{c} {s}' for c, s in shapes.items())}); "
                           "co-register and resample them to one grid first")
    return Input(name, np.stack(arrays).astype(np.float32), True, metas[0].affine)


def read_inputs(path: str | Path, channels: int | None) -> list[Input]:
    """Inputs from a NIfTI volume, a BraTS case folder (or a folder of them), a 2D image, or a folder of images."""
    from meddiff.data import read_image
    from meddiff.data.datasets import FOLDER_IMAGE_SUFFIXES
    from meddiff.data.io import suffix_of
    from meddiff.data.volumes import discover_subjects

    path = Path(path)
    if not path.exists():
        raise MeddiffError(f"--input {path}: no such file or folder")
    if path.is_dir():
        cases = discover_subjects(path, strict=False)
        if cases:
            return [read_case(files, name, channels) for name, files in sorted(cases.items())]
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and suffix_of(p) in FOLDER_IMAGE_SUFFIXES)
        if not files:
            raise MeddiffError(f"--input {path}: no images (NIfTI, PNG, npy, DICOM) and no BraTS case files found")
        return [item for f in files for item in read_inputs(f, channels)]
    array, meta = read_image(path, expect_ndim=(2, 3))
    stem = path.name[: -len(suffix_of(path))] if suffix_of(path) else path.name
    mr = array.dtype != np.uint8
    if array.ndim == 2:
        return [Input(stem, array[None].astype(np.float32), mr)]
    if meta.channel_axis is not None:
        return [Input(stem, np.moveaxis(array, meta.channel_axis, 0).astype(np.float32), mr)]
    if array.shape[0] <= 4 and meta.format != "nifti":    # npy (C, H, W)
        return [Input(stem, array.astype(np.float32), mr)]
    return [Input(stem, array[None].astype(np.float32), mr, meta.affine)]   # a single-contrast volume


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

    from meddiff.data.io import write_nifti
    from meddiff.report.html import save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, array in (("anomaly", result.anomaly), ("healthy", result.healthy.astype(np.float32)),
                          ("segmentation", result.segmentation)):
        target = out_dir / f"{item.name}_{suffix}.npy"
        tmp = target.with_name(f".{target.name}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, target)
        written.append(target)
        if item.image.ndim == 4 and suffix != "healthy":
            written.append(write_nifti(out_dir / f"{item.name}_{suffix}.nii.gz", array, item.affine))
    if item.image.ndim == 4:   # the slice with the highest score
        z = int(np.argmax(result.scores))
        panel = _overlay(item.image[..., z], result.segmentation[..., z], result.anomaly[..., z])
    else:
        panel = _overlay(item.image, result.segmentation, result.anomaly)
    written.append(save_png(Image.fromarray(np.ascontiguousarray(panel)), out_dir / f"{item.name}_overlay.png"))
    return written


def run_detect(method: str, input_path: str | Path, out_dir: str | Path, *, checkpoint=None, classifier=None,
               noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
               threshold: str = "otsu", threshold_value: float | None = None, healthy: str | Path | None = None,
               median: int | None = None, min_size: int = 10, seed: int = 0, device: str = "cpu",
               map_contrasts: Sequence[str | int] | None = None, residual: str = "abs", samples: int = 1,
               progress: bool = False) -> list[dict]:
    """`meddiff detect`: maps, reconstructions, segmentations and overlays for every input, and scores.csv
    (one row per input, per slice for volumes). Returns the rows. ``progress``: a bar per input on stderr."""
    detector = load_detector(method, checkpoint, classifier, noise_level=noise_level, guidance_scale=guidance_scale,
                             steps=steps, seed=seed, device=device, map_contrasts=map_contrasts, residual=residual,
                             samples=samples)
    check_choice("threshold", threshold, THRESHOLDS)
    if threshold == "percentile" and healthy is None:
        raise MeddiffError("--threshold percentile needs --healthy PATH (healthy images for the reference maps)")
    generator = torch.Generator().manual_seed(seed)
    inputs = read_inputs(input_path, detector.channels)
    healthy_maps = None
    if threshold == "percentile":
        refs = read_inputs(healthy, detector.channels)
        healthy_maps = [(r := detect_array(detector, i.image, mr=i.mr, median=median, generator=generator)).anomaly[r.mask]
                        for i in refs]
    out = Path(out_dir)
    rows = []
    for number, item in enumerate(inputs, 1):
        result = detect_array(detector, item.image, mr=item.mr, median=median, generator=generator,
                              progress=f"{item.name} ({number}/{len(inputs)})" if progress else None)
        tau = pick_threshold(result.anomaly, result.mask, threshold, threshold_value, healthy_maps)
        segment(result, tau, min_size)
        write_outputs(item, result, out)
        for z, score in enumerate(result.scores):
            rows.append({"input": item.name, "slice": z if item.image.ndim == 4 else "", "score": float(score),
                         "threshold": tau})
    target = out / "scores.csv"
    tmp = target.with_name(".scores.csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["input", "slice", "score", "threshold"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, target)
    return rows


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class Subject:
    """Evaluation stack of one subject: raw images (C, H, W, S) in the model's contrast order, pixel labels
    (H, W, S) or None, and slice labels (S,) (default: the slice has a labelled pixel)."""

    name: str
    image: np.ndarray
    seg: np.ndarray | None
    mr: bool = True
    slice_labels: np.ndarray | None = None

    def labels_per_slice(self) -> np.ndarray:
        if self.slice_labels is not None:
            return np.asarray(self.slice_labels, bool)
        return self.seg.reshape(-1, self.seg.shape[-1]).any(0)


def brats_npz_subjects(path: str | Path, channels: int = 3) -> list[Subject]:
    """Subjects of a BraTS slice npz (``images`` (N, 4, H, W) with ``channels`` names, ``seg``, ``subject``) as
    stacks; slices are transposed to the NIfTI (x, y) order the models were trained in."""
    from meddiff.data.io import load_npz

    data = load_npz(path)
    names = [str(c) for c in data["channels"]]
    index = [names.index(c) for c in _contrasts_for(channels)]
    out = []
    for subject in dict.fromkeys(str(s) for s in data["subject"]):
        rows = [i for i, s in enumerate(data["subject"]) if str(s) == subject]
        image = np.stack([data["images"][i][index].transpose(0, 2, 1) for i in rows], axis=-1)
        seg = np.stack([data["seg"][i].T > 0 for i in rows], axis=-1)
        out.append(Subject(subject, image.astype(np.float32), seg))
    return out


def brats_case_subject(folder: str | Path, channels: int = 3, slices: Sequence[int] | None = None) -> Subject:
    """A BraTS case folder as an evaluation stack (all slices, or the given axial ``slices``)."""
    from meddiff.data import read_image
    from meddiff.data.volumes import discover_subjects

    (name, files), = discover_subjects(folder).items()
    item = read_case(files, name, channels)
    seg = read_image(files["seg"], expect_ndim=3)[0] > 0
    if slices is not None:
        return Subject(name, item.image[..., list(slices)], seg[..., list(slices)])
    return Subject(name, item.image, seg)


def evaluate(detector: Detector, subjects: Sequence[Subject], *, median: int | None = None, min_size: int = 10,
             seed: int = 0) -> dict:
    """Pixel-level metrics inside the brain mask over all subjects (AUROC, AUPRC, best Dice, Dice at the Otsu
    threshold of each subject's maps), image-level AUROC over slices (when both classes occur), seconds per slice."""
    from meddiff.metrics.segmentation import auroc, detection_metrics, dice

    generator = torch.Generator().manual_seed(seed)
    maps, labels, predictions, slice_scores, slice_labels, seconds = [], [], [], [], [], []
    for subject in subjects:
        result = detect_array(detector, subject.image, mr=subject.mr, median=median, generator=generator)
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


def pneumonia_subjects(path: str | Path, split: str = "val", per_class: int = 100, seed: int = 0,
                       development: bool = False) -> list[Subject]:
    """``per_class`` normal and pneumonia images of a PneumoniaMNIST split (random, seeded) as one 8-bit stack
    (no pixel labels: image-level evaluation only). ``development``: ``per_class`` more of each class drawn from the
    images the default draw leaves out, disjoint from it, for choosing settings without touching the evaluation set."""
    from meddiff.data import read_medmnist

    images, labels = read_medmnist(path)[split]
    labels = labels.reshape(-1)
    rng = np.random.default_rng(seed)
    pick = [rng.choice(np.nonzero(labels == c)[0], per_class, replace=False) for c in (0, 1)]
    if development:
        left = [np.setdiff1d(np.nonzero(labels == c)[0], chosen) for c, chosen in zip((0, 1), pick)]
        if min(len(v) for v in left) < per_class:
            raise MeddiffError(f"{path} {split}: fewer than {per_class} images per class left for a development set")
        pick = [rng.choice(v, per_class, replace=False) for v in left]
    pick = np.concatenate(pick)
    stack = np.moveaxis(images[pick][:, None].astype(np.uint8), 0, -1)       # (1, H, W, N)
    name = "pneumoniamnist_" + split + ("_development" if development else "")
    return [Subject(name, stack, None, mr=False, slice_labels=labels[pick] == 1)]


EVAL_SETS = ("brats_unseen", "brats_seen", "chest")


def run_evaluation(methods: Sequence[str] = METHODS, *, brats_test: str | Path | None = None,
                   brats_case: str | Path | None = None, pneumonia: str | Path | None = None,
                   seen_slices: Sequence[int] = tuple(range(20, 121, 5)), chest_per_class: int = 50,
                   noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
                   seed: int = 0, map_contrasts: Sequence[str | int] | None = None, residual: str = "abs",
                   samples: int = 1, checkpoint: str | Path | None = None, classifier: str | Path | None = None,
                   log=print) -> dict:
    """Every method on: "brats_unseen" (``brats_test`` npz: subjects not used in training; pixel metrics),
    "brats_seen" (``seen_slices`` of the training case ``brats_case``: image-level AUROC, flagged as seen), and
    "chest" (``chest_per_class`` normal + pneumonia held-out PneumoniaMNIST val images: image-level AUROC).
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
                "samples": samples if method in STOCHASTIC_METHODS else 1}
            detector = load_detector(method, model, clf, noise_level=noise_level,
                                     guidance_scale=guidance_scale, steps=steps, seed=seed, **options)
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


# ------------------------------------------------------------------------------------------- demo report
def report_section(out_dir: str | Path, *, methods: Sequence[str] = ("intensity", "autoencoder", "anoddpm",
                                                                    "anoddpm-gaussian", "wolleb", "anoddpm tuned"),
                   brats_slices: str | Path | None = None, seed: int = 0, log=print) -> dict:
    """Demo-report section: one BraTS slice per method as input FLAIR | healthy reconstruction (FLAIR) | anomaly
    map | ground truth, and its pixel metrics, on ``brats_slices`` (npz in the layout of the shipped
    `assets/brats2020_slices`, the default: BraTS 2020 subjects the shipped models never saw). "anoddpm tuned" is
    AnoDDPM with ``TUNED_MR_ANODDPM``; the other methods use the papers' maps."""
    from PIL import Image

    from meddiff.data.assets import asset_path
    from meddiff.metrics.segmentation import auroc, best_dice
    from meddiff.report.html import labelled_row, save_png, to_uint8

    path = Path(brats_slices) if brats_slices else asset_path("brats2020_slices/brats_slices.npz")
    subject = brats_npz_subjects(path)[0]
    image, seg, where = subject.image[..., :1], subject.seg[..., :1], f"{subject.name} (not used in training)"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = [], []
    for method in methods:
        start = time.perf_counter()
        detector = (load_detector("anoddpm", seed=seed, **TUNED_MR_ANODDPM) if method == "anoddpm tuned"
                    else load_detector(method, seed=seed))
        result = detect_array(detector, image, generator=torch.Generator().manual_seed(seed))
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
    figure = save_png(canvas, out / "anomaly.png")
    text = (f"Unsupervised tumour detection on {where}, one slice; models are the shipped BraTS ones (48 x 48, "
            "trained on one subject). 'intensity' is the z-scored FLAIR baseline (Meissen et al. 2021): the "
            "diffusion methods must beat it to be worth using. 'anoddpm tuned' reads the positive FLAIR residual "
            "averaged over 16 reconstructions from t_lambda = 30 (chosen on development slices): its 'healthy' image "
            "(the mean of the 16) only dims the tumour, and the map reads how consistently the model pulls "
            "bright tissue towards healthy intensity. The other rows use the papers' maps (sum over contrasts of "
            "|x - x_h|). Metrics inside the brain mask of this slice only; "
            "benchmarks/README.md has the full evaluation.")
    return {"title": "Anomaly detection (Wolleb, AnoDDPM, autoencoder, FLAIR baseline)", "text": text,
            "table": table, "figure": figure}
