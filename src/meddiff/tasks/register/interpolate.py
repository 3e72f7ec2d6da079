"""Temporal interpolation between two 2D frames (issue 26): the frame at time gamma in [0, 1] between ``frame0``
(gamma = 0) and ``frame1`` (gamma = 1), behind ``meddiff interpolate``.

Methods (all return frames in the inputs' intensity units, on their grid):
- ``linear``: ``(1 - gamma) frame0 + gamma frame1`` (intensity cross-fade, no motion).
- ``registration``: register frame0 -> frame1 as a stationary velocity field v (gradient descent on LNCC +
  smoothness over v, on the half-resolution grid, scaling and squaring: ``svf_register``) and warp frame0 by
  ``exp(gamma v)``.
- ``ddm``: DDM (Kim and Ye, MICCAI 2022; ``diffusemorph.DiffuseMorph``): the deformation network's latent is
  scaled by gamma, frame0 is warped by the resulting field (the paper's way).
``bidirectional=True`` (registration, ddm) also warps frame1 backwards (1 - gamma of the way to frame0) and blends
the two with weights (1 - gamma, gamma): this averages the noise of two frames (our addition, not the papers').
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.register.fields import integrate_velocity, warp

METHODS = ("linear", "registration", "ddm")


def check_times(times) -> list[float]:
    """Validate interpolation times: numbers in [0, 1], at least one."""
    times = [float(t) for t in times]
    if not times:
        raise MeddiffError("--times: give at least one time in [0, 1], e.g. --times 0.25 0.5 0.75")
    bad = [t for t in times if not (0.0 <= t <= 1.0)]
    if bad:
        raise MeddiffError(f"--times {bad[0]:g}: every time must lie in [0, 1] (0 = frame0, 1 = frame1)")
    return times


def check_frames(frame0: np.ndarray, frame1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 2D frames of the same shape, finite, float32; one-line errors otherwise."""
    a, b = np.asarray(frame0), np.asarray(frame1)
    if a.ndim != 2 or b.ndim != 2:
        raise MeddiffError(f"--frame0 is {a.ndim}D (shape {a.shape}) and --frame1 is {b.ndim}D (shape {b.shape}); "
                           "give two 2D frames (H, W) on the same grid")
    if a.shape != b.shape:
        raise MeddiffError(f"--frame0 has shape {a.shape} but --frame1 has shape {b.shape}; give two frames on the "
                           "same grid (resample one of them)")
    if min(a.shape) < 8:
        raise MeddiffError(f"--frame0: frames of shape {a.shape} are too small (at least 8 x 8)")
    for name, x in (("--frame0", a), ("--frame1", b)):
        if not np.all(np.isfinite(x)):
            raise MeddiffError(f"{name}: the frame contains NaN or infinite values")
    return a.astype(np.float32), b.astype(np.float32)


def linear(frame0: np.ndarray, frame1: np.ndarray, times) -> list[np.ndarray]:
    """``(1 - gamma) frame0 + gamma frame1`` for each gamma."""
    return [((1 - g) * frame0 + g * frame1).astype(np.float32) for g in times]


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]


def svf_register(source: np.ndarray, target: np.ndarray, iterations: int = 300, lr: float = 0.05,
                 reg_weight: float = 1.0, kernel: int = 7, downsample: int = 2, steps: int = 7) -> torch.Tensor:
    """Classical SVF registration of two 2D frames (scaled alike): the velocity v (1, 2, H/d, W/d) on the
    ``downsample`` grid (voxels of that grid) minimising LNCC(source ∘ exp(v), target) + reg_weight x mean squared
    gradient of the DDF (the loss of ``learned.registration_loss``), Adam on v from zero."""
    from meddiff.tasks.register.learned import VoxelMorphConfig, pad_to_multiple, registration_loss

    config = VoxelMorphConfig(spatial_dims=2, kernel=kernel, reg_weight=reg_weight, downsample=downsample)
    s, crop = pad_to_multiple(_tensor(source), downsample)
    t, _ = pad_to_multiple(_tensor(target), downsample)
    pool = torch.nn.functional.avg_pool2d
    s, t = (pool(s, downsample), pool(t, downsample)) if downsample > 1 else (s, t)
    v = torch.zeros((1, 2) + tuple(s.shape[2:]), requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    with warnings.catch_warnings():  # MONAI's deprecation notes on every loss call
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iterations):
            ddf = integrate_velocity(v, steps)
            loss, _ = registration_loss(warp(s, ddf), t, ddf, config)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return v.detach()


def _upsampled_ddf(low_velocity: torch.Tensor, gamma: float, shape, downsample: int, steps: int = 7,
                   ) -> torch.Tensor:
    from meddiff.tasks.register.learned import pad_to_multiple

    ddf = integrate_velocity(gamma * low_velocity, steps)
    if downsample > 1:
        padded = [s + (-s) % downsample for s in shape]
        ddf = torch.nn.functional.interpolate(ddf * downsample, size=padded, mode="bilinear", align_corners=False)
        _, crop = pad_to_multiple(torch.zeros((1, 1) + tuple(shape)), downsample)
        ddf = ddf[tuple(crop)]
    return ddf


def _blend(forward: list[np.ndarray], backward: list[np.ndarray], times) -> list[np.ndarray]:
    return [((1 - g) * f + g * b).astype(np.float32) for f, b, g in zip(forward, backward, times)]


@torch.no_grad()
def _warp_frames(frame: np.ndarray, ddfs) -> list[np.ndarray]:
    return [warp(_tensor(frame), d)[0, 0].numpy().astype(np.float32) for d in ddfs]


def registration(frame0: np.ndarray, frame1: np.ndarray, times, bidirectional: bool = False, **settings,
                 ) -> list[np.ndarray]:
    """Registration-based interpolation: frame0 warped by ``exp(gamma v)``, v = ``svf_register(frame0, frame1)``
    (frames scaled by one ``pair_scale``; the warped frames keep the input units)."""
    from meddiff.tasks.register.diffusemorph import pair_scale

    scale = pair_scale(frame0, frame1)
    d = settings.get("downsample", 2)

    def one_way(a, b, gammas):
        v = svf_register(a / scale, b / scale, **settings)
        return _warp_frames(a, [_upsampled_ddf(v, g, a.shape, d) for g in gammas])

    forward = one_way(frame0, frame1, times)
    if not bidirectional:
        return forward
    return _blend(forward, one_way(frame1, frame0, [1 - g for g in times]), times)


@torch.no_grad()
def ddm_fields(net, frame0: np.ndarray, frame1: np.ndarray, times) -> list[torch.Tensor]:
    """DDFs (1, 2, H, W) in voxels warping frame0 a fraction gamma of the way to frame1, one per time; the latent
    is computed once and scaled."""
    from meddiff.tasks.register.diffusemorph import pair_scale
    from meddiff.tasks.register.learned import pad_to_multiple

    if net.config.spatial_dims != 2:
        raise MeddiffError(f"--checkpoint: a {net.config.spatial_dims}D model cannot interpolate 2D frames")
    scale = pair_scale(frame0, frame1)
    s, crop = pad_to_multiple(_tensor(frame0 / scale), net.config.multiple)
    t, _ = pad_to_multiple(_tensor(frame1 / scale), net.config.multiple)
    net = net.eval()
    sp, tp = net.pool(s), net.pool(t)
    latent = net.latent(sp, tp) if net.score is not None else None
    out = []
    for g in times:
        if latent is not None:
            v = net.velocity_from_latent(sp, latent, g)
        else:
            v = net.velocity(s, t, g)
        ddf = net.upsample(integrate_velocity(v, net.config.steps), s.shape[2:])
        out.append(ddf[tuple(crop)])
    return out


def ddm(net, frame0: np.ndarray, frame1: np.ndarray, times, bidirectional: bool = False) -> list[np.ndarray]:
    """DDM interpolation (frame0 warped along the scaled latent); ``bidirectional``: blended with frame1 warped
    back along the reverse pair's field."""
    forward = _warp_frames(frame0, ddm_fields(net, frame0, frame1, times))
    if not bidirectional:
        return forward
    backward = _warp_frames(frame1, ddm_fields(net, frame1, frame0, [1 - g for g in times]))
    return _blend(forward, backward, times)


@dataclass
class Interpolation:
    """Frames (one (H, W) float32 array per time, the inputs' units), the times, the method, seconds, files."""

    frames: list[np.ndarray]
    times: list[float]
    method: str
    seconds: float
    written: list[Path] = field(default_factory=list)


def interpolate_frames(frame0, frame1, times, method: str = "ddm", *, checkpoint=None, loaded=None,
                       bidirectional: bool = False) -> Interpolation:
    """The frames at ``times`` between two 2D frames with ``method`` (``METHODS``); ``loaded``: a
    ``LoadedDiffuseMorph`` (ddm; else ``checkpoint`` or the shipped ``ddm_rat_cine`` is loaded)."""
    if method not in METHODS:
        raise MeddiffError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    times = check_times(times)
    a, b = check_frames(frame0, frame1)
    if method == "ddm" and loaded is None:
        from meddiff.tasks.register.diffusemorph import load_diffusemorph

        loaded = load_diffusemorph(checkpoint)
    start = time.perf_counter()
    if method == "linear":
        frames = linear(a, b, times)
    elif method == "registration":
        frames = registration(a, b, times, bidirectional)
    else:
        frames = ddm(loaded.net, a, b, times, bidirectional)
    return Interpolation(frames, times, method, time.perf_counter() - start)


def _read_frame(path, option: str):
    from meddiff.data.io import read_image

    if not Path(path).exists():
        raise MeddiffError(f"{option} {path}: no such file")
    array, meta = read_image(path)
    array = np.asarray(array)
    shape = array.shape
    if array.ndim == 3 and 1 in shape:  # a NIfTI slice (H, W, 1)
        array = array.reshape([s for s in shape if s != 1] if shape.count(1) < 3 else shape[:2])
    if array.ndim != 2:
        raise MeddiffError(f"{option} {path}: expected a 2D frame, got shape {shape} (a colour PNG or a volume?); "
                           "give one grey-level 2D frame")
    return array.astype(np.float32), meta, shape


def interpolate_file(frame0, frame1, times, out, method: str = "ddm", *, checkpoint=None, loaded=None,
                     formats=("npy", "nii.gz"), bidirectional: bool = False) -> Interpolation:
    """``meddiff interpolate``: read two frames (.npy, .nii.gz/.nii, .png), interpolate, write into folder ``out``
    one file per time and format (``frame_t0.500.npy``, ``frame_t0.500.nii.gz`` with frame0's affine and shape)
    and ``strip.png`` (frame0, the interpolated frames, frame1), all atomically."""
    from meddiff.data.io import write_nifti
    from meddiff.files import write_npy, write_png

    times = check_times(times)
    if method not in METHODS:
        raise MeddiffError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    unknown = sorted(set(formats) - {"npy", "nii.gz"})
    if unknown or not formats:
        raise MeddiffError(f"--formats {' '.join(formats)}: choose from npy, nii.gz")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MeddiffError(f"--out {out}: exists and is not a folder; give a folder for the frames")
    if method == "ddm" and loaded is None:
        from meddiff.tasks.register.diffusemorph import load_diffusemorph

        loaded = load_diffusemorph(checkpoint)
    a, meta0, shape0 = _read_frame(frame0, "--frame0")
    b, _, _ = _read_frame(frame1, "--frame1")
    result = interpolate_frames(a, b, times, method, loaded=loaded, bidirectional=bidirectional)
    affine = meta0.affine if meta0.affine is not None else np.eye(4)
    for g, frame in zip(result.times, result.frames):
        stem = out / f"frame_t{g:.3f}"
        if "npy" in formats:
            result.written.append(write_npy(Path(f"{stem}.npy"), frame, "--out"))
        if "nii.gz" in formats:
            nifti = frame.reshape(shape0) if len(shape0) == 3 else frame
            result.written.append(write_nifti(Path(f"{stem}.nii.gz"), nifti, affine))
    strip = np.concatenate([a] + result.frames + [b], axis=1)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    result.written.append(write_png(out / "strip.png", strip, vmin=lo, vmax=hi if hi > lo else lo + 1))
    return result
