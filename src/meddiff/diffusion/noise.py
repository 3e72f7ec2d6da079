"""Noise fields for diffusion: Gaussian (the default) and multi-octave simplex noise (AnoDDPM).

Simplex noise is Perlin's 2001 lattice-gradient noise on a simplex grid, written after S. Gustavson,
"Simplex noise demystified" (2005), for any number of dimensions; AnoDDPM (Wyatt et al., CVPR-W 2022,
sec. 3.2) uses OpenSimplex noise summed over octaves instead of Gaussian noise, so that the forward process
corrupts low spatial frequencies and the model learns to "heal" lesion-sized structures. Octave k has
period ``frequency / 2**k`` pixels (``frequency`` is AnoDDPM's parameter, a period in pixels) and amplitude
``persistence**k``; the sum is divided by its analytic standard deviation, so every pixel has mean 0 and
variance 1 over draws (not exactly within one image: the field is spatially correlated).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

NOISE_KINDS = ("gaussian", "simplex")
SIMPLEX_DEFAULTS = {"octaves": 6, "persistence": 0.8, "frequency": 64.0}  # AnoDDPM, sec. 4 (256 x 256 images)
_TABLE = 256  # permutation table size: the lattice hash repeats every 256 cells
_RADIUS2 = 0.5  # squared kernel radius of each simplex corner (Gustavson 2012 uses 0.5 in 2D and 3D)
# Std of one octave at a uniformly random position (Monte Carlo, 2e7 samples); checked by tests/test_simplex_noise.py.
_OCTAVE_STD = {2: 0.005434, 3: 0.005106}


def _gradients(dims: int) -> Tensor:
    """Gradient directions: 8 unit vectors at 45 degrees in 2D, the 12 cube-edge midpoints in 3D (Perlin 2002)."""
    if dims == 2:
        angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        return torch.stack([angles.cos(), angles.sin()], dim=1)
    edges = [(a, b, 0) for a in (1, -1) for b in (1, -1)]
    return torch.tensor([e[i:] + e[:i] for e in edges for i in range(3)], dtype=torch.float64)


def simplex_octave(points: Tensor, perm: Tensor) -> Tensor:
    """One octave of simplex noise at ``points`` (N, P, d) in lattice units, d = 2 or 3; ``perm`` (N, 256)
    random permutations, one per field. Returns (N, P) in the points' dtype, zero mean over positions and permutations.

    Gustavson 2005: skew by F = (sqrt(d+1) - 1)/d to find the simplex cell, unskew by G = (1 - 1/sqrt(d+1))/d;
    corner k adds max(0, r^2 - |x_k|^2)^4 <g_k, x_k> with x_k the offset from corner k, g_k a hashed gradient.
    """
    n, p, d = points.shape
    f_skew, g_unskew = (math.sqrt(d + 1) - 1) / d, (1 - 1 / math.sqrt(d + 1)) / d
    coords = points.unbind(-1)  # sums over the short last axis written out: much faster than .sum(-1)
    cell = torch.floor(points + (sum(coords) * f_skew).unsqueeze(-1))                                       # [N,P,d]
    x0 = points - (cell - (sum(cell.unbind(-1)) * g_unskew).unsqueeze(-1))                                   # [N,P,d]
    # corner k of the simplex steps +1 along the k largest internal coordinates (ranked descending)
    rank = torch.zeros_like(cell, dtype=torch.long)                                          # [N,P,d]
    for i in range(d):  # rank_i = number of coordinates larger than x0_i (ties broken by axis order)
        for j in range(d):
            if j != i:
                rank[..., i] += (x0[..., j] > x0[..., i]) | ((x0[..., j] == x0[..., i]) & (j < i))
    table = torch.cat([perm, perm], dim=1).long()                                            # [N,512]
    cell = cell.long()
    grads = _gradients(d).to(points.dtype)
    total = torch.zeros(n, p, dtype=points.dtype)
    for k in range(d + 1):
        step = (rank < k).long()                                                             # [N,P,d]
        offset = x0 - step.to(points.dtype) + k * g_unskew
        corner = (cell + step) % _TABLE
        h = torch.zeros(n, p, dtype=torch.long)
        for axis in range(d):                                                                # perm[perm[i] + j] ...
            h = torch.gather(table, 1, h + corner[..., axis])
        g = grads[h % len(grads)]                                                            # [N,P,d]
        o, gk = offset.unbind(-1), g.unbind(-1)
        weight = (_RADIUS2 - sum(c * c for c in o)).clamp(min=0)
        total = total + weight**4 * sum(a * b for a, b in zip(gk, o))
    return total


def simplex_noise(shape: tuple[int, ...], *, octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Multi-octave simplex noise of ``shape`` (B, C, H, W) or (B, C, D, H, W), one independent field per (b, c).

    AnoDDPM (Wyatt et al. 2022, eq. 9 and their ``rand_2d_octaves``): sum_k persistence^k S(x / (frequency/2^k)),
    each field with its own random permutation table and lattice offset drawn from ``generator``, then scaled
    to unit variance per pixel. Paper values: 6 octaves, persistence 0.8, frequency 64 (for 256-pixel images).
    """
    check_simplex(octaves, persistence, frequency)
    if len(shape) not in (4, 5):
        raise MeddiffError(f"simplex noise needs a shape (B, C, H, W) or (B, C, D, H, W), got {tuple(shape)}")
    dims = len(shape) - 2
    fields = shape[0] * shape[1]
    axes = [torch.arange(s, dtype=torch.float32) for s in shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, dims)   # [1,P,d] pixels
    total = torch.zeros(fields, grid.shape[1], dtype=torch.float32)
    period, amplitude, variance = float(frequency), 1.0, 0.0
    for _ in range(octaves):
        perm = torch.argsort(torch.rand(fields, _TABLE, generator=generator), dim=1)
        offset = torch.rand(fields, 1, dims, generator=generator) * _TABLE
        total += amplitude * simplex_octave(grid / period + offset, perm)
        variance += amplitude**2
        period, amplitude = period / 2, amplitude * persistence
    total /= _OCTAVE_STD[dims] * math.sqrt(variance)
    return total.reshape(shape).to(dtype)


def check_simplex(octaves, persistence, frequency) -> None:
    if isinstance(octaves, bool) or not isinstance(octaves, int) or octaves < 1:
        raise MeddiffError(f"simplex octaves={octaves!r} must be an integer >= 1 (AnoDDPM: 6)")
    if not 0 < persistence <= 1:
        raise MeddiffError(f"simplex persistence={persistence!r} must be in (0, 1] (AnoDDPM: 0.8)")
    if not frequency > 0:
        raise MeddiffError(f"simplex frequency={frequency!r} must be a positive period in pixels (AnoDDPM: 64)")


NoiseFn = Callable[[tuple, "torch.Generator | None"], Tensor]  # noise_fn(shape, generator) -> CPU tensor


def resolve_noise_config(config: dict | None) -> dict | None:
    """Validated noise config: None (Gaussian) or {"kind": "simplex", octaves, persistence, frequency} filled."""
    if config is None:
        return None
    if not isinstance(config, dict) or "kind" not in config:
        raise MeddiffError(f"diffusion.noise must be null (Gaussian) or a mapping with kind in {NOISE_KINDS}, "
                           f"got {config!r}")
    check_choice("diffusion.noise.kind", config["kind"], NOISE_KINDS)
    if config["kind"] == "gaussian":
        if set(config) != {"kind"}:
            raise MeddiffError(f"Gaussian noise takes no options, got {sorted(set(config) - {'kind'})}")
        return {"kind": "gaussian"}
    unknown = sorted(set(config) - {"kind", *SIMPLEX_DEFAULTS})
    if unknown:
        raise MeddiffError(f"unknown key(s) {unknown} in diffusion.noise; allowed: {['kind', *SIMPLEX_DEFAULTS]}")
    resolved = {"kind": "simplex", **SIMPLEX_DEFAULTS, **{k: v for k, v in config.items() if k != "kind"}}
    check_simplex(resolved["octaves"], resolved["persistence"], resolved["frequency"])
    return resolved


def make_noise(config: dict | None) -> NoiseFn:
    """``noise(shape, generator) -> Tensor`` float32 on CPU for a noise config (None or kind gaussian: randn)."""
    config = resolve_noise_config(config)
    if config is None or config["kind"] == "gaussian":
        return lambda shape, generator=None: torch.randn(shape, generator=generator)
    options = {k: config[k] for k in SIMPLEX_DEFAULTS}
    return lambda shape, generator=None: simplex_noise(tuple(shape), generator=generator, **options)
