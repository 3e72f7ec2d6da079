"""Missing-slice inpainting by networks trained on (known neighbours) -> slice z pairs (``meddiff.data.slice_triplets``:
2 neighbours z-1, z+1 or 4 neighbours z-3, z-1, z+1, z+3; the count is read from the checkpoint), the learned
counterpart of ``slices3d``'s interpolation along the slice axis:

- "slice-diffusion": a Palette-style conditional diffusion model (Saharia et al. 2022, "Palette: image-to-image
  diffusion models"; the SR3 channel concatenation of Saharia et al. 2021) whose network sees the noisy missing slice
  concatenated with its two known neighbours; sampled by DDIM (Song et al. 2021, eq. 12), K samples -> mean and
  per-voxel std. It predicts the residual r = residual_scale (v - (v_below + v_above) / 2), so v = the linear fill +
  r / residual_scale.
- "slice-unet": the supervised regression baseline (``meddiff.training.regression``) on the same pairs, one
  deterministic prediction of the same residual.

Both run per missing slice in the pairs' model space: v = 2 x / s - 1 with s = ``magnitude_scale`` of the two
neighbours (``neighbour_condition``), padded with air (v = -1) to the network's multiple and cropped back; x = s (v +
1) / 2. The neighbours are the nearest KNOWN slices below and above (4-neighbour models: also the second-nearest known
slice on each side, or the nearest one repeated where there is no second, as in training at the volume edges); the
models were trained on the slices known when every second slice is missing, so a longer run of missing slices gets, in
each of them, the model's fill between the two known slices around the run (outside the training distribution; the gap
is reported in the settings as ``max_gap``). A missing slice with no known slice below or above it (the ends of the
volume) is an error: use linear / biharmonic, which copy the nearest known slice there. Known slices are returned
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meddiff.data.slice_triplets import NEIGHBOURS, neighbour_condition, residual_fill
from meddiff.diffusion import ModelDenoiser, get_sampler, initial_noise, make_schedule, start_grid
from meddiff.errors import MeddiffError
from meddiff.tasks.prior import solver_settings
from meddiff.tasks.restore.learned import _padded_crop, resolve_regression_folder

SLICE_LEARNED = ("slice-diffusion", "slice-unet")
DEFAULT_SLICE_MODELS = {"slice-diffusion": "slices_diffusion_ixi", "slice-unet": "slices_unet_ixi"}
# slice-diffusion: chosen on VAL volumes only (2 subjects, 13-slice blocks, every second slice missing; the 38-minute
# run, 1023 steps): PSNR in the missing slices at K = 2: 28.82 (10 steps, eta 0), 29.20 (10 steps, eta 1), 28.94 (20
# steps, eta 1) (scripts/train_slices.py --tune-val 2); 10 steps eta 1 at K = 4 / 8: 29.61 / 29.79; biharmonic 28.98,
# slice-unet 29.86. More samples move the mean toward the posterior mean (benchmarks/README.md, slices3d).
SLICE_LEARNED_DEFAULTS: dict[str, dict] = {
    "slice-diffusion": {"steps": 10, "samples": 8, "eta": 1.0},
    "slice-unet": {"steps": 1, "samples": 1, "mirror": True},
}
# slice-unet "mirror": the mean of the prediction and the mirrored prediction of the mirrored input (along the slice's
# first axis, left-right for RAS volumes; a test-time ensemble as in nnU-Net, Isensee et al. 2021), 2 evaluations per
# slice. Chosen on VAL (scripts/train_slices.py --tune-val): 30.05 -> 30.15 dB with the 4-neighbour model.


@dataclass
class SliceModel:
    """A loaded missing-slice network: ``method`` (``SLICE_LEARNED``), ``net``, its padding multiple, the residual
    scaling of its target; for slice-diffusion the x0-denoiser, schedule and checkpoint meta; ``source``; the number of
    known neighbours it reads (its input channels: 2 or 4)."""

    method: str
    net: torch.nn.Module
    multiple: int
    residual_scale: float
    source: str
    denoiser: ModelDenoiser | None = None
    schedule: object = None
    meta: dict | None = None
    neighbours: int = 2


def _frozen(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def load_slice_model(method: str, checkpoint: str | Path | None = None) -> SliceModel:
    """The network of ``method`` from ``checkpoint`` (path, run directory or shipped name; default
    ``DEFAULT_SLICE_MODELS[method]``)."""
    if method not in SLICE_LEARNED:
        raise MeddiffError(f"--method {method!r} has no trained missing-slice model; choose one of: "
                           f"{', '.join(SLICE_LEARNED)}")
    source = DEFAULT_SLICE_MODELS[method] if checkpoint is None else checkpoint
    if checkpoint is None:
        from meddiff.training.shipped import SHIPPED_DIR

        if not (SHIPPED_DIR / source).is_dir():
            raise MeddiffError(f"--method {method}: no shipped model ({source} is not in this checkout); pass "
                               f"--checkpoint RUN_DIR (train one with scripts/train_slices.py)")
    if method == "slice-unet":
        from meddiff.training.regression import load_regression, read_regression_config

        folder = resolve_regression_folder(source, "missing-slice UNet",
                                           "train one with scripts/train_slices.py --model unet")
        config = read_regression_config(folder)
        data, channels = config["meta"].get("data", {}), config["build"].get("in_channels")
        if data.get("kind") != "slice_triplets" or channels not in NEIGHBOURS \
                or channels != data.get("neighbours", 2):
            raise MeddiffError(f"--checkpoint {source}: not a missing-slice UNet (data kind {data.get('kind')!r}, "
                               f"{channels} input channels for {data.get('neighbours', 2)} neighbours); train one with "
                               "scripts/train_slices.py --model unet")
        net = _frozen(load_regression(folder))
        return SliceModel(method, net, net.multiple, float(data["residual_scale"]), str(source), neighbours=channels)
    from meddiff.training.checkpoint import load_checkpoint

    try:
        net, meta = load_checkpoint(source)
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {source}: {error} (train one with scripts/train_slices.py --model "
                           "diffusion)") from None
    network, data = meta.get("network", {}), meta.get("data") or {}
    count = network.get("cond_channels")
    if count not in NEIGHBOURS or count != data.get("neighbours", 2) or data.get("kind") != "slice_triplets":
        raise MeddiffError(f"--checkpoint {source}: not a missing-slice diffusion model (image conditioning "
                           f"{network.get('cond_channels')}, data kind {data.get('kind')!r}); train one with "
                           "scripts/train_slices.py --model diffusion")
    schedule = make_schedule(meta["schedule"])
    return SliceModel(method, _frozen(net), 2 ** (len(network["channels"]) - 1), float(data["residual_scale"]),
                      str(source), ModelDenoiser(net, schedule, meta["prediction"]), schedule, meta, count)


def untrained_slice_model(model: SliceModel, seed: int = 0) -> SliceModel:
    """The same network with freshly initialised weights (drawn under ``fork_rng``): the control row."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model.method == "slice-unet":
            from meddiff.training.regression import build_regression_unet

            net = build_regression_unet(**model.net.build_args)
        else:
            from meddiff.nets import build_network

            net = build_network(model.meta["network"])
    net = _frozen(net)
    denoiser = None if model.schedule is None else ModelDenoiser(net, model.schedule, model.meta["prediction"])
    return SliceModel(model.method, net, model.multiple, model.residual_scale,
                      f"{model.source} (untrained, seed {seed})", denoiser, model.schedule,
                      None if model.meta is None else {**model.meta, "untrained": True}, model.neighbours)


def neighbours(depth: int, missing, count: int = 2) -> tuple[np.ndarray, ...]:
    """The known neighbours of each of the ``missing`` slices (indices along an axis of ``depth``), bottom to top:
    ``count`` 2: the nearest known slice below and above; 4: (second-nearest below, nearest below, nearest above,
    second-nearest above), the nearest one repeated where a side has only one known slice. ``MeddiffError`` naming the
    first missing slice without a known slice on one side."""
    missing = np.asarray(missing, dtype=int)
    known = np.setdiff1d(np.arange(depth), missing)
    hi = np.searchsorted(known, missing)
    edge = (hi == 0) | (hi == len(known))
    if edge.any():
        z = int(missing[edge][0])
        raise MeddiffError(f"--mask: missing slice {z} has no known slice {'below' if hi[edge][0] == 0 else 'above'} "
                           f"it ({int(edge.sum())} such slice(s)); the learned methods fill a slice from known slices "
                           "on both sides: use linear or biharmonic, which copy the nearest known slice there")
    below, above = known[hi - 1], known[hi]
    if count == 2:
        return below, above
    return known[np.maximum(hi - 2, 0)], below, above, known[np.minimum(hi + 1, len(known) - 1)]


def fill_slices(volume: np.ndarray, missing, model: SliceModel, *, steps: int | None = None,
                samples: int | None = None, seed: int = 0, **params) -> tuple:
    """Fill the ``missing`` slices of ``volume`` (H, W, D) with a trained missing-slice network -> (volume, per-voxel
    std over the samples (slice-diffusion; 0 on the known slices) or None, network evaluations per slice and sample,
    settings). Slice z of slice-diffusion uses seed + z."""
    method = model.method
    settings = solver_settings(SLICE_LEARNED_DEFAULTS, method, steps if method == "slice-diffusion" else None,
                               samples if method == "slice-diffusion" else None, params, label=f"--method {method}")
    if method == "slice-unet" and (steps not in (None, 1) or samples not in (None, 1)):
        raise MeddiffError("--method slice-unet gives one deterministic volume; leave out --steps and --samples")
    volume = np.asarray(volume, dtype=np.float32)
    missing = np.asarray(missing, dtype=int)
    around = neighbours(volume.shape[-1], missing, model.neighbours)
    below, above = around[len(around) // 2 - 1], around[len(around) // 2]
    padded, crop = _padded_crop(volume.shape[:2], model.multiple)
    out = volume.copy()
    std = np.zeros_like(volume) if method == "slice-diffusion" else None
    nfe = 2 if settings.get("mirror") else 1
    for z, *near in zip(missing.tolist(), *(k.tolist() for k in around)):
        cond = torch.full((1, len(near)) + padded, -1.0)
        cond[crop], s = neighbour_condition(*(volume[..., k] for k in near))
        with torch.no_grad():
            if method == "slice-unet":
                r = model.net(cond)
                if settings["mirror"]:
                    r = 0.5 * (r + model.net(cond.flip(-2)).flip(-2))
                v = residual_fill(cond, r, model.residual_scale)
            else:
                k = settings["samples"]
                generator = torch.Generator().manual_seed(seed + z)
                grid = start_grid(model.schedule, settings["steps"], 1.0)
                x = initial_noise(grid, (k, 1) + padded, generator=generator)
                c = cond.expand(k, -1, -1, -1)
                r = get_sampler("ddim")(model.denoiser, x, grid, generator=generator, eta=settings["eta"],
                                        cond={"cond_image": c})
                v = residual_fill(c, r, model.residual_scale)
                nfe = grid.steps
        images = 0.5 * s * (v[crop][:, 0] + 1.0)  # (K, H, W)
        out[..., z] = images.mean(0).numpy()
        if std is not None:
            std[..., z] = images.std(0, unbiased=False).numpy() if len(images) > 1 else 0.0
    settings.update({"checkpoint": model.source, "missing": missing.tolist(),
                     "max_gap": int((above - below).max()) - 1 if len(missing) else 0})
    return out, std, nfe, settings
