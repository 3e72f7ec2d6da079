"""Classical restoration baselines on a ``Problem``: each returns the restored (H, W) float32 tensor in the input's
intensity units.

- "nearest", "bicubic" (Keys' cubic convolution, a = -0.75, ``torch.nn.functional.interpolate``), "lanczos"
  (Lanczos-3, Pillow): upsampling of the low-resolution image, pixel centres as in ``problems`` (super-resolution).
- "tv": min_x 1/2 ||A x - y||^2 / ||A||^2 + lam TV(x) (isotropic TV) by ADMM with the split z = D x (Boyd et al.
  2011, sec. 6.4.1; the x-update by a few warm-started CG steps), for every task. The data term is divided by the
  operator norm ||A||^2 (1/s^2 for area downsampling, 1 for inpainting and denoising) and the image by its
  intensity scale (``magnitude_scale``), so ``lam`` is dimensionless; one weight per task in ``TV_WEIGHTS``.
- "biharmonic": inpainting by the smoothest fill, Laplacian^2 u = 0 in the hole with the known pixels as boundary
  values (the 5-point Laplacian with Neumann boundary, solved exactly with a sparse LU; Damelin & Hoang 2018, as
  scikit-image's ``inpaint_biharmonic``).
- "bm3d": BM3D denoising (Dabov et al. 2007; Makinen et al. 2020) from the optional package ``bm3d``
  (``pip install 'meddiff[restore]'``); a clear ``MeddiffError`` when it is missing.
Rician data (``noise="rician"``) are bias-corrected first for every denoiser: sqrt(max(y^2 - 2 sigma^2, 0)), since
E[y^2] = x^2 + 2 sigma^2 (Gudbjartsson & Patz 1995).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.data.transforms import magnitude_scale
from meddiff.errors import MeddiffError, check_choice
from meddiff.physics.baselines import FiniteDifference
from meddiff.physics.operators import conjugate_gradient
from meddiff.tasks.restore.problems import Problem

BASELINES = {
    "super-resolution": ("nearest", "bicubic", "lanczos", "tv"),
    "inpaint": ("biharmonic", "tv"),
    "denoise": ("tv", "bm3d"),
}
# Starting weights (lam, dimensionless) per task; benchmarks/restoration.py tunes them on val subjects per setting.
TV_WEIGHTS = {"super-resolution": 0.002, "inpaint": 0.001, "denoise": 0.05}
TV_ITERS = 100


def rician_correct(y: Tensor, sigma: float) -> Tensor:
    """Bias-corrected magnitude sqrt(max(y^2 - 2 sigma^2, 0)) of Rician data with per-channel noise sd sigma."""
    return torch.sqrt(torch.clamp(y.double() ** 2 - 2 * sigma**2, min=0)).float()


def denoising_input(problem: Problem) -> Tensor:
    """The image a denoiser sees: y, bias-corrected for Rician noise."""
    return rician_correct(problem.y, problem.sigma) if problem.noise == "rician" else problem.y


def upsample(y: Tensor, scale: int, mode: str) -> Tensor:
    """(H, W) -> (scale H, scale W) by "nearest", "bicubic" or "lanczos"."""
    h, w = y.shape
    if mode == "nearest":
        return y.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    if mode == "bicubic":
        return F.interpolate(y[None, None], scale_factor=scale, mode="bicubic", align_corners=False)[0, 0]
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(y.numpy(), dtype=np.float32))  # mode "F"
    return torch.from_numpy(np.array(img.resize((w * scale, h * scale), Image.Resampling.LANCZOS), np.float32))


def tv_restore(problem: Problem, lam: float | None = None, *, iters: int = TV_ITERS, rho: float | None = None,
               cg_iters: int = 5) -> Tensor:
    """TV-regularised restoration by ADMM (scaled form, Boyd et al. 2011 eq. 3.5-3.7): x = argmin 1/2||A x - y||^2 /
    ||A||^2 + rho/2 ||D x - z + u||^2 (CG), z = group-soft(D x + u, lam / rho), u += D x - z; rho default 10 lam."""
    lam = TV_WEIGHTS[problem.task] if lam is None else lam
    if not lam >= 0:
        raise MeddiffError(f"lam={lam!r} must be >= 0 (the TV weight)")
    rho = 10 * lam if rho is None else rho
    if not rho > 0:
        raise MeddiffError(f"rho={rho!r} must be > 0 (the ADMM penalty); pass it when lam = 0")
    op = problem.op
    y = denoising_input(problem) if problem.task == "denoise" else problem.y
    scale = magnitude_scale(y)
    y = y / scale
    norm = {"super-resolution": None, "inpaint": 1.0, "denoise": 1.0}[problem.task]
    if norm is None:
        norm = op.norm(torch.zeros(problem.shape), iters=20, generator=torch.Generator().manual_seed(0))
    x = start_image(problem) / scale
    diff = FiniteDifference()
    b = op.A_adjoint(y) / norm
    z = diff.A(x)
    u = torch.zeros_like(z)
    for _ in range(iters):
        rhs = b + rho * diff.A_adjoint(z - u)
        x = conjugate_gradient(lambda v: op.normal(v) / norm + rho * diff.normal(v), rhs, x0=x, maxiter=cg_iters,
                               tol=1e-8)
        dxu = diff.A(x) + u
        mag = torch.sqrt((dxu**2).sum(-3, keepdim=True))
        z = dxu * torch.clamp(1 - (lam / rho) / mag.clamp_min(1e-12), min=0)
        u = dxu - z
    return x * scale


def start_image(problem: Problem) -> Tensor:
    """A cheap first estimate: bicubic (super-resolution), biharmonic (inpainting; TV's ADMM fills a hole only slowly
    from the mean), the (bias-corrected) noisy image (denoising); ``problem.start`` when it is set."""
    if problem.start is not None:
        return problem.start.clone()
    if problem.task == "super-resolution":
        return upsample(problem.y, problem.scale, "bicubic")
    if problem.task == "inpaint":
        return biharmonic(problem)
    return denoising_input(problem).clone()


def laplacian(shape: tuple[int, ...]):
    """The 2N+1-point Laplacian with Neumann boundary of an N-D grid (scipy CSR, C order): sum over the axes of the
    second difference along one axis (Kronecker sums)."""
    import scipy.sparse as sp

    def second_difference(n: int):
        main = -2.0 * np.ones(n)
        main[[0, -1]] = -1.0  # Neumann ends
        return sp.diags([np.ones(n - 1), main, np.ones(n - 1)], [-1, 0, 1]) if n > 1 else sp.csr_matrix((1, 1))

    total = None
    for axis in range(len(shape)):
        term = sp.identity(1)
        for other, n in enumerate(shape):
            term = sp.kron(term, second_difference(n) if other == axis else sp.identity(n))
        total = term if total is None else total + term
    return total.tocsr()


def biharmonic(problem: Problem) -> Tensor:
    """Fill the hole with the solution of L^T L u = 0 (L: 5-point Laplacian, Neumann boundary) that equals y on the
    known pixels: the minimiser of ||L u||^2, solved for the hole pixels only (sparse LU)."""
    from scipy.sparse.linalg import spsolve

    h, w = problem.shape
    lap = laplacian((h, w))
    bih = (lap.T @ lap).tocsr()
    known = problem.known.numpy().reshape(-1)
    hole = ~known
    values = problem.y.double().numpy().reshape(-1)
    out = values.copy()
    rhs = -bih[hole][:, known] @ values[known]
    out[hole] = np.atleast_1d(spsolve(bih[hole][:, hole].tocsc(), rhs))
    return torch.from_numpy(out.reshape(h, w).astype(np.float32))


def bm3d_denoise(problem: Problem) -> Tensor:
    """BM3D (package ``bm3d``) with the known noise sd on the image scaled to its 99.5th percentile."""
    try:
        import bm3d
    except ImportError:
        raise MeddiffError("--method bm3d needs the optional package bm3d: pip install 'meddiff[restore]'") from None
    y = denoising_input(problem)
    scale = magnitude_scale(y)
    out = bm3d.bm3d(y.double().numpy() / scale, sigma_psd=problem.sigma / scale)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) * np.float32(scale))


def baseline(method: str, problem: Problem, **params) -> Tensor:
    """Run a classical baseline -> (H, W) float32 in the input's units. ``params``: ``lam`` (and ``iters``, ``rho``)
    for "tv"; none for the others."""
    check_choice(f"--method (for --task {problem.task})", method, BASELINES[problem.task])
    if method != "tv" and params:
        raise MeddiffError(f"--method {method} takes no parameters (got {sorted(params)})")
    if method == "tv":
        unknown = sorted(set(params) - {"lam", "iters", "rho"})
        if unknown:
            raise MeddiffError(f"--method tv: unknown parameter(s) {unknown}; allowed: ['iters', 'lam', 'rho']")
        return tv_restore(problem, **params).float()
    if method in ("nearest", "bicubic", "lanczos"):
        return upsample(problem.y, problem.scale, method)
    if method == "biharmonic":
        return biharmonic(problem)
    return bm3d_denoise(problem)
