"""Supervised low-dose CT denoising, the baseline of issue 23's low-dose item: a MONAI UNet
(``meddiff.training.regression``, residual: output = input + UNet(input)) maps the Hann-filtered FBP of a low-dose
sinogram to the slice, both in the prior's variable v = HU / 1000 (the "image-domain post-processing" baseline of
low-dose CT, e.g. Chen et al., "Low-dose CT with a residual encoder-decoder CNN", IEEE TMI 2017).

Training pairs come from full-dose slices: each slice is projected (parallel beam), given Poisson counts at ``i0`` plus
electronic noise (``meddiff.physics.ct.simulate_sinogram``), log-transformed and reconstructed by FBP; several noise
realisations per slice (``realisations``) multiply the few slices one patient gives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiff.data.ct_slices import shift_slice
from meddiff.physics.ct import ParallelBeamCT, fbp, simulate_sinogram, view_angles
from meddiff.physics.ct.dose import MU_WATER


def lowdose_fbp(hu: Tensor, pixel_size: float, *, views: int = 180, arc: float = 180.0, i0: float = 1e4,
                generator: torch.Generator | None = None, filter: str = "hann") -> Tensor:
    """HU slices (N, H, W) -> FBP (``filter``) of their simulated low-dose sinograms as v = HU / 1000 (N, H, W).
    ``pixel_size`` in mm (sets the attenuation per pixel, hence the photon counts)."""
    angles = view_angles(views, arc)
    op = ParallelBeamCT(hu.shape[-1], angles)
    out = []
    for k in range(len(hu)):
        sino, _ = simulate_sinogram(hu[k], op, pixel_size=pixel_size, i0=i0, generator=generator)
        out.append(fbp(sino / (MU_WATER * pixel_size), angles, hu.shape[-1], filter=filter) - 1.0)  # water units - 1
    return torch.stack(out)


def shifted(hu: Tensor, dy: int, dx: int, flip: bool) -> Tensor:
    """HU slice (H, W) mirrored left-right (``flip``) and moved by whole pixels (dy, dx), air (-1000) entering."""
    return shift_slice(hu.flip(-1) if flip else hu, dy, dx, fill=-1000.0)


def lowdose_pairs(hu: Tensor, pixel_size: float, *, realisations: int = 4, seed: int = 0, shift: int = 0,
                  flip: bool = False, **kwargs) -> list[dict]:
    """Training pairs {"cond_image": low-dose FBP v (1, H, W), "image": clean v (1, H, W)} for every slice of ``hu``
    (N, H, W) and ``realisations`` noise draws (seeded: ``seed``); ``kwargs`` go to ``lowdose_fbp``. Augmentation
    before the simulation (so each pair is an exact pair of a plausible slice): from the second draw on, each slice is
    mirrored left-right with probability 1/2 (``flip``) and moved by up to ``shift`` pixels in each axis."""
    generator = torch.Generator().manual_seed(seed)
    hu = hu.clamp_min(-1000.0)
    pairs = []
    for draw in range(realisations):
        moved = hu
        if draw and (shift or flip):
            moves = torch.randint(-shift, shift + 1, (len(hu), 2), generator=generator).tolist()
            flips = (torch.rand(len(hu), generator=generator) < 0.5).tolist() if flip else [False] * len(hu)
            moved = torch.stack([shifted(hu[k], *moves[k], flips[k]) for k in range(len(hu))])
        noisy = lowdose_fbp(moved, pixel_size, generator=generator, **kwargs)
        pairs += [{"cond_image": noisy[k][None], "image": moved[k][None] / 1000.0} for k in range(len(hu))]
    return pairs


@torch.no_grad()
def denoise(model: torch.nn.Module, v: Tensor) -> Tensor:
    """Low-dose FBP v (N, H, W) -> the UNet's estimate of the clean v (N, H, W)."""
    return model(v[:, None].float())[:, 0]
