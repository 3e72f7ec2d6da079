"""The diffusion prior of the zero-shot solvers (MRI reconstruction, CT reconstruction, restoration): a one-channel
unconditional image model as an x0-denoiser (``Prior``), loaded from a checkpoint or a command's shipped default
(``load_prior``), the same network untrained as the control (``untrained_prior``), the solvers' settings
(``solver_settings``) and result (``Reconstruction``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddiff.diffusion import ModelDenoiser, make_schedule
from meddiff.errors import MeddiffError


@dataclass
class Prior:
    """A one-channel unconditional diffusion prior: its x0-denoiser, schedule and padding multiple. ``fixed_size``
    (H, W): the only input size the network runs at (None: fully convolutional, any multiple of ``multiple``)."""

    denoiser: ModelDenoiser
    schedule: object
    multiple: int
    meta: dict
    fixed_size: tuple[int, int] | None = None
    _runs_at: set = field(default_factory=set, repr=False, compare=False)  # padded sizes already checked

    def describe(self) -> str:
        size = self.meta.get("image_size")
        trained = f"trained at {'x'.join(map(str, size))}" if size else "trained size unknown"
        runs = (f"runs only at {self.fixed_size[0]}x{self.fixed_size[1]}" if self.fixed_size is not None
                else f"pads to a multiple of {self.multiple}")
        return f"prior ({trained}, {runs})"

    def padded_size(self, shape: tuple[int, int], what: str = "image") -> tuple[int, int]:
        """The network input size for ``what`` (a k-space, an image) of ``shape`` (H, W): padded with air to a
        multiple of ``multiple`` (or to ``fixed_size``), checked once per size by one network evaluation. Raises
        ``MeddiffError`` naming that size and the prior's size when they cannot be matched."""
        import torch

        h, w = (int(s) for s in shape)
        mult = self.multiple
        if isinstance(mult, bool) or not isinstance(mult, int) or mult < 1:
            raise MeddiffError(f"{self.describe()}: padding multiple {mult!r} is not a positive integer; cannot pad "
                               f"the {h}x{w} {what}")
        if self.fixed_size is not None:
            fh, fw = (int(s) for s in self.fixed_size)
            if h > fh or w > fw:
                raise MeddiffError(f"{what} size {h}x{w} does not fit the {self.describe()}: it can pad a smaller "
                                   f"{what} to {fh}x{fw} but not crop a larger one; use a prior that runs at "
                                   f"{h}x{w} or larger (a fully convolutional one)")
            padded = (fh, fw)
        else:
            padded = (math.ceil(h / mult) * mult, math.ceil(w / mult) * mult)
        if padded not in self._runs_at:
            x = torch.zeros((1, 1) + padded)
            t = torch.full((1,), 0.5 * float(self.schedule.t_max))
            try:
                with torch.no_grad():
                    out = self.denoiser(x, t)
            except (RuntimeError, ValueError) as error:
                detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                raise MeddiffError(f"{what} size {h}x{w} (padded to {padded[0]}x{padded[1]}) cannot be matched to "
                                   f"the {self.describe()}: the network fails at that size ({detail})") from None
            if tuple(out.shape) != tuple(x.shape):
                raise MeddiffError(f"{what} size {h}x{w} (padded to {padded[0]}x{padded[1]}) cannot be matched to "
                                   f"the {self.describe()}: the network returns shape {tuple(out.shape)[-2:]}")
            self._runs_at.add(padded)
        return padded


def default_prior(command: str = "reconstruct") -> Path:
    """The shipped default checkpoint for ``command``, falling back to the one for ``reconstruct`` (one line in a
    shipped card's ``default_for`` switches it)."""
    from meddiff.training.shipped import default_checkpoint

    try:
        return default_checkpoint(command)
    except MeddiffError:
        if command == "reconstruct":
            raise
        return default_checkpoint("reconstruct")


# The solvers run K samples as one batch. On this 2-core CPU the brain_t1_ixi network evaluates 16 slices of 96 x 120
# in 1.10-1.22 s as one batch and in 0.83-0.86 s as four batches of 4 (two threads; one thread 1.95 -> 1.52 s), and
# 16 of 232 x 184 in 6.0 s as one batch, 3.7 s one by one: batches beyond about 46 000 pixels outgrow the caches.
# Reproduced by `OMP_NUM_THREADS=2 python benchmarks/denoiser_chunks.py --threads 2 --sizes 96x120 232x184 --chunks
# 16 4 1 --out OUT`: 96 x 120 1.03 / 0.80 / 0.89 s, 232 x 184 5.97 / 4.10 / 3.21 s per 16 samples (chunks 16 / 4 / 1).
CPU_CHUNK_PIXELS = 4 * 96 * 120


def load_prior(checkpoint: str | Path | None = None, command: str = "reconstruct") -> Prior:
    """The prior from a checkpoint (path, run directory or shipped name); None: the shipped default for ``command``
    (``default_prior``: falling back to the one for reconstruct)."""
    from meddiff.training.checkpoint import load_checkpoint

    source = default_prior(command) if checkpoint is None else checkpoint
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
                           "train one with a one-channel unconditional synthesis config (e.g. "
                           "configs/brain_mri_prior.yaml)")
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = make_schedule(meta["schedule"])
    return Prior(ModelDenoiser(net, schedule, meta["prediction"], cpu_chunk_pixels=CPU_CHUNK_PIXELS), schedule,
                 2 ** (len(network["channels"]) - 1), meta)


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
    return Prior(ModelDenoiser(net, prior.schedule, prior.meta["prediction"], cpu_chunk_pixels=CPU_CHUNK_PIXELS),
                 prior.schedule, prior.multiple,
                 {**prior.meta, "untrained": True, "init_seed": seed}, prior.fixed_size)


def solver_settings(defaults: dict[str, dict], method: str, steps: int | None, samples: int | None, params: dict,
                    label: str | None = None) -> dict:
    """``defaults[method]`` updated by ``params`` (None values keep the default), ``steps`` and ``samples``; unknown
    parameters and step / sample counts that are not positive integers raise ``MeddiffError`` (``label``, default
    "method 'name'", names the method there)."""
    label = f"method {method!r}" if label is None else label
    settings = {**defaults[method], **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(settings) - set(defaults[method]))
    if unknown:
        raise MeddiffError(f"{label}: unknown parameter(s) {unknown}; allowed: {sorted(defaults[method])}")
    for name, value in (("steps", steps), ("samples", samples)):
        if value is not None:
            settings[name] = value
        if isinstance(settings[name], bool) or not isinstance(settings[name], int) or settings[name] < 1:
            raise MeddiffError(f"--{name} {settings[name]!r} must be a positive integer")
    return settings


@dataclass
class Reconstruction:
    """A solver's result: image float32 (MRI: (H, W) on the RSS scale; CT: (S, H, W) in HU); std of the same shape
    over the samples or None (baselines); network evaluations; seconds; settings used."""

    image: np.ndarray
    std: np.ndarray | None = None
    nfe: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
