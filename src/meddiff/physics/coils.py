"""Coil sensitivity calibration from the fully sampled centre of k-space (autocalibration, ACS).

Two methods, both returning complex64 maps (C, H, W) normalised to sum_c |S_c|^2 = 1 inside the support and
0 outside it, so that ``MultiCoilMRI`` has ||A|| <= 1 and S^H S = I on the support:

- "espirit": ESPIRiT (Uecker et al., MRM 71:990, 2014) with one set of maps. The calibration matrix of all
  k x k x C patches of the ACS block is decomposed by SVD; the row-space kernels V_par (singular values above
  ``threshold`` x the largest) are taken to image space, giving per pixel G(r) = sum_i K_i(r) K_i(r)^H (C x C,
  eq. 14-16 of the paper); the maps are the eigenvectors of G(r) with eigenvalue ~1, kept where the eigenvalue
  exceeds ``crop``. Follows sigpy.mri.app.EspiritCalib (scaling N / k^2, phase relative to coil 0).
- "lowres": low-resolution coil images / their RSS (the classic adaptive-free "ACS / sum-of-squares" method,
  e.g. Pruessmann et al. 1999): Hann-windowed ACS block, inverse FFT, divide by RSS, support = RSS above
  ``crop`` x its maximum.

Measured on the 8-coil ESPIRiT brain slice (acs 24): |sensitivity-weighted combination of the fully sampled coil
images| vs RSS, NRMSE on the foreground (RSS > 0.1 max) 0.0046 for "espirit" (2.5 s on one CPU thread) and 0.0051
for "lowres" (0.01 s). "espirit" is the default: with its maps CG-SENSE scores +0.07 to +0.50 dB higher foreground
PSNR than with "lowres" maps and L1-wavelet CS +0.06 to +0.70 dB (mean over mask seeds 0-2 per setting; single masks
-0.00 to +1.05 dB), largest at 4x (equispaced 4x: +0.50 / +0.70), smallest at equispaced 8x and Poisson 8x (+0.06
to +0.16); 1D Gaussian and equispaced 4x/8x and 2D Poisson 8x with 8 % ACS
(``python benchmarks/mri_baselines.py --compare-maps --out maps.json``; table in benchmarks/README.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.physics.fft import check_complex, ifft2c, rss

CALIBRATION_METHODS = ("espirit", "lowres")


def acs_region(kspace: Tensor, acs: int | tuple[int, int]) -> Tensor:
    """Centre (C, a_y, a_x) block of centred k-space (C, H, W)."""
    ay, ax = (acs, acs) if isinstance(acs, int) else acs
    h, w = kspace.shape[-2:]
    if not (2 <= ay <= h and 2 <= ax <= w):
        raise MeddiffError(f"acs={acs!r} must be between 2 and the k-space size {(h, w)}")
    y0, x0 = h // 2 - ay // 2, w // 2 - ax // 2
    return kspace[..., y0:y0 + ay, x0:x0 + ax]


def estimate_sensitivity_maps(kspace: Tensor, *, acs: int | tuple[int, int] = 24, method: str = "espirit",
                              kernel: int = 6, threshold: float = 0.02, crop: float | None = None,
                              iters: int = 0) -> Tensor:
    """Coil maps (C, H, W) complex64 from multi-coil centred k-space (C, H, W) whose central ``acs`` block is
    fully sampled (the rest may be undersampled or zero). See the module docstring for the methods.

    crop: support threshold (default 0.9 on the ESPIRiT eigenvalue, 0.05 of the RSS max for "lowres").
    """
    check_choice("method", method, CALIBRATION_METHODS)
    check_complex("kspace", kspace)
    if kspace.ndim != 3:
        raise MeddiffError(f"kspace must be (C, H, W) for one slice, got shape {tuple(kspace.shape)}")
    calib = acs_region(kspace, acs).to(torch.complex64)
    if not bool((calib.abs() > 0).all()):
        raise MeddiffError(f"the central acs={acs!r} block of kspace is not fully sampled; lower acs or sample the centre")
    if method == "lowres":
        return _lowres_maps(calib, tuple(kspace.shape[-2:]), 0.05 if crop is None else crop)
    return _espirit_maps(calib, tuple(kspace.shape[-2:]), kernel, threshold, 0.9 if crop is None else crop)


def _pad_centre(block: Tensor, shape: tuple[int, int]) -> Tensor:
    h, w = shape
    ay, ax = block.shape[-2:]
    out = torch.zeros(*block.shape[:-2], h, w, dtype=block.dtype, device=block.device)
    y0, x0 = h // 2 - ay // 2, w // 2 - ax // 2
    out[..., y0:y0 + ay, x0:x0 + ax] = block
    return out


def _lowres_maps(calib: Tensor, shape: tuple[int, int], crop: float) -> Tensor:
    ay, ax = calib.shape[-2:]
    window = torch.outer(torch.hann_window(ay, periodic=False), torch.hann_window(ax, periodic=False)).to(calib.device)
    images = ifft2c(_pad_centre(calib * window, shape))  # [C,H,W]
    norm = rss(images)  # [H,W]
    support = norm > crop * norm.max()
    return torch.where(support, images / norm.clamp_min(1e-12), torch.zeros_like(images)).to(torch.complex64)


def _espirit_maps(calib: Tensor, shape: tuple[int, int], k: int, threshold: float, crop: float) -> Tensor:
    c, ay, ax = calib.shape
    if k > min(ay, ax):
        raise MeddiffError(f"kernel={k} is larger than the ACS block {(ay, ax)}")
    # Calibration matrix: one row per k x k patch position, columns (coil, ky, kx).
    patches = calib.unfold(1, k, 1).unfold(2, k, 1)  # [C, ay-k+1, ax-k+1, k, k]
    mat = patches.permute(1, 2, 0, 3, 4).reshape(-1, c * k * k).to(torch.complex128)
    # Right singular vectors of the calibration matrix = eigenvectors of mat^H mat (much faster than an SVD).
    evals, evecs = torch.linalg.eigh(mat.conj().T @ mat)  # ascending, s^2
    sing = evals.clamp_min(0).sqrt()
    kernels = evecs[:, sing > threshold * sing.max()].T.conj().reshape(-1, c, k, k)  # [K, C, k, k] rows of V_par^H
    h, w = shape
    gram = torch.zeros(h * w, c, c, dtype=torch.complex64, device=calib.device)
    for chunk in kernels.to(torch.complex64).split(16):  # image-space kernels K_i(r); G(r) = sum_i K_i K_i^H
        img = ifft2c(_pad_centre(chunk, shape)).reshape(len(chunk), c, h * w).permute(2, 1, 0)  # [HW,C,K]
        gram += img @ img.conj().transpose(1, 2)
    gram = gram.reshape(h, w, c, c) * (h * w / k**2)
    eigval, eigvec = torch.linalg.eigh(gram)  # ascending
    maps = eigvec[..., -1]  # [H,W,C], unit norm per pixel
    maps = maps * torch.exp(-1j * torch.angle(maps[..., :1]))  # phase relative to coil 0
    maps = maps * (eigval[..., -1:] > crop)
    return maps.permute(2, 0, 1).to(torch.complex64).contiguous()
