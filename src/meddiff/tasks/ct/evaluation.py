"""CT scores and figures shared by ``benchmarks/ct_reconstruction.py`` and the demo report: PSNR / SSIM in HU inside
the body, after clipping both images to the [-1000, 1000] HU window (data range 2000 HU), and labelled image /
error-map figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.tasks.ct.solvers import CT_WINDOW


def body_mask(hu: Tensor) -> Tensor:
    """(H, W) HU -> bool (H, W): the largest connected region above -500 HU with its holes (lungs) filled; all True
    for an image with no such region."""
    from scipy import ndimage

    labels, count = ndimage.label((hu > -500).numpy())
    if count == 0:
        return torch.ones_like(hu, dtype=torch.bool)
    largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))))
    return torch.from_numpy(ndimage.binary_fill_holes(labels == largest))


def score(x_hu: Tensor, ref_hu: Tensor, mask: Tensor) -> dict:
    """PSNR (dB) and SSIM of an (H, W) HU image against the reference inside ``mask``, both clipped to ``CT_WINDOW``."""
    from meddiff.metrics.image import psnr, ssim

    a, b = x_hu.clamp(*CT_WINDOW)[None, None].double(), ref_hu.clamp(*CT_WINDOW)[None, None].double()
    m = mask.double()
    span = CT_WINDOW[1] - CT_WINDOW[0]
    return {"psnr": float(psnr(a, b, data_range=span, mask=m)), "ssim": float(ssim(a, b, data_range=span, mask=m))}


def error_figure(path: str | Path, ref: Tensor, images: dict[str, Tensor], *, error_max: float = 300.0,
                 zoom: int = 2) -> Path:
    """Labelled PNG: top row the reference and ``images`` (name -> (H, W) HU) in the [-1000, 1000] HU window; bottom
    row |image - reference| on [0, ``error_max``] HU (black = 0); each panel enlarged ``zoom`` times."""
    from PIL import Image

    from meddiff.files import write_png
    from meddiff.report import labelled_row, to_uint8

    def big(x: np.ndarray) -> np.ndarray:
        return np.kron(x, np.ones((zoom, zoom), dtype=x.dtype))

    top = [big(to_uint8(ref.numpy(), *CT_WINDOW))] + [big(to_uint8(x.numpy(), *CT_WINDOW)) for x in images.values()]
    bottom = [big(to_uint8((x - ref).abs().numpy(), 0.0, error_max)) for x in images.values()]
    upper = labelled_row(top, ["reference"] + list(images))
    lower = labelled_row([np.full_like(top[0], 255)] + bottom,
                         [""] + [f"|error| {n} (0-{error_max:g} HU)" for n in images])
    both = Image.new("RGB", (max(upper.width, lower.width), upper.height + lower.height), "white")
    both.paste(upper, (0, 0))
    both.paste(lower, (0, upper.height))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_png(Path(path), both)
