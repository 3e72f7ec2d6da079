"""VoxelMorph-style learned registration (Balakrishnan et al. 2019; diffeomorphic variant, Dalca et al. 2019): a MONAI
UNet maps (moving, fixed) to a stationary velocity field at half resolution, integrated by scaling and squaring and
upsampled to a DDF; trained without labels on local NCC (or MSE) + a smoothness penalty (MONAI ``DiffusionLoss`` =
mean squared gradient, or ``BendingEnergyLoss``).

Inputs are volumes on the fixed grid in RAS order, the moving one affinely aligned to the fixed one
(``meddiff.tasks.register.affine``), each scaled by ``scale_intensity``. Checkpoints are folders: ``meta.json``
(task "registration", method "voxelmorph", the network settings, the voxel spacing it was trained at) and
``ema.safetensors`` (float16).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.register.affine import scale_intensity
from meddiff.tasks.register.fields import integrate_velocity, warp

SIMILARITIES = ("lncc", "mse")
REGULARISERS = ("diffusion", "bending")
DEFAULT_CHECKPOINT = "voxelmorph_ixi"


def check_loss_settings(similarity: str, regulariser: str) -> None:
    """The registration loss's similarity and smoothness terms must be ones ``registration_loss`` knows."""
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("regulariser", regulariser, REGULARISERS)


def config_from_dict(cls, d: dict, what: str, tuple_keys: tuple[str, ...]):
    """``cls(**d)`` for a config dataclass read back from meta.json: unknown keys are a one-line error naming
    ``what`` and the known keys; the ``tuple_keys`` (lists in JSON) become tuples of ints."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise MeddiffError(f"{what} config: unknown keys {unknown}; known: {sorted(known)}")
    d = dict(d)
    for k in tuple_keys:
        if k in d:
            d[k] = tuple(int(v) for v in d[k])
    return cls(**d)


def block_average(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, *S) averaged over blocks of ``factor`` voxels per axis (2D or 3D): the grid of the velocity field."""
    if factor == 1:
        return x
    return (F.avg_pool3d if x.ndim == 5 else F.avg_pool2d)(x, factor)


def upsample_ddf(low_ddf: torch.Tensor, factor: int, shape) -> torch.Tensor:
    """A DDF (B, N, *s) on the block-averaged grid -> the input grid ``shape`` (x ``factor`` in voxels, linear
    interpolation). Low voxel q is full voxel f q + (f - 1) / 2: align_corners=False."""
    if factor == 1:
        return low_ddf
    mode = "trilinear" if low_ddf.ndim == 5 else "bilinear"
    return F.interpolate(low_ddf * factor, size=tuple(shape), mode=mode, align_corners=False)


def flow_head(features: int, spatial_dims: int) -> nn.Module:
    """The 3x3(x3) convolution from UNet features to a velocity field, with tiny initial weights (std 1e-5, zero
    bias) so that training starts near the identity (VoxelMorph's flow layer)."""
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    flow = conv(features, spatial_dims, 3, padding=1)
    nn.init.normal_(flow.weight, std=1e-5)
    nn.init.zeros_(flow.bias)
    return flow


@dataclass(frozen=True)
class VoxelMorphConfig:
    """Network and loss settings. ``downsample``: the velocity field's resolution factor (VoxelMorph's
    ``int_downsize``); ``steps``: scaling-and-squaring steps; ``kernel``: LNCC window (voxels of the loss grid)."""

    spatial_dims: int = 3
    channels: tuple[int, ...] = (16, 32, 32, 32)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    features: int = 16
    downsample: int = 2
    steps: int = 7
    similarity: str = "lncc"
    kernel: int = 5
    regulariser: str = "diffusion"
    reg_weight: float = 1.0

    def __post_init__(self):
        check_loss_settings(self.similarity, self.regulariser)
        if self.spatial_dims not in (2, 3) or len(self.channels) != len(self.strides) + 1:
            raise MeddiffError(f"voxelmorph config: spatial_dims must be 2 or 3 and channels one longer than strides, "
                               f"got {self.spatial_dims}, {self.channels}, {self.strides}")

    @classmethod
    def from_dict(cls, d: dict) -> "VoxelMorphConfig":
        return config_from_dict(cls, d, "voxelmorph", ("channels", "strides"))

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (padding takes care of it)."""
        return self.downsample * int(np.prod(self.strides))


class VelocityNet(nn.Module):
    """(moving, fixed) (B, 1, *S) -> DDF (B, N, *S) voxels, ``S`` a multiple of ``config.multiple``: UNet on the
    block-averaged pair -> velocity (small initial weights, so training starts near the identity) -> scaling and
    squaring -> trilinear upsampling (x ``downsample`` in voxels)."""

    def __init__(self, config: VoxelMorphConfig):
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        n = config.spatial_dims
        self.unet = UNet(n, 2, config.features, config.channels, config.strides, num_res_units=config.num_res_units)
        self.flow = flow_head(config.features, n)

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = block_average(torch.cat([moving, fixed], 1), self.config.downsample)
        return self.flow(F.leaky_relu(self.unet(x), 0.2))

    def low_res_ddf(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The DDF on the block-averaged grid (voxels of that grid): scaling and squaring of the velocity."""
        return integrate_velocity(self.velocity(moving, fixed), self.config.steps)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return upsample_ddf(self.low_res_ddf(moving, fixed), self.config.downsample, moving.shape[2:])


def registration_loss(warped: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor, config: VoxelMorphConfig,
                      ) -> tuple[torch.Tensor, dict]:
    """Similarity (MONAI LNCC, as -NCC, or MSE) + ``reg_weight`` x smoothness of the DDF -> (loss, parts)."""
    from monai.losses import BendingEnergyLoss, DiffusionLoss, LocalNormalizedCrossCorrelationLoss

    if config.similarity == "lncc":
        sim = LocalNormalizedCrossCorrelationLoss(config.spatial_dims, kernel_size=config.kernel)(warped, fixed)
    else:
        sim = F.mse_loss(warped, fixed)
    reg = (DiffusionLoss() if config.regulariser == "diffusion" else BendingEnergyLoss())(ddf)
    return sim + config.reg_weight * reg, {"similarity": float(sim.detach()), "smoothness": float(reg.detach())}


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[slice]]:
    """Zero-pad the spatial axes of (B, C, *S) symmetrically to multiples of ``multiple``; the crop back."""
    pads, crop = [], [slice(None), slice(None)]
    for s in x.shape[2:]:
        extra = (-s) % multiple
        pads.append((extra // 2, extra - extra // 2))
        crop.append(slice(extra // 2, extra // 2 + s))
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat), crop


@torch.no_grad()
def predict_ddf(net: VelocityNet, moving_aligned: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """DDF (N, *S) float32 voxels of a trained net for a moving image already on the fixed grid (RAS order)."""
    m = torch.from_numpy(scale_intensity(moving_aligned))[None, None]
    f = torch.from_numpy(scale_intensity(fixed))[None, None]
    if m.ndim - 2 != net.config.spatial_dims:
        raise MeddiffError(f"the voxelmorph checkpoint is {net.config.spatial_dims}D but the images are "
                           f"{m.ndim - 2}D")
    m, crop = pad_to_multiple(m, net.config.multiple)
    f, _ = pad_to_multiple(f, net.config.multiple)
    return net.eval()(m, f)[tuple(crop)][0].numpy().astype(np.float32)


def warp_pair(net: VelocityNet, moving: torch.Tensor, fixed: torch.Tensor, low: bool = True,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(warped moving, fixed target, ddf) of a training batch (B, 1, *S), ``S`` a multiple of ``config.multiple``.
    ``low``: on the block-averaged grid of the velocity (8x fewer voxels in 3D: the loss, not the network, dominates
    the cost at full resolution), else at full resolution."""
    if not low or net.config.downsample == 1:
        ddf = net(moving, fixed)
        return warp(moving, ddf), fixed, ddf
    m, f = block_average(moving, net.config.downsample), block_average(fixed, net.config.downsample)
    ddf = net.low_res_ddf(moving, fixed)
    return warp(m, ddf), f, ddf


@dataclass
class LoadedRegistration:
    net: VelocityNet
    meta: dict = field(default_factory=dict)
    folder: Path | None = None


def save_registration(folder: str | Path, net: nn.Module, meta: dict, method: str,
                      files: dict[str, str] | None = None) -> Path:
    """Write a registration checkpoint of ``method`` (atomically): float16 weights, ``meta.json`` with the network's
    ``config`` dataclass (+ the given text files). Shared by the VoxelMorph-style and DiffuseMorph/DDM models."""
    from safetensors.torch import save_file

    from meddiff.files import atomic_path

    folder = Path(folder)
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder, directory=True) as tmp:
        save_file(weights, tmp / "ema.safetensors")
        full = {"task": "registration", "method": method, "config": asdict(net.config), **meta}
        (tmp / "meta.json").write_text(json.dumps(full, indent=1, default=str) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return folder


def read_registration(checkpoint: str | Path, method: str, default: str) -> tuple[Path, dict, dict]:
    """(folder, meta, float32 weights) of a ``method`` checkpoint folder or shipped name; one-line errors."""
    from safetensors.torch import load_file

    from meddiff.training.shipped import shipped_path

    folder = Path(checkpoint)
    if not (folder / "meta.json").is_file():
        shipped = shipped_path(str(checkpoint)) if not folder.exists() else None
        if shipped is None:
            raise MeddiffError(f"--checkpoint {checkpoint}: no {method} registration checkpoint there (expected a folder with "
                               f"meta.json and ema.safetensors, or a shipped name such as {default})")
        folder = shipped
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("task") != "registration" or meta.get("method") != method:
        raise MeddiffError(f"--checkpoint {checkpoint}: not a {method} registration checkpoint (task "
                           f"{meta.get('task')!r}, method {meta.get('method')!r}); see `meddiff checkpoints list`")
    if not (folder / "ema.safetensors").is_file():
        raise MeddiffError(f"--checkpoint {checkpoint}: ema.safetensors is missing in {folder}")
    weights = {k: v.float() for k, v in load_file(folder / "ema.safetensors").items()}
    return folder, meta, weights


def save_voxelmorph(folder: str | Path, net: VelocityNet, meta: dict, files: dict[str, str] | None = None) -> Path:
    """Write a voxelmorph checkpoint (atomically): float16 weights, ``meta.json`` (+ the given text files)."""
    return save_registration(folder, net, meta, "voxelmorph", files)


def load_voxelmorph(checkpoint: str | Path | None = None) -> LoadedRegistration:
    """A voxelmorph checkpoint folder or shipped name (default ``voxelmorph_ixi``)."""
    folder, meta, weights = read_registration(checkpoint or DEFAULT_CHECKPOINT, "voxelmorph", DEFAULT_CHECKPOINT)
    net = VelocityNet(VoxelMorphConfig.from_dict(meta["config"]))
    net.load_state_dict(weights)
    return LoadedRegistration(net.eval(), meta, folder)
