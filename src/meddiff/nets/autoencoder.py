"""Plain convolutional autoencoder (MONAI ``AutoEncoder``), the reconstruction baseline of anomaly detection.

It follows the denoiser-network call ``net(x, t, **cond)`` and ignores t, so the trainer trains it with
``prediction: x0`` on a schedule of tiny noise (a denoising autoencoder, Vincent et al. 2008); the anomaly
baseline is then |x - net(x)| (Baur et al. 2021, "Autoencoders for unsupervised anomaly segmentation in brain MR").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from meddiff.errors import MeddiffError, check_choice
from meddiff.nets.unet import check_keys

AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "kind": "autoencoder",
    "dims": 2,
    "in_channels": 1,
    "channels": [32, 64, 64, 32],  # one per level; each level halves the size: 64x64 -> 4x4x32 latent
    "num_res_units": 1,
    "image_size": None,
    "time_scale": 1.0,             # accepted for config compatibility with the UNet; t is ignored
    "num_classes": None,           # must stay None: the autoencoder takes no conditioning
}


class ConvAutoEncoder(nn.Module):
    """``net(x, t) -> reconstruction`` of x (B, C, *spatial); t is ignored; sides must be multiples of 2^levels."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from monai.networks.nets import AutoEncoder

        check_keys("model", config, AUTOENCODER_DEFAULTS)
        cfg = {**AUTOENCODER_DEFAULTS, **config}
        check_choice("model.dims", cfg["dims"], (2, 3))
        channels = list(cfg["channels"])
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise MeddiffError(f"model.channels={channels!r} must be a non-empty list of positive integers")
        if cfg["num_classes"] is not None:
            raise MeddiffError("an autoencoder takes no class labels; set model.num_classes: null")
        multiple = 2 ** len(channels)
        if cfg["image_size"] is not None and any(int(s) % multiple for s in cfg["image_size"]):
            raise MeddiffError(f"image size {cfg['image_size']} must be a multiple of {multiple} for "
                               f"{len(channels)} autoencoder levels; resize the data or drop a level")
        cfg["channels"] = channels
        self.config = cfg
        self.net = AutoEncoder(spatial_dims=cfg["dims"], in_channels=cfg["in_channels"],
                               out_channels=cfg["in_channels"], channels=channels, strides=[2] * len(channels),
                               num_res_units=cfg["num_res_units"], norm="BATCH")

    def forward(self, x: Tensor, t: Tensor | None = None, **cond) -> Tensor:
        if cond:
            raise MeddiffError(f"the autoencoder takes no conditioning, got {sorted(cond)}")
        return self.net(x)


def build_autoencoder(config: dict) -> ConvAutoEncoder:
    """Build the autoencoder from a (partial) config dict; see ``AUTOENCODER_DEFAULTS``."""
    return ConvAutoEncoder({**config, "kind": "autoencoder"})
