"""Uncertainty evaluation of the posterior samples: how the per-pixel std tracks the real error."""

from __future__ import annotations

import numpy as np


def calibration_plot(std: np.ndarray, error: np.ndarray, size: int = 180):
    """uint8 (size, size, 3) plot of RMS |error| against the mean std in 10 std-quantile bins, with the y = x line."""
    from PIL import Image, ImageDraw

    edges = np.quantile(std, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 9)
    pts = [(float(std[which == b].mean()), float(np.sqrt((error[which == b] ** 2).mean())))
           for b in range(10) if (which == b).any()]
    top = max(max(max(p) for p in pts), 1e-6) * 1.1
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    pad = 22

    def xy(u, v):
        return pad + u / top * (size - 2 * pad), size - pad - v / top * (size - 2 * pad)

    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    draw.line([xy(0, 0), xy(top, top)], fill=(160, 160, 160))
    for u, v in pts:
        x, y = xy(u, v)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(200, 30, 30))
    draw.text((pad, size - pad + 4), "std", fill="black")
    draw.text((2, 4), f"RMS error (max {top:.3g})", fill="black")
    return np.asarray(canvas)

