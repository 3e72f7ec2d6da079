"""DDeP-style segmentation (Brempong et al. 2022, "Denoising Pretraining for Semantic Segmentation", CVPR workshops):
the diffusion prior's denoising UNet, pre-trained on every unlabelled IXI train slice, becomes a segmentation network
by replacing its output convolution (32 -> 1 channels) with a K-class one; it sees the clean image at one fixed small
t (the time embedding stays the pre-trained one) and is fine-tuned whole, or its decoder only, with Dice + CE on the
labelled slices for a wall-clock budget. The control is the same network from random weights with the same
fine-tuning (the method without its pre-training).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError
from meddiff.tasks.segment.methods import fit_segmentation_network

TRAIN_PARTS = ("all", "decoder")
ENCODER_PARTS = ("conv_in", "time_embed", "class_embedding", "down_blocks", "middle_block")


def _out_conv(unet: nn.Module) -> nn.Conv2d:
    """The last convolution of a MONAI DiffusionModelUNet's output block (``out``: norm, SiLU, conv)."""
    last = unet.out[-1]
    conv = getattr(last, "conv", last)
    if not isinstance(conv, nn.Conv2d):
        raise MeddiffError(f"DDeP: the network's output layer is {type(conv).__name__}, not a 2D convolution")
    return conv


class DDePNet(nn.Module):
    """``network`` (a meddiff DiffusionUNet, e.g. the prior's, deep-copied) with a fresh K-class output convolution:
    forward(x (B, 1, H, W) clean images in model space) -> logits (B, K, H, W), evaluated at the fixed time ``t``."""

    def __init__(self, network: nn.Module, num_classes: int, t: float, seed: int = 0) -> None:
        super().__init__()
        if num_classes < 2:
            raise MeddiffError(f"DDeP: need at least 2 classes, got {num_classes}")
        if getattr(network, "config", {}).get("cond_channels") or getattr(network, "num_classes", None):
            raise MeddiffError("DDeP: the pre-trained network must be an unconditional one-channel diffusion UNet")
        self.net = copy.deepcopy(network).requires_grad_(True)
        unet = self.net.unet
        old = _out_conv(unet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, padding=old.padding)
        holder = unet.out[-1]
        if hasattr(holder, "conv"):
            holder.conv = head
        else:
            unet.out[-1] = head
        self.num_classes, self.t = int(num_classes), float(t)
        self.net.config = {**self.net.config, "out_channels": int(num_classes)}

    @property
    def head(self) -> nn.Conv2d:
        return _out_conv(self.net.unet)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise MeddiffError(f"DDeP: images must be (B, 1, H, W), got {tuple(x.shape)}")
        return self.net(x, torch.full((x.shape[0],), self.t, device=x.device))

    def trainable(self, part: str) -> list[nn.Parameter]:
        """Parameters fine-tuned for ``part``: "all", or "decoder" (up blocks and output block; the encoder, middle
        block and time embedding stay as pre-trained)."""
        if part not in TRAIN_PARTS:
            raise MeddiffError(f"DDeP train part {part!r}: choose one of {', '.join(TRAIN_PARTS)}")
        unet = self.net.unet
        frozen = set()
        if part == "decoder":
            for name in ENCODER_PARTS:
                module = getattr(unet, name, None)
                if module is not None:
                    frozen |= {id(p) for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]


def ddep_config(network_config: dict, num_classes: int, t: float, train: str) -> dict:
    """What a DDeP checkpoint's meta records to rebuild the network (its weights are all stored)."""
    return {"network": dict(network_config), "num_classes": int(num_classes), "t": float(t), "train": train}


def build_ddep(network_config: dict, num_classes: int, t: float, seed: int = 0) -> DDePNet:
    """A DDeP network of this diffusion-UNet config with random weights (the control, or to load weights into)."""
    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(network_config)
    return DDePNet(net, num_classes, t, seed=seed)


def fit_ddep(model: DDePNet, images: Tensor, labels: Tensor, *, seconds: float, train: str = "all",
             batch: int = 8, lr: float = 2e-4, head_lr: float = 1e-3, seed: int = 0, max_steps: int | None = None,
             clock: str = "wall", bf16: bool = False,
             log: Callable[[dict], None] | None = None) -> tuple[DDePNet, int]:
    """Fine-tune ``model`` (``train``: "all" or "decoder") on slices (S, 1, H, W) / labels (S, H, W) with
    ``fit_segmentation_network``: ``lr`` for the pre-trained body, ``head_lr`` for the new head."""
    params = model.trainable(train)
    head = {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": [p for p in params if id(p) not in head], "lr": lr},
              {"params": list(model.head.parameters()), "lr": head_lr}]
    return fit_segmentation_network(model, images, labels, groups, seconds=seconds, batch=batch, seed=seed,
                                    max_steps=max_steps, clock=clock, bf16=bf16, log=log, log_every=10, what="DDeP")


class DDePSegmenter:
    """The fine-tuned DDeP network: ``predict(slices)`` -> softmax probabilities (S, K, H, W) (``samples`` ignored:
    one deterministic network at its fixed t)."""

    def __init__(self, model: DDePNet) -> None:
        self.network = model.eval()

    @torch.no_grad()
    def predict(self, slices: Tensor, samples: int = 1, batch: int = 8) -> Tensor:
        return torch.cat([self.network(slices[i:i + batch]).softmax(1) for i in range(0, slices.shape[0], batch)])

