"""Save a batch of images in [-1, 1] as one PNG grid (3D volumes: the middle slice along the first axis)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from meddiff.files import write_png


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) or (N, C, D, H, W) in [-1, 1] -> uint8 (rows, cols) or (rows, cols, 3) array."""
    images = images.detach().float().cpu()
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return array[0] if c == 1 else array.transpose(1, 2, 0)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write the grid PNG atomically (temporary name, then rename)."""
    return write_png(path, image_grid(images, nrow))
