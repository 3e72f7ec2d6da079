"""Diffusion UNet factory: MONAI's DiffusionModelUNet (2D/3D) plus class and image conditioning.

Class conditioning adds a learned class embedding to the time embedding (Dhariwal & Nichol 2021); one extra
"null" class (index ``num_classes``) stands for "no label", which is what classifier-free guidance needs
(Ho & Salimans 2022). Image conditioning concatenates ``cond_image`` to the noisy input along channels
(SR3, Saharia et al. 2022; Palette), for reconstruction, super-resolution, translation and segmentation.
Guidance input (``guidance_input: true``) adds an embedding of a per-sample classifier-free guidance scale to the
time embedding, so a guidance-distilled student (Meng et al. 2023, "On Distillation of Guided Diffusion Models")
takes the scale as an input and needs one network evaluation per step instead of CFG's two.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError, check_choice

# keyword names the networks accept as conditioning (the ``cond`` dict of samplers and losses)
CLASS_LABELS = "class_labels"
COND_IMAGE = "cond_image"
GUIDANCE_SCALE = "guidance_scale"
GUIDANCE_EMBED_SCALE = 100.0  # scale s is embedded like the time s * 100 (s in [0, 10] spans the 1000 time steps)

UNET_DEFAULTS: dict[str, Any] = {
    "kind": "unet",
    "dims": 2,
    "in_channels": 1,
    "out_channels": None,          # None: same as in_channels
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": None,     # None: min(32, level channels) per level
    "norm_num_groups": None,       # None: largest of 32, 16, 8, 4, 2, 1 dividing every channel count
    "resblock_updown": False,
    "use_flash_attention": None,   # SDPA attention; None (auto): True when CUDA is available, else False
                                   # (on CPU, SDPA was much slower for 3D attention; see benchmarks/README.md)
    "num_classes": None,           # int: class-conditional with a null class at index num_classes
    "class_dropout": 0.0,          # probability the trainer replaces a label by the null class (CFG)
    "cond_channels": 0,            # channels of an image concatenated to the input
    "time_scale": 1.0,             # t is multiplied by this before the sinusoidal embedding
    "guidance_input": False,       # true: forward takes guidance_scale (B,), the CFG scale a distilled student mimics
    "image_size": None,            # spatial size, checked against the number of levels when given
}


def check_keys(section: str, config: dict, allowed: dict) -> None:
    """Raise naming unknown keys of a config ``section`` and the allowed ones."""
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise MeddiffError(f"unknown key(s) {unknown} in {section}; allowed: {sorted(allowed)}")


def _int_list(name: str, value, length: int) -> list[int]:
    values = [value] * length if isinstance(value, int) else list(value)
    if len(values) != length or not all(isinstance(v, int) and v > 0 for v in values):
        raise MeddiffError(f"model.{name}={value!r} must be a positive integer or a list of {length} of them")
    return values


def resolve_unet_config(config: dict, defaults: dict | None = None) -> dict:
    """Fill defaults and validate a network config; the result is explicit, JSON-serialisable and round-trips."""
    defaults = UNET_DEFAULTS if defaults is None else defaults
    check_keys("model", config, defaults)
    cfg = {**defaults, **config}
    check_choice("model.dims", cfg["dims"], (2, 3))
    flash = cfg["use_flash_attention"]
    if flash is None:  # auto, resolved here so that the stored config rebuilds the same network anywhere
        flash = torch.cuda.is_available()
    if not isinstance(flash, bool):
        raise MeddiffError(f"model.use_flash_attention={flash!r} must be true, false or null (auto: true on CUDA)")
    cfg["use_flash_attention"] = flash
    channels = cfg["channels"]
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise MeddiffError(f"model.channels={channels!r} must be a non-empty list of positive integers")
    channels = cfg["channels"] = list(channels)
    levels = len(channels)
    attention = list(cfg["attention_levels"])
    if len(attention) != levels:
        raise MeddiffError(f"model.attention_levels has {len(attention)} entries but model.channels has {levels}; "
                           "give one true/false per level")
    cfg["attention_levels"] = [bool(a) for a in attention]
    cfg["num_res_blocks"] = _int_list("num_res_blocks", cfg["num_res_blocks"], levels)
    if cfg["norm_num_groups"] is None:
        cfg["norm_num_groups"] = next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))
    groups = cfg["norm_num_groups"]
    if any(c % groups for c in channels):
        raise MeddiffError(f"model.channels={channels} must all be multiples of model.norm_num_groups={groups}; "
                           "change the channels or the number of groups")
    heads = cfg["num_head_channels"]
    if heads is None:
        heads = [min(32, c) if c % min(32, c) == 0 else c for c in channels]
    heads = _int_list("num_head_channels", heads, levels)
    for c, h, a in zip(channels, heads, cfg["attention_levels"]):
        if a and c % h:
            raise MeddiffError(f"model.num_head_channels={h} must divide the {c} channels of an attention level")
    cfg["num_head_channels"] = heads
    for key in ("in_channels",):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise MeddiffError(f"model.{key}={cfg[key]!r} must be a positive integer")
    if cfg.get("out_channels", 0) is None:
        cfg["out_channels"] = cfg["in_channels"]
    if not isinstance(cfg.get("cond_channels", 0), int) or cfg.get("cond_channels", 0) < 0:
        raise MeddiffError(f"model.cond_channels={cfg['cond_channels']!r} must be an integer >= 0")
    if cfg["num_classes"] is not None and (not isinstance(cfg["num_classes"], int) or cfg["num_classes"] < 1):
        raise MeddiffError(f"model.num_classes={cfg['num_classes']!r} must be a positive integer or null")
    if not 0 <= float(cfg.get("class_dropout", 0)) < 1:
        raise MeddiffError(f"model.class_dropout={cfg['class_dropout']} must be in [0, 1) (0.1 is usual for CFG)")
    if cfg.get("class_dropout") and cfg["num_classes"] is None:
        raise MeddiffError("model.class_dropout needs a class-conditional model: set model.num_classes")
    if not isinstance(cfg.get("guidance_input", False), bool):
        raise MeddiffError(f"model.guidance_input={cfg['guidance_input']!r} must be true or false")
    if cfg.get("guidance_input") and cfg["num_classes"] is None:
        raise MeddiffError("model.guidance_input needs a class-conditional model (a CFG scale mixes the conditional "
                           "and unconditional predictions): set model.num_classes")
    if cfg["image_size"] is not None:
        size = [cfg["image_size"]] * cfg["dims"] if isinstance(cfg["image_size"], int) else list(cfg["image_size"])
        if len(size) != cfg["dims"]:
            raise MeddiffError(f"model.image_size={size} must have {cfg['dims']} entries for a {cfg['dims']}D model")
        cfg["image_size"] = size
        check_spatial_size(size, levels)
    return cfg


def size_multiple(levels: int) -> int:
    """Each side must be a multiple of 2^(levels - 1): the UNet halves the size between levels."""
    return 2 ** (levels - 1)


def check_spatial_size(size, levels: int) -> None:
    """Raise naming the fix when a spatial size does not survive ``levels - 1`` halvings."""
    multiple = size_multiple(levels)
    size = [int(s) for s in size]
    if any(s % multiple for s in size):
        fixed = [math.ceil(s / multiple) * multiple for s in size]
        raise MeddiffError(
            f"image size {tuple(size)} is not divisible by {multiple}: a network with {levels} levels halves the size "
            f"{levels - 1} times; pad or crop to a multiple of {multiple} (e.g. {tuple(fixed)}) or use fewer levels"
        )


class DiffusionUNet(nn.Module):
    """eps/v/x0 network ``net(x, t, class_labels=None, cond_image=None) -> (B, out_channels, *spatial)``.

    x: (B, in_channels, *spatial); t: (B,) schedule times (scaled by ``time_scale`` before embedding);
    class_labels: (B,) int64 in [0, num_classes], num_classes = null class (also used when omitted);
    cond_image: (B, cond_channels, *spatial), concatenated to x;
    guidance_scale: (B,) float CFG scales, required when ``guidance_input`` (embedded sinusoidally, through a 2-layer
    MLP whose last layer starts at zero, and added to the time embedding: at initialisation the network is exactly
    the class-conditional one it was warm-started from).
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = resolve_unet_config(config)
        cfg = self.config
        self.num_classes = cfg["num_classes"]
        self.null_class = self.num_classes  # index of the "no label" embedding
        self.unet = DiffusionModelUNet(
            spatial_dims=cfg["dims"],
            in_channels=cfg["in_channels"] + cfg["cond_channels"],
            out_channels=cfg["out_channels"],
            num_res_blocks=cfg["num_res_blocks"],
            channels=cfg["channels"],
            attention_levels=cfg["attention_levels"],
            norm_num_groups=cfg["norm_num_groups"],
            resblock_updown=cfg["resblock_updown"],
            num_head_channels=cfg["num_head_channels"],
            num_class_embeds=None if self.num_classes is None else self.num_classes + 1,
            use_flash_attention=cfg["use_flash_attention"],
        )
        self.guidance_embed = None
        if cfg.get("guidance_input"):
            from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

            self._sinusoid = get_timestep_embedding
            width = cfg["channels"][0] * 4  # MONAI's time-embedding width
            self.guidance_embed = nn.Sequential(nn.Linear(cfg["channels"][0], width), nn.SiLU(),
                                                nn.Linear(width, width))
            nn.init.zeros_(self.guidance_embed[2].weight)
            nn.init.zeros_(self.guidance_embed[2].bias)
            self._guidance = None  # (B, width) for the call in progress, added by the hook below
            self.unet.time_embed.register_forward_hook(self._add_guidance)

    def _add_guidance(self, module, inputs, output: Tensor) -> Tensor:
        """Forward hook on MONAI's time embedding: time embedding + guidance-scale embedding."""
        return output + self._guidance.to(output.dtype)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None,
                cond_image: Tensor | None = None, guidance_scale: Tensor | None = None) -> Tensor:
        cfg = self.config
        check_input(x, cfg)
        if cfg["cond_channels"]:
            if cond_image is None:
                raise MeddiffError(f"this network is image-conditional ({cfg['cond_channels']} channels): "
                                   f"pass {COND_IMAGE}=(B, {cfg['cond_channels']}, *spatial)")
            if cond_image.shape[0] != x.shape[0] or cond_image.shape[2:] != x.shape[2:] \
                    or cond_image.shape[1] != cfg["cond_channels"]:
                raise MeddiffError(
                    f"{COND_IMAGE} has shape {tuple(cond_image.shape)}; expected "
                    f"{(x.shape[0], cfg['cond_channels'], *x.shape[2:])} (same batch and size as x); resample it to x's grid")
            x = torch.cat([x, cond_image.to(x.dtype)], dim=1)
        elif cond_image is not None:
            raise MeddiffError(f"{COND_IMAGE} given but the network has cond_channels=0; set model.cond_channels")
        if self.num_classes is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
            class_labels = class_labels.to(x.device).long()
            if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > self.null_class):
                raise MeddiffError(f"class labels must lie in [0, {self.num_classes - 1}] "
                                   f"(or {self.null_class} for 'no label'), got {class_labels.tolist()[:8]}")
        elif class_labels is not None:
            raise MeddiffError(f"{CLASS_LABELS} given but the network is unconditional; set model.num_classes")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if self.guidance_embed is None:
            if guidance_scale is not None:
                raise MeddiffError(f"{GUIDANCE_SCALE} given but the network has no guidance input (it is not a "
                                   "guidance-distilled student); use classifier-free guidance instead")
            return self.unet(x, t * cfg["time_scale"], class_labels=class_labels)
        if guidance_scale is None:
            raise MeddiffError(f"this network takes the guidance scale as an input: pass {GUIDANCE_SCALE}=(B,) floats")
        scale = torch.as_tensor(guidance_scale, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        self._guidance = self.guidance_embed(
            self._sinusoid(scale * GUIDANCE_EMBED_SCALE, cfg["channels"][0]).to(self.guidance_embed[0].weight.dtype))
        try:
            return self.unet(x, t * cfg["time_scale"], class_labels=class_labels)
        finally:
            self._guidance = None

    def drop_labels(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Replace each label by the null class with probability ``class_dropout`` (CFG training)."""
        p = self.config["class_dropout"]
        if not p:
            return labels
        drop = torch.rand(labels.shape, generator=generator) < p
        return torch.where(drop.to(labels.device), torch.full_like(labels, self.null_class), labels)


def check_input(x: Tensor, cfg: dict) -> None:
    """Shape checks shared by the UNet and the classifier, with the fix in the message."""
    dims = cfg["dims"]
    if x.ndim != dims + 2:
        layout = "(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)"
        raise MeddiffError(f"a {dims}D network expects input {layout}, got shape {tuple(x.shape)}")
    if x.shape[1] != cfg["in_channels"]:
        raise MeddiffError(f"input has {x.shape[1]} channels but the network was built for in_channels="
                           f"{cfg['in_channels']}; set model.in_channels={x.shape[1]} or convert the images")
    check_spatial_size(x.shape[2:], len(cfg["channels"]))


def build_unet(config: dict) -> DiffusionUNet:
    """Build the diffusion UNet from a (partial) config dict; see ``UNET_DEFAULTS`` for the keys."""
    config = dict(config)
    kind = config.get("kind", "unet")
    if kind != "unet":
        raise MeddiffError(f"build_unet got model.kind={kind!r}; use meddiff.nets.build_network for other kinds")
    return DiffusionUNet(config)
