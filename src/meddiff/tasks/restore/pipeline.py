"""``restore``: the one entry point for every restoration method on a 2D image or a 3D volume (slice by slice along
the last axis), and ``restore_file`` behind ``meddiff restore`` (read, restore, write atomically, affine kept)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.prior import Prior, load_prior
from meddiff.tasks.prior import default_prior as shared_default_prior
from meddiff.tasks.restore.baselines import BASELINES, baseline
from meddiff.tasks.restore.learned import LEARNED, SRModel, load_sr_model, solve_learned
from meddiff.tasks.restore.methods import ZERO_SHOT, solve
from meddiff.tasks.restore.problems import TASKS, check_mask, make_problem
from meddiff.tasks.restore.slices3d import SLICE_METHODS, SLICE_SAMPLING, missing_slices, restore_slices
from meddiff.tasks.restore.slices_learned import SLICE_LEARNED, SliceModel, fill_slices, load_slice_model

METHODS = {task: BASELINES[task] + ZERO_SHOT[task] + LEARNED[task] for task in TASKS}
# methods that draw samples (an uncertainty map): the zero-shot solvers and SR3
SAMPLING = {task: ZERO_SHOT[task] + tuple(m for m in LEARNED[task] if m == "sr3") for task in TASKS}
SAMPLING["inpaint"] += tuple(m for m in SLICE_SAMPLING + ("slice-diffusion",) if m not in SAMPLING["inpaint"])
# whole missing slices of a 3D volume (--task inpaint with a mask of whole slices; ``slices3d``)
SLICE_ONLY = tuple(m for m in SLICE_METHODS + SLICE_LEARNED if m not in METHODS["inpaint"])
ALL_METHODS = tuple(dict.fromkeys([m for task in TASKS for m in METHODS[task]] + list(SLICE_ONLY)))
OUTPUT_SUFFIXES = (".npy", ".nii.gz", ".nii")


@dataclass
class Restoration:
    """The restored image (float32, (H', W') or (H', W', D)), the per-pixel std over the samples (zero-shot methods;
    None for the baselines), network evaluations per slice, seconds in all, and the settings used."""

    image: np.ndarray
    std: np.ndarray | None = None
    nfe: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def default_prior() -> Path:
    """The shipped default for ``restore``, falling back to the one for ``reconstruct`` (one line in a shipped
    card's ``default_for`` switches it; ``meddiff.tasks.prior.default_prior``)."""
    return shared_default_prior("restore")


def restore_prior(checkpoint: str | Path | None = None) -> Prior:
    """The prior of ``--checkpoint`` (path, run directory or shipped name) or ``default_prior()``."""
    return load_prior(checkpoint, command="restore")


def check_method(task: str, method: str) -> None:
    check_choice("--task", task, TASKS)
    if method not in METHODS[task] and not (task == "inpaint" and method in SLICE_ONLY):
        raise MeddiffError(f"--method {method!r} is not a method for --task {task}; choose one of: "
                           f"{', '.join(METHODS[task])}")


def restore(image, task: str, method: str, *, scale: int | None = None, kernel: str = "area", mask=None,
            sigma: float | None = None, noise: str = "gaussian", samples: int | None = None,
            steps: int | None = None, seed: int = 0, checkpoint: str | Path | None = None,
            prior: Prior | None = None, model: SRModel | SliceModel | None = None, **params) -> Restoration:
    """Restore ``image`` (2D (H, W), or 3D (H, W, D) slice by slice): super-resolution (the low-resolution input ->
    ``scale`` x its in-plane size; ``kernel`` "area" = the mean over scale x scale blocks by default), inpainting
    (``mask``: 1 = missing, (H, W) or the image's shape; a 3D mask of whole slices along the last axis fills those
    slices from the others, ``slices3d``: linear, cubic, biharmonic, ddnm, sdedit; ``slices_learned``: slice-diffusion,
    slice-unet) or denoising (``sigma``: noise sd
    in the image's units, estimated when None; ``noise`` "gaussian" or "rician"). ``params``: method parameters
    (``lam`` for tv; steps, eta, zeta, start, jump, resample for the zero-shot solvers, ``methods.SOLVER_DEFAULTS``;
    factor, start, level for the missing-slice ones, ``slices3d.SLICE_DEFAULTS``; eta for sr3).
    ``checkpoint``: the prior of the zero-shot solvers, or the trained network of sr3 / unet (``learned``) or
    slice-diffusion / slice-unet (``slices_learned``); ``model`` passes one already loaded."""
    check_method(task, method)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise MeddiffError(f"--input: a {image.ndim}D array of shape {image.shape}; expected a 2D image (H, W) or a "
                           "3D volume (H, W, slices)")
    if image.dtype.kind not in "biuf":
        raise MeddiffError(f"--input has dtype {image.dtype}; expected a real-valued image (use the magnitude)")
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise MeddiffError(f"--input contains {bad} NaN/Inf value(s); clean the image or mask them first")
    volume = image.astype(np.float32)[..., None] if image.ndim == 2 else image.astype(np.float32)
    masks = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape == volume.shape[:2] or (image.ndim == 2 and m.shape == image.shape):
            masks = [m] * volume.shape[-1]
        elif image.ndim == 3 and m.shape == image.shape:
            masks = [m[..., z] for z in range(m.shape[-1])]
        else:
            check_mask(m, image.shape)  # raises, naming both shapes
    if task == "inpaint" and image.ndim == 3 and masks is not None:
        check_mask(np.stack(masks, -1), volume.shape)  # 0/1 values
        missing = missing_slices(np.stack(masks, -1))
        if missing is not None:
            return _restore_slices(volume, missing, method, prior=prior, checkpoint=checkpoint, steps=steps,
                                   samples=samples, seed=seed, model=model, **params)
    if method in SLICE_ONLY:
        raise MeddiffError(f"--method {method} fills whole missing slices of a 3D volume (a --mask of whole slices "
                           f"along the last axis); for holes choose one of: {', '.join(METHODS[task])}")
    if method in ZERO_SHOT[task] and prior is None:
        prior = restore_prior(checkpoint)
    if method in LEARNED[task] and model is None:
        model = load_sr_model(method, checkpoint)
    start = time.perf_counter()
    outs, stds, nfe, settings = [], [], 0, {}
    for z in range(volume.shape[-1]):
        problem = make_problem(task, volume[..., z], scale=scale, kernel=kernel,
                               mask=None if masks is None else masks[z], sigma=sigma, noise=noise)
        if method in BASELINES[task]:
            outs.append(baseline(method, problem, **params))
            settings = {"lam": params.get("lam")} if method == "tv" else {}
            continue
        if method in LEARNED[task]:
            images, nfe, settings = solve_learned(method, problem, model, steps=steps, samples=samples,
                                                  seed=seed + z, **params)
        else:
            images, nfe, settings = solve(method, problem, prior, steps=steps, samples=samples, seed=seed + z,
                                          **params)
        outs.append(images.mean(0))
        if method in SAMPLING[task]:
            stds.append(images.std(0, unbiased=False) if len(images) > 1 else torch.zeros_like(images[0]))
    out = torch.stack(outs, -1).numpy().astype(np.float32)
    std = torch.stack(stds, -1).numpy().astype(np.float32) if stds else None
    if image.ndim == 2:
        out, std = out[..., 0], (None if std is None else std[..., 0])
    info = {"task": task, "method": method, **settings}
    if task == "super-resolution":
        info.update({"scale": scale, "kernel": kernel})
    if task == "denoise":
        info.update({"sigma": problem.sigma, "noise": noise})
    return Restoration(out, std, nfe, time.perf_counter() - start, info)


def _restore_slices(volume: np.ndarray, missing, method: str, *, prior: Prior | None, checkpoint, model=None,
                    **kwargs) -> Restoration:
    """Whole missing slices of a volume (``slices3d.restore_slices``; ``slices_learned.fill_slices``)."""
    if method in SLICE_SAMPLING and prior is None:
        prior = restore_prior(checkpoint)
    if method in SLICE_LEARNED and model is None:
        model = load_slice_model(method, checkpoint)
    if method in SLICE_LEARNED and model.method != method:
        raise MeddiffError(f"--checkpoint {model.source} is a {model.method} model, not {method}")
    start = time.perf_counter()
    if method in SLICE_LEARNED:
        out, std, nfe, settings = fill_slices(volume, missing, model, **kwargs)
    else:
        out, std, nfe, settings = restore_slices(volume, missing, method, prior=prior, **kwargs)
    info = {"task": "inpaint", "method": method, "mode": "missing slices", **settings}
    return Restoration(out, std, nfe, time.perf_counter() - start, info)


def scaled_affine(affine: np.ndarray, scale: int) -> np.ndarray:
    """The affine of the ``scale`` x finer in-plane grid (axes 0 and 1) over the same field of view: columns 0 and 1
    divided by ``scale``, origin moved to the centre of the first fine voxel (-(s - 1) / (2 s) coarse voxels)."""
    new = np.array(affine, dtype=np.float64, copy=True)
    shift = -(scale - 1) / (2 * scale)
    new[:3, 3] = affine[:3, 3] + affine[:3, 0] * shift + affine[:3, 1] * shift
    new[:3, :2] = affine[:3, :2] / scale
    return new


def _check_output(path: str | Path, what: str) -> None:
    from meddiff.data.io import suffix_of

    if suffix_of(path) not in OUTPUT_SUFFIXES:
        raise MeddiffError(f"{what} {path}: write .npy, .nii.gz or .nii")


def read_input(path: str | Path, what: str = "--input") -> tuple[np.ndarray, object]:
    """Image (.nii.gz/.npy/.png, ...) -> (2D or 3D float array, ImageMeta); colour PNGs are averaged to grey."""
    from meddiff.data.io import read_image

    if not Path(path).exists():
        raise MeddiffError(f"{what} {path}: no such file")
    array, meta = read_image(path, allow_nan=True)
    if meta.channel_axis is not None and array.ndim == 3:
        array = array.mean(axis=meta.channel_axis)
    return np.asarray(array), meta


def restore_file(input_path: str | Path, out: str | Path, task: str, method: str, *, mask_path=None,
                 std_out: str | Path | None = None, **kwargs) -> tuple[Restoration, list[Path]]:
    """Read ``input_path``, ``restore``, write the image (and the std map) atomically as .npy or NIfTI with the input's
    affine (in-plane spacing divided by the scale for super-resolution). A 0/255 8-bit mask (a PNG) reads as 0/1."""
    from meddiff.data.io import write_image

    check_method(task, method)
    _check_output(out, "--out")
    if std_out is not None:
        _check_output(std_out, "--std-out")
        if method not in SAMPLING[task]:
            raise MeddiffError(f"--std-out needs a sampling method ({', '.join(SAMPLING[task])}); "
                               f"{method!r} gives a single image")
    image, meta = read_input(input_path)
    mask = None if mask_path is None else read_input(mask_path, "--mask")[0]
    if mask is not None and mask.dtype == np.uint8 and np.isin(mask, (0, 255)).all():
        mask = mask // 255  # an 8-bit image (PNG) drawn black = known, white = missing
    result = restore(image, task, method, mask=mask, **kwargs)
    if task == "super-resolution" and meta.affine is not None:
        meta = meta.replace(affine=scaled_affine(meta.affine, kwargs["scale"]))
    written = [write_image(out, result.image, meta)]
    if std_out is not None:
        written.append(write_image(std_out, result.std, meta))
    return result, written
