"""Training of the segmenters from a config (``configs/segmentation.yaml``): labelled slices of the first N train
subjects, the label-efficient method on a prior's features, the supervised UNet for a wall-clock budget. Shared by
``scripts/train_segmentation.py`` (the shipped model) and ``benchmarks/segmentation.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from meddiff.errors import MeddiffError
from meddiff.files import read_yaml_mapping
from meddiff.tasks.segment.data import SlicePrep, label_slices, load_labelled, load_split, volume_slices
from meddiff.tasks.segment.labels import NUM_CLASSES

CONFIG_KEYS = {"prior", "data", "features", "classifier", "unet"}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    cfg = read_yaml_mapping(path, "segmentation config")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise MeddiffError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    return cfg


@dataclass
class LabelledSlices:
    """Training slices of one subject: images (S, 1, H, W) in model space, labels (S, H, W)."""

    subject: str
    images: torch.Tensor
    labels: torch.Tensor


def labelled_slices(cfg: dict, subjects: list[str], prep: SlicePrep) -> list[LabelledSlices]:
    """Every ``slice_stride``-th axial slice with >= 1 % brain of each subject (the rest is left out for speed)."""
    out = []
    for s in subjects:
        sub = load_labelled(cfg["data"]["path"], s)
        idx = sub.brain_slices(prep)[:: int(cfg["data"]["slice_stride"])]
        out.append(LabelledSlices(s, torch.from_numpy(volume_slices(sub.image, prep, idx, what=s)),
                                  torch.from_numpy(label_slices(sub.labels, prep, idx))))
    return out


def train_subjects(cfg: dict, n: int) -> list[str]:
    """The first ``n`` subjects of the split's train list (1, 5 and 20 are nested)."""
    train = load_split(cfg["data"]["split_file"])["train"]
    if not 1 <= n <= len(train):
        raise MeddiffError(f"--labelled {n}: must be 1..{len(train)} (train subjects of the split)")
    return train[:n]


@dataclass
class PixelSet:
    """Sampled training pixels of one subject: features (N, C) float16, labels (N,), feature seconds."""

    features: torch.Tensor
    labels: torch.Tensor
    seconds: float


def subject_pixels(extractor, data: LabelledSlices, cfg: dict, seed: int) -> PixelSet:
    from meddiff.tasks.segment.methods import collect_pixels

    start = time.perf_counter()
    f, y = collect_pixels(extractor, data.images, data.labels, int(cfg["data"]["pixels_per_slice"]), seed=seed)
    return PixelSet(f, y, time.perf_counter() - start)


def fit_classifier(pixels: list[PixelSet], cfg: dict, seed: int = 0, log=None):
    """The pixel ensemble on the union of ``pixels`` -> (ensemble, seconds of the fit)."""
    from meddiff.tasks.segment.methods import fit_pixel_ensemble

    c = cfg["classifier"]
    start = time.perf_counter()
    ens = fit_pixel_ensemble(torch.cat([p.features for p in pixels]), torch.cat([p.labels for p in pixels]),
                             NUM_CLASSES, hidden=c["hidden"], members=int(c["members"]), steps=int(c["steps"]),
                             batch=int(c["batch"]), lr=float(c["lr"]), seed=seed, log=log)
    return ens, time.perf_counter() - start


def fit_supervised(data: list[LabelledSlices], cfg: dict, seconds: float, seed: int = 0, log=None,
                   max_steps: int | None = None, clock: str = "wall", bf16: bool = False):
    """The MONAI UNet on the slices of ``data`` for ``seconds`` on the ``clock`` (or ``max_steps``) -> (network,
    steps)."""
    from meddiff.tasks.segment.methods import fit_unet

    u = cfg["unet"]
    images = torch.cat([d.images for d in data])
    labels = torch.cat([d.labels for d in data])
    return fit_unet(images, labels, NUM_CLASSES, seconds=seconds, config=u.get("network"), batch=int(u["batch"]),
                    lr=float(u["lr"]), seed=seed, log=log, max_steps=max_steps, clock=clock, bf16=bf16)


def feature_meta(cfg: dict, prior_meta: dict, prep: SlicePrep, ensemble, subjects: list[str], extra: dict) -> dict:
    """meta.json of a diffusion-feature segmentation checkpoint."""
    from meddiff.tasks.segment.pipeline import prior_fingerprint

    return {"method": "diffusion_features", "num_classes": NUM_CLASSES, "image_size": list(prep.image_size),
            "preprocessing": prep.to_dict(), "prior": prior_fingerprint(cfg["prior"]),
            "features": {k: cfg["features"][k] for k in ("blocks", "timesteps", "seed")},
            "classifier": ensemble.config(), "training": {"subjects": subjects, "config": cfg, **extra}}


def unet_meta(cfg: dict, prep: SlicePrep, subjects: list[str], extra: dict) -> dict:
    """meta.json of a supervised-UNet segmentation checkpoint (no prior: nothing to fingerprint)."""
    from meddiff.tasks.segment.methods import UNET_DEFAULTS

    return {"method": "unet", "num_classes": NUM_CLASSES, "image_size": list(prep.image_size),
            "preprocessing": prep.to_dict(), "unet": {**UNET_DEFAULTS, **(cfg["unet"].get("network") or {})},
            "training": {"subjects": subjects, "config": cfg, **extra}}
