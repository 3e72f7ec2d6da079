"""Dense displacement fields (DDF) in 2D and 3D: warping (MONAI ``Warp``), scaling and squaring of a stationary
velocity field (MONAI ``DVF2DDF``; Arsigny et al. 2006, as in VoxelMorph, Dalca et al. 2019), resampling at arbitrary
voxel coordinates, the Jacobian determinant and the folding percentage.

Convention (VoxelMorph's, MONAI's and ITK's): a DDF ``u`` of shape (B, N, *spatial) is in voxel units along the
array axes; the warped image is ``moving(p + u(p))``, i.e. it maps each fixed-grid voxel ``p`` to the position it
samples in the moving image.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from meddiff.errors import MeddiffError

INTERPOLATIONS = ("bilinear", "nearest")


def _monai_quiet(factory, *args, **kwargs):
    """Build a MONAI warp block without its 'Using PyTorch native grid_sample' warning (we know)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return factory(*args, **kwargs)


def _check_field(ddf: torch.Tensor, what: str = "ddf") -> int:
    n = ddf.ndim - 2
    if n not in (2, 3) or ddf.shape[1] != n:
        raise MeddiffError(f"{what}: expected a field (B, N, *spatial) with N = 2 or 3 spatial axes, got shape "
                           f"{tuple(ddf.shape)}")
    return n


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates (N, *shape) of a grid: ``grid[i][p] = p_i``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """``image(p + ddf(p))`` on the image's grid (MONAI ``Warp``). image (B, C, *spatial), ddf (B, N, *spatial) in
    voxels; ``mode="nearest"`` for label maps (values are copied, never blended)."""
    from monai.networks.blocks import Warp

    if mode not in INTERPOLATIONS:
        raise MeddiffError(f"mode={mode!r}: choose one of {', '.join(INTERPOLATIONS)}")
    _check_field(ddf)
    return _monai_quiet(Warp, mode=mode, padding_mode=padding)(image, ddf)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring (MONAI ``DVF2DDF``): the DDF of ``exp(v)`` for a stationary velocity field v
    (B, N, *spatial, voxels): ``u = v / 2^steps``, then ``steps`` times ``u <- u + u∘(id + u)``. A diffeomorphism
    for smooth enough v (Arsigny et al. 2006)."""
    from monai.networks.blocks import DVF2DDF

    _check_field(velocity, "velocity")
    return _monai_quiet(DVF2DDF, num_steps=steps, mode="bilinear", padding_mode="border")(velocity)


def sample(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Interpolate image (B, C, *in_spatial) at voxel coordinates coords (B, N, *out_spatial) of its own grid (the
    grids may differ, unlike ``warp``); outside the image: ``padding`` (zeros, border)."""
    n = _check_field(coords, "coords")
    if image.ndim != n + 2:
        raise MeddiffError(f"sample: a {n}D coordinate map needs a {n}D image, got image shape {tuple(image.shape)}")
    sizes = image.shape[2:]
    norm = torch.stack([coords[:, i] * 2 / max(int(s) - 1, 1) - 1 for i, s in enumerate(sizes)], dim=-1)
    norm = norm.flip(-1)  # grid_sample wants (x, y[, z]) = last axis first
    return F.grid_sample(image, norm.to(image.dtype), mode=mode, padding_mode=padding, align_corners=True)


def affine_coords(matrix: np.ndarray, shape) -> torch.Tensor:
    """Voxel coordinates (1, N, *shape) of ``matrix @ [p, 1]`` for every voxel p of a grid; matrix (N+1, N+1)."""
    m = torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
    grid = identity_grid(shape, dtype=torch.float64)
    n = len(shape)
    out = torch.einsum("ij,j...->i...", m[:n, :n], grid) + m[:n, n].reshape((n,) + (1,) * n)
    return out[None].float()


def jacobian_determinant(ddf) -> np.ndarray:
    """det(I + ∇u) of the map p -> p + u(p) at every voxel (central differences, one-sided at the borders);
    ddf (N, *spatial) or (1, N, *spatial) in voxels -> (*spatial) float64."""
    u = np.asarray(ddf.detach().cpu() if isinstance(ddf, torch.Tensor) else ddf, dtype=np.float64)
    if u.ndim in (4, 5) and u.shape[0] == 1 and u.shape[1] == u.ndim - 2:  # a batch of one
        u = u[0]
    n = u.shape[0]
    if n not in (2, 3) or u.ndim != n + 1:
        raise MeddiffError(f"jacobian_determinant: expected a field (N, *spatial) with N = 2 or 3, got shape {u.shape}")
    if min(u.shape[1:]) < 2:
        raise MeddiffError(f"jacobian_determinant: every spatial axis needs at least 2 voxels, got {u.shape[1:]}")
    jac = np.empty((n, n) + u.shape[1:])
    for i in range(n):
        for j, g in enumerate(np.gradient(u[i], axis=tuple(range(n)))):
            jac[i, j] = g + (1.0 if i == j else 0.0)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def folding_percent(ddf, mask=None) -> float:
    """Percentage of voxels (inside ``mask`` when given) where the Jacobian determinant is <= 0 (the map folds)."""
    det = jacobian_determinant(ddf)
    if mask is not None:
        det = det[np.asarray(mask, dtype=bool)]
    return float(100.0 * np.mean(det <= 0)) if det.size else 0.0
