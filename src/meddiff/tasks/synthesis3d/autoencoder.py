"""The first stage of the latent diffusion model: load the KL autoencoder, encode/decode whole heads, score its
reconstructions and cache the scaled latents the latent UNet trains on (Rombach et al. 2022)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.nets.autoencoder_kl import KLAutoencoder

AE_WEIGHTS, AE_META = "autoencoder.safetensors", "autoencoder.json"


def load_autoencoder(path: str | Path) -> KLAutoencoder:
    """The EMA autoencoder of a trainer checkpoint / run directory, or of a latent-diffusion bundle (a folder with
    autoencoder.safetensors + autoencoder.json), in eval mode on the CPU."""
    path = Path(path)
    if (path / AE_WEIGHTS).is_file():
        meta = json.loads((path / AE_META).read_text())
        net = KLAutoencoder(meta["network"])
        net.load_state_dict({k: v.float() for k, v in load_file(path / AE_WEIGHTS).items()})
        return net.eval()
    from meddiff.training.checkpoint import load_checkpoint

    net, meta = load_checkpoint(path)
    if not isinstance(net, KLAutoencoder):
        raise MeddiffError(f"{path}: is a {meta.get('network', {}).get('kind')!r} network, not an autoencoder_kl")
    return net


@torch.no_grad()
def encode(ae: KLAutoencoder, volumes: Tensor, batch: int = 1) -> Tensor:
    """Posterior means (N, latent_channels, *grid / f) of volumes (N, 1, *grid) in model range."""
    return torch.cat([ae.encode(volumes[i:i + batch].float())[0] for i in range(0, len(volumes), batch)])


DECODE_TILE, DECODE_OVERLAP = 8, 2  # latent cells: the training patches (32^3 voxels = 8^3 latent cells), 2 overlap


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``size`` with at least ``overlap`` cells shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(tile: int, overlap: int, factor: int) -> Tensor:
    """1D blending weights (tile x factor voxels): linear ramps over the ``overlap`` x factor voxels at each end."""
    n, r = tile * factor, overlap * factor
    w = torch.ones(n)
    if r:
        ramp = (torch.arange(r, dtype=torch.float32) + 0.5) / r
        w[:r], w[-r:] = ramp, ramp.flip(0)
    return w


@torch.no_grad()
def decode(ae: KLAutoencoder, latents: Tensor, batch: int = 1, tile: int | None = DECODE_TILE,
           overlap: int = DECODE_OVERLAP) -> Tensor:
    """Unscaled latents (N, latent_channels, *s) -> volumes (N, 1, *s x f).

    ``tile`` (latent cells per side; None: the whole grid at once): decode overlapping tiles of the size the
    autoencoder was trained on and blend them with linear ramps over the ``overlap`` cells. The decoder's group
    norms were fitted on 32^3-voxel patches; a whole head (mostly air) shifts their statistics and the decoded air
    drifts away from -1 (whole-head L1 0.35 against 0.12 tiled, 1 val head). Tiling also bounds the peak memory."""
    if tile is None:
        return torch.cat([ae.decode(latents[i:i + batch].float()) for i in range(0, len(latents), batch)])
    f = ae.factor
    n, _, *grid = latents.shape
    out = torch.zeros(n, 1, *(g * f for g in grid))
    weight = torch.zeros(*(g * f for g in grid))
    sizes = [min(tile, g) for g in grid]
    ramps = [_ramp(t, overlap if g > t else 0, f) for t, g in zip(sizes, grid)]
    w = ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]
    for a in _tile_starts(grid[0], sizes[0], overlap):
        for b in _tile_starts(grid[1], sizes[1], overlap):
            for c in _tile_starts(grid[2], sizes[2], overlap):
                part = latents[:, :, a:a + sizes[0], b:b + sizes[1], c:c + sizes[2]]
                region = (slice(a * f, (a + sizes[0]) * f), slice(b * f, (b + sizes[1]) * f),
                          slice(c * f, (c + sizes[2]) * f))
                for i in range(0, n, batch):
                    out[(slice(i, i + batch), slice(None), *region)] += ae.decode(part[i:i + batch].float()) * w
                weight[region] += w
    return out / weight


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio (dB) of y against x for images in a range of width ``data_range``."""
    mse = float((x.float() - y.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(data_range ** 2 / mse))


def _cache_part(heads: str | Path, split_file: str | Path, part: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from meddiff.data.heads import _read_cache, _split_indices

    data = _read_cache(heads, ("images", "labels", "subjects"))
    keep = _split_indices(data["subjects"], split_file, part)
    return data["images"][keep], data["labels"][keep], [str(s) for s in data["subjects"][keep]]


@torch.no_grad()
def evaluate_reconstruction(ae: KLAutoencoder, heads: str | Path, split_file: str | Path, part: str = "val",
                            limit: int | None = None) -> dict:
    """Mean L1 and PSNR (model range [-1, 1], width 2) of posterior-mean reconstructions of whole padded heads,
    over the voxels of the original 90 x 120 x 120 grid (padding excluded), per subject and averaged."""
    from meddiff.data.heads import unpad_volume

    images, _, subjects = _cache_part(heads, split_file, part)
    images, subjects = images[:limit], subjects[:limit]
    shape = tuple(int(s) for s in np.load(heads)["shape"])
    rows = []
    for image, subject in zip(images, subjects):
        x = torch.from_numpy(image.astype(np.float32))[None, None]
        y = decode(ae, encode(ae, x))
        x, y = unpad_volume(x, shape, image.shape), unpad_volume(y, shape, image.shape)
        rows.append({"subject": subject, "l1": float((x - y).abs().mean()), "psnr": psnr(x, y)})
    return {"part": part, "subjects": len(rows), "l1": float(np.mean([r["l1"] for r in rows])),
            "psnr": float(np.mean([r["psnr"] for r in rows])), "per_subject": rows}


@torch.no_grad()
def build_latent_cache(ae: KLAutoencoder, heads: str | Path, split_file: str | Path, out: str | Path,
                       num_classes: int | None = None) -> dict:
    """Encode every cached head (posterior mean), scale by 1 / std of the train subjects' latents (the scale factor
    of Rombach et al. 2022, so the diffusion model sees unit-variance data) and pool the one-hot labels to the
    latent grid; writes ``out`` (.npz: latents float32, cond float16, subjects, scale_factor)."""
    from meddiff.data.heads import _read_cache, _split_indices, one_hot_latent
    from meddiff.files import atomic_path
    from meddiff.tasks.segment.labels import NUM_CLASSES

    num_classes = num_classes or NUM_CLASSES
    data = _read_cache(heads, ("images", "labels", "subjects"))
    latents = encode(ae, torch.from_numpy(data["images"].astype(np.float32))[:, None]).numpy()
    train = _split_indices(data["subjects"], split_file, "train")
    scale = float(1.0 / latents[train].std())
    cond = torch.cat([one_hot_latent(torch.from_numpy(data["labels"][i:i + 8].astype(np.int64)), num_classes,
                                     ae.factor) for i in range(0, len(data["labels"]), 8)])
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, latents=(latents * scale).astype(np.float32), cond=cond.numpy().astype(np.float16),
                 subjects=data["subjects"], scale_factor=np.float64(scale))
    return {"out": str(out), "subjects": len(latents), "latent_shape": list(latents.shape[1:]),
            "scale_factor": scale, "train_latent_mean": float(latents[train].mean())}
