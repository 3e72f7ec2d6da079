"""KL-regularised autoencoder (MONAI ``AutoencoderKL``, 2D or 3D): the first stage of a latent diffusion model.

Rombach et al. 2022 ("High-resolution image synthesis with latent diffusion models"): an encoder maps an image to
a Gaussian posterior N(mu, sigma^2) on a grid 2^(levels - 1) times smaller, a decoder maps a latent back; training
minimises reconstruction L1 + ``kl_weight`` x KL(N(mu, sigma^2) || N(0, 1)) (a small KL weight keeps the latent
close to a standard normal without blurring the reconstruction). The diffusion model then works on latents scaled by
1 / std (the "scale factor", stored with the latent model).

The default is fully convolutional (no attention), so it can be trained on random patches and applied to whole
volumes of any size that is a multiple of ``size_multiple``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError, check_choice
from meddiff.nets.unet import check_keys

AUTOENCODER_KL_DEFAULTS: dict[str, Any] = {
    "kind": "autoencoder_kl",
    "dims": 3,
    "in_channels": 1,
    "channels": [16, 32, 32],        # one per level; levels - 1 halvings: 3 levels = 4x downsampling per side
    "num_res_blocks": 1,
    "latent_channels": 3,
    "norm_num_groups": None,         # None: largest of 32, 16, 8, 4, 2, 1 dividing every channel count
    "attention_levels": None,        # None: no attention at any level (fully convolutional)
    "mid_attention": False,          # MONAI's non-local attention in the encoder/decoder middle blocks
    "image_size": None,              # training size (patch or whole image), checked against the levels
    "time_scale": 1.0,               # accepted for config compatibility with the diffusion UNet; unused
    "num_classes": None,             # must stay None: the autoencoder takes no conditioning
}

LOSS_DEFAULTS: dict[str, float] = {"l1_weight": 1.0, "kl_weight": 1e-6}


def resolve_autoencoder_kl_config(config: dict) -> dict:
    """Defaults filled in and values checked; the result rebuilds the same network (stored in meta.json)."""
    check_keys("model", config, AUTOENCODER_KL_DEFAULTS)
    cfg = {**AUTOENCODER_KL_DEFAULTS, **config}
    check_choice("model.dims", cfg["dims"], (2, 3))
    channels = cfg["channels"]
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise MeddiffError(f"model.channels={channels!r} must be a non-empty list of positive integers")
    cfg["channels"] = channels = list(channels)
    if cfg["num_classes"] is not None:
        raise MeddiffError("an autoencoder takes no class labels; set model.num_classes: null")
    if cfg["norm_num_groups"] is None:
        cfg["norm_num_groups"] = next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))
    if any(c % cfg["norm_num_groups"] for c in channels):
        raise MeddiffError(f"model.channels={channels} must all be multiples of model.norm_num_groups="
                           f"{cfg['norm_num_groups']}")
    attention = cfg["attention_levels"] or [False] * len(channels)
    if len(attention) != len(channels):
        raise MeddiffError(f"model.attention_levels has {len(attention)} entries but model.channels has "
                           f"{len(channels)}; give one true/false per level")
    cfg["attention_levels"] = [bool(a) for a in attention]
    for key in ("in_channels", "latent_channels", "num_res_blocks"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise MeddiffError(f"model.{key}={cfg[key]!r} must be a positive integer")
    if cfg["image_size"] is not None:
        size = [cfg["image_size"]] * cfg["dims"] if isinstance(cfg["image_size"], int) else list(cfg["image_size"])
        if len(size) != cfg["dims"]:
            raise MeddiffError(f"model.image_size={size} must have {cfg['dims']} entries for a {cfg['dims']}D model")
        cfg["image_size"] = size
        check_size(size, len(channels))
    return cfg


def size_multiple(levels: int) -> int:
    """Sides must be multiples of 2^(levels - 1), the total downsampling factor."""
    return 2 ** (levels - 1)


def check_size(size, levels: int, what: str = "image") -> None:
    """Raise naming the fix when ``size`` is not a multiple of the downsampling factor."""
    multiple = size_multiple(levels)
    if any(int(s) % multiple for s in size):
        fixed = tuple(-(-int(s) // multiple) * multiple for s in size)
        raise MeddiffError(f"{what} size {tuple(int(s) for s in size)} is not a multiple of {multiple} (the "
                           f"autoencoder downsamples {multiple}x per side); pad it to e.g. {fixed}")


class KLAutoencoder(nn.Module):
    """``net(x) -> (reconstruction, mu, sigma)`` for x (B, C, *spatial); latents (B, latent_channels, *spatial / f).

    ``encode(x) -> (mu, sigma)``, ``decode(z) -> x``; ``f = 2^(levels - 1)``.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        self.config = cfg = resolve_autoencoder_kl_config(config)
        self.factor = size_multiple(len(cfg["channels"]))
        self.net = AutoencoderKL(
            spatial_dims=cfg["dims"], in_channels=cfg["in_channels"], out_channels=cfg["in_channels"],
            num_res_blocks=[cfg["num_res_blocks"]] * len(cfg["channels"]), channels=cfg["channels"],
            attention_levels=cfg["attention_levels"], latent_channels=cfg["latent_channels"],
            norm_num_groups=cfg["norm_num_groups"], with_encoder_nonlocal_attn=cfg["mid_attention"],
            with_decoder_nonlocal_attn=cfg["mid_attention"], include_fc=False)

    def _check(self, x: Tensor, channels: int, what: str) -> None:
        dims = self.config["dims"]
        if x.ndim != dims + 2 or x.shape[1] != channels:
            raise MeddiffError(f"{what} must be (B, {channels}, {'D, H, W' if dims == 3 else 'H, W'}), got shape "
                               f"{tuple(x.shape)}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation, each (B, latent_channels, *spatial / f)."""
        self._check(x, self.config["in_channels"], "the autoencoder input")
        check_size(x.shape[2:], len(self.config["channels"]))
        return self.net.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, latent_channels, *s) -> images (B, in_channels, *s x f)."""
        self._check(z, self.config["latent_channels"], "the latent")
        return self.net.decode(z)

    def forward(self, x: Tensor, t: Tensor | None = None, **cond) -> tuple[Tensor, Tensor, Tensor]:
        if cond:
            raise MeddiffError(f"the autoencoder takes no conditioning, got {sorted(cond)}")
        mu, sigma = self.encode(x)
        z = mu + sigma * torch.randn_like(sigma)  # reparametrisation (Kingma & Welling 2014)
        return self.decode(z), mu, sigma


def kl_divergence(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, mean over the batch (nats)."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * torch.log(sigma.clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


def resolve_loss_config(config: dict | None) -> dict:
    """The ``loss:`` section of an autoencoder config: {l1_weight, kl_weight} (non-negative numbers)."""
    config = dict(config or {})
    check_keys("loss", config, LOSS_DEFAULTS)
    cfg = {**LOSS_DEFAULTS, **config}
    for key, value in cfg.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise MeddiffError(f"loss.{key}={value!r} must be a number >= 0")
        cfg[key] = float(value)
    return cfg


def autoencoder_loss(model, x: Tensor, loss: dict) -> Tensor:
    """``l1_weight`` x mean |x - x_hat| + ``kl_weight`` x KL; ``model(x) -> (x_hat, mu, sigma)``."""
    reconstruction, mu, sigma = model(x)
    return loss["l1_weight"] * (reconstruction.float() - x).abs().mean() + loss["kl_weight"] * kl_divergence(mu, sigma)


def build_autoencoder_kl(config: dict) -> KLAutoencoder:
    """Build the KL autoencoder from a (partial) config dict; see ``AUTOENCODER_KL_DEFAULTS``."""
    return KLAutoencoder({**config, "kind": "autoencoder_kl"})
