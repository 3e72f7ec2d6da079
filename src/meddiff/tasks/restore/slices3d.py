"""Missing-slice inpainting of a 3D volume (H, W, D): whole slices along the last axis are missing (a thick-slice or
interleaved acquisition, dropped slices), the others are known and returned unchanged.

- "linear", "cubic": interpolation along the slice axis through the known slices, voxel by voxel (cubic: the
  not-a-knot cubic spline of ``scipy.interpolate.CubicSpline``); beyond the first / last known slice the nearest known
  slice is copied.
- "biharmonic": the smoothest 3D fill, (L^T L) u = 0 on the missing voxels with the known ones as boundary values (L:
  the 7-point Laplacian with Neumann boundary, ``baselines.laplacian``; conjugate gradients, since a sparse LU of the
  3D system fills in too much).
- "ddnm" and "sdedit": the 2D prior was trained on AXIAL slices, so a missing axial slice has no in-plane measurement
  at all. Both start from the linear interpolation of the neighbours and refine it slice by slice with the axial
  prior (Meng et al. 2022, "SDEdit": noise the guide to an intermediate time and run the reverse process from there;
  ``guide`` "biharmonic" starts from the biharmonic fill instead):
  "ddnm" treats the interpolation as a LOW-PASS measurement, y = A x_interp with A = the mean over ``factor`` x
  ``factor`` in-plane blocks (``meddiff.physics.Downsampling``), and runs DDNM (``methods.solve``, Wang et al. 2023)
  from the interpolation noised to ``start`` x T: the output keeps the interpolation's coarse content exactly
  (A x = y) and the prior supplies the detail the blend of two neighbours smears; "sdedit" treats the interpolation
  as a noisy image of noise sd ``level`` x its intensity scale and starts the reverse process at the matched time
  (``methods.solve``'s "diffusion" denoiser), without any consistency. The planes through the slice axis (coronal,
  sagittal), where a missing slice shows as missing rows, were not used: the prior never saw them (see
  benchmarks/README.md, "slices3d"). K samples per slice -> mean and per-voxel std (0 on the known slices).
"""

from __future__ import annotations

import numpy as np
import torch

from meddiff.data.transforms import magnitude_scale
from meddiff.errors import MeddiffError
from meddiff.tasks.prior import Prior, solver_settings
from meddiff.tasks.restore.baselines import laplacian
from meddiff.tasks.restore.methods import solve
from meddiff.tasks.restore.problems import degrade_sr, make_problem

SLICE_METHODS = ("linear", "cubic", "biharmonic", "ddnm", "sdedit")
SLICE_SAMPLING = ("ddnm", "sdedit")
# Chosen on VAL volumes (benchmarks/restoration.py --settings slices3d, "tuning" in its JSON; never on test): 2 val
# subjects, 13-slice blocks with every second slice missing, K = 2, brain_t1_ixi; mean PSNR in the missing slices:
# linear 28.78, biharmonic 28.98 dB; ddnm factor 2 from start 0.1 / 0.2: 28.54 / 28.32 (factor 4 from 0.4: 26.6);
# sdedit level 0.02 / 0.05: 28.94 / 28.86 (0.1: 28.46). Neither beats the classical fills (benchmarks/README.md).
SLICE_DEFAULTS: dict[str, dict] = {
    "ddnm": {"steps": 10, "samples": 4, "eta": 0.85, "start": 0.1, "factor": 2, "guide": "linear"},
    "sdedit": {"steps": 10, "samples": 4, "eta": 1.0, "level": 0.02, "guide": "linear"},
}


def missing_slices(mask) -> np.ndarray | None:
    """Indices of the slices (last axis) that a hole mask (H, W, D) marks as wholly missing, or None when it marks
    none. ``MeddiffError`` when it marks whole slices and, besides them, only parts of others (run the two kinds of
    hole separately), or every slice."""
    m = np.asarray(mask).astype(bool)
    full = m.all(axis=(0, 1))
    if not full.any():
        return None
    partial = m.any(axis=(0, 1)) & ~full
    if partial.any():
        raise MeddiffError(f"--mask marks whole slices {np.flatnonzero(full)[:6].tolist()} as missing and parts of "
                           f"slices {np.flatnonzero(partial)[:6].tolist()}; inpaint whole slices and holes in two runs")
    if full.all():
        raise MeddiffError(f"--mask marks all {m.shape[-1]} slices as missing; at least one slice must be known")
    return np.flatnonzero(full)


def interpolate_slices(volume: np.ndarray, missing, kind: str = "linear") -> np.ndarray:
    """(H, W, D) with the ``missing`` slices (indices) filled by "linear" or "cubic" interpolation along the last axis
    from the known ones (cubic with fewer than 3 known slices: linear); nearest known slice outside their range.
    Known slices are copied unchanged."""
    volume = np.asarray(volume, dtype=np.float32)
    missing = np.asarray(missing, dtype=int)
    known = np.setdiff1d(np.arange(volume.shape[-1]), missing)
    out = volume.copy()
    inside = missing[(missing > known[0]) & (missing < known[-1])]
    if kind == "linear" or len(known) < 3:
        hi = np.searchsorted(known, inside)  # first known slice above each inner missing one
        z0, z1 = known[hi - 1], known[hi]
        w = ((inside - z0) / (z1 - z0)).astype(np.float32)
        out[..., inside] = (1 - w) * volume[..., z0] + w * volume[..., z1]
    elif kind == "cubic":
        from scipy.interpolate import CubicSpline

        spline = CubicSpline(known, volume[..., known].astype(np.float64), axis=-1, bc_type="not-a-knot")
        out[..., inside] = spline(inside).astype(np.float32)
    else:
        raise MeddiffError(f"interpolation kind {kind!r}: choose linear or cubic")
    below, above = missing[missing < known[0]], missing[missing > known[-1]]
    out[..., below] = volume[..., known[:1]]
    out[..., above] = volume[..., known[-1:]]
    return out


def biharmonic_slices(volume: np.ndarray, missing, *, tol: float = 1e-8, maxiter: int = 5000) -> np.ndarray:
    """(H, W, D) with the ``missing`` slices filled by the 3D biharmonic fill (module docstring), CG started from the
    linear interpolation."""
    from scipy.sparse.linalg import cg

    volume = np.asarray(volume, dtype=np.float32)
    hole = np.zeros(volume.shape, dtype=bool)
    hole[..., np.asarray(missing, dtype=int)] = True
    hole, known = hole.reshape(-1), ~hole.reshape(-1)
    lap = laplacian(volume.shape)
    bih = (lap.T @ lap).tocsr()
    values = volume.astype(np.float64).reshape(-1)
    rhs = -bih[hole][:, known] @ values[known]
    start = interpolate_slices(volume, missing).astype(np.float64).reshape(-1)[hole]
    scale = max(float(np.abs(values[known]).max()), 1e-12)
    solution, info = cg(bih[hole][:, hole], rhs / scale, x0=start / scale, rtol=tol, maxiter=maxiter)
    if info > 0:
        raise MeddiffError(f"biharmonic fill: CG did not converge in {maxiter} iterations")
    out = values.copy()
    out[hole] = solution * scale
    return out.reshape(volume.shape).astype(np.float32)


def _padded(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Zero (air) padding of (H, W) to multiples of ``multiple``, centred; and the crop back."""
    h, w = image.shape
    ph, pw = -h % multiple, -w % multiple
    out = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return out, (slice(ph // 2, ph // 2 + h), slice(pw // 2, pw // 2 + w))


def refine_slice(guide: np.ndarray, method: str, prior: Prior, settings: dict, seed: int):
    """One missing slice from its interpolated ``guide`` (H, W) -> (K, H, W) samples, network evaluations."""
    if method == "ddnm":
        f = settings["factor"]
        padded, crop = _padded(guide, f)
        problem = make_problem("super-resolution", degrade_sr(padded, f).numpy(), scale=f)
        problem.start = torch.from_numpy(padded)
        images, nfe, _ = solve("ddnm", problem, prior, steps=settings["steps"], samples=settings["samples"], seed=seed,
                               eta=settings["eta"], start=settings["start"])
        return images[(Ellipsis,) + crop], nfe
    level = settings["level"] * magnitude_scale(torch.from_numpy(guide))
    problem = make_problem("denoise", guide, sigma=float(level))
    images, nfe, _ = solve("diffusion", problem, prior, steps=settings["steps"], samples=settings["samples"],
                           seed=seed, eta=settings["eta"])
    return images, nfe


def restore_slices(volume: np.ndarray, missing, method: str, *, prior: Prior | None = None, steps: int | None = None,
                   samples: int | None = None, seed: int = 0, **params) -> tuple:
    """Fill the ``missing`` slices (indices along the last axis) of ``volume`` (H, W, D) with ``method``
    (``SLICE_METHODS``) -> (volume, per-voxel std over the samples or None, network evaluations per slice and sample,
    settings). Known slices are returned unchanged; slice z of a diffusion method uses seed + z."""
    if method not in SLICE_METHODS:
        raise MeddiffError(f"--method {method!r} cannot fill whole missing slices; choose one of: "
                           f"{', '.join(SLICE_METHODS)}")
    volume = np.asarray(volume, dtype=np.float32)
    missing = np.asarray(missing, dtype=int)
    if method not in SLICE_SAMPLING:
        if params or steps is not None or samples is not None:
            given = sorted(params) + [n for n, v in (("steps", steps), ("samples", samples)) if v is not None]
            raise MeddiffError(f"--method {method} takes no parameters (got {given})")
        out = biharmonic_slices(volume, missing) if method == "biharmonic" else \
            interpolate_slices(volume, missing, method)
        return out, None, 0, {"missing": missing.tolist()}
    if prior is None:
        raise MeddiffError(f"--method {method} needs a prior (--checkpoint)")
    settings = solver_settings(SLICE_DEFAULTS, method, steps, samples, params, label=f"--method {method}")
    if method == "ddnm" and (isinstance(settings["factor"], bool) or not isinstance(settings["factor"], int)
                             or settings["factor"] < 2):
        raise MeddiffError(f"factor={settings['factor']!r} must be an integer >= 2 (the low-pass block size)")
    if settings["guide"] not in ("linear", "biharmonic"):
        raise MeddiffError(f"guide={settings['guide']!r}: choose linear or biharmonic (the fill the prior refines)")
    guide = biharmonic_slices(volume, missing) if settings["guide"] == "biharmonic" else \
        interpolate_slices(volume, missing, "linear")
    out, std, nfe = guide.copy(), np.zeros_like(guide), 0
    for z in missing:
        images, nfe = refine_slice(guide[..., z], method, prior, settings, seed + int(z))
        out[..., z] = images.mean(0).numpy()
        std[..., z] = (images.std(0, unbiased=False) if len(images) > 1 else torch.zeros_like(images[0])).numpy()
    return out, std, nfe, {**settings, "missing": missing.tolist()}
