"""Synthesis: sample a trained (or shipped) diffusion model, unconditional or class-conditional with
classifier-free guidance (Ho & Salimans 2022), 2D or 3D, and write the images in their original intensities.

`generate` returns model-space samples in [-1, 1]; `to_intensities` undoes the training normalisation recorded
in the checkpoint; `write_samples` writes the PNG grid(s), ``samples.npy`` (N, C, *spatial), ``labels.npy``,
one NIfTI per 3D sample and ``manifest.json`` (checkpoint, sampler, steps, seed, guidance, versions).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.data.io import write_nifti
from meddiff.files import atomic_path, write_png
from meddiff.device import resolve_device
from meddiff.data.transforms import denormalize
from meddiff.diffusion.distill import (BOUNDARY_SIGMA, CONSISTENCY_SAMPLER, ConsistencyFunction,
                                       sample_consistency)
from meddiff.diffusion.guidance import ClassifierFreeGuidance, ClipDenoised, HookChain
from meddiff.diffusion.parametrization import ModelDenoiser
from meddiff.diffusion.samplers import get_sampler, network_evaluations, recommended_spacing
from meddiff.diffusion.schedules import make_schedule
from meddiff.diffusion.timesteps import TimeGrid, make_grid
from meddiff.errors import MeddiffError
from meddiff.nets.unet import CLASS_LABELS, GUIDANCE_SCALE
from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint
from meddiff.training.images import image_grid
from meddiff.training.trainer import versions


def class_labels_for(meta: dict, num: int, class_label: int | None) -> Tensor | None:
    """(num,) labels: the given class, or classes in turn (0, 1, ..., 0, 1, ...) for a conditional model."""
    classes = meta.get("num_classes") or 0
    if not classes:
        if class_label is not None:
            raise MeddiffError("--class was given but this checkpoint is unconditional (num_classes is 0)")
        return None
    if class_label is None:
        return torch.arange(num) % classes
    if not 0 <= class_label < classes:
        raise MeddiffError(f"--class {class_label} is out of range: this checkpoint has classes 0..{classes - 1}")
    return torch.full((num,), class_label, dtype=torch.long)


DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp_2m", 20


def sampling_plan(meta: dict, sampler: str | None = None, steps: int | None = None) -> tuple[str, int, TimeGrid]:
    """(sampler, steps, grid) for a checkpoint: a distilled student (meta ``sampling``, `meddiff distill`) defaults
    to its own sampler, step count and the exact times it was distilled on; others to dpmpp_2m with 20 steps on the
    sampler's recommended grid. An explicit sampler or steps replaces that default."""
    schedule = make_schedule(meta["schedule"])
    student = meta.get("sampling") if isinstance(meta.get("sampling"), dict) else {}
    sampler = sampler or student.get("sampler") or DEFAULT_SAMPLER
    steps = steps if steps is not None else student.get("steps") or DEFAULT_STEPS
    if steps < 1:
        raise MeddiffError(f"--steps {steps}: must be at least 1")
    if student.get("times") and sampler == student.get("sampler") and steps == student.get("steps"):
        return sampler, steps, TimeGrid.from_times(schedule, student["times"])
    steps = min(steps, getattr(schedule, "num_train_steps", steps))
    if sampler == CONSISTENCY_SAMPLER:  # consistency students (meddiff distill --method consistency): trailing grids
        return sampler, steps, make_grid(schedule, steps, "trailing")
    return sampler, steps, make_grid(schedule, steps, recommended_spacing(sampler, schedule))


@torch.no_grad()
def generate(checkpoint: str | Path, num: int, *, sampler: str | None = None, steps: int | None = None,
             class_label: int | None = None, guidance_scale: float = 1.0, seed: int = 0, batch_size: int = 64,
             device: str = "cpu", clip_denoised: bool | None = None, model=None, meta: dict | None = None, progress=None
             ) -> tuple[Tensor, Tensor | None]:
    """``num`` samples (num, C, *spatial) in model space ([-1, 1] unless z-scored) and their labels (or None).

    guidance_scale 1 is the plain conditional model, 0 the unconditional one (the null class), > 1 guided.
    clip_denoised clamps every x0 estimate to the model range [-1, 1] (`ClipDenoised`); None = unless the training
    data was z-scored (unbounded).
    The initial noise comes from one CPU generator seeded with ``seed`` (the same for any batch_size; the
    stochastic samplers' later draws follow it in batch order).
    """
    if num < 1:
        raise MeddiffError(f"--n {num}: the number of samples must be at least 1")
    if steps is not None and steps < 1:
        raise MeddiffError(f"--steps {steps}: must be at least 1")
    torch_device = resolve_device(device)
    if model is None:
        model, meta = load_checkpoint(checkpoint, device=torch_device)
    if meta.get("task") != "synthesis":
        raise MeddiffError(f"{checkpoint}: is a {meta.get('task')!r} checkpoint; sampling needs a synthesis model")
    if "ldm" in meta:  # whole-head latent diffusion: its own pipeline (meddiff.tasks.synthesis3d)
        raise MeddiffError(f"{checkpoint}: is a latent diffusion bundle; sample it with `meddiff sample --checkpoint "
                           f"{checkpoint}` or meddiff.tasks.synthesis3d.output.sample_to_folder")
    schedule = make_schedule(meta["schedule"])
    sampler, steps, grid = sampling_plan(meta, sampler, steps)
    distilled_scale = (meta.get("sampling") or {}).get("guidance_scale")
    if distilled_scale is not None and guidance_scale != 1.0:
        raise MeddiffError(f"{checkpoint}: this student was distilled at guidance scale {distilled_scale} (built in); "
                           "sample it with --guidance-scale 1")
    scale_input = guidance_input_range(meta)
    if scale_input is not None and not scale_input[0] <= guidance_scale <= scale_input[1]:
        raise MeddiffError(f"--guidance-scale {guidance_scale:g}: this guidance-distilled student was trained at scales "
                           f"{scale_input[0]:g} to {scale_input[1]:g}; choose one in that range")
    denoiser = ModelDenoiser(model, schedule, meta["prediction"])
    labels = class_labels_for(meta, num, class_label)
    if guidance_scale != 1.0 and labels is None:
        raise MeddiffError("--guidance-scale needs a class-conditional checkpoint (this one is unconditional)")
    shape = (meta["channels"], *meta["image_size"])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num, *shape), generator=generator) * grid.prior_std()
    if sampler == CONSISTENCY_SAMPLER:  # multistep consistency sampling of f(x, t) (Song et al. 2023, Alg. 1)
        boundary = (meta.get("sampling") or {}).get("boundary_sigma", BOUNDARY_SIGMA)
        denoiser, run = ConsistencyFunction(denoiser, schedule, boundary), sample_consistency
    else:
        run = get_sampler(sampler)
    out = []
    for start in range(0, num, batch_size):
        x = noise[start:start + batch_size].to(torch_device)
        cond, hooks = {}, []
        if labels is not None:
            cond[CLASS_LABELS] = labels[start:start + batch_size].to(torch_device)
            if scale_input is not None:  # the scale is a network input: one evaluation per step (Meng et al. 2023)
                cond[GUIDANCE_SCALE] = torch.full((x.shape[0],), float(guidance_scale), device=torch_device)
            elif guidance_scale != 1.0:  # the denoiser called without labels is the null-class (unconditional) model
                hooks.append(ClassifierFreeGuidance(denoiser, guidance_scale))
        if clip_denoised or (clip_denoised is None and bounded(meta)):
            hooks.append(ClipDenoised(-1.0, 1.0))
        hook = HookChain(hooks) if hooks else None
        out.append(run(denoiser, x, grid, hook=hook, generator=generator, cond=cond).float().cpu())
        if progress is not None:
            progress(min(start + batch_size, num), num)
    samples = torch.cat(out)
    return (samples.clamp(-1, 1) if bounded(meta) else samples), labels


def guidance_input_range(meta: dict) -> tuple[float, float] | None:
    """(low, high) guidance scales of a guidance-distilled network that takes the scale as an input, else None."""
    if not (meta.get("network") or {}).get("guidance_input"):
        return None
    low, high = (meta.get("sampling") or {}).get("guidance_range") or (0.0, float("inf"))
    return float(low), float(high)


def bounded(meta: dict) -> bool:
    """Whether the model's data lives in [-1, 1] (every normalisation except z-scoring)."""
    return (meta.get("normalisation") or {}).get("mode") != "zscore"


def invertible(meta: dict) -> bool:
    """Whether the checkpoint recorded one global intensity normalisation (not a per-image one)."""
    return (meta.get("normalisation") or {}).get("mode") in ("fixed", "window", "zscore")


def to_intensities(samples: Tensor, meta: dict) -> np.ndarray:
    """Model-space samples -> the original intensity range recorded at training (e.g. 0..255 for MedMNIST);
    model space unchanged when the training normalisation was per image (no global inverse exists)."""
    if invertible(meta):
        return np.asarray(denormalize(samples, meta["normalisation"]), dtype=np.float32)
    return samples.numpy().astype(np.float32)


def sample_grid(samples: Tensor, nrow: int | None = None) -> np.ndarray:
    """uint8 grid of samples in [-1, 1]; 3D volumes show the central slice of each axis side by side."""
    if samples.ndim == 5:
        d, h, w = samples.shape[2:]
        side = max(d, h, w)
        planes = [samples[:, :, d // 2], samples[:, :, :, h // 2], samples[:, :, :, :, w // 2]]
        padded = [torch.nn.functional.pad(p, (0, side - p.shape[-1], 0, side - p.shape[-2]), value=-1) for p in planes]
        samples = torch.cat(padded, dim=-1)
        nrow = nrow or max(1, round(math.sqrt(samples.shape[0] / 3)))
    return image_grid(samples, nrow)


def write_samples(out_dir: str | Path, samples: Tensor, labels: Tensor | None, meta: dict, *,
                  manifest: dict) -> dict[str, Path]:
    """Write the grids, arrays and manifest of a sampling run to ``out_dir``; returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    groups = {"grid": slice(None)} if labels is None else {
        f"grid_class{c}": (labels == c) for c in sorted(set(labels.tolist()))}
    for name, index in groups.items():
        written[name] = write_png(out_dir / f"{name}.png", sample_grid(samples[index]))
    intensities = to_intensities(samples, meta)
    with atomic_path(out_dir / "samples.npy") as tmp:
        np.save(tmp, intensities)
    written["samples"] = out_dir / "samples.npy"
    if labels is not None:
        with atomic_path(out_dir / "labels.npy") as tmp:
            np.save(tmp, labels.numpy())
        written["labels"] = out_dir / "labels.npy"
    if samples.ndim == 5:
        for i, volume in enumerate(intensities):
            written[f"nifti_{i}"] = write_nifti(out_dir / f"sample_{i:04d}.nii.gz", volume[0])
    with atomic_path(out_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps({**manifest, "files": {k: v.name for k, v in written.items()},
                                   "intensity_range": "original" if invertible(meta) else "model [-1, 1]", "versions": versions()}, indent=2, default=str))
    written["manifest"] = out_dir / "manifest.json"
    return written


def sample_to_folder(checkpoint: str | Path, out_dir: str | Path, num: int, *, sampler: str | None = None,
                     steps: int | None = None, class_label: int | None = None, guidance_scale: float = 1.0, seed: int = 0,
                     batch_size: int = 64, device: str = "cpu", clip_denoised: bool | None = None, progress=None) -> dict:
    """`generate` then `write_samples`; returns the manifest (with wall time and network evaluations). ``checkpoint``
    may also be a network file written by `meddiff export` (.onnx under onnxruntime, .pt TorchScript; CPU only)."""
    if Path(checkpoint).suffix in (".onnx", ".pt") and Path(checkpoint).is_file():
        from meddiff.training.export_onnx import load_exported

        if device != "auto" and resolve_device(device).type != "cpu":
            raise MeddiffError(f"--checkpoint {checkpoint}: an exported network runs on the CPU; drop --device")
        path, device = Path(checkpoint), "cpu"
        model, meta = load_exported(path)
    else:
        path = resolve_checkpoint(checkpoint)
        model, meta = load_checkpoint(path, device=resolve_device(device))
    sampler, steps, _ = sampling_plan(meta, sampler, steps)
    started = time.perf_counter()
    samples, labels = generate(path, num, sampler=sampler, steps=steps, class_label=class_label,
                               guidance_scale=guidance_scale, seed=seed, batch_size=batch_size, device=device,
                               clip_denoised=clip_denoised, model=model, meta=meta, progress=progress)
    seconds = time.perf_counter() - started
    per_step = steps if sampler == CONSISTENCY_SAMPLER else network_evaluations(sampler, min(steps, getattr(make_schedule(meta["schedule"]), "num_train_steps", steps)))
    manifest = {"checkpoint": str(path), "num": num, "sampler": sampler, "steps": steps, "seed": seed,
                "class": class_label, "guidance_scale": guidance_scale,
                "clip_denoised": bounded(meta) if clip_denoised is None else clip_denoised, "seconds": round(seconds, 3),
                "network_evaluations_per_sample":
                    per_step * (2 if guidance_scale != 1.0 and guidance_input_range(meta) is None else 1)}
    files = write_samples(out_dir, samples, labels, meta, manifest=manifest)
    return {**manifest, "files": {k: str(v) for k, v in files.items()}}
