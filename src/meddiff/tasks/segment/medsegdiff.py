"""MedSegDiff-style segmentation (Wu et al. 2022/2023, "MedSegDiff: Medical Image Segmentation with Diffusion
Probabilistic Model"; Amit et al. 2021, SegDiff): a conditional diffusion model over the label map. The label map is
one-hot coded and scaled to [-1, 1] (K channels), noised with the schedule, and a MONAI DiffusionModelUNet
(``meddiff.nets``) predicts the clean map x0 from (x_t, t) with the image concatenated as the condition (SR3-style
concatenation; MedSegDiff's separate conditioning encoder is not used). Sampling: deterministic DDIM from K seeded
noise draws (few steps); each sample's labels are the argmax over its channels, the K label maps are fused by majority
vote, the vote frequencies are the class probabilities and their entropy the per-voxel uncertainty.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor, nn

from meddiff.errors import MeddiffError
from meddiff.tasks.segment.methods import entropy

NETWORK_DEFAULTS = {"kind": "unet", "dims": 2, "channels": [16, 32, 64], "attention_levels": [False, False, True],
                    "num_res_blocks": 1}
SCHEDULE_DEFAULT = {"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000}
PREDICTION = "x0"


def network_config(num_classes: int, image_size, overrides: dict | None = None) -> dict:
    """The conditional diffusion UNet's config: K label channels in and out, one image channel as the condition."""
    cfg = {**NETWORK_DEFAULTS, **(overrides or {}), "in_channels": int(num_classes), "out_channels": int(num_classes),
           "cond_channels": 1, "image_size": [int(s) for s in image_size]}
    return cfg


def encode_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels (B, H, W) -> one-hot scaled to [-1, 1], (B, K, H, W) float32."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise MeddiffError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return nn.functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float() * 2 - 1


def decode_labels(x: Tensor) -> Tensor:
    """A (B, K, H, W) map in the one-hot space -> integer labels (B, H, W): the channel argmax."""
    return x.argmax(1)


def fuse_votes(samples: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """K label samples (K, *spatial) int -> (majority labels (*spatial) int64, vote frequencies (C, *spatial) float32,
    uncertainty (*spatial): the entropy (nats) of the vote frequencies). Ties go to the lowest class id; the
    uncertainty is 0 where all K samples agree."""
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise MeddiffError(f"fuse_votes: need K >= 1 label samples (K, *spatial), got shape {tuple(samples.shape)}")
    freq = nn.functional.one_hot(samples.long(), num_classes).float().mean(0)  # [*spatial, C]
    freq = freq.movedim(-1, 0).contiguous()
    return freq.argmax(0), freq, entropy(freq, 0)


class MedSegDiffSegmenter:
    """``predict(slices (S, 1, H, W), samples=K)`` -> vote frequencies (S, C, H, W) of K DDIM samples (``steps``
    network evaluations each: NFE = steps x K per slice). Sample k starts from the noise of a generator seeded with
    ``seed + k`` per batch, so results do not depend on the number of threads."""

    def __init__(self, network: nn.Module, schedule, num_classes: int, steps: int = 10, seed: int = 0) -> None:
        from meddiff.diffusion import ModelDenoiser

        if int(steps) < 1:
            raise MeddiffError(f"MedSegDiff: sampling steps must be >= 1, got {steps}")
        self.network, self.schedule = network.eval(), schedule
        self.num_classes, self.steps, self.seed = int(num_classes), int(steps), int(seed)
        self.denoiser = ModelDenoiser(self.network, schedule, PREDICTION)
        self.image_size = tuple(network.config.get("image_size") or ())

    def _check(self, slices: Tensor, samples: int) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise MeddiffError(f"--samples {samples!r}: the MedSegDiff ensemble needs K >= 1 samples")
        if slices.ndim != 4 or slices.shape[1] != 1:
            raise MeddiffError(f"MedSegDiff: slices must be (S, 1, H, W), got {tuple(slices.shape)}")
        if self.image_size and tuple(slices.shape[-2:]) != self.image_size:
            raise MeddiffError(f"MedSegDiff: slices of {slices.shape[-2]} x {slices.shape[-1]} do not match the "
                               f"model's {self.image_size[0]} x {self.image_size[1]} grid; resample the volume to "
                               "the 2 mm IXI grid")

    @torch.no_grad()
    def sample_labels(self, slices: Tensor, samples: int, batch: int = 8) -> Tensor:
        """K label samples (K, S, H, W) int64 of slices (S, 1, H, W)."""
        from meddiff.diffusion import initial_noise, make_grid, sample_ddim

        self._check(slices, samples)
        grid = make_grid(self.schedule, self.steps)
        out = torch.empty((samples, slices.shape[0]) + tuple(slices.shape[-2:]), dtype=torch.long)
        for k in range(samples):
            for i in range(0, slices.shape[0], batch):
                x = slices[i:i + batch]
                g = torch.Generator().manual_seed(self.seed + k + 7919 * i)
                noise = initial_noise(grid, (x.shape[0], self.num_classes) + tuple(x.shape[-2:]), generator=g)
                x0 = sample_ddim(self.denoiser, noise, grid, cond={"cond_image": x})
                out[k, i:i + x.shape[0]] = decode_labels(x0)
        return out

    def predict(self, slices: Tensor, samples: int = 1, batch: int = 8) -> Tensor:
        labels = self.sample_labels(slices, samples, batch)
        return fuse_votes(labels, self.num_classes)[1].movedim(0, 1).contiguous()


def fit_medsegdiff(network: nn.Module, images: Tensor, labels: Tensor, schedule, *, seconds: float,
                   batch: int = 8, lr: float = 2e-4, ema_decay: float = 0.999, seed: int = 0,
                   max_steps: int | None = None, log: Callable[[dict], None] | None = None,
                   checkpoint: Callable[[nn.Module, int, float], None] | None = None,
                   checkpoint_every: float = 600.0) -> tuple[nn.Module, nn.Module, int]:
    """Train the conditional UNet on slices (S, 1, H, W) / labels (S, H, W): the unweighted x0-MSE of the one-hot
    label map (``meddiff.diffusion.diffusion_loss``, t uniform) with the image as ``cond_image``, random left-right
    flips, Adam with a linear warm-up, an EMA copy, until ``seconds`` (or ``max_steps``) -> (network, EMA, steps).
    ``checkpoint(ema, steps, seconds)`` is called every ``checkpoint_every`` seconds of training and at the end."""
    from meddiff.diffusion import diffusion_loss
    from meddiff.training.ema import EMA

    k = int(network.config["in_channels"])
    if images.ndim != 4 or images.shape[1] != 1 or labels.shape != (images.shape[0],) + images.shape[2:]:
        raise MeddiffError(f"MedSegDiff: images (S, 1, H, W) and labels (S, H, W) expected, got "
                           f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise MeddiffError("MedSegDiff: no labelled slices to train on")
    targets = encode_labels(labels, k)
    ema = EMA(network, decay=ema_decay)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    g = torch.Generator().manual_seed(seed)
    network.train()
    start, step = time.perf_counter(), 0
    last = start
    while time.perf_counter() - start < seconds and (max_steps is None or step < max_steps):
        j = torch.randint(0, images.shape[0], (min(batch, images.shape[0]),), generator=g)
        x, y = images[j], targets[j]
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
        y = torch.where(flip[:, None, None, None], y.flip(-2), y)
        loss = diffusion_loss(network, y, schedule, PREDICTION, generator=g, cond={"cond_image": x})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        ema.update(network, step)
        if log is not None and (step % 25 == 0 or step == 1):
            log({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - start})
        if checkpoint is not None and time.perf_counter() - last >= checkpoint_every:
            checkpoint(ema.module, step, time.perf_counter() - start)
            last = time.perf_counter()
    if step == 0:
        raise MeddiffError(f"MedSegDiff: a budget of {seconds} s allowed no training step")
    if checkpoint is not None:
        checkpoint(ema.module, step, time.perf_counter() - start)
    return network.eval(), ema.module, step


def random_network(config: dict, seed: int = 0) -> nn.Module:
    """The same conditional UNet with fresh weights (the control: what sampling gives without training)."""
    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(config).eval()



def checkpoint_meta(cfg: dict, mcfg: dict, prep, subjects: list[str], extra: dict) -> dict:
    """meta.json of a MedSegDiff checkpoint (``pipeline.save_segmenter``): what ``pipeline.load_segmenter`` needs to
    rebuild the sampler. ``cfg``: the segmentation config; ``mcfg``: its ``medsegdiff`` section; ``prep``: the
    ``data.SlicePrep``."""
    from meddiff.tasks.segment.labels import NUM_CLASSES

    return {"method": "medsegdiff", "num_classes": NUM_CLASSES, "image_size": list(prep.image_size),
            "preprocessing": prep.to_dict(),
            "medsegdiff": {"network": network_config(NUM_CLASSES, prep.image_size, mcfg["network"]),
                           "schedule": dict(mcfg["schedule"]), "prediction": PREDICTION,
                           "sampling_steps": int(mcfg["sampling_steps"]), "samples": int(mcfg["samples"])},
            "training": {"subjects": subjects, "config": cfg, "medsegdiff_config": mcfg, **extra}}


def nfe(steps: int, samples: int) -> int:
    """Network evaluations per slice: one per DDIM step per sample."""
    return int(steps) * int(samples)
