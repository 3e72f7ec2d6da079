"""A small plain CNN classifier for 2D images: the feature network of FID/KID and the downstream-utility classifier.

Not noise-aware (for classifier guidance see ``meddiff.nets.classifier``); used by ``meddiff.metrics``.
"""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Three conv stages (2 convs each, GroupNorm + SiLU, 2 x 2 max pooling between stages), global average
    pool -> features (B, widths[-1]) -> linear logits (B, num_classes). Input (B, 1, 28, 28) in [-1, 1].
    GroupNorm (no batch statistics), so an image's features never depend on the rest of the batch."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        layers, previous = [], in_channels
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(previous, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU()]
                previous = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)
        self.config = {"widths": list(widths), "num_classes": num_classes, "in_channels": in_channels}

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, widths[-1]) pooled penultimate features."""
        return self.trunk(x).mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
