"""Segmentation methods on model slices (S, 1, H, W) -> class probabilities (S, K, H, W).

- ``PixelEnsemble`` + ``FeatureSegmenter``: the label-efficient method of Baranchuk et al. 2022 ("Label-Efficient
  Semantic Segmentation with Diffusion Models"): an ensemble of small MLPs (their Sec. 4: two hidden layers with ReLU
  and batch norm, several independently trained members) classifying each pixel from the diffusion features of
  ``features.DiffusionFeatures``; a 1x1-convolution network applied pixel by pixel. Members' softmax outputs are
  averaged (and over K noise draws of the features when asked), so the entropy of the mean is the uncertainty.
- ``build_unet`` + ``fit_unet`` + ``UNetSegmenter``: the supervised baseline, a MONAI ``UNet`` trained with Dice + CE
  (MONAI ``DiceCELoss``) on whole labelled slices for a given wall-clock budget.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError


def _mlp(in_channels: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for h in hidden:
        layers += [nn.Linear(c, h), nn.ReLU(), nn.BatchNorm1d(h)]
        c = h
    layers.append(nn.Linear(c, num_classes))
    return nn.Sequential(*layers)


class PixelEnsemble(nn.Module):
    """``members`` MLPs over standardised pixel features (N, C) -> member probabilities (M, N, K). The per-channel
    mean and std of the training pixels are buffers, so the standardisation travels with the weights."""

    def __init__(self, in_channels: int, num_classes: int, hidden: Sequence[int] = (64, 32), members: int = 5) -> None:
        super().__init__()
        if members < 1 or num_classes < 2 or in_channels < 1:
            raise MeddiffError(f"pixel ensemble: need members >= 1, classes >= 2, channels >= 1 (got {members}, "
                               f"{num_classes}, {in_channels})")
        self.in_channels, self.num_classes, self.hidden = in_channels, num_classes, tuple(int(h) for h in hidden)
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))
        self.members = nn.ModuleList(_mlp(in_channels, self.hidden, num_classes) for _ in range(members))

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "hidden": list(self.hidden),
                "members": len(self.members)}

    def standardise(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        z = self.standardise(x)
        return torch.stack([m(z).softmax(-1) for m in self.members])

    @torch.no_grad()
    def predict_maps(self, features: Tensor) -> Tensor:
        """Features (B, C, H, W) -> mean member probabilities (B, K, H, W)."""
        b, c, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(-1, c)
        p = self.eval()(flat).mean(0)
        return p.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def sample_pixels(labels: Tensor, per_slice: int, generator: torch.Generator) -> Tensor:
    """``per_slice`` pixel indices per slice drawn uniformly without replacement (class frequencies kept, so the
    classifier's probabilities stay calibrated to the data): (S, P) flat indices into H x W."""
    s, h, w = labels.shape
    p = min(int(per_slice), h * w)
    return torch.stack([torch.randperm(h * w, generator=generator)[:p] for _ in range(s)])


@torch.no_grad()
def collect_pixels(extract: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, per_slice: int,
                   seed: int = 0, batch: int = 8) -> tuple[Tensor, Tensor]:
    """Features (N, C) float16 and labels (N,) of ``per_slice`` random pixels of each slice of images (S, 1, H, W)
    with labels (S, H, W)."""
    g = torch.Generator().manual_seed(seed)
    idx = sample_pixels(labels, per_slice, g)
    feats, targets = [], []
    for i in range(0, images.shape[0], batch):
        f = extract(images[i:i + batch])  # [B,C,H,W]
        f = f.flatten(2)  # [B,C,HW]
        j = idx[i:i + batch]
        feats.append(torch.gather(f, 2, j[:, None, :].expand(-1, f.shape[1], -1)).permute(0, 2, 1)
                     .reshape(-1, f.shape[1]).half())
        targets.append(torch.gather(labels[i:i + batch].flatten(1), 1, j).reshape(-1))
    return torch.cat(feats), torch.cat(targets)


def fit_pixel_ensemble(features: Tensor, targets: Tensor, num_classes: int, *, hidden: Sequence[int] = (64, 32),
                       members: int = 5, steps: int = 600, batch: int = 4096, lr: float = 1e-3, seed: int = 0,
                       log: Callable[[dict], None] | None = None) -> PixelEnsemble:
    """Train each member with Adam on cross-entropy over random mini-batches of the pixels (N, C) -> (N,) labels;
    members differ by their seed (initialisation and batch order). The learning rate follows a cosine decay."""
    if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise MeddiffError(f"pixel ensemble: {features.shape[0]} feature rows for {targets.shape[0]} labels")
    model = PixelEnsemble(features.shape[1], num_classes, hidden, members)
    f32 = features.float()
    model.mean.copy_(f32.mean(0))
    model.std.copy_(f32.std(0).clamp(min=1e-4))
    del f32
    n = features.shape[0]
    for m, mlp in enumerate(model.members):
        g = torch.Generator().manual_seed(seed + 7919 * (m + 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + m)
            for layer in mlp:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        opt = torch.optim.Adam(mlp.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        mlp.train()
        for step in range(steps):
            j = torch.randint(0, n, (min(batch, n),), generator=g)
            loss = nn.functional.cross_entropy(mlp(model.standardise(features[j])), targets[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log is not None and (step + 1) % 100 == 0:
                log({"member": m, "step": step + 1, "loss": float(loss)})
        mlp.eval()
    return model.eval()


class FeatureSegmenter:
    """Diffusion features + pixel ensemble: ``predict(slices, samples)`` -> mean probabilities (S, K, H, W) over the
    members and ``samples`` noise draws of the features (draw k uses the features' seed shifted by k)."""

    def __init__(self, extractor, ensemble: PixelEnsemble) -> None:
        if extractor.channels != ensemble.in_channels:
            raise MeddiffError(f"feature extractor gives {extractor.channels} channels but the classifier takes "
                               f"{ensemble.in_channels}")
        self.extractor, self.ensemble = extractor, ensemble

    @torch.no_grad()
    def predict(self, slices: Tensor, samples: int = 1, batch: int = 8) -> Tensor:
        out = []
        for i in range(0, slices.shape[0], batch):
            x = slices[i:i + batch]
            p = sum(self.ensemble.predict_maps(self.extractor(x, sample=k)) for k in range(samples))
            out.append(p / samples)
        return torch.cat(out)


# ------------------------------------------------------------------------------------------ supervised baseline
UNET_DEFAULTS = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}


def build_unet(num_classes: int, config: dict | None = None) -> nn.Module:
    """MONAI ``UNet`` (2D, one input channel, ``num_classes`` logits) with ``UNET_DEFAULTS`` updated by ``config``."""
    from monai.networks.nets import UNet

    cfg = {**UNET_DEFAULTS, **(config or {})}
    unknown = sorted(set(cfg) - set(UNET_DEFAULTS))
    if unknown:
        raise MeddiffError(f"unet config: unknown key(s) {unknown}; allowed: {sorted(UNET_DEFAULTS)}")
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=tuple(cfg["channels"]),
                strides=tuple(cfg["strides"]), num_res_units=int(cfg["num_res_units"]))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def fit_segmentation_network(model: nn.Module, images: Tensor, labels: Tensor, groups: list[dict], *,
                             seconds: float, batch: int = 8, seed: int = 0, max_steps: int | None = None,
                             clock: str = "wall", bf16: bool = False, log: Callable[[dict], None] | None = None,
                             log_every: int = 50, what: str = "segmentation") -> tuple[nn.Module, int]:
    """The supervised loop shared by DDeP and its UNet comparison: MONAI DiceCE (softmax, one-hot targets) on random
    mini-batches of slices (S, 1, H, W) / labels (S, H, W) with random left-right flips, AdamW without weight decay
    (= Adam) over parameter ``groups``, until ``seconds`` on the ``clock`` ("wall", or "cpu": this process's CPU
    time, the wall time it would take alone on a shared machine) or ``max_steps``; ``bf16``: forward under CPU
    bfloat16 autocast (the loss in float32; opt-in: on this CPU it halved a DDeP step, 1.65 vs 3.2 s) -> (model in
    eval mode, steps); ``log`` gets the loss every ``log_every`` steps. Used by ``fit_unet`` and ``ddep.fit_ddep``."""
    from monai.losses import DiceCELoss

    if images.ndim != 4 or images.shape[1] != 1 or labels.shape != (images.shape[0],) + images.shape[2:]:
        raise MeddiffError(f"{what}: images (S, 1, H, W) and labels (S, H, W) expected, got {tuple(images.shape)} "
                           f"and {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise MeddiffError(f"{what}: no labelled slices to train on")
    if clock not in CLOCKS:
        raise MeddiffError(f"{what}: clock {clock!r}: choose one of {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start, step = now(), 0
    while now() - start < seconds and (max_steps is None or step < max_steps):
        j = torch.randint(0, images.shape[0], (min(batch, images.shape[0]),), generator=g)
        x, y = images[j], labels[j][:, None]
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
        y = torch.where(flip[:, None, None, None], y.flip(-2), y)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if log is not None and step % log_every == 0:
            log({"step": step, "loss": float(loss.detach()), "seconds": now() - start})
    if step == 0:
        raise MeddiffError(f"{what}: a budget of {seconds} s allowed no training step")
    return model.eval(), step


def fit_unet(images: Tensor, labels: Tensor, num_classes: int, *, seconds: float, config: dict | None = None,
             batch: int = 8, lr: float = 1e-3, seed: int = 0, max_steps: int | None = None, clock: str = "wall",
             bf16: bool = False, log: Callable[[dict], None] | None = None) -> tuple[nn.Module, int]:
    """Train a ``build_unet`` network (initialised from ``seed``) with ``fit_segmentation_network`` until ``seconds``
    on the ``clock`` (or ``max_steps``) are spent -> (network, steps)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_unet(num_classes, config)
    return fit_segmentation_network(net, images, labels, [{"params": list(net.parameters()), "lr": lr}],
                                    seconds=seconds, batch=batch, seed=seed, max_steps=max_steps, clock=clock,
                                    bf16=bf16, log=log, what="UNet")


class UNetSegmenter:
    """The supervised UNet: ``predict(slices)`` -> softmax probabilities (S, K, H, W) (``samples`` is ignored: one
    deterministic network)."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network.eval()

    @torch.no_grad()
    def predict(self, slices: Tensor, samples: int = 1, batch: int = 16) -> Tensor:
        return torch.cat([self.network(slices[i:i + batch]).softmax(1) for i in range(0, slices.shape[0], batch)])


def entropy(probabilities: Tensor | np.ndarray, axis: int = 0):
    """Entropy (nats) of class probabilities along ``axis``: the per-voxel uncertainty map (0 log 0 = 0, so a sure
    voxel scores exactly 0)."""
    p = torch.as_tensor(probabilities).float()
    return -torch.special.xlogy(p, p).sum(axis)
