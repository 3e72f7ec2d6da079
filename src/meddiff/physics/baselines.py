"""Classical reconstruction baselines over any ``LinearOperator`` (MRI single/multi-coil, inpainting, ...).

- ``zero_filled_rss``: RSS of the inverse FFT of zero-filled multi-coil k-space.
- ``cg_sense``: CG on the normal equations (A^H A + lam I) x = A^H y (Pruessmann et al., MRM 46:638, 2001).
- ``cs_wavelet``: min_x 1/2 ||A x - y||^2 + lam ||Psi x||_1 with an orthogonal Daubechies wavelet Psi, by FISTA
  (Beck & Teboulle, SIAM J. Imaging Sci. 2:183, 2009) with random cycle-spinning shifts (as BART's pics -R W).
- ``cs_tv``: min_x 1/2 ||A x - y||^2 + lam TV(x) (isotropic, complex), by ADMM (Boyd et al. 2011, sec. 6.4.1)
  with the split z = D x and CG for the x-update.

Regularisation weights are dimensionless: the data are divided by the 99th percentile of |A^H y| before solving
and the result multiplied back, so one weight fits scans of any intensity scale. ``DEFAULTS`` holds the weights
tuned on development masks of the ESPIRiT brain slice (see benchmarks/mri_baselines.py --tune) and then fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.fft import check_complex, ifft2c, rss
from meddiff.physics.operators import LinearOperator, conjugate_gradient, inner
from meddiff.physics.wavelets import approximation_mask, dwt2, idwt2, pad_to_multiple

# Tuned once on development masks (seed 100; test seeds are 0-2) of the brain slice over the 5 benchmark
# settings (benchmarks/mri_baselines.py --tune, best mean PSNR), then fixed.
DEFAULTS = {
    "cg_sense": {"iters": 10, "lam": 0.0},
    "cs_wavelet": {"lam": 0.004, "iters": 60, "wavelet": "db4", "levels": 4},
    "cs_tv": {"lam": 0.002, "iters": 40, "rho": 0.02, "cg_iters": 4},
}


class FiniteDifference(LinearOperator):
    """Forward differences D x = (x[i+1, j] - x[i, j], x[i, j+1] - x[i, j]) on (..., H, W) -> (..., 2, H, W),
    zero in the last row / column (Neumann boundary); real or complex."""

    def A(self, x: Tensor) -> Tensor:
        dy = torch.zeros_like(x)
        dx = torch.zeros_like(x)
        dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
        dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
        return torch.stack((dy, dx), dim=-3)

    def A_adjoint(self, y: Tensor) -> Tensor:
        dy, dx = y[..., 0, :, :], y[..., 1, :, :]
        out = torch.zeros_like(dy)
        out[..., 1:, :] += dy[..., :-1, :]
        out[..., :-1, :] -= dy[..., :-1, :]
        out[..., :, 1:] += dx[..., :, :-1]
        out[..., :, :-1] -= dx[..., :, :-1]
        return out


def zero_filled_rss(kspace: Tensor) -> Tensor:
    """RSS of the zero-filled coil images: (..., C, H, W) k-space (zeros where not sampled) -> (..., H, W) real."""
    check_complex("kspace", kspace)
    return rss(ifft2c(kspace))


def _scale(op: LinearOperator, y: Tensor) -> tuple[Tensor, float]:
    check_complex("y", y)
    aty = op.A_adjoint(y)
    mag = aty.abs().flatten()
    scale = float(torch.quantile(mag[:: max(1, mag.numel() // 1_000_000)], 0.99))
    if not scale > 0:
        raise MeddiffError("y has no energy in the range of the operator (A^H y = 0); check the mask and k-space")
    return aty / scale, scale


def cg_sense(op: LinearOperator, y: Tensor, *, iters: int | None = None, lam: float | None = None) -> Tensor:
    """CG-SENSE: ``iters`` CG iterations on (A^H A + lam I) x = A^H y from x = 0; returns complex x."""
    p = DEFAULTS["cg_sense"]
    iters, lam = p["iters"] if iters is None else iters, p["lam"] if lam is None else lam
    b, scale = _scale(op, y)
    x = conjugate_gradient(lambda v: op.normal(v) + lam * v, b, maxiter=iters, tol=1e-7)
    return x * scale


def _lipschitz(op: LinearOperator, like: Tensor) -> float:
    return 1.05 * op.norm(like, iters=12, generator=torch.Generator().manual_seed(0))


def _soft(c: Tensor, t: float | Tensor) -> Tensor:
    """Complex soft threshold: c * max(1 - t / |c|, 0)."""
    mag = c.abs()
    return c * torch.clamp(1 - t / mag.clamp_min(1e-12), min=0)


def cs_wavelet(op: LinearOperator, y: Tensor, *, lam: float | None = None, iters: int | None = None,
               wavelet: str | None = None, levels: int | None = None, seed: int = 0) -> Tensor:
    """L1-wavelet CS by FISTA on the zero-padded image (so that the orthogonal-wavelet prox is exact).

    Each iteration: z = v - (1/L) A^H(A v - y); x+ = Psi^H soft(Psi shift(z), lam/L) (coarsest band unpenalised);
    t+ = (1 + sqrt(1 + 4 t^2)) / 2; v = x+ + ((t - 1) / t+)(x+ - x) (Beck & Teboulle 2009, FISTA steps 1-3).
    """
    p = DEFAULTS["cs_wavelet"]
    lam = p["lam"] if lam is None else lam
    iters, wavelet, levels = (p["iters"] if iters is None else iters, p["wavelet"] if wavelet is None else wavelet,
                              p["levels"] if levels is None else levels)
    b, scale = _scale(op, y)
    y = y / scale
    h, w = b.shape[-2:]
    size = 2**levels
    x, _ = pad_to_multiple(b, size)
    keep = approximation_mask(tuple(x.shape[-2:]), levels).to(x.device)
    step = 1.0 / _lipschitz(op, b)
    generator = torch.Generator().manual_seed(seed)
    v, t = x.clone(), 1.0
    for _ in range(iters):
        grad = torch.zeros_like(v)
        grad[..., :h, :w] = op.A_adjoint(op.A(v[..., :h, :w]) - y)
        z = v - step * grad
        sy, sx = (int(s) for s in torch.randint(0, size, (2,), generator=generator))
        c = dwt2(torch.roll(z, (sy, sx), (-2, -1)), levels, wavelet)
        c = torch.where(keep, c, _soft(c, lam * step))
        x_new = torch.roll(idwt2(c, levels, wavelet), (-sy, -sx), (-2, -1))
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        v = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x[..., :h, :w] * scale


def cs_tv(op: LinearOperator, y: Tensor, *, lam: float | None = None, iters: int | None = None,
          rho: float | None = None, cg_iters: int | None = None) -> Tensor:
    """Isotropic-TV CS by ADMM with z = D x (scaled form, Boyd et al. 2011 eq. 3.5-3.7):
    x = argmin 1/2||A x - y||^2 + rho/2 ||D x - z + u||^2 (``cg_iters`` CG steps, warm start);
    z = group-soft(D x + u, lam / rho) over the two directions; u += D x - z."""
    p = DEFAULTS["cs_tv"]
    lam, iters = p["lam"] if lam is None else lam, p["iters"] if iters is None else iters
    rho, cg_iters = p["rho"] if rho is None else rho, p["cg_iters"] if cg_iters is None else cg_iters
    if not rho > 0:
        raise MeddiffError(f"rho={rho!r} must be > 0 (the ADMM penalty)")
    b, scale = _scale(op, y)
    diff = FiniteDifference()
    x = b.clone()
    z = diff.A(x)
    u = torch.zeros_like(z)
    for _ in range(iters):
        rhs = b + rho * diff.A_adjoint(z - u)
        x = conjugate_gradient(lambda v: op.normal(v) + rho * diff.normal(v), rhs, x0=x, maxiter=cg_iters, tol=1e-8)
        dxu = diff.A(x) + u
        mag = torch.sqrt((dxu.abs() ** 2).sum(-3, keepdim=True))
        z = dxu * torch.clamp(1 - (lam / rho) / mag.clamp_min(1e-12), min=0)
        u = dxu - z
    return x * scale


def data_residual(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """Relative data misfit ||A x - y|| / ||y||."""
    r = op.A(x) - y
    return math.sqrt(float(inner(r, r)) / max(float(inner(y, y)), 1e-30))
