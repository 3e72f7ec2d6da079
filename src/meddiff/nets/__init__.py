"""meddiff.nets: network factories (MONAI DiffusionModelUNet, noise-aware classifier) with conditioning, and the
small CNN classifier the metrics use.

``build_network(config)`` dispatches on ``config["kind"]`` ("unet", "classifier", "autoencoder" or "autoencoder_kl"); a resolved config
(``net.config``) rebuilds the same network, which is what checkpoints store in meta.json.
"""

from __future__ import annotations

from torch import nn

from meddiff.errors import MeddiffError, check_choice
from meddiff.nets.autoencoder import AUTOENCODER_DEFAULTS, ConvAutoEncoder, build_autoencoder
from meddiff.nets.autoencoder_kl import AUTOENCODER_KL_DEFAULTS, KLAutoencoder, build_autoencoder_kl
from meddiff.nets.classifier import CLASSIFIER_DEFAULTS, NoiseAwareClassifier, build_classifier
from meddiff.nets.small_cnn import SmallCNN
from meddiff.nets.unet import (
    CLASS_LABELS,
    COND_IMAGE,
    GUIDANCE_SCALE,
    UNET_DEFAULTS,
    DiffusionUNet,
    build_unet,
    check_spatial_size,
    resolve_unet_config,
    size_multiple,
)

NETWORKS = {"unet": build_unet, "classifier": build_classifier, "autoencoder": build_autoencoder,
            "autoencoder_kl": build_autoencoder_kl}


def build_network(config: dict) -> nn.Module:
    """Build a network from its config; ``kind`` selects the factory (default "unet")."""
    if not isinstance(config, dict):
        raise MeddiffError(f"the model config must be a mapping, got {type(config).__name__}")
    kind = config.get("kind", "unet")
    check_choice("model.kind", kind, NETWORKS)
    return NETWORKS[kind](config)


__all__ = [
    "AUTOENCODER_DEFAULTS", "AUTOENCODER_KL_DEFAULTS", "KLAutoencoder", "build_autoencoder_kl", "CLASSIFIER_DEFAULTS", "ConvAutoEncoder", "build_autoencoder", "CLASS_LABELS", "COND_IMAGE", "GUIDANCE_SCALE", "NETWORKS", "UNET_DEFAULTS",
    "DiffusionUNet", "NoiseAwareClassifier", "SmallCNN", "build_classifier", "build_network", "build_unet",
    "check_spatial_size", "resolve_unet_config", "size_multiple",
]
