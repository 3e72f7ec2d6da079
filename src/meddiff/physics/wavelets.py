"""Orthogonal 2D discrete wavelet transform (periodised Haar / Daubechies) in torch, for L1-wavelet CS.

Analysis of one level along an axis of even length N: lo[n] = sum_k h[k] x[(2n + k) mod N], hi[n] = sum_k g[k]
x[(2n + k) mod N] with the quadrature-mirror filter g[k] = (-1)^k h[L-1-k] (Daubechies 1992, ch. 5-6); with
periodic extension this is an orthogonal matrix, so the inverse is the transpose and ||W x|| = ||x||.
Coefficients are stored in one array of the input's shape, LL in the top-left corner (Mallat layout).
Works on real or complex tensors (..., H, W); H and W must be divisible by 2^levels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

_S3 = math.sqrt(3.0)
# Scaling (low-pass) filters with sum h = sqrt(2), sum h^2 = 1 (pywt "haar", "db2", "db4").
FILTERS = {
    "haar": [1 / math.sqrt(2), 1 / math.sqrt(2)],
    "db2": [(1 + _S3) / (4 * math.sqrt(2)), (3 + _S3) / (4 * math.sqrt(2)),
            (3 - _S3) / (4 * math.sqrt(2)), (1 - _S3) / (4 * math.sqrt(2))],
    "db4": [0.23037781330885523, 0.7148465705525415, 0.6308807679295904, -0.02798376941698385,
            -0.18703481171888114, 0.030841381835986965, 0.032883011666982945, -0.010597401784997278],
}


def _filters(wavelet: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    check_choice("wavelet", wavelet, tuple(FILTERS))
    h = torch.tensor(FILTERS[wavelet], dtype=torch.float64)
    g = torch.tensor([(-1) ** k for k in range(len(h))], dtype=torch.float64) * h.flip(0)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    return h.to(real), g.to(real)


def _analysis_1d(x: Tensor, h: Tensor, g: Tensor, dim: int) -> Tensor:
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    idx = ((2 * torch.arange(n // 2).unsqueeze(1) + torch.arange(len(h))) % n).to(x.device)  # [N/2, L]
    patches = x[..., idx]  # [..., N/2, L]
    lo = (patches * h).sum(-1)
    hi = (patches * g).sum(-1)
    return torch.cat((lo, hi), -1).movedim(-1, dim)


def _synthesis_1d(c: Tensor, h: Tensor, g: Tensor, dim: int) -> Tensor:
    c = c.movedim(dim, -1)
    n = c.shape[-1]
    lo, hi = c[..., : n // 2], c[..., n // 2:]
    idx = ((2 * torch.arange(n // 2).unsqueeze(1) + torch.arange(len(h))) % n).to(c.device)  # [N/2, L]
    contrib = lo.unsqueeze(-1) * h + hi.unsqueeze(-1) * g  # [..., N/2, L]
    out = torch.zeros(*c.shape[:-1], n, dtype=contrib.dtype, device=c.device)
    out.index_add_(out.ndim - 1, idx.reshape(-1), contrib.reshape(*c.shape[:-1], -1))
    return out.movedim(-1, dim)


def _check(x: Tensor, levels: int) -> None:
    h, w = x.shape[-2:]
    if levels < 1 or h % 2**levels or w % 2**levels:
        raise MeddiffError(f"image size {(h, w)} must be divisible by 2^levels = {2**levels} (levels={levels}); "
                           f"pad it (see pad_to_multiple)")


def dwt2(x: Tensor, levels: int = 3, wavelet: str = "db4") -> Tensor:
    """Forward orthogonal 2D DWT of (..., H, W) -> coefficients of the same shape (Mallat layout)."""
    _check(x, levels)
    h, g = (f.to(x.device) for f in _filters(wavelet, x.dtype))
    out = x.clone()
    hh, ww = x.shape[-2:]
    for _ in range(levels):
        block = out[..., :hh, :ww]
        block = _analysis_1d(_analysis_1d(block, h, g, -1), h, g, -2)
        out[..., :hh, :ww] = block
        hh, ww = hh // 2, ww // 2
    return out


def idwt2(c: Tensor, levels: int = 3, wavelet: str = "db4") -> Tensor:
    """Inverse (= adjoint) of ``dwt2``."""
    _check(c, levels)
    h, g = (f.to(c.device) for f in _filters(wavelet, c.dtype))
    out = c.clone()
    sizes = [(c.shape[-2] // 2**i, c.shape[-1] // 2**i) for i in range(levels)]
    for hh, ww in reversed(sizes):
        block = out[..., :hh, :ww]
        block = _synthesis_1d(_synthesis_1d(block, h, g, -2), h, g, -1)
        out[..., :hh, :ww] = block
    return out


def approximation_mask(shape: tuple[int, int], levels: int) -> Tensor:
    """Boolean (H, W) mask of the coarsest LL band (often left unpenalised in L1-wavelet CS)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[: shape[0] // 2**levels, : shape[1] // 2**levels] = True
    return mask


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad the last two axes of x at the end up to a multiple; returns the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    out = torch.zeros(*x.shape[:-2], h + ph, w + pw, dtype=x.dtype, device=x.device)
    out[..., :h, :w] = x
    return out, (h, w)
