"""Latent diffusion of whole heads: the bundle (latent UNet + autoencoder + grid facts), label-conditioned sampling
in latent space through meddiff's samplers, decoding, and bundle writing.

Sampling (Rombach et al. 2022): z_T ~ N(0, prior_std^2) on the latent grid (C, 24, 32, 32); the UNet sees
[z_t, c] where c is the merged one-hot label map average-pooled to the latent grid (Med-DDPM's concatenation,
Dorjsembe et al. 2024, moved to latent space); the sampler returns z_0, which is divided by the scale factor and
decoded by the autoencoder to a (96, 128, 128) RAS head in model range (air -1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.nets.autoencoder_kl import KLAutoencoder
from meddiff.nets.unet import COND_IMAGE
from meddiff.tasks.synthesis3d.autoencoder import (AE_META, AE_WEIGHTS, DECODE_OVERLAP, DECODE_TILE, decode,
                                                    load_autoencoder)

LABEL_MAPS = "label_maps.npz"  # pooled label maps of a few training subjects: the default conditioning


@dataclass
class LatentDiffusion:
    """A loaded bundle: latent UNet (eval), autoencoder (eval), the checkpoint's meta and its ``ldm`` section
    (scale_factor, latent_shape, head_grid, ras_shape, spacing, affine, num_classes, cfg; decode_tile and
    decode_overlap in latent cells, the tiled decoding of ``autoencoder.decode``)."""

    unet: torch.nn.Module
    ae: KLAutoencoder
    meta: dict
    path: Path

    @property
    def info(self) -> dict:
        return self.meta["ldm"]

    def default_conditions(self) -> tuple[Tensor, list[str]]:
        """(M, K, *latent grid) pooled label maps of training subjects shipped with the bundle, and their names."""
        file = self.path / LABEL_MAPS
        if not file.is_file():
            raise MeddiffError(f"{self.path}: has no default label maps ({LABEL_MAPS}); pass --label-map")
        with np.load(file) as data:
            counts, names = data["counts"], [str(s) for s in data["subjects"]]
        return torch.from_numpy(counts.astype(np.float32) / float(self.ae.factor ** 3)), names


def is_ldm(checkpoint: str | Path) -> bool:
    """Whether a checkpoint (path or shipped name) is a latent diffusion bundle (its meta.json has ``ldm``)."""
    from meddiff.training.checkpoint import read_meta

    try:
        return "ldm" in read_meta(checkpoint)
    except MeddiffError:
        return False


def load_ldm(checkpoint: str | Path) -> LatentDiffusion:
    """Load a bundle: a shipped name (``brain3d_ldm``) or a folder with ema.safetensors, meta.json (with ``ldm``),
    autoencoder.safetensors and autoencoder.json."""
    from meddiff.nets import build_network
    from meddiff.training.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    meta = json.loads((path / "meta.json").read_text())
    if "ldm" not in meta:
        raise MeddiffError(f"{checkpoint}: not a latent diffusion checkpoint (its meta.json has no 'ldm' section); "
                           "--label-map needs a label-conditioned latent model such as brain3d_ldm")
    if not (path / AE_WEIGHTS).is_file():
        raise MeddiffError(f"{path}: the latent model's autoencoder ({AE_WEIGHTS}) is missing")
    unet = build_network(meta["network"])
    unet.load_state_dict({k: v.float() for k, v in load_file(path / "ema.safetensors").items()})
    return LatentDiffusion(unet.eval(), load_autoencoder(path), meta, path)


@torch.no_grad()
def sample_latents(ldm: LatentDiffusion, cond: Tensor, *, sampler: str | None = None, steps: int | None = None,
                   seed: int = 0, guidance_scale: float = 1.0) -> Tensor:
    """Scaled latents (N, C, *latent grid) for conditions ``cond`` (N, K, *latent grid) (class fractions)."""
    from meddiff.diffusion.parametrization import ModelDenoiser
    from meddiff.diffusion.samplers import get_sampler
    from meddiff.diffusion.schedules import make_schedule
    from meddiff.tasks.synthesis import sampling_plan

    if guidance_scale != 1.0 and not ldm.info.get("cfg"):
        raise MeddiffError(f"--guidance-scale {guidance_scale}: {ldm.path.name} was trained without conditioning "
                           "drop-out, so it has no unconditional model to guide with; use --guidance-scale 1")
    sampler, steps, grid = sampling_plan(ldm.meta, sampler, steps)
    denoiser = ModelDenoiser(ldm.unet, make_schedule(ldm.meta["schedule"]), ldm.meta["prediction"])
    generator = torch.Generator().manual_seed(seed)
    shape = (len(cond), ldm.meta["channels"], *ldm.info["latent_shape"])
    x = torch.randn(shape, generator=generator) * grid.prior_std()
    return get_sampler(sampler)(denoiser, x, grid, generator=generator, cond={COND_IMAGE: cond.float()}).float()


@torch.no_grad()
def sample_heads(ldm: LatentDiffusion, cond: Tensor, *, sampler: str | None = None, steps: int | None = None,
                 seed: int = 0, guidance_scale: float = 1.0, batch: int = 1) -> Tensor:
    """Heads (N, 1, *head grid) in model range (RAS, padded), ``batch`` at a time (one keeps the peak memory low);
    sample i uses seed ``seed + i`` (the same volume whatever the batch)."""
    out = []
    for start in range(0, len(cond), batch):
        parts = [sample_latents(ldm, cond[i:i + 1], sampler=sampler, steps=steps, seed=seed + i,
                                guidance_scale=guidance_scale) for i in range(start, min(start + batch, len(cond)))]
        z = torch.cat(parts) / float(ldm.info["scale_factor"])
        out.append(decode(ldm.ae, z, tile=ldm.info.get("decode_tile", DECODE_TILE),
                          overlap=ldm.info.get("decode_overlap", DECODE_OVERLAP)).clamp(-1.0, 2.0))
    return torch.cat(out)


def write_bundle(folder: str | Path, unet: torch.nn.Module, meta: dict, ae: KLAutoencoder, ldm_info: dict, *,
                 label_maps: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write a bundle folder (weights cast to ``dtype``): ema.safetensors + meta.json (with ``ldm``) of the latent
    UNet, autoencoder.safetensors + autoencoder.json, and optionally label_maps.npz ({"counts": uint8 (M, K, *latent
    grid) voxel counts per class and latent cell, "subjects": names})."""
    from meddiff.files import atomic_path

    folder = Path(folder)
    with atomic_path(folder, directory=True) as tmp:
        save_file({k: v.detach().to(dtype).contiguous() for k, v in unet.state_dict().items()}, tmp / "ema.safetensors")
        (tmp / "meta.json").write_text(json.dumps({**meta, "ldm": ldm_info}, indent=2, default=str))
        write_autoencoder(tmp, ae, dtype)
        if label_maps is not None:
            with open(tmp / LABEL_MAPS, "wb") as handle:
                np.savez_compressed(handle, **label_maps)
    return folder


def write_autoencoder(folder: Path, ae: KLAutoencoder, dtype: torch.dtype = torch.float16) -> None:
    """autoencoder.safetensors (``dtype``) + autoencoder.json (the network config) into ``folder``."""
    save_file({k: v.detach().to(dtype).contiguous() for k, v in ae.state_dict().items()}, folder / AE_WEIGHTS)
    (folder / AE_META).write_text(json.dumps({"network": ae.config}, indent=2))


def label_map_counts(labels: np.ndarray, num_classes: int, factor: int) -> np.ndarray:
    """Padded merged label maps (M, *grid) -> uint8 voxel counts per class and latent cell (M, K, *grid / factor)
    (exact: fractions are counts / factor^3; the compact form of the default conditioning)."""
    from meddiff.data.heads import one_hot_latent

    if factor ** 3 > 255:
        raise MeddiffError(f"factor {factor}: counts up to {factor ** 3} do not fit uint8")
    pooled = one_hot_latent(torch.from_numpy(np.asarray(labels, dtype=np.int64)), num_classes, factor)
    return torch.round(pooled * factor ** 3).to(torch.uint8).numpy()
