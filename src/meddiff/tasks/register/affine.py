"""Affine registration by gradient descent on an image similarity (global NCC or MSE), coarse to fine (2 levels of
block averaging), started from the scanners' world alignment and the centres of mass.

Matrices are 4 x 4 (3D; 3 x 3 in 2D) maps from fixed-grid voxel indices to moving-grid voxel indices, so that the
affinely warped moving image is ``moving(M @ [p, 1])`` at every fixed voxel ``p`` (one interpolation, whatever the
two grids are). Intensities are scaled by ``meddiff.data.magnitude_scale`` (99.5th percentile of the head -> 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from meddiff.errors import MeddiffError
from meddiff.tasks.register.fields import affine_coords, sample

SIMILARITIES = ("ncc", "mse")


@dataclass(frozen=True)
class AffineSettings:
    """Coarse-to-fine schedule: block-average ``factors`` (coarse first), at most ``iterations`` Adam steps of ``lr``
    per level; a level stops early when the loss has not dropped by ``tolerance`` (relative) in ``patience`` steps.
    ``head_extent_mm``: ``meddiff register`` measures the similarity only within this distance below the top of the
    fixed head (``head_top_mask``; on 5 val pairs mean Dice 0.578 everywhere, 0.617 at 150 mm, 0.620 at 130 mm)."""

    similarity: str = "ncc"
    factors: tuple[int, ...] = (4, 2)
    iterations: tuple[int, ...] = (150, 60)
    lr: float = 0.01
    patience: int = 20
    tolerance: float = 1e-4
    head_extent_mm: float | None = 150.0  # pipeline: similarity over the top 150 mm of the head (None: everywhere)

    def __post_init__(self):
        if self.similarity not in SIMILARITIES:
            raise MeddiffError(f"similarity={self.similarity!r}: choose one of {', '.join(SIMILARITIES)}")
        if len(self.factors) != len(self.iterations) or not self.factors:
            raise MeddiffError(f"affine settings: {len(self.factors)} factors but {len(self.iterations)} iteration "
                               "counts; give one per level")


def scale_intensity(volume) -> np.ndarray:
    """float32 volume divided by its ``magnitude_scale`` (the 99.5th percentile of the head -> 1)."""
    from meddiff.data.transforms import magnitude_scale

    v = np.asarray(volume, dtype=np.float32)
    return v / np.float32(magnitude_scale(np.abs(v)))


def world_matrix(moving_affine: np.ndarray, fixed_affine: np.ndarray) -> np.ndarray:
    """Fixed voxel -> moving voxel through world space, ``A_moving^-1 A_fixed``; refuses singular affines."""
    for name, a in (("moving", moving_affine), ("fixed", fixed_affine)):
        a = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:-1, :-1])) < 1e-12:
            raise MeddiffError(f"--{name}: its affine (voxel -> world) is not invertible (determinant "
                               f"{np.linalg.det(a[:-1, :-1]) if np.all(np.isfinite(a)) else 'NaN'}); fix the NIfTI "
                               "header (sform/qform) before registering")
    return np.linalg.inv(np.asarray(moving_affine, dtype=np.float64)) @ np.asarray(fixed_affine, dtype=np.float64)


def centre_of_mass(volume: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (voxels) of the positive part of a volume (its middle when empty)."""
    w = np.clip(np.asarray(volume, dtype=np.float64), 0, None)
    grids = np.meshgrid(*[np.arange(s) for s in w.shape], indexing="ij")
    total = w.sum()
    if total <= 0:
        return (np.asarray(w.shape) - 1) / 2.0
    return np.array([(g * w).sum() / total for g in grids])


def head_top_mask(volume: np.ndarray, affine: np.ndarray, extent_mm: float = 150.0,
                  threshold: float = 0.1) -> np.ndarray:
    """Voxels of a head volume within ``extent_mm`` below the top of the head (world S axis), as FSL's ``robustfov``
    does, so that the neck and shoulders (whose pose varies between scans) do not drive a brain registration. The top
    is the highest voxel above ``threshold`` x the 99.5th percentile."""
    v = scale_intensity(volume)
    head = v > threshold
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in v.shape], indexing="ij"), 0).reshape(v.ndim, -1)
    a = np.asarray(affine, dtype=np.float64)
    z = (a[2, :v.ndim] @ grid + a[2, 3]).reshape(v.shape)  # world S (mm)
    if not head.any():
        return np.ones(v.shape, dtype=bool)
    return z >= z[head].max() - extent_mm


def _pool(x: torch.Tensor, f: int) -> torch.Tensor:
    if f == 1:
        return x
    pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
    return pool(x, f, ceil_mode=True)


def _similarity(a: torch.Tensor, b: torch.Tensor, kind: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:
        a, b = a[mask], b[mask]
    if kind == "mse":
        return ((a - b) ** 2).mean()
    a, b = a - a.mean(), b - b.mean()
    return 1.0 - (a * b).sum() / ((a.square().sum() * b.square().sum()).sqrt() + 1e-8)


def register_affine(moving: np.ndarray, fixed: np.ndarray, init: np.ndarray | None = None,
                    settings: AffineSettings | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """The (N+1) x (N+1) fixed-voxel -> moving-voxel matrix that best aligns ``moving`` to ``fixed`` (arrays of the
    same dimensionality N = 2 or 3, any shapes). ``init`` (default identity) is the starting map, e.g. the world
    alignment of ``world_matrix``; a centre-of-mass translation is added to it first.

    Parametrisation: ``M = init @ (c + B (p - c) + s t)`` with c the fixed grid's centre, s its largest half-size
    (so t and B - I are of order one), optimised by Adam on 1 - NCC (or MSE) of the block-averaged images."""
    settings = settings or AffineSettings()
    mov, fix = scale_intensity(moving), scale_intensity(fixed)
    if mov.ndim != fix.ndim or mov.ndim not in (2, 3):
        raise MeddiffError(f"--moving is {mov.ndim}D but --fixed is {fix.ndim}D; both must be 2D or both 3D")
    n = fix.ndim
    init = np.eye(n + 1) if init is None else np.asarray(init, dtype=np.float64)
    centre = (np.asarray(fix.shape, dtype=np.float64) - 1) / 2
    s = float(max(fix.shape)) / 2
    inv = np.linalg.inv(init)
    target = (inv @ np.append(centre_of_mass(mov), 1.0))[:n]
    t0 = (target - centre_of_mass(fix)) / s
    mt = torch.from_numpy(mov)[None, None]
    ft = torch.from_numpy(fix)[None, None]
    B = torch.eye(n, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    init_t = torch.from_numpy(init)
    c_t = torch.from_numpy(centre)

    def matrix() -> torch.Tensor:  # fixed voxel -> moving voxel, (N+1, N+1)
        inner = torch.eye(n + 1, dtype=torch.float64)
        inner = torch.cat([torch.cat([B, (c_t - B @ c_t + s * t)[:, None]], 1), inner[n:]], 0)
        return init_t @ inner

    mask_t = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    for f, iters in zip(settings.factors, settings.iterations):
        fix_l, mov_l = _pool(ft, f), _pool(mt, f)
        mask_l = None if mask_t is None else _pool(mask_t, f) > 0.5
        # level voxel p_l <-> full voxel f p_l + (f-1)/2, on both grids
        up = np.eye(n + 1)
        up[:n, :n] *= f
        up[:n, n] = (f - 1) / 2
        up_t, down_t = torch.from_numpy(up), torch.from_numpy(np.linalg.inv(up))
        grid = affine_coords(np.eye(n + 1), fix_l.shape[2:]).double()[0]  # [N,*S]
        flat = torch.cat([grid.reshape(n, -1), torch.ones(1, grid[0].numel(), dtype=torch.float64)], 0)
        opt = torch.optim.Adam([B, t], lr=settings.lr)
        history = []
        for _ in range(iters):
            opt.zero_grad()
            m = down_t @ matrix() @ up_t
            coords = (m @ flat)[:n].reshape((1, n) + tuple(fix_l.shape[2:]))
            loss = _similarity(sample(mov_l, coords.float()), fix_l, settings.similarity, mask_l)
            loss.backward()
            opt.step()
            history.append(loss.item())
            if len(history) > settings.patience and history[-settings.patience - 1] - min(
                    history[-settings.patience:]) < settings.tolerance * abs(history[-settings.patience - 1]):
                break  # converged: no relative gain over the last `patience` steps
    with torch.no_grad():
        out = matrix().numpy()
    if not np.all(np.isfinite(out)) or np.linalg.det(out[:n, :n]) == 0:
        raise MeddiffError("affine registration diverged (non-invertible result); check that --moving and --fixed "
                           "show the same anatomy")
    return out


def apply_matrix(moving: np.ndarray, matrix: np.ndarray, shape, mode: str = "bilinear") -> np.ndarray:
    """``moving(M @ [p, 1])`` on a grid of ``shape`` (zeros outside the moving image); float32."""
    coords = affine_coords(matrix, shape)
    x = torch.from_numpy(np.asarray(moving, dtype=np.float32))[None, None]
    return sample(x, coords, mode=mode)[0, 0].numpy()
