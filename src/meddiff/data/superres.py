"""Super-resolution training pairs (SR3, Saharia et al. 2021; CDM, Ho et al. 2021) and the one intensity mapping that
training and inference share.

Degradation: area averaging (the mean over scale x scale blocks: ``meddiff.physics.Downsampling``, the restoration
benchmark's default ``tasks.restore.degrade_sr``, restated here as a block mean because data sits below physics),
then bicubic upsampling back to the high-resolution grid
(Keys' cubic convolution, a = -0.75, ``torch.nn.functional.interpolate(..., align_corners=False)``, the "bicubic"
baseline of ``tasks.restore``).

Model space (``sr_condition``): intensities are divided by s = ``magnitude_scale`` of the LOW-resolution image (the
99.5th percentile of its pixels above 10 % of its max), which inference computes from its input alone, and mapped to
v = 2 x / s - 1 (zero = air = -1). The pair's target is the high-resolution slice on that same scale, the condition
the bicubic upsampling of the low-resolution image. ``SRPairs`` derives both from an unpaired slice dataset whose
images are magnitudes scaled with zero -> -1 (normalize mode "scale"): the slice's own scale cancels, since
``magnitude_scale`` is proportional to the intensities.

Residual target (``residual``; SRDiff, Li et al. 2022; VDSR, Kim et al. 2016): the item's "image" is
``residual_scale`` x (target - condition), the detail bicubic misses (std about 0.24 in model units at 4x on IXI,
hence a scale of 2); a model that outputs zero then reproduces bicubic, so a short training starts from the baseline.
Inference adds condition + output / residual_scale back (``tasks.restore.learned``).

Noise-conditioning augmentation (CDM, Ho et al. 2021, sec. 3.3): with ``noise_levels`` the condition gets Gaussian
noise of sd ``noise_levels[k]`` (model units) with k drawn uniformly from the dataset's own generator (seeded with
``seed``; like the slice augmentation, its state is not checkpointed, so a resumed run draws other noise), and the
item's "label" is k (a class-conditional model with ``num_classes = len(noise_levels)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from meddiff.data.datasets import COND_KEY, IMAGE_KEY, LABEL_KEY, register_dataset
from meddiff.data.transforms import magnitude_scale
from meddiff.data.volumes import SliceDataset
from meddiff.errors import MeddiffError


def check_sr_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise MeddiffError(f"scale={scale!r} must be an integer >= 2 (the super-resolution factor)")
    return scale


def area_downsample(x: Tensor, scale: int) -> Tensor:
    """(..., H, W) -> (..., H / scale, W / scale): the mean over scale x scale blocks (``physics.Downsampling.A``)."""
    scale = check_sr_scale(scale)
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise MeddiffError(f"scale {scale} does not divide the image size {h}x{w}; crop or pad it to a multiple")
    return x.reshape(*x.shape[:-2], h // scale, scale, w // scale, scale).mean(dim=(-3, -1))


def bicubic_upsample(y: Tensor, scale: int) -> Tensor:
    """(..., h, w) -> (..., scale h, scale w) by bicubic interpolation (pixel centres, align_corners=False)."""
    shape = y.shape
    out = F.interpolate(y.reshape(-1, 1, *shape[-2:]).float(), scale_factor=check_sr_scale(scale), mode="bicubic",
                        align_corners=False)
    return out.reshape(*shape[:-2], *out.shape[-2:])


def sr_condition(low: Tensor, scale: int) -> tuple[Tensor, float]:
    """Low-resolution magnitude image (h, w) -> (condition (1, scale h, scale w) = 2 bicubic(low) / s - 1, s) with
    s = ``magnitude_scale(low)``; a restored v maps back to intensities as x = s (v + 1) / 2."""
    low = torch.as_tensor(low).float()
    if low.ndim != 2:
        raise MeddiffError(f"sr_condition: expected one 2D low-resolution image, got shape {tuple(low.shape)}")
    s = magnitude_scale(low)
    return (2.0 / s) * bicubic_upsample(low, scale)[None] - 1.0, s


class SRPairs(Dataset):
    """Super-resolution pairs from a dataset of single-channel magnitude slices in model space (zero = -1):
    {"image": the slice (1, H, W) on the low-resolution image's scale (``residual``: residual_scale x (slice -
    condition)), "cond_image": bicubic(area-downsampled)
    (1, H, W) on that scale (+ augmentation noise), "label": noise level index (with ``noise_levels``)}.
    H and W must be divisible by ``scale``."""

    def __init__(self, base: Dataset, scale: int = 4, noise_levels: Sequence[float] | None = None,
                 seed: int = 0, residual: bool = False, residual_scale: float = 1.0) -> None:
        self.base, self.scale = base, check_sr_scale(scale)
        if isinstance(residual_scale, bool) or not isinstance(residual_scale, (int, float)) or not residual_scale > 0:
            raise MeddiffError(f"residual_scale={residual_scale!r} must be a positive number")
        self.residual, self.residual_scale = bool(residual), float(residual_scale)
        shape = tuple(getattr(base, "image_shape", ()))
        if shape and (shape[0] != 1 or len(shape) != 3):
            raise MeddiffError(f"SR pairs need single-channel 2D slices (1, H, W); the dataset gives {shape}")
        if shape and (shape[1] % self.scale or shape[2] % self.scale):
            raise MeddiffError(f"scale {self.scale} does not divide the slice size {shape[1]}x{shape[2]}; set "
                               "pad_multiple to a multiple of the scale")
        if noise_levels is not None:
            levels = [float(v) for v in noise_levels]
            if not levels or any(not v >= 0 for v in levels):
                raise MeddiffError(f"noise_levels={list(noise_levels)!r} must be a non-empty list of sds >= 0")
            noise_levels = levels
        self.noise_levels = noise_levels
        self.generator = torch.Generator().manual_seed(seed)
        self.image_shape = shape or tuple(self[0][IMAGE_KEY].shape)
        self.num_classes = len(noise_levels) if noise_levels else 0
        self.split_parts = getattr(base, "split_parts", None)

    def __len__(self) -> int:
        return len(self.base)

    def pair(self, v: Tensor) -> dict[str, Any]:
        """Slice v (1, H, W) (zero = -1) -> {"image", "cond_image"} on the low-resolution image's scale."""
        x = (v[0].float() + 1.0) / 2.0  # intensities over the slice's own scale
        cond, s = sr_condition(area_downsample(x, self.scale), self.scale)
        target = (2.0 / s) * x[None] - 1.0
        if self.residual:
            target = self.residual_scale * (target - cond)
        return {IMAGE_KEY: target, COND_KEY: cond}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.pair(self.base[index][IMAGE_KEY])
        if self.noise_levels:
            k = int(torch.randint(len(self.noise_levels), (), generator=self.generator))
            noise = torch.randn(item[COND_KEY].shape, generator=self.generator)
            item[COND_KEY] = item[COND_KEY] + self.noise_levels[k] * noise
            item[LABEL_KEY] = torch.tensor(k, dtype=torch.int64)
        return item


def sr_slice_dataset(path, split: str = "train", scale: int = 4, noise_levels: Sequence[float] | None = None,
                     seed: int = 0, residual: bool = False, residual_scale: float = 1.0, **options) -> SRPairs:
    """Dataset kind "sr_slices": ``SRPairs`` over a ``SliceDataset(path, split, **options)`` (one contrast,
    normalize mode "scale", ``pad_multiple`` a multiple of ``scale``)."""
    norm = options.get("normalize")
    mode = norm.get("mode") if isinstance(norm, dict) else norm
    if mode != "scale":
        raise MeddiffError(f"sr_slices: normalize must be {{mode: scale}} (zero intensity = -1), got {norm!r}")
    return SRPairs(SliceDataset(path, split=split, seed=seed, **options), scale, noise_levels, seed, residual,
                   residual_scale)


sr_slice_dataset.forwards_to = (SliceDataset,)  # type: ignore[attr-defined]
register_dataset("sr_slices", sr_slice_dataset)
