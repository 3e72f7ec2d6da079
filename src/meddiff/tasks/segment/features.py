"""Pixel features of a diffusion UNet (Baranchuk et al. 2022, "Label-Efficient Semantic Segmentation with Diffusion
Models", ICLR): noise the image to x_t = alpha_t x0 + sigma_t eps with the prior's schedule and a fixed noise image
(Ho et al. 2020, eq. 4), run the network once per t, take the outputs of chosen decoder blocks with forward hooks,
upsample them bilinearly to the image grid and concatenate them over blocks and t."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from meddiff.diffusion.losses import add_noise
from meddiff.errors import MeddiffError


def decoder_blocks(network: nn.Module) -> nn.ModuleList:
    """The decoder (up) blocks of a meddiff DiffusionUNet or a MONAI DiffusionModelUNet, coarse to fine."""
    unet = getattr(network, "unet", network)
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None:
        raise MeddiffError(f"{type(network).__name__} has no decoder blocks (up_blocks): not a diffusion UNet")
    return blocks


def block_channels(network: nn.Module) -> list[int]:
    """Output channels of each decoder block (its last resnet's; the upsampler keeps them)."""
    return [int(block.resnets[-1].out_channels) for block in decoder_blocks(network)]


class DiffusionFeatures:
    """Features (B, C, H, W) of images (B, 1, H, W) in model space from ``network`` (x_t, t) -> output.

    ``blocks``: indices into the decoder blocks (coarse to fine); ``timesteps``: the t values (schedule units);
    ``seed``: the fixed noise image (one (1, 1, H, W) draw per t, shared by every slice, so a slice's features do
    not depend on its batch). C = len(timesteps) x sum of the chosen blocks' channels (``channels``)."""

    def __init__(self, network: nn.Module, schedule, blocks: Sequence[int], timesteps: Sequence[float],
                 seed: int = 0) -> None:
        all_blocks = decoder_blocks(network)
        blocks = [int(b) for b in blocks]
        if not blocks or any(not 0 <= b < len(all_blocks) for b in blocks) or len(set(blocks)) != len(blocks):
            raise MeddiffError(f"feature blocks {blocks} must be distinct indices in 0..{len(all_blocks) - 1}")
        if not timesteps or any(not schedule.t_min <= float(t) <= schedule.t_max for t in timesteps):
            raise MeddiffError(f"feature timesteps {list(timesteps)} must lie in [{schedule.t_min}, {schedule.t_max}]")
        self.network, self.schedule = network, schedule
        self.blocks, self.timesteps, self.seed = blocks, [float(t) for t in timesteps], int(seed)
        self.channels = len(self.timesteps) * sum(block_channels(network)[b] for b in blocks)
        self._modules = [all_blocks[b] for b in blocks]

    def noise(self, shape: tuple[int, int], k: int, sample: int = 0) -> Tensor:
        """The fixed noise image (1, 1, H, W) for the k-th t and the ``sample``-th draw."""
        g = torch.Generator().manual_seed(self.seed + 1000 * sample + k)
        return torch.randn((1, 1) + tuple(shape), generator=g)

    @torch.no_grad()
    def __call__(self, x: Tensor, sample: int = 0) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise MeddiffError(f"features: images must be (B, 1, H, W), got {tuple(x.shape)}")
        captured: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in self._modules]
        maps = []
        try:
            for k, t in enumerate(self.timesteps):
                tt = torch.full((x.shape[0],), t)
                xt = add_noise(x, self.noise(x.shape[-2:], k, sample).expand_as(x), tt, self.schedule)
                captured.clear()
                self.network(xt, tt)
                for f in captured:
                    maps.append(nn.functional.interpolate(f.float(), size=x.shape[-2:], mode="bilinear",
                                                          align_corners=False))
        finally:
            for h in hooks:
                h.remove()
        return torch.cat(maps, 1)
