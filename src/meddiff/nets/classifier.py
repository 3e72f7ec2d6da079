"""Noise-aware classifier for classifier guidance: the UNet's encoder half with a pooled linear head.

As in guided diffusion (Dhariwal & Nichol 2021, sec. 4 and appendix: "the downsampling trunk of the UNet
with an attention pool at the 8x8 layer"); here the head is GroupNorm, SiLU, global average pool and a
linear layer. Built from MONAI's down and middle blocks so that its trunk matches the diffusion UNet's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError
from meddiff.nets.unet import UNET_DEFAULTS, check_input, resolve_unet_config

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in UNET_DEFAULTS.items()
       if k not in ("out_channels", "class_dropout", "cond_channels", "num_classes", "guidance_input")},
    "kind": "classifier",
    "num_classes": 2,
}


class NoiseAwareClassifier(nn.Module):
    """``classifier(x_t, t) -> logits (B, num_classes)`` for noisy x_t (B, in_channels, *spatial) at times t (B,)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from monai.networks.nets.diffusion_model_unet import get_down_block, get_mid_block, get_timestep_embedding

        cfg = resolve_unet_config(config, CLASSIFIER_DEFAULTS)
        if not isinstance(cfg["num_classes"], int) or cfg["num_classes"] < 2:
            raise MeddiffError(f"model.num_classes={cfg['num_classes']!r} must be an integer >= 2 for a classifier")
        self.config = cfg
        self._embed_time = get_timestep_embedding
        dims, channels, groups = cfg["dims"], cfg["channels"], cfg["norm_num_groups"]
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv_in = conv(cfg["in_channels"], channels[0], kernel_size=3, padding=1)
        temb = channels[0] * 4
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for i, out in enumerate(channels):
            self.down_blocks.append(get_down_block(
                spatial_dims=dims, in_channels=previous, out_channels=out, temb_channels=temb,
                num_res_blocks=cfg["num_res_blocks"][i], norm_num_groups=groups, norm_eps=1e-6,
                add_downsample=i < len(channels) - 1, resblock_updown=cfg["resblock_updown"],
                with_attn=cfg["attention_levels"][i], with_cross_attn=False,
                num_head_channels=cfg["num_head_channels"][i], transformer_num_layers=1, cross_attention_dim=None,
                use_flash_attention=cfg["use_flash_attention"],
            ))
            previous = out
        self.middle_block = get_mid_block(
            spatial_dims=dims, in_channels=channels[-1], temb_channels=temb, norm_num_groups=groups, norm_eps=1e-6,
            with_conditioning=False, num_head_channels=cfg["num_head_channels"][-1], transformer_num_layers=1,
            cross_attention_dim=None, use_flash_attention=cfg["use_flash_attention"],
        )
        self.head = nn.Sequential(nn.GroupNorm(groups, channels[-1], eps=1e-6), nn.SiLU(),
                                  nn.Flatten(2), _MeanPool(), nn.Linear(channels[-1], cfg["num_classes"]))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        cfg = self.config
        check_input(x, cfg)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(self._embed_time(t * cfg["time_scale"], cfg["channels"][0]).to(x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb, context=None)
        h = self.middle_block(hidden_states=h, temb=emb, context=None)
        return self.head(h)


class _MeanPool(nn.Module):
    """(B, C, N) -> (B, C): global average over positions."""

    def forward(self, h: Tensor) -> Tensor:
        return h.mean(dim=-1)


def build_classifier(config: dict) -> NoiseAwareClassifier:
    """Build the noise-aware classifier from a (partial) config dict; see ``CLASSIFIER_DEFAULTS``."""
    return NoiseAwareClassifier({**config, "kind": "classifier"})
