"""Seeded k-space undersampling masks: 1D Cartesian (random, equispaced, Gaussian variable density) with a
fully sampled centre, 2D variable-density Poisson-disc and 2D variable-density random.

Every mask is a float32 (H, W) tensor of 0/1 over centred k-space (DC at (H // 2, W // 2)). 1D patterns select
whole lines along ``axis`` (the phase-encode axis: -1 picks columns, as in fastMRI; -2 picks rows). The number of
sampled lines (1D) or points (2D) is round(N / acceleration), ACS included, so the realised acceleration is within
rounding of the request (the Poisson disc is within ``POISSON_TOLERANCE`` relative).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

PATTERNS_1D = ("random", "equispaced", "gaussian")
PATTERNS_2D = ("poisson", "vd_random")
PATTERNS = PATTERNS_1D + PATTERNS_2D
POISSON_TOLERANCE = 0.05  # relative error in acceleration accepted by the Poisson-disc radius search


def make_mask(shape: tuple[int, int], acceleration: float, pattern: str = "random", *, acs_fraction: float = 0.08,
              seed: int = 0, axis: int = -1) -> Tensor:
    """Undersampling mask (H, W) float32 0/1 for ``pattern`` in PATTERNS at ``acceleration`` (N / sampled).

    acs_fraction: width of the fully sampled centre as a fraction of the phase-encode size (1D) or of each
    side (2D, an ACS rectangle). seed: the only source of randomness (same seed -> same mask).
    """
    check_choice("pattern", pattern, PATTERNS)
    shape = _check_shape(shape)
    if not (isinstance(acceleration, (int, float)) and 1.0 <= acceleration <= 64.0):
        raise MeddiffError(f"acceleration={acceleration!r} must be a number in [1, 64] (supported use: 2-12)")
    if not 0.0 <= acs_fraction < 1.0:
        raise MeddiffError(f"acs_fraction={acs_fraction!r} must be in [0, 1)")
    check_choice("axis", axis, (-1, -2, 0, 1))
    generator = torch.Generator().manual_seed(int(seed))
    if pattern in PATTERNS_1D:
        n = shape[axis]
        lines = _lines_1d(n, acceleration, acs_fraction, pattern, generator)
        mask = torch.zeros(shape)
        if axis in (-1, 1):
            mask[:, lines] = 1.0
        else:
            mask[lines, :] = 1.0
        return mask
    if pattern == "poisson":
        return poisson_disc_mask(shape, acceleration, acs_fraction=acs_fraction, seed=seed)
    return _vd_random_2d(shape, acceleration, acs_fraction, generator)


def acceleration_of(mask: Tensor) -> float:
    """Realised acceleration: number of k-space points / number sampled."""
    return float(mask.numel() / mask.sum().clamp_min(1))


def acs_slice(n: int, acs_fraction: float) -> slice:
    """Index range of the fully sampled centre of an axis of length n (centred on n // 2)."""
    n_acs = int(round(n * acs_fraction))
    start = n // 2 - n_acs // 2
    return slice(start, start + n_acs)


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise MeddiffError(f"shape={shape!r} must be two integers (H, W)") from None
    if h < 4 or w < 4:
        raise MeddiffError(f"shape={shape!r}: both sides must be >= 4")
    return h, w


def _lines_1d(n: int, acceleration: float, acs_fraction: float, pattern: str, generator: torch.Generator) -> Tensor:
    centre = acs_slice(n, acs_fraction)
    n_acs = centre.stop - centre.start
    n_total = max(int(round(n / acceleration)), 1)
    if n_acs > n_total:
        raise MeddiffError(f"acs_fraction={acs_fraction} gives {n_acs} centre lines, more than the {n_total} lines "
                           f"allowed by acceleration={acceleration} on {n} lines: lower acs_fraction")
    outside = torch.tensor([i for i in range(n) if not centre.start <= i < centre.stop], dtype=torch.long)
    n_extra = n_total - n_acs
    if pattern == "random":
        chosen = outside[torch.randperm(len(outside), generator=generator)[:n_extra]]
    elif pattern == "equispaced":
        # Equispaced over the non-ACS lines with a seeded offset (fastMRI "equispaced fraction" idea).
        step = len(outside) / max(n_extra, 1)
        offset = float(torch.rand((), generator=generator)) * step
        idx = torch.floor(offset + step * torch.arange(n_extra, dtype=torch.float64)).long().clamp_max(len(outside) - 1)
        chosen = outside[idx]
    else:
        # 1D Gaussian variable density: lines drawn without replacement with p(k) ~ exp(-k^2 / (2 (0.25 n)^2)).
        k = (outside.double() - n // 2) / n
        weights = torch.exp(-0.5 * (k / 0.25) ** 2)
        chosen = outside[torch.multinomial(weights, n_extra, replacement=False, generator=generator)]
    lines = torch.zeros(n, dtype=torch.bool)
    lines[centre] = True
    lines[chosen] = True
    return lines


def _vd_radius(shape: tuple[int, int], acs_fraction: float) -> np.ndarray:
    """Normalised distance from the ACS rectangle, 0 inside it and 1 at the edge midpoints (sigpy-style)."""
    h, w = shape
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    dy = np.maximum(np.abs(ys - h // 2) - h * acs_fraction / 2, 0)
    dx = np.maximum(np.abs(xs - w // 2) - w * acs_fraction / 2, 0)
    return np.sqrt((dy / max(dy.max(), 1)) ** 2 + (dx / max(dx.max(), 1)) ** 2)


def _acs_2d(shape: tuple[int, int], acs_fraction: float) -> tuple[slice, slice]:
    return acs_slice(shape[0], acs_fraction), acs_slice(shape[1], acs_fraction)


def _vd_random_2d(shape: tuple[int, int], acceleration: float, acs_fraction: float,
                  generator: torch.Generator) -> Tensor:
    """2D variable-density random: points drawn without replacement with p ~ (1 - r)^2 outside the ACS box."""
    mask = torch.zeros(shape)
    sy, sx = _acs_2d(shape, acs_fraction)
    mask[sy, sx] = 1.0
    n_total = int(round(mask.numel() / acceleration))
    n_extra = n_total - int(mask.sum())
    if n_extra < 0:
        raise MeddiffError(f"acs_fraction={acs_fraction} samples more than 1/{acceleration} of k-space: lower it")
    r = torch.from_numpy(_vd_radius(shape, acs_fraction))
    weights = ((1.0 - r).clamp_min(0) ** 2 + 1e-3) * (1 - mask.double())
    chosen = torch.multinomial(weights.flatten(), n_extra, replacement=False, generator=generator)
    mask.view(-1)[chosen] = 1.0
    return mask


def poisson_disc_mask(shape: tuple[int, int], acceleration: float, *, acs_fraction: float = 0.08,
                      seed: int = 0, max_search: int = 40) -> Tensor:
    """2D variable-density Poisson-disc mask (after sigpy.mri.poisson / Lustig's vdPoisson).

    Pixels are visited in a seeded random order; a pixel is kept unless it lies inside the exclusion ellipse of an
    already kept pixel, whose radius grows linearly with the distance r from the centre:
    radius = 1 + slope * r (scaled to the aspect ratio). The slope is found by bisection so that the realised
    acceleration is within POISSON_TOLERANCE of the request. The ACS rectangle is then filled and the corners
    (r > 1) are left empty.
    """
    shape = _check_shape(shape)
    h, w = shape
    r = _vd_radius(shape, acs_fraction)
    order = np.random.default_rng(int(seed)).permutation(h * w)
    sy, sx = _acs_2d(shape, acs_fraction)
    acs = np.zeros(shape, dtype=bool)
    acs[sy, sx] = True
    if acs.sum() * acceleration > h * w:
        raise MeddiffError(f"acs_fraction={acs_fraction} samples more than 1/{acceleration} of k-space: lower it")
    lo, hi, best = 0.0, float(max(h, w)), None
    for _ in range(max_search):
        slope = (lo + hi) / 2
        mask = _poisson_pass(shape, r, slope, order) | acs
        mask &= (r <= 1.0) | acs
        accel = h * w / max(mask.sum(), 1)
        if best is None or abs(accel - acceleration) < abs(best[0] - acceleration):
            best = (accel, mask)
        if abs(accel - acceleration) <= POISSON_TOLERANCE * acceleration * 0.5:
            break
        lo, hi = (slope, hi) if accel < acceleration else (lo, slope)
    return torch.from_numpy(best[1].astype(np.float32))


def _poisson_pass(shape: tuple[int, int], r: np.ndarray, slope: float, order: np.ndarray) -> np.ndarray:
    h, w = shape
    scale = max(h, w)
    blocked = np.zeros(shape, dtype=bool)
    kept = np.zeros(shape, dtype=bool)
    flat_blocked = blocked.reshape(-1)
    stencils: dict[tuple[int, int], np.ndarray] = {}
    for p in order.tolist():
        if flat_blocked[p]:
            continue
        y, x = divmod(p, w)
        kept[y, x] = True
        rad = 1.0 + slope * r[y, x]
        ry, rx = max(rad * h / scale, 1.0), max(rad * w / scale, 1.0)
        key = (int(round(ry * 4)), int(round(rx * 4)))
        stencil = stencils.get(key)
        if stencil is None:
            qy, qx = key[0] / 4, key[1] / 4
            iy, ix = int(math.ceil(qy)), int(math.ceil(qx))
            gy, gx = np.mgrid[-iy:iy + 1, -ix:ix + 1]
            stencil = (gy / qy) ** 2 + (gx / qx) ** 2 < 1.0
            stencils[key] = stencil
        iy, ix = stencil.shape[0] // 2, stencil.shape[1] // 2
        y0, y1, x0, x1 = max(y - iy, 0), min(y + iy + 1, h), max(x - ix, 0), min(x + ix + 1, w)
        blocked[y0:y1, x0:x1] |= stencil[y0 - y + iy:y1 - y + iy, x0 - x + ix:x1 - x + ix]
    return kept


def centre_block(mask: Tensor, max_size: int = 24) -> tuple[int, int]:
    """Size (a_y, a_x) of a fully sampled rectangle centred on DC in a (H, W) mask (for coil calibration),
    each side capped at ``max_size``; (0, 0) when the DC point itself is not sampled."""
    m = mask.bool()
    h, w = m.shape[-2:]
    cy, cx = h // 2, w // 2

    def run(line: Tensor, c: int) -> int:
        lo = c
        while lo - 1 >= 0 and line[lo - 1]:
            lo -= 1
        hi = c
        while hi + 1 < len(line) and line[hi + 1]:
            hi += 1
        return min(2 * min(c - lo, hi - c), max_size)  # symmetric around c (centre_block starts at c - a // 2)

    if not m[cy, cx]:
        return 0, 0
    ay, ax = run(m[:, cx], cy), run(m[cy, :], cx)
    while ay >= 2 and ax >= 2 and not bool(m[cy - ay // 2:cy - ay // 2 + ay, cx - ax // 2:cx - ax // 2 + ax].all()):
        if ay >= ax:
            ay -= 2
        else:
            ax -= 2
    return ay, ax


def save_mask(mask: Tensor, path) -> "Path":
    """Write a mask as a uint8 0/1 .npy file atomically (temporary name, then rename); returns the path."""
    from pathlib import Path

    from meddiff.files import atomic_path

    path = Path(path)
    if path.suffix != ".npy":
        raise MeddiffError(f"out={str(path)!r} must end in .npy")
    if not path.parent.is_dir():
        raise MeddiffError(f"out={str(path)!r}: directory {str(path.parent)!r} does not exist")
    with atomic_path(path) as tmp:
        np.save(tmp, mask.to(torch.uint8).numpy())
    return path
