"""DiffuseMorph (Kim, Han and Ye, ECCV 2022) and DDM (diffusion deformable model, Kim and Ye, MICCAI 2022): one
model class, 2D or 3D. A diffusion network (MONAI DiffusionModelUNet via ``meddiff.nets``) sees (source, target)
as its condition and the noised target ``x_t = alpha_t target + sigma_t eps``; it is trained to predict ``eps``
(output channel 0) while its whole output ``c`` (eps estimate + ``latent_channels - 1`` free feature channels) is
the latent that a deformation network (MONAI UNet, as in ``learned``) turns into a stationary velocity field,
integrated by scaling and squaring (``fields.integrate_velocity``). Loss: the diffusion MSE + ``registration_weight``
x (similarity of the warped source to the target + ``reg_weight`` x smoothness), trained jointly.

Continuous deformation (both papers): the deformation network's input latent is scaled by ``gamma`` in [0, 1],
``v_gamma = G(source, gamma c) - G(source, 0)``. The subtraction (our choice, not in the papers) makes gamma = 0 the
identity exactly; at gamma = 1 it is the registration field. At inference ``x_t`` is the clean target at t = 0
(no noise), as in the papers' registration mode, so the result is deterministic.

``diffusion=False`` is the ablation "DDM without its diffusion part": the deformation network sees (source, target)
alone and intermediate fields scale the velocity, ``v_gamma = gamma v`` (VoxelMorph-style SVF scaling).

Everything runs on the block-averaged grid (``downsample``); the DDF is upsampled to the input grid as in
``learned.VelocityNet``. Images (B, 1, *S) scaled to ~[0, 1] (one scale for the pair); fields in voxels of the input
grid. Checkpoints: ``meta.json`` (task "registration", method "diffusemorph") + ``ema.safetensors`` (float16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meddiff.errors import MeddiffError
from meddiff.tasks.register.fields import integrate_velocity, warp
from meddiff.tasks.register.learned import (block_average, check_loss_settings, config_from_dict, flow_head,
                                            read_registration, registration_loss, save_registration, upsample_ddf)

METHOD = "diffusemorph"
DEFAULT_DDM = "ddm_rat_cine"


@dataclass(frozen=True)
class DiffuseMorphConfig:
    """Network, schedule and loss settings. ``score_channels``: the diffusion UNet's levels (no attention);
    ``latent_channels``: its output channels (channel 0 = eps); ``channels``/``strides``/``features``: the
    deformation UNet; ``downsample``, ``steps``, ``similarity``, ``kernel``, ``regulariser``, ``reg_weight``: as
    ``VoxelMorphConfig``; ``num_train_steps``: the linear DDPM schedule; ``registration_weight``: lambda;
    ``meeting_weight``: the symmetric half-way term of ``diffusemorph_loss`` (0: the papers' loss)."""

    spatial_dims: int = 2
    diffusion: bool = True
    score_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8
    channels: tuple[int, ...] = (16, 32, 32, 32)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    features: int = 16
    downsample: int = 2
    steps: int = 7
    num_train_steps: int = 1000
    similarity: str = "lncc"
    kernel: int = 7
    regulariser: str = "diffusion"
    reg_weight: float = 1.0
    registration_weight: float = 1.0
    meeting_weight: float = 0.0

    def __post_init__(self):
        check_loss_settings(self.similarity, self.regulariser)
        if self.spatial_dims not in (2, 3) or len(self.channels) != len(self.strides) + 1 or self.latent_channels < 1:
            raise MeddiffError(f"diffusemorph config: spatial_dims must be 2 or 3, channels one longer than strides "
                               f"and latent_channels >= 1, got {self.spatial_dims}, {self.channels}, {self.strides}, "
                               f"{self.latent_channels}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiffuseMorphConfig":
        return config_from_dict(cls, d, "diffusemorph", ("channels", "strides", "score_channels"))

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (``pad_to_multiple`` takes care of it)."""
        score = 2 ** (len(self.score_channels) - 1) if self.diffusion else 1
        return self.downsample * max(int(np.prod(self.strides)), score)


class DiffuseMorph(nn.Module):
    """(source, target) (B, 1, *S) -> velocity / DDF, ``S`` a multiple of ``config.multiple``."""

    def __init__(self, config: DiffuseMorphConfig):
        super().__init__()
        from monai.networks.nets import UNet

        from meddiff.diffusion.schedules import DiscreteSchedule
        from meddiff.nets import build_network

        self.config = config
        n = config.spatial_dims
        if config.diffusion:
            levels = len(config.score_channels)
            self.score = build_network({"kind": "unet", "dims": n, "in_channels": 1, "cond_channels": 2,
                                        "out_channels": config.latent_channels,
                                        "channels": list(config.score_channels),
                                        "attention_levels": [False] * levels, "num_res_blocks": 1,
                                        "use_flash_attention": False})
            inputs = 1 + config.latent_channels
        else:
            self.score = None
            inputs = 2
        self.schedule = DiscreteSchedule("linear", config.num_train_steps)
        # no normalisation layers: instance norm would divide the scale of gamma c out again
        self.unet = UNet(n, inputs, config.features, config.channels, config.strides,
                         num_res_units=config.num_res_units, norm=None)
        self.flow = flow_head(config.features, n)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return block_average(x, self.config.downsample)

    def latent(self, source: torch.Tensor, target: torch.Tensor, t: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion network's output c (B, latent_channels, *s) on the pooled grid for pooled images; ``t``
        None: the clean target at t = 0 (inference)."""
        if t is None:
            t = torch.zeros(source.shape[0])
            x_t = target
        else:
            alpha, sigma = self.schedule.alpha_sigma(t)
            shape = (-1,) + (1,) * (target.ndim - 1)
            x_t = alpha.float().reshape(shape) * target + sigma.float().reshape(shape) * noise
        return self.score(x_t, t, cond_image=torch.cat([source, target], 1))

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow(F.leaky_relu(self.unet(x), 0.2))

    def velocity_from_latent(self, source: torch.Tensor, latent: torch.Tensor, gamma) -> torch.Tensor:
        """``G(source, gamma c) - G(source, 0)`` on the pooled grid; gamma a number or (B,) tensor."""
        g = torch.as_tensor(gamma, dtype=latent.dtype).reshape((-1,) + (1,) * (latent.ndim - 1))
        both = torch.cat([torch.cat([source, g * latent], 1), torch.cat([source, torch.zeros_like(latent)], 1)], 0)
        v = self._field(both)
        return v[:source.shape[0]] - v[source.shape[0]:]

    def velocity(self, source: torch.Tensor, target: torch.Tensor, gamma=1.0) -> torch.Tensor:
        """The stationary velocity (B, N, *s) on the pooled grid (voxels of that grid) at scale ``gamma`` for
        full-resolution images (inference: clean target, t = 0)."""
        s, t = self.pool(source), self.pool(target)
        if self.score is None:
            g = torch.as_tensor(gamma, dtype=s.dtype).reshape((-1,) + (1,) * (s.ndim - 1))
            return g * self._field(torch.cat([s, t], 1))
        return self.velocity_from_latent(s, self.latent(s, t), gamma)

    def upsample(self, low_ddf: torch.Tensor, shape) -> torch.Tensor:
        """A pooled-grid DDF -> the input grid (x ``downsample`` in voxels; align_corners=False as in learned)."""
        return upsample_ddf(low_ddf, self.config.downsample, shape)

    def forward(self, source: torch.Tensor, target: torch.Tensor, gamma=1.0) -> torch.Tensor:
        """The DDF (B, N, *S) in input voxels that warps ``source`` a fraction ``gamma`` of the way to ``target``."""
        v = self.velocity(source, target, gamma)
        return self.upsample(integrate_velocity(v, self.config.steps), source.shape[2:])


def diffusemorph_loss(model: DiffuseMorph, source: torch.Tensor, target: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The joint training loss of a batch (B, 1, *S) on the pooled grid: diffusion MSE (eps prediction at a random
    timestep; 0 without the diffusion part) + lambda x (similarity(warped source, target) + smoothness).

    ``meeting_weight`` > 0 (our addition to the papers' loss): the batch must hold each pair twice, the second half
    the reverse pairs (``source[B/2:] = target[:B/2]``); the term adds ``meeting_weight`` x lambda x the
    similarity of source warped half way (gamma = 0.5) and the reverse pair's source warped half way back, so that
    the two ends meet in the middle: unsupervised, no intermediate frame is used."""
    cfg = model.config
    s, t = model.pool(source), model.pool(target)
    b = s.shape[0]
    meet = cfg.meeting_weight > 0
    if meet and (b % 2 or not torch.equal(source[b // 2:], target[:b // 2])
                 or not torch.equal(target[b // 2:], source[:b // 2])):
        raise MeddiffError("meeting_weight > 0 needs a batch whose second half holds the reverse pairs")
    if model.score is not None:
        steps = model.schedule.sample_training_times(b, generator)
        noise = torch.randn(t.shape, generator=generator)
        c = model.latent(s, t, steps, noise)
        diff = F.mse_loss(c[:, :1], noise)
        gammas = [1.0, 0.5, 0.0] if meet else [1.0, 0.0]
        g = model._field(torch.cat([torch.cat([s, gamma * c], 1) for gamma in gammas], 0))
        v = g[:b] - g[-b:]
        v_half = g[b:2 * b] - g[-b:] if meet else None
    else:
        diff = torch.zeros(())
        v = model._field(torch.cat([s, t], 1))
        v_half = 0.5 * v
    ddf = integrate_velocity(v, cfg.steps)
    reg, parts = registration_loss(warp(s, ddf), t, ddf, cfg)
    loss = diff + cfg.registration_weight * reg
    if meet:
        half = warp(s, integrate_velocity(v_half, cfg.steps))
        meeting, _ = registration_loss(half[:b // 2], half[b // 2:], torch.zeros_like(ddf[:1]), cfg)
        loss = loss + cfg.meeting_weight * cfg.registration_weight * meeting
        parts["meeting"] = float(meeting.detach())
    return loss, {"diffusion": float(diff.detach()), **parts}


@dataclass
class LoadedDiffuseMorph:
    net: DiffuseMorph
    meta: dict = field(default_factory=dict)
    folder: Path | None = None


def save_diffusemorph(folder: str | Path, net: DiffuseMorph, meta: dict, files: dict[str, str] | None = None) -> Path:
    """Write a DiffuseMorph/DDM checkpoint (atomically): float16 weights, ``meta.json`` (+ the given text files)."""
    return save_registration(folder, net, meta, METHOD, files)


def load_diffusemorph(checkpoint: str | Path | None = None, default: str = DEFAULT_DDM) -> LoadedDiffuseMorph:
    """A DiffuseMorph/DDM checkpoint folder or shipped name (default ``default``)."""
    folder, meta, weights = read_registration(checkpoint or default, METHOD, default)
    net = DiffuseMorph(DiffuseMorphConfig.from_dict(meta["config"]))
    net.load_state_dict(weights)
    return LoadedDiffuseMorph(net.eval(), meta, folder)


def config_dict(net: DiffuseMorph) -> dict:
    """The network settings as a plain dict (what meta.json stores)."""
    return asdict(net.config)


def pair_scale(frame0, frame1) -> float:
    """One intensity scale for a pair of frames (the 99.5th percentile of both, ``magnitude_scale``): the networks
    see ``frame / pair_scale``, so the intensity relation between the two is kept."""
    from meddiff.data.transforms import magnitude_scale

    both = np.concatenate([np.abs(np.asarray(frame0, dtype=np.float32)).ravel(),
                           np.abs(np.asarray(frame1, dtype=np.float32)).ravel()])
    return float(magnitude_scale(both))
