"""The diffusion prior of the MRI solvers: a one-channel unconditional image model as an x0-denoiser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meddiff.diffusion import ModelDenoiser, make_schedule
from meddiff.errors import MeddiffError


@dataclass
class Prior:
    """A one-channel unconditional diffusion prior: its x0-denoiser, schedule and padding multiple."""

    denoiser: ModelDenoiser
    schedule: object
    multiple: int
    meta: dict


def load_prior(checkpoint: str | Path | None = None) -> Prior:
    """The prior from a checkpoint (path, run directory or shipped name); None: the shipped default for reconstruct."""
    from meddiff.training.checkpoint import load_checkpoint
    from meddiff.training.shipped import default_checkpoint

    source = default_checkpoint("reconstruct") if checkpoint is None else checkpoint
    try:
        net, meta = load_checkpoint(source)
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {source}: {error}") from None
    network = meta.get("network", {})
    if meta.get("task") != "synthesis" or network.get("kind") != "unet" or meta.get("channels") != 1 \
            or network.get("num_classes") or network.get("cond_channels"):
        raise MeddiffError(f"--checkpoint {source}: not an unconditional one-channel image prior (task "
                           f"{meta.get('task')!r}, channels {meta.get('channels')}, classes "
                           f"{network.get('num_classes')}, image conditioning {network.get('cond_channels')}); "
                           "train one with configs/brain_mri_prior.yaml")
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = make_schedule(meta["schedule"])
    return Prior(ModelDenoiser(net, schedule, meta["prediction"]), schedule, 2 ** (len(network["channels"]) - 1), meta)



def untrained_prior(prior: Prior, seed: int = 0) -> Prior:
    """The same network, schedule and parametrisation as ``prior`` with freshly initialised weights (what ``meddiff
    train`` starts from, drawn with the seeded generator under ``torch.random.fork_rng``, so the caller's RNG is
    untouched): the control that shows how much a solver owes to the trained prior. MONAI initialises the output
    layer to zero, so the network predicts 0 (for v-prediction the denoiser is x0_hat = alpha_t x_t: no knowledge
    of images at all)."""
    import torch

    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(prior.meta["network"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Prior(ModelDenoiser(net, prior.schedule, prior.meta["prediction"]), prior.schedule, prior.multiple,
                 {**prior.meta, "untrained": True, "init_seed": seed})
