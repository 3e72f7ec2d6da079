"""Medical image transforms: CT windows, invertible intensity normalisation, resampling, orientation,
crop/pad to multiples of 2^k, slice extraction, contrast stacking and augmentations.

MONAI transforms do the work (ScaleIntensityRange, NormalizeIntensity, Spacing, Orientation, Resize,
DivisiblePad, CenterSpatialCrop, RandFlip, RandRotate, RandScaleIntensity, RandShiftIntensity); this module
wraps them in small configs whose statistics are kept so every normalisation can be undone
(back to HU or scanner intensities).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from meddiff.data.meta import ImageMeta
from meddiff.errors import MeddiffError, check_choice

# Named CT windows, (centre, width) in HU (Radiopaedia "windowing (CT)" values).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
NORM_MODES = ("fixed", "window", "minmax", "percentile", "scale", "zscore", "none")
SCALE_THRESHOLD = 0.1  # mode "scale": its percentile is taken over pixels above this fraction of the image max
OUTPUT_RANGES = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0)}


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _like(y: torch.Tensor, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Return ``y`` as the type of the input ``x`` (numpy in, numpy out), always a plain tensor."""
    y = y.as_tensor() if hasattr(y, "as_tensor") else y
    return y.numpy() if isinstance(x, np.ndarray) else y


def window_range(preset: str | None = None, center: float | None = None, width: float | None = None) -> tuple[float, float]:
    """(low, high) HU of a named window or of a custom centre/width."""
    if preset is not None:
        check_choice("window", preset, WINDOW_PRESETS)
        center, width = WINDOW_PRESETS[preset]
    if center is None or width is None:
        raise MeddiffError("window: give a preset name or both center and width (HU)")
    if width <= 0:
        raise MeddiffError(f"window width={width} must be positive")
    return center - width / 2.0, center + width / 2.0


def apply_window(x, preset: str | None = None, *, center: float | None = None, width: float | None = None,
                 out_range: tuple[float, float] = (-1.0, 1.0)):
    """Clip HU to a CT window and map it linearly to ``out_range`` (MONAI ScaleIntensityRange)."""
    from monai.transforms import ScaleIntensityRange

    lo, hi = window_range(preset, center, width)
    t = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=out_range[0], b_max=out_range[1], clip=True, dtype=torch.float32)
    return _like(t(_as_tensor(x).float()), x)


@dataclass
class NormConfig:
    """How intensities map to model space; ``mode`` one of NORM_MODES.

    fixed: [a_min, a_max] -> out range (e.g. 0..255 for uint8); window: CT window (preset or centre/width),
    clipped; minmax: per-image min/max; percentile: per-image [lower, upper] percentiles, clipped;
    scale: [0, the ``upper`` percentile of the pixels above SCALE_THRESHOLD x max] -> out range (a magnitude image
    divided by its bright-tissue level, zero stays zero: the MRI solvers' scale, ``magnitude_scale``; clipped only
    with ``clip``); zscore: (x - mean) / std, unbounded. ``foreground`` computes statistics on voxels > background
    only (MRI: ignore air).
    """

    mode: str = "minmax"
    out_range: str = "[-1,1]"
    a_min: float | None = None
    a_max: float | None = None
    window: str | None = None
    center: float | None = None
    width: float | None = None
    lower: float = 0.5
    upper: float = 99.5
    foreground: bool = False
    background: float = 0.0
    clip: bool = True

    def __post_init__(self) -> None:
        check_choice("normalize.mode", self.mode, NORM_MODES)
        check_choice("normalize.out_range", self.out_range, OUTPUT_RANGES)
        if self.mode == "fixed" and (self.a_min is None or self.a_max is None or self.a_max <= self.a_min):
            raise MeddiffError("normalize: mode 'fixed' needs a_min < a_max")
        if self.mode == "window":
            window_range(self.window, self.center, self.width)
        if not 0 <= self.lower < self.upper <= 100:
            raise MeddiffError(f"normalize: need 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | str | None) -> "NormConfig":
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            cfg = {"mode": cfg}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise MeddiffError(f"normalize: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def magnitude_scale(x, percentile: float = 99.5) -> float:
    """The ``percentile`` of the pixels of a magnitude image above SCALE_THRESHOLD x its max (1.0 for an all-zero
    image): one intensity scale for training slices (normalize mode "scale") and the MRI solvers' starting image."""
    v = _as_tensor(x).detach().reshape(-1).double().abs()
    top = float(v.max()) if v.numel() else 0.0
    if top <= 0:
        return 1.0
    fg = v[v > SCALE_THRESHOLD * top]
    if fg.numel() > 2**24:  # torch.quantile size limit
        fg = fg[torch.linspace(0, fg.numel() - 1, 2**24).long()]
    return float(torch.quantile(fg, percentile / 100.0)) or top


def _stats_mask(x: torch.Tensor, cfg: NormConfig) -> torch.Tensor:
    if not cfg.foreground:
        return x.reshape(-1)
    fg = x[x > cfg.background]
    return fg if fg.numel() else x.reshape(-1)


def normalize(x, cfg: NormConfig | dict | str | None = None):
    """Map intensities to model space -> (y, stats); ``denormalize(y, stats)`` undoes it.

    ``stats`` is a small dict (mode, a_min/a_max or mean/std, out range), JSON-friendly so it can travel
    with the sample or into a checkpoint's meta.json.
    """
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    cfg = cfg if isinstance(cfg, NormConfig) else NormConfig.from_dict(cfg)
    xt = _as_tensor(x).float()
    b_min, b_max = OUTPUT_RANGES[cfg.out_range]
    if cfg.mode == "none":
        return _like(xt, x), {"mode": "none"}
    if cfg.mode == "zscore":
        vals = _stats_mask(xt, cfg).double()
        mean, std = float(vals.mean()), float(vals.std()) if vals.numel() > 1 else 1.0
        std = std if std > 0 else 1.0
        y = NormalizeIntensity(subtrahend=mean, divisor=std, dtype=torch.float32)(xt)
        if cfg.foreground:
            y = torch.where(xt > cfg.background, y, torch.as_tensor((cfg.background - mean) / std, dtype=y.dtype))
        return _like(y, x), {"mode": "zscore", "mean": mean, "std": std}
    if cfg.mode == "fixed":
        lo, hi, clip = float(cfg.a_min), float(cfg.a_max), cfg.clip
    elif cfg.mode == "window":
        lo, hi = window_range(cfg.window, cfg.center, cfg.width)
        clip = True
    else:
        vals = _stats_mask(xt, cfg)
        if cfg.mode == "minmax":
            lo, hi, clip = float(vals.min()), float(vals.max()), cfg.clip
        elif cfg.mode == "scale":
            lo, hi, clip = 0.0, magnitude_scale(xt, cfg.upper), cfg.clip
        else:  # percentile
            q = torch.tensor([cfg.lower / 100.0, cfg.upper / 100.0], dtype=torch.float64)
            v = vals.double()
            if v.numel() > 2**24:  # torch.quantile size limit
                v = v[torch.linspace(0, v.numel() - 1, 2**24).long()]
            lo, hi = (float(t) for t in torch.quantile(v, q))
            clip = True
    if hi <= lo:  # constant image: map to the middle of the range, invertibly
        hi = lo + 1.0
    y = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=b_min, b_max=b_max, clip=clip, dtype=torch.float32)(xt)
    return _like(y, x), {"mode": cfg.mode, "a_min": lo, "a_max": hi, "b_min": b_min, "b_max": b_max}


def denormalize(y, stats: dict[str, Any]):
    """Inverse of `normalize` (values clipped by a window/percentile come back at the window edge)."""
    yt = _as_tensor(y).float()
    mode = stats.get("mode")
    if mode == "none":
        return _like(yt, y)
    if mode == "zscore":
        out = yt.double() * stats["std"] + stats["mean"]
    elif mode in ("fixed", "window", "minmax", "percentile"):
        scale = (stats["a_max"] - stats["a_min"]) / (stats["b_max"] - stats["b_min"])
        out = (yt.double() - stats["b_min"]) * scale + stats["a_min"]
    else:
        raise MeddiffError(f"denormalize: unknown stats mode {mode!r}; expected one of {NORM_MODES}")
    return _like(out.float(), y)


def default_norm_for(array: np.ndarray, meta: ImageMeta | None = None) -> NormConfig:
    """A sensible normalisation by dtype/modality: uint8 0..255, uint16 0..65535, CT -1024..3071 HU,
    everything else per-image 0.5-99.5 percentiles."""
    if array.dtype == np.uint8:
        return NormConfig(mode="fixed", a_min=0.0, a_max=255.0)
    if meta is not None and meta.units == "HU":
        return NormConfig(mode="fixed", a_min=-1024.0, a_max=3071.0, clip=True)
    if array.dtype == np.uint16 and meta is not None and meta.format in ("png", "tiff", "image"):
        return NormConfig(mode="fixed", a_min=0.0, a_max=65535.0)
    return NormConfig(mode="percentile", lower=0.5, upper=99.5)


# ------------------------------------------------------------------------------------------ geometry
def _meta_tensor(x: np.ndarray | torch.Tensor, meta: ImageMeta):
    from monai.data import MetaTensor

    affine = meta.affine if meta.affine is not None else np.diag(list(meta.spacing or (1.0,) * 3) + [1.0])
    return MetaTensor(_as_tensor(x).float(), affine=torch.as_tensor(affine, dtype=torch.float64))


def _check_channel_first(x, spatial_dims: int, what: str) -> None:
    if x.ndim != spatial_dims + 1:
        raise MeddiffError(f"{what}: expected a channel-first array (C, {'D, ' if spatial_dims == 3 else ''}H, W), "
                           f"got shape {tuple(x.shape)}")


def resample_to_spacing(x, meta: ImageMeta, spacing: Sequence[float], mode: str = "bilinear"):
    """Resample a channel-first volume (C, *spatial) to ``spacing`` mm (MONAI Spacing) -> (y, new meta)."""
    from monai.transforms import Spacing

    spatial = x.ndim - 1
    _check_channel_first(x, spatial, "resample_to_spacing")
    if len(spacing) != spatial:
        raise MeddiffError(f"resample_to_spacing: spacing {tuple(spacing)} needs {spatial} values for shape {tuple(x.shape)}")
    mt = _meta_tensor(x, meta)
    if spatial == 2 and mt.affine.shape[0] == 4:
        mt.affine = mt.affine[[0, 1, 3]][:, [0, 1, 3]]
    y = Spacing(pixdim=tuple(float(s) for s in spacing), mode=mode, padding_mode="border")(mt)
    new_aff = np.asarray(y.affine, dtype=np.float64)
    if spatial == 2:
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = new_aff[:2, :2], new_aff[:2, 2]
        new_aff = full
    new_meta = meta.replace(shape=tuple(y.shape), spacing=tuple(float(s) for s in spacing), affine=new_aff)
    return _like(y, x), new_meta


def resize(x, size: Sequence[int] | int, mode: str = "area"):
    """Resize a channel-first array (C, *spatial) to ``size`` (MONAI Resize; area averaging for shrinking)."""
    from monai.transforms import Resize

    spatial = x.ndim - 1
    size = (int(size),) * spatial if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != spatial:
        raise MeddiffError(f"resize: size {size} needs {spatial} values for shape {tuple(x.shape)}")
    y = Resize(spatial_size=size, mode=mode, anti_aliasing=False)(_as_tensor(x).float())
    return _like(y, x)


def to_canonical(x, meta: ImageMeta, axcodes: str = "RAS"):
    """Reorient a channel-first volume (C, D, H, W) to ``axcodes`` (MONAI Orientation) -> (y, new meta)."""
    from monai.transforms import Orientation

    _check_channel_first(x, 3, "to_canonical")
    if meta.affine is None:
        raise MeddiffError(f"{meta.path or 'image'}: no affine, so the orientation is unknown; cannot reorient")
    y = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(_meta_tensor(x, meta))
    aff = np.asarray(y.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))
    return _like(y, x), meta.replace(shape=tuple(y.shape), affine=aff, orientation=axcodes, spacing=spacing)


def fit_to_multiple(x, k: int, how: str = "pad", value: float | None = None):
    """Pad (MONAI DivisiblePad) or centre-crop each spatial size of (C, *spatial) to a multiple of 2**k,
    as U-Nets with k down-sampling levels need. Padding uses ``value`` (default: the array minimum)."""
    from monai.transforms import CenterSpatialCrop, DivisiblePad

    check_choice("how", how, ("pad", "crop"))
    m = 2 ** int(k)
    xt = _as_tensor(x)
    if how == "pad":
        fill = float(xt.min()) if value is None and xt.numel() else float(value or 0.0)
        y = DivisiblePad(k=m, mode="constant", value=fill)(xt)
    else:
        size = [max(m, (s // m) * m) for s in xt.shape[1:]]
        if any(s < m for s in xt.shape[1:]):
            raise MeddiffError(f"fit_to_multiple: shape {tuple(xt.shape)} is smaller than 2**{k}={m}; pad instead")
        y = CenterSpatialCrop(roi_size=size)(xt)
    return _like(y, x)


def foreground_fraction(slice_2d, threshold: float | None = None) -> float:
    """Fraction of pixels above ``threshold`` (default: min + 5% of the range)."""
    a = np.asarray(slice_2d, dtype=np.float64)
    if a.size == 0:
        return 0.0
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return 0.0
    thr = lo + 0.05 * (hi - lo) if threshold is None else threshold
    return float(np.mean(a > thr))


def extract_slices(volume, axis: int = -1, *, min_foreground: float = 0.0, threshold: float | None = None,
                   channel_first: bool = False) -> list[tuple[int, np.ndarray]]:
    """2D slices of a 3D volume (D, H, W) or (C, D, H, W) with ``channel_first``, cut along spatial ``axis``;
    slices whose foreground fraction is below ``min_foreground`` are dropped. Returns [(index, slice)],
    each slice (H, W) or (C, H, W)."""
    v = np.asarray(volume)
    spatial_ndim = v.ndim - (1 if channel_first else 0)
    if spatial_ndim != 3:
        raise MeddiffError(f"extract_slices: expected a 3D volume{' with channels' if channel_first else ''}, got shape {v.shape}")
    if not -3 <= axis <= 2:
        raise MeddiffError(f"extract_slices: axis={axis} must be one of 0, 1, 2 (or -3..-1)")
    ax = (axis % 3) + (1 if channel_first else 0)
    out = []
    for i in range(v.shape[ax]):
        s = np.take(v, i, axis=ax)
        ref = s[0] if channel_first else s
        if min_foreground > 0 and foreground_fraction(ref, threshold) < min_foreground:
            continue
        out.append((i, s))
    return out


def stack_contrasts(arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
    """Stack same-shape contrasts (e.g. BraTS t1, t1ce, t2, flair) as channels -> (C, *spatial)."""
    if not arrays:
        raise MeddiffError("stack_contrasts: no arrays given")
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        named = ", ".join(f"{n}: {tuple(a.shape)}" for n, a in zip(names or range(len(arrays)), arrays))
        raise MeddiffError(f"stack_contrasts: contrasts differ in shape ({named}); resample them to one grid first")
    return np.stack([np.asarray(a, dtype=np.float32) for a in arrays], axis=0)


# ------------------------------------------------------------------------------------------ augmentation
@dataclass
class AugmentConfig:
    """Random augmentations (MONAI): flips per spatial axis, small rotations (degrees), zoom by up to +-zoom_range
    per axis (anatomy of another size), gamma in gamma_range (another contrast), intensity scale/shift jitter."""

    flip_prob: float = 0.0
    flip_axes: tuple[int, ...] | None = None
    rotate_prob: float = 0.0
    rotate_degrees: float = 10.0
    scale_prob: float = 0.0
    scale_factor: float = 0.1
    shift_prob: float = 0.0
    shift_offset: float = 0.05
    zoom_prob: float = 0.0
    zoom_range: float = 0.1
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    extra: dict[str, Any] = field(default_factory=dict)
    PROBABILITIES = ("flip_prob", "rotate_prob", "scale_prob", "shift_prob", "zoom_prob", "gamma_prob")  # not a field

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> "AugmentConfig":
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__) - {"extra"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise MeddiffError(f"augment: unknown key(s) {unknown}; allowed: {sorted(known)}")
        for k in cls.PROBABILITIES:
            if not 0.0 <= float(cfg.get(k, 0.0)) <= 1.0:
                raise MeddiffError(f"augment.{k}={cfg[k]} must be a probability in [0, 1]")
        if not 0.0 <= float(cfg.get("zoom_range", 0.1)) < 1.0:
            raise MeddiffError(f"augment.zoom_range={cfg['zoom_range']} must be in [0, 1) (0.1: zoom by 0.9-1.1)")
        if "gamma_range" in cfg:
            gamma = tuple(float(g) for g in cfg["gamma_range"])
            if len(gamma) != 2 or not 0 < gamma[0] <= gamma[1]:
                raise MeddiffError(f"augment.gamma_range={cfg['gamma_range']} must be [low, high] with 0 < low <= high")
            cfg["gamma_range"] = gamma
        if cfg.get("flip_axes") is not None:
            cfg["flip_axes"] = tuple(int(a) for a in cfg["flip_axes"])
        return cls(**cfg)

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in self.PROBABILITIES)


def build_augment(cfg: AugmentConfig | dict | None, spatial_dims: int, seed: int = 0):
    """A MONAI Compose of random transforms for channel-first arrays, seeded (its own RNG, never global);
    None when nothing is enabled."""
    from monai.transforms import (Compose, RandAdjustContrast, RandAffine, RandFlip, RandRotate, RandScaleIntensity,
                                  RandShiftIntensity)

    cfg = cfg if isinstance(cfg, AugmentConfig) else AugmentConfig.from_dict(cfg)
    if not cfg.active:
        return None
    ts: list[Any] = []
    axes = cfg.flip_axes if cfg.flip_axes is not None else tuple(range(spatial_dims))
    if cfg.flip_prob > 0:
        ts += [RandFlip(prob=cfg.flip_prob, spatial_axis=a) for a in axes]
    if cfg.rotate_prob > 0:
        rad = float(np.deg2rad(cfg.rotate_degrees))
        kw = {"range_x": rad} if spatial_dims == 2 else {"range_x": rad, "range_y": rad, "range_z": rad}
        ts.append(RandRotate(prob=cfg.rotate_prob, padding_mode="border", keep_size=True, **kw))
    if cfg.zoom_prob > 0:       # border padding: the edge (background) extends, never a constant 0 (mid-grey in [-1, 1])
        ts.append(RandAffine(prob=cfg.zoom_prob, scale_range=(cfg.zoom_range,) * spatial_dims, padding_mode="border"))
    if cfg.gamma_prob > 0:      # x -> min + (max - min) ((x - min) / (max - min))^gamma, the same gamma for all channels
        ts.append(RandAdjustContrast(prob=cfg.gamma_prob, gamma=cfg.gamma_range))
    if cfg.scale_prob > 0:
        ts.append(RandScaleIntensity(factors=cfg.scale_factor, prob=cfg.scale_prob))
    if cfg.shift_prob > 0:
        ts.append(RandShiftIntensity(offsets=cfg.shift_offset, prob=cfg.shift_prob))
    comp = Compose(ts)
    comp.set_random_state(seed=seed)
    return comp
