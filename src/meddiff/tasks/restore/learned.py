"""Super-resolution by networks trained on (low-resolution, high-resolution) pairs (``meddiff.data.superres``):

- "sr3" (Saharia et al. 2021, "Image super-resolution via iterative refinement"): a conditional diffusion model whose
  network sees the noisy target concatenated with the bicubic upsampling of the low-resolution image; sampled by DDIM
  (Song et al. 2021, eq. 12) with few steps, K samples -> mean and per-pixel std. The shipped model predicts the
  residual r = residual_scale (v - bicubic) (SRDiff-style, Li et al. 2022), so v = bicubic + r / residual_scale.
  ``start`` < 1 starts at that fraction of T from the bicubic image (residual 0) noised to that time instead of pure
  noise ("come closer, diffuse faster", Chung et al. 2022), as the zero-shot solvers' ``start`` does.
- "unet": the supervised regression baseline (``meddiff.training.regression``), one deterministic prediction.

Both run in the pairs' model space: v = 2 x / s - 1 with s = ``magnitude_scale`` of the low-resolution input (what
the training pairs used, ``data.superres.sr_condition``), padded with air (v = -1, zero residual) to the network's
multiple and cropped back; x = s (v + 1) / 2. They were trained for one degradation (area averaging at the
checkpoint's scale): another scale or kernel is an error naming the checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from meddiff.data.superres import sr_condition
from meddiff.diffusion import ModelDenoiser, get_sampler, initial_noise, make_schedule, start_grid
from meddiff.errors import MeddiffError
from meddiff.tasks.prior import solver_settings
from meddiff.tasks.restore.problems import Problem

LEARNED = {"super-resolution": ("sr3", "unet"), "inpaint": (), "denoise": ()}
# sr3: chosen on VAL slices only (2 subjects x 2 slices, 4x, the 40-minute model, K = 4): PSNR
# 23.25 (20 steps, eta 0), 23.58 (20 steps, eta 1), 23.43 (10 steps, eta 0), 23.25 (10 steps from start 0.5);
# bicubic 22.60, the supervised UNet 24.30 (scripts/train_sr.py --tune-val 2). The shipped 80-minute model: 23.63
# (eta 0) / 23.90 (eta 1) / 23.81 (10 steps) / 23.58 (start 0.5); the UNet 24.52 (model cards).
LEARNED_DEFAULTS: dict[str, dict] = {
    "sr3": {"steps": 20, "samples": 4, "eta": 1.0, "start": 1.0},
    "unet": {"steps": 1, "samples": 1},
}
DEFAULT_MODELS = {"sr3": "sr3_ixi_4x", "unet": "unet_sr_ixi_4x"}


@dataclass
class SRModel:
    """A loaded super-resolution network: ``method`` ("sr3"/"unet"), the factor and kernel it was trained for, its
    padding multiple, the residual scaling of its target (None: it predicts v itself), and for sr3 the x0-denoiser
    and schedule; ``net`` the module; ``source`` where it came from."""

    method: str
    net: torch.nn.Module
    scale: int
    kernel: str
    multiple: int
    residual_scale: float | None
    source: str
    denoiser: ModelDenoiser | None = None
    schedule: object = None
    meta: dict | None = None


def resolve_regression_folder(checkpoint: str | Path, what: str = "supervised UNet",
                              advice: str = f"the shipped one is {DEFAULT_MODELS['unet']}") -> Path:
    """The folder of a saved regression network: ``checkpoint`` itself, its ``final/`` (a run directory) or, for a
    bare name, the shipped model of that name; else a one-line error naming ``what``, with ``advice``."""
    from meddiff.training.regression import CONFIG_FILE
    from meddiff.training.shipped import SHIPPED_DIR

    path = Path(checkpoint)
    candidates = [path, path / "final"] + ([SHIPPED_DIR / str(checkpoint)] if "/" not in str(checkpoint) else [])
    for candidate in candidates:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise MeddiffError(f"--checkpoint {checkpoint}: no {what} there (a folder with {CONFIG_FILE}, a run "
                       f"directory with final/, or a shipped name); {advice}")


def load_sr_model(method: str, checkpoint: str | Path | None = None) -> SRModel:
    """The network of ``method`` from ``checkpoint`` (path, run directory or shipped name; default
    ``DEFAULT_MODELS[method]``)."""
    if method not in DEFAULT_MODELS:
        raise MeddiffError(f"--method {method!r} has no trained super-resolution model; choose one of: "
                           f"{', '.join(DEFAULT_MODELS)}")
    source = DEFAULT_MODELS[method] if checkpoint is None else checkpoint
    if method == "unet":
        from meddiff.training.regression import load_regression, read_regression_config

        folder = resolve_regression_folder(source)
        data = read_regression_config(folder)["meta"].get("data", {})
        net = load_regression(folder)
        for p in net.parameters():
            p.requires_grad_(False)
        return SRModel("unet", net, int(data.get("scale", 4)), "area", net.multiple, None, str(source))
    from meddiff.training.checkpoint import load_checkpoint

    try:
        net, meta = load_checkpoint(source)
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {source}: {error}") from None
    network, data = meta.get("network", {}), meta.get("data") or {}
    if network.get("cond_channels") != 1 or data.get("kind") != "sr_slices":
        raise MeddiffError(f"--checkpoint {source}: not an SR3 model (image conditioning "
                           f"{network.get('cond_channels')}, data kind {data.get('kind')!r}); train one with "
                           "configs/sr3_ixi_4x.yaml (scripts/train_sr.py)")
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = make_schedule(meta["schedule"])
    residual = float(data.get("residual_scale", 1.0)) if data.get("residual") else None
    return SRModel("sr3", net, int(data.get("scale", 4)), "area", 2 ** (len(network["channels"]) - 1), residual,
                   str(source), ModelDenoiser(net, schedule, meta["prediction"]), schedule, meta)


def untrained_sr3(model: SRModel, seed: int = 0) -> SRModel:
    """The same SR3 network with freshly initialised weights (drawn under ``fork_rng``): the control row."""
    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(model.meta["network"]).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return SRModel("sr3", net, model.scale, model.kernel, model.multiple, model.residual_scale,
                   f"{model.source} (untrained, seed {seed})", ModelDenoiser(net, model.schedule,
                                                                            model.meta["prediction"]),
                   model.schedule, {**model.meta, "untrained": True})


def _padded_crop(shape: tuple[int, int], multiple: int) -> tuple[tuple[int, int], tuple]:
    h, w = shape
    ph, pw = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    top, left = (ph - h) // 2, (pw - w) // 2
    return (ph, pw), (Ellipsis, slice(top, top + h), slice(left, left + w))


def solve_learned(method: str, problem: Problem, model: SRModel, *, steps: int | None = None,
                  samples: int | None = None, seed: int = 0, **params) -> tuple[Tensor, int, dict]:
    """Super-resolve ``problem`` (its y is the low-resolution image) with a trained network -> (images (K, H, W) in
    the input's units, network evaluations per sample, settings)."""
    if problem.task != "super-resolution" or method not in LEARNED[problem.task]:
        raise MeddiffError(f"--method {method!r} is a trained super-resolution model; use --task super-resolution")
    if model.method != method:
        raise MeddiffError(f"--checkpoint {model.source} is a {model.method} model, not {method}")
    if problem.scale != model.scale or problem.kernel != model.kernel:
        raise MeddiffError(f"--checkpoint {model.source} was trained for --scale {model.scale} --kernel "
                           f"{model.kernel}; got --scale {problem.scale} --kernel {problem.kernel} (use a zero-shot "
                           "method such as ddnm, or train a model for that setting)")
    settings = solver_settings(LEARNED_DEFAULTS, method, steps if method == "sr3" else None,
                               samples if method == "sr3" else None, params, label=f"--method {method}")
    if method == "unet" and (steps not in (None, 1) or samples not in (None, 1)):
        raise MeddiffError("--method unet gives one deterministic image; leave out --steps and --samples")
    cond, s = sr_condition(problem.y, problem.scale)  # (1, H, W)
    padded, crop = _padded_crop(problem.shape, model.multiple)
    c = torch.full((1, 1) + padded, -1.0)
    c[crop] = cond
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if method == "unet":
            v = model.net(c)
            nfe = 1
        else:
            k = settings["samples"]
            grid = start_grid(model.schedule, settings["steps"], settings["start"])
            x = initial_noise(grid, (k, 1) + padded, generator=generator)
            if settings["start"] < 1:  # alpha_0 x_start + sigma_0 n with x_start = bicubic (residual 0)
                x = x * (float(grid.sigmas[0]) / grid.prior_std())
                if not model.residual_scale:
                    x = x + float(grid.alphas[0]) * c
            out = get_sampler("ddim")(model.denoiser, x, grid, generator=generator, eta=settings["eta"],
                                      cond={"cond_image": c.expand(k, -1, -1, -1)})
            v = c + out / model.residual_scale if model.residual_scale else out
            nfe = grid.steps
    images = 0.5 * s * (v[crop][:, 0] + 1.0)
    settings.update({"scale": s, "checkpoint": model.source})
    return images.float(), nfe, settings
