"""Linear forward operators y = A x with adjoint, pseudo-inverse and data-consistency projections.

After deepinv's ``LinearPhysics``: each operator is a small immutable object with ``A``, ``A_adjoint``,
``A_dagger`` (pseudo-inverse), ``project(x, y)`` (closest x' to x with A x' = y), ``prox(x, y, gamma)``
(soft data consistency for noisy y) and ``dc_step`` (one gradient step on 1/2 ||A x - y||^2), plus
``adjointness_test``. Operators compose with ``@`` (``(P @ Q).A(x) = P.A(Q.A(x))``). Per-call parameters
(an MRI mask or coil maps) are keyword arguments that override the construction-time ones for that call
only; nothing is ever stored or mutated, so one operator is safe to share between samplers and threads.
Closed-form overrides accept (and ignore) the ``maxiter`` / ``tol`` of the CG defaults, so a caller can pass
them to any operator.

Data-consistency hook recipe (x0_hat complex (B, H, W), y the measured k-space):
``x0_hat = op.project(x0_hat, y)`` (hard, noiseless y) or ``op.prox(x0_hat, y, gamma)`` (soft, noisy y).

>>> import torch
>>> from meddiff.diffusion.samplers import Hook
>>> from meddiff.physics import SingleCoilMRI, from_channels, make_mask, to_channels
>>> mask = make_mask((32, 32), 4, "equispaced", acs_fraction=0.1, seed=0)
>>> op = SingleCoilMRI(mask)
>>> truth = torch.zeros(1, 32, 32, dtype=torch.complex64)
>>> truth[0, 10:22, 8:20] = 1 + 1j
>>> y = op.A(truth)                                  # [B,H,W] centred k-space, 0 where not sampled
>>> op.adjointness_test(truth) < 1e-6
True
>>> class KspaceDC(Hook):                            # hard DC on the x0 prediction (real/imag channels)
...     def denoised(self, x, x0, t):
...         return to_channels(op.project(from_channels(x0), y))
>>> x0 = KspaceDC().denoised(None, torch.zeros(1, 2, 32, 32), None)
>>> bool(torch.allclose(op.A(from_channels(x0)), y, atol=1e-6))
True
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.fft import check_complex, check_finite, check_mask, fft2c, ifft2c


def inner(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the Euclidean inner product <a, b> = Re sum conj(a) b over all entries (float64)."""
    if a.is_complex() or b.is_complex():
        return torch.sum(a.conj().to(torch.complex128) * b.to(torch.complex128)).real
    return torch.sum(a.double() * b.double())


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *,
                       maxiter: int = 30, tol: float = 1e-6) -> Tensor:
    """Solve apply(x) = b for a Hermitian positive (semi-)definite linear map (Hestenes & Stiefel 1952).

    Stops after ``maxiter`` iterations or when ||r|| <= tol ||b||. Works on real and complex tensors of any shape
    (the whole tensor is one vector); from x0 = 0 on a singular system it converges to the minimum-norm solution.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = inner(r, r)
    stop = (tol * math.sqrt(float(inner(b, b)))) ** 2
    for _ in range(maxiter):
        if float(rs) <= stop:
            break
        ap = apply(p)
        pap = inner(p, ap)
        if not float(pap) > 0:  # exact solution reached (or a semi-definite direction): stop cleanly
            break
        alpha = rs / pap
        x = x + alpha.to(x.dtype) * p
        r = r - alpha.to(r.dtype) * ap
        rs_new = inner(r, r)
        p = r + (rs_new / rs).to(r.dtype) * p
        rs = rs_new
    return x


class LinearOperator:
    """Base class: subclasses implement ``A`` and ``A_adjoint``; the rest has iterative defaults (CG)
    that subclasses replace with closed forms where they exist."""

    def A(self, x: Tensor, **params) -> Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: Tensor, **params) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, **params) -> Tensor:
        return self.A(x, **params)

    def normal(self, x: Tensor, **params) -> Tensor:
        """A^H A x."""
        return self.A_adjoint(self.A(x, **params), **params)

    def A_dagger(self, y: Tensor, *, maxiter: int = 50, tol: float = 1e-6, **params) -> Tensor:
        """Pseudo-inverse A^+ y: minimum-norm least-squares solution of A^H A x = A^H y by CG from 0."""
        return conjugate_gradient(lambda v: self.normal(v, **params), self.A_adjoint(y, **params),
                                  maxiter=maxiter, tol=tol)

    pinv = A_dagger

    def project(self, x: Tensor, y: Tensor, *, maxiter: int = 50, tol: float = 1e-6, **params) -> Tensor:
        """Hard data consistency: the point of {x' : A x' = y} closest to x, x - A^+(A x - y) (CG by default)."""
        return x - self.A_dagger(self.A(x, **params) - y, maxiter=maxiter, tol=tol, **params)

    def prox(self, x: Tensor, y: Tensor, gamma: float, *, maxiter: int = 30, **params) -> Tensor:
        """Soft data consistency for noisy y: argmin_z 1/2 ||A z - y||^2 + 1/(2 gamma) ||z - x||^2
        = (I + gamma A^H A)^{-1} (x + gamma A^H y). gamma -> inf gives ``project``, gamma = 0 returns x."""
        _check_gamma(gamma)
        if math.isinf(gamma):
            return self.project(x, y, **params)
        b = x + gamma * self.A_adjoint(y, **params)
        return conjugate_gradient(lambda v: v + gamma * self.normal(v, **params), b, x0=x, maxiter=maxiter)

    def dc_step(self, x: Tensor, y: Tensor, step: float = 1.0, **params) -> Tensor:
        """One gradient step on 1/2 ||A x - y||^2: x - step A^H (A x - y) (DPS-like / score-MRI DC)."""
        return x - step * self.A_adjoint(self.A(x, **params) - y, **params)

    def adjointness_test(self, x: Tensor, *, generator: torch.Generator | None = None, **params) -> float:
        """Relative mismatch |<A x, y> - <x, A^H y>| / |<A x, y>| for random x shaped like ``x`` and
        y = A x + z with random z (so <A x, y> ~ ||A x||^2 is far from 0); ~1e-7 in float32 for a true adjoint."""
        x = _randn_like(x, generator)
        ax = self.A(x, **params)
        y = ax + _randn_like(ax, generator)
        lhs, rhs = inner(ax, y), inner(x, self.A_adjoint(y, **params))
        return abs(float(lhs - rhs)) / (abs(float(lhs)) + 1e-30)

    def norm(self, x: Tensor, *, iters: int = 30, generator: torch.Generator | None = None, **params) -> float:
        """Operator norm squared ||A||^2 = largest eigenvalue of A^H A, by power iteration from random x."""
        v = _randn_like(x, generator)
        value = 0.0
        for _ in range(iters):
            v = v / math.sqrt(float(inner(v, v)))
            w = self.normal(v, **params)
            value = float(inner(v, w))
            v = w
        return value

    def __matmul__(self, other: "LinearOperator") -> "Compose":
        return Compose(self, other)


class Compose(LinearOperator):
    """Product outer . inner: A = outer.A(inner.A(x)), A^H = inner.A^H(outer.A^H(y)). Per-call parameters are
    not forwarded (give each factor its own at construction)."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        self.outer, self.inner = outer, inner

    def A(self, x: Tensor) -> Tensor:
        return self.outer.A(self.inner.A(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.inner.A_adjoint(self.outer.A_adjoint(y))


class FFT2(LinearOperator):
    """Centred unitary 2D DFT over the last two axes (A^H = A^+ = A^{-1} = ``ifft2c``)."""

    def A(self, x: Tensor) -> Tensor:
        check_complex("x", x)
        return fft2c(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        check_complex("y", y)
        return ifft2c(y)

    def A_dagger(self, y: Tensor, *, maxiter: int | None = None, tol: float | None = None) -> Tensor:
        return self.A_adjoint(y)

    def project(self, x: Tensor, y: Tensor, *, maxiter: int | None = None, tol: float | None = None) -> Tensor:
        return self.A_adjoint(y)

    def prox(self, x: Tensor, y: Tensor, gamma: float, *, maxiter: int | None = None) -> Tensor:
        _check_gamma(gamma)
        return self.project(x, y) if math.isinf(gamma) else (x + gamma * self.A_adjoint(y)) / (1.0 + gamma)


class _Masked(LinearOperator):
    """Shared mask handling: a per-call ``mask`` overrides the one given at construction."""

    def __init__(self, mask: Tensor | None = None) -> None:
        self.mask = mask

    def _mask(self, mask: Tensor | None, shape: tuple[int, ...]) -> Tensor:
        mask = self.mask if mask is None else mask
        if mask is None:
            raise MeddiffError(f"{type(self).__name__} needs a mask: pass mask= at construction or per call")
        return check_mask("mask", mask, shape)


class SingleCoilMRI(_Masked):
    """Single-coil Cartesian MRI y = M F x: x complex (B, H, W), y centred k-space (B, H, W) on the full grid,
    zero where not sampled; mask (H, W) or (B, H, W) of 0/1. A A^H = M is a projection, so A^+ = A^H and
    ``project`` is hard k-space replacement."""

    def A(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        check_complex("x", x)
        return self._mask(mask, x.shape).to(x.device) * fft2c(x)

    def A_adjoint(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        check_complex("y", y)
        return ifft2c(self._mask(mask, y.shape).to(y.device) * y)

    def A_dagger(self, y: Tensor, mask: Tensor | None = None, *, maxiter: int | None = None,
                 tol: float | None = None) -> Tensor:
        return self.A_adjoint(y, mask=mask)

    def project(self, x: Tensor, y: Tensor, mask: Tensor | None = None, *, maxiter: int | None = None,
                tol: float | None = None) -> Tensor:
        """Replace the measured k-space of x by y: F^H((1 - M) F x + M y)."""
        check_complex("x", x), check_complex("y", y)
        m, k = self._mask(mask, y.shape).to(y.device), fft2c(x)
        return ifft2c(k + m * (y - k))

    def prox(self, x: Tensor, y: Tensor, gamma: float, mask: Tensor | None = None, *,
             maxiter: int | None = None) -> Tensor:
        """Noisy DC: measured k-space becomes (F x + gamma y) / (1 + gamma), i.e. (1 - lam) F x + lam y with
        lam = gamma / (1 + gamma) (the lambda of Chung & Ye 2022, score-MRI, eq. 14)."""
        _check_gamma(gamma)
        check_complex("x", x), check_complex("y", y)
        m, k = self._mask(mask, y.shape).to(y.device), fft2c(x)
        lam = 1.0 if math.isinf(gamma) else gamma / (1.0 + gamma)
        return ifft2c(k + lam * m * (y - k))


class CoilSensitivity(LinearOperator):
    """Coil images from an image: (B, H, W) -> (B, C, H, W), x_c = S_c x; A^H y = sum_c conj(S_c) y_c.
    ``maps`` (C, H, W) or (B, C, H, W) complex, per-call ``maps=`` overrides."""

    def __init__(self, maps: Tensor | None = None) -> None:
        self.maps = maps

    def _maps(self, maps: Tensor | None, image_shape: tuple[int, ...]) -> Tensor:
        maps = self.maps if maps is None else maps
        if maps is None:
            raise MeddiffError(f"{type(self).__name__} needs coil sensitivity maps: pass maps= (C, H, W)")
        check_complex("maps", maps)
        if maps.ndim < 3 or tuple(maps.shape[-2:]) != tuple(image_shape[-2:]):
            raise MeddiffError(f"maps has shape {tuple(maps.shape)}; expected (C, H, W) or (B, C, H, W) with "
                               f"(H, W) = {tuple(image_shape[-2:])} of the image")
        return maps

    def A(self, x: Tensor, maps: Tensor | None = None) -> Tensor:
        check_complex("x", x)
        return self._maps(maps, x.shape) * x.unsqueeze(-3)  # [B,C,H,W]

    def A_adjoint(self, y: Tensor, maps: Tensor | None = None) -> Tensor:
        check_complex("y", y)
        return (self._maps(maps, y.shape).conj() * y).sum(-3)  # [B,H,W]


class MultiCoilMRI(_Masked):
    """Multi-coil Cartesian MRI y_c = M F S_c x (SENSE model, Pruessmann et al. 1999): x complex (B, H, W),
    y (B, C, H, W) centred k-space on the full grid; maps (C, H, W) or (B, C, H, W) normalised so that
    sum_c |S_c|^2 = 1 inside the support (then ||A|| <= 1). Equals ``SingleCoilMRI(mask) @ CoilSensitivity(maps)``.

    ``dc_step(x, y, 1)`` = S^H F^H((1 - M) F S x + M y): coil-wise k-space replacement, then sensitivity
    combination, the cheap DC step used by score-MRI for multi-coil data; ``project`` is the exact projection
    x - A^+(A x - y) with A^+ by CG on the normal equations (``maxiter`` iterations, default 50; ~30 reach 1e-6 at
    2x on a small test), exact up to the CG tolerance. ``dc_step`` assumes S^H S = I on the support.
    """

    def __init__(self, maps: Tensor | None = None, mask: Tensor | None = None) -> None:
        super().__init__(mask)
        self.coils = CoilSensitivity(maps)

    def A(self, x: Tensor, mask: Tensor | None = None, maps: Tensor | None = None) -> Tensor:
        k = fft2c(self.coils.A(x, maps=maps))  # [B,C,H,W]
        return self._mask(mask, k.shape).to(k.device) * k

    def A_adjoint(self, y: Tensor, mask: Tensor | None = None, maps: Tensor | None = None) -> Tensor:
        check_complex("y", y)
        return self.coils.A_adjoint(ifft2c(self._mask(mask, y.shape).to(y.device) * y), maps=maps)

    def project_coils(self, coil_images: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Hard DC on coil images (B, C, H, W): replace their measured k-space by y (exact, cheap)."""
        check_complex("coil_images", coil_images), check_complex("y", y)
        m, k = self._mask(mask, y.shape).to(y.device), fft2c(coil_images)
        return ifft2c(k + m * (y - k))


class Inpainting(_Masked):
    """Pixel mask y = m * x for inpainting (real or complex (B, C, H, W) / (B, H, W)); mask broadcasts
    against x (e.g. (H, W) or (B, 1, H, W)), 1 = known pixel. A = A^H = A^+ (a projection)."""

    def A(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        check_finite("x", x)
        return self._mask(mask, x.shape).to(x.device) * x

    def A_adjoint(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        check_finite("y", y)
        return self._mask(mask, y.shape).to(y.device) * y

    def A_dagger(self, y: Tensor, mask: Tensor | None = None, *, maxiter: int | None = None,
                 tol: float | None = None) -> Tensor:
        return self.A_adjoint(y, mask=mask)

    def project(self, x: Tensor, y: Tensor, mask: Tensor | None = None, *, maxiter: int | None = None,
                tol: float | None = None) -> Tensor:
        """Known pixels from y, the rest from x: (1 - m) x + m y."""
        check_finite("x", x), check_finite("y", y)
        m = self._mask(mask, x.shape).to(x.device)
        return x + m * (y - x)

    def prox(self, x: Tensor, y: Tensor, gamma: float, mask: Tensor | None = None, *,
             maxiter: int | None = None) -> Tensor:
        _check_gamma(gamma)
        m = self._mask(mask, x.shape).to(x.device)
        lam = 1.0 if math.isinf(gamma) else gamma / (1.0 + gamma)
        return x + lam * m * (y - x)


class Downsampling(LinearOperator):
    """Average pooling by ``factor`` over the last two axes (super-resolution): (..., H, W) -> (..., H/f, W/f),
    real or complex. A A^H = I / f^2, so A^+ = f^2 A^H (nearest-neighbour upsampling) and projections are
    closed-form."""

    def __init__(self, factor: int) -> None:
        if not isinstance(factor, int) or factor < 1:
            raise MeddiffError(f"factor={factor!r} must be a positive integer (the pooling size)")
        self.factor = factor

    def A(self, x: Tensor) -> Tensor:
        check_finite("x", x)
        f, (h, w) = self.factor, x.shape[-2:]
        if h % f or w % f:
            raise MeddiffError(f"x has spatial size {(h, w)}, not divisible by factor={f}; crop or pad it first")
        return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean(dim=(-3, -1))

    def A_adjoint(self, y: Tensor) -> Tensor:
        check_finite("y", y)
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2

    def A_dagger(self, y: Tensor, *, maxiter: int | None = None, tol: float | None = None) -> Tensor:
        return self.A_adjoint(y) * self.factor**2

    def project(self, x: Tensor, y: Tensor, *, maxiter: int | None = None, tol: float | None = None) -> Tensor:
        """Shift each f x f block of x so that its mean equals the matching pixel of y."""
        return x - self.A_dagger(self.A(x) - y)

    def prox(self, x: Tensor, y: Tensor, gamma: float, *, maxiter: int | None = None) -> Tensor:
        # A^H A = P / f^2 with P the block-mean projection: (I + g P / f^2)^{-1} = I - P + P / (1 + g / f^2).
        _check_gamma(gamma)
        f2 = self.factor**2
        b = x + gamma * self.A_adjoint(y) if not math.isinf(gamma) else None
        if b is None:
            return self.project(x, y)
        pb = self.A_dagger(self.A(b))
        return b - pb + pb / (1.0 + gamma / f2)


def _check_gamma(gamma: float) -> None:
    if not gamma >= 0:
        raise MeddiffError(f"gamma={gamma!r} must be >= 0 (0: ignore the data, inf: hard projection)")


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if x.is_complex():
        real = torch.randn(x.shape, generator=generator, dtype=x.real.dtype)
        imag = torch.randn(x.shape, generator=generator, dtype=x.real.dtype)
        return torch.complex(real, imag).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
