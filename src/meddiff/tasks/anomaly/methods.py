"""The anomaly methods: Wolleb's classifier-guided DDIM round trip and AnoDDPM's partial diffusion (both through the
core samplers and hooks), the autoencoder, and ``load_detector`` that builds a ``Detector`` from shipped or trained
checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from meddiff.diffusion import ClassifierGuidance, ModelDenoiser, make_schedule, partial_grid
from meddiff.diffusion.noise import make_noise
from meddiff.diffusion.samplers import invert_ddim, sample_ddim, sample_ddpm
from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.anomaly.data import BRATS_FIELD_OF_VIEW_MM, CONTRASTS_BY_CHANNELS
from meddiff.tasks.anomaly.postprocess import RESIDUALS

HEALTHY, DISEASED = 0, 1  # classifier labels: class folders 0_healthy, 1_diseased (sorted order)
METHODS = ("wolleb", "anoddpm", "anoddpm-gaussian", "autoencoder", "intensity")
DIFFUSION_METHODS = ("wolleb", "anoddpm", "anoddpm-gaussian")
STOCHASTIC_METHODS = ("anoddpm", "anoddpm-gaussian")  # a new reconstruction per draw: --samples K applies
# shipped models used when --checkpoint / --classifier are left out: (BraTS, chest X-ray)
DEFAULT_MODELS = {
    "wolleb": ("brats_anoddpm_gaussian", "brats_classifier"),   # the healthy Gaussian DDPM as Wolleb's prior
    "anoddpm": ("brats_anoddpm", None),
    "anoddpm-gaussian": ("brats_anoddpm_gaussian", None),
    "autoencoder": ("brats_autoencoder", None),
}
# chest X-ray models (28 x 28 PneumoniaMNIST): the lead's class-conditional pneumonia_cond serves as Wolleb's
# unconditional model (null class) and, conditioned on "normal", as the Gaussian-noise AnoDDPM healthy model
CHEST_MODELS = {
    "wolleb": ("pneumonia_cond", "chestxray_classifier"),
    "anoddpm": ("chestxray_anoddpm", None),
    "anoddpm-gaussian": ("pneumonia_cond", None),
    "autoencoder": ("chestxray_autoencoder", None),
    "intensity": (None, None),
}
SETTINGS = ("default", "paper")
# The papers' settings: Wolleb L = 500, s = 100; AnoDDPM t_lambda = 250 of 1000; the map sums |x - x_h| over all
# channels, one reconstruction. Used with --paper-settings, and as the default for checkpoints whose channels are not
# BraTS MR contrasts (e.g. the 1-channel chest X-ray models).
PAPER_SETTINGS = {
    "wolleb": {"noise_level": 500.0, "guidance_scale": 100.0, "steps": 25, "map_contrasts": None, "residual": "abs"},
    "anoddpm": {"noise_level": 250.0, "steps": 25, "map_contrasts": None, "residual": "abs", "samples": 1},
    "anoddpm-gaussian": {"noise_level": 250.0, "steps": 25, "map_contrasts": None, "residual": "abs", "samples": 1},
    "autoencoder": {"map_contrasts": None, "residual": "abs"},
    "intensity": {},
}
# Defaults for BraTS MR checkpoints (channels named by CONTRASTS_BY_CHANNELS, FLAIR among them), each chosen on
# development slices of the training subject (benchmarks/anomaly.py --select-map: map, t_lambda / L; --select-speed:
# K and steps: the best development Dice within 32 network calls per slice), never on the unseen subjects. AnoDDPM:
# FLAIR's positive residual averaged over K = 16 reconstructions from t_lambda = 30 (simplex, a 2-step chain
# t_lambda -> 0 -> clean: development best Dice 0.806, against 0.777 for 25 steps, i.e. 400 calls) / 100 (Gaussian,
# one step: the reconstruction is the x0 estimate at t_lambda; 0.718 against 0.677). Wolleb: L = 250, s = 10.
MR_DEFAULTS = {
    "wolleb": {"noise_level": 250.0, "guidance_scale": 10.0, "steps": 25, "map_contrasts": ("flair",),
               "residual": "positive"},
    "anoddpm": {"noise_level": 30.0, "steps": 2, "map_contrasts": ("flair",), "residual": "positive", "samples": 16},
    "anoddpm-gaussian": {"noise_level": 100.0, "steps": 1, "map_contrasts": ("flair",), "residual": "positive",
                         "samples": 16},
    "autoencoder": {"map_contrasts": ("flair",), "residual": "positive"},
    "intensity": {},
}


def default_settings(method: str, channels: int | None, settings: str = "default") -> dict:
    """The settings ``load_detector`` uses for what is left out: ``MR_DEFAULTS`` for a BraTS MR checkpoint of
    ``channels`` channels (more than one, FLAIR among its contrasts), else (or with ``settings="paper"``)
    ``PAPER_SETTINGS``."""
    check_choice("settings", settings, SETTINGS)
    return dict((MR_DEFAULTS if settings == "default" and is_brats_mr(channels) else PAPER_SETTINGS)[method])


def is_brats_mr(channels: int | None) -> bool:
    """A checkpoint of BraTS MR contrasts: more than one channel, named by CONTRASTS_BY_CHANNELS, FLAIR among them."""
    return channels is not None and channels > 1 and "flair" in CONTRASTS_BY_CHANNELS.get(channels, ())


def _read_training_noise(checkpoint: Path) -> dict | None:
    """diffusion.noise of the config a checkpoint was trained with (shipped folder or run directory), or None."""
    import yaml

    for config in (checkpoint / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if config.is_file():
            return (yaml.safe_load(config.read_text()).get("diffusion") or {}).get("noise")
    return None


@dataclass
class Detector:
    """A loaded anomaly method: ``heal(x)`` maps model-space images (B, C, h, w) to their healthy counterparts."""

    method: str
    model: torch.nn.Module | None = None
    meta: dict = field(default_factory=dict)
    classifier: torch.nn.Module | None = None
    noise_level: float = 500.0
    guidance_scale: float = 100.0
    steps: int = 25
    noise: dict | None = None
    seed: int = 0
    device: str | torch.device = "cpu"
    map_channels: tuple[int, ...] | None = None   # channels summed in the anomaly map (None: all)
    residual: str = "abs"                           # "abs": |x - x_h|; "positive": max(x - x_h, 0)
    samples: int = 1                                # AnoDDPM: reconstructions per input, residuals averaged
    pixel_mm: float | None = None                   # the model's pixel size; None: inputs are resized whole

    @property
    def channels(self) -> int | None:
        return None if self.model is None else int(self.meta["channels"])

    @property
    def image_size(self) -> tuple[int, ...] | None:
        return None if self.model is None else tuple(int(s) for s in self.meta["image_size"])

    def _cond(self, batch: int, label: int) -> dict:
        if not self.meta.get("num_classes"):
            return {}
        from meddiff.nets import CLASS_LABELS

        return {CLASS_LABELS: torch.full((batch,), label, dtype=torch.long, device=self.device)}

    @torch.no_grad()
    def heal(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Healthy reconstruction of x (B, C, *image_size) in model space [-1, 1]."""
        if self.method == "autoencoder":
            return self.model(x, torch.zeros(len(x), device=x.device))
        schedule = make_schedule(self.meta["schedule"])
        denoiser = ModelDenoiser(self.model, schedule, self.meta["prediction"])
        if self.method == "wolleb":   # null class = the unconditional model
            return wolleb_heal(denoiser, self.classifier, schedule, x, self.noise_level, self.guidance_scale,
                               self.steps, cond=self._cond(len(x), int(self.meta.get("num_classes") or 0)))
        return anoddpm_heal(denoiser, schedule, x, self.noise_level, self.steps, noise=self.noise,
                            generator=generator, cond=self._cond(len(x), HEALTHY))


def wolleb_heal(denoiser, classifier, schedule, x: Tensor, level: float, scale: float, steps: int, *,
                cond: dict | None = None) -> Tensor:
    """Wolleb et al. 2022, Alg. 1: deterministic DDIM encoding of x (B, C, ...) to time ``level`` (L), then DDIM
    decoding with classifier guidance of scale s towards label HEALTHY."""
    grid = partial_grid(schedule, level, steps)
    x_level = invert_ddim(denoiser, x, grid, cond=cond)
    guide = ClassifierGuidance(classifier, schedule, torch.full((len(x),), HEALTHY), scale)
    return sample_ddim(denoiser, x_level, grid, hook=guide, cond=cond)


def anoddpm_heal(denoiser, schedule, x: Tensor, level: float, steps: int, *, noise: dict | None = None,
                 generator: torch.Generator | None = None, cond: dict | None = None) -> Tensor:
    """AnoDDPM (Wyatt et al. 2022, Alg. 2): partial diffusion x_t = alpha x + sigma z to t_lambda = ``level`` with
    z simplex (``noise`` config) or Gaussian (None) noise, then ancestral DDPM steps back to 0 with the same noise."""
    grid = partial_grid(schedule, level, steps)
    noise_fn = make_noise(noise)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(grid.times[0]))))
    x_t = alpha * x + sigma * noise_fn(tuple(x.shape), generator).to(x.device, x.dtype)
    return sample_ddpm(denoiser, x_t, grid, generator=generator, noise_fn=noise_fn if noise else None, cond=cond)


def load_detector(method: str, checkpoint: str | Path | None = None, classifier: str | Path | None = None, *,
                  noise_level: float | None = None, guidance_scale: float | None = None, steps: int | None = None,
                  seed: int = 0, device: str | torch.device = "auto", map_contrasts: Sequence[str | int] | None = None,
                  residual: str | None = None, samples: int | None = None, settings: str = "default") -> Detector:
    """Load a method's networks (shipped BraTS models when ``checkpoint``/``classifier`` are None).

    Every option left at None takes ``default_settings(method, channels, settings)``: for BraTS MR checkpoints the
    development-chosen ``MR_DEFAULTS``, else (or ``settings="paper"``) the papers' ``PAPER_SETTINGS``.
    ``map_contrasts``: contrast names of the model's BraTS convention (e.g. ["flair"]), channel indices, or ["all"];
    ``residual`` "abs" / "positive"; ``samples`` K > 1 for AnoDDPM only; ``steps`` grid points from the noise level
    to 0. ``device``: "auto", "cpu" or "cuda[:N]".
    """
    from meddiff.device import resolve_device

    check_choice("method", method, METHODS)
    check_choice("settings", settings, SETTINGS)
    if residual is not None:
        check_choice("residual", residual, RESIDUALS)
    if samples is not None and (isinstance(samples, bool) or int(samples) != samples or samples < 1):
        raise MeddiffError(f"--samples must be at least 1, got {samples}")
    if samples is not None and int(samples) > 1 and method not in STOCHASTIC_METHODS:
        raise MeddiffError(f"--samples {samples}: only the stochastic AnoDDPM methods draw several reconstructions; "
                           f"--method {method} is deterministic (leave --samples out)")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise MeddiffError(f"--steps must be an integer >= 1, got {steps}")
    device = resolve_device(device)
    if method == "intensity":
        if map_contrasts is not None or residual is not None:
            raise MeddiffError("--map-contrasts / --residual do not apply to --method intensity (it reads the "
                               "FLAIR z-score directly)")
        return Detector(method, device=device)
    from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint

    default, default_classifier = DEFAULT_MODELS[method]
    path = resolve_checkpoint(checkpoint or default)
    model, meta = load_checkpoint(path, device=device)
    expected = "autoencoder" if method == "autoencoder" else "unet"
    if meta["network"].get("kind") != expected:
        raise MeddiffError(f"--method {method} needs a {expected} checkpoint, but {path} holds a "
                           f"{meta['network'].get('kind')} ({meta.get('task')})")
    channels = int(meta["channels"])
    chosen = {**default_settings(method, channels, settings),
              **{k: v for k, v in {"noise_level": noise_level, "guidance_scale": guidance_scale, "steps": steps,
                                   "map_contrasts": map_contrasts, "residual": residual, "samples": samples}.items()
                 if v is not None}}
    if method in DIFFUSION_METHODS:
        schedule = make_schedule(meta["schedule"])
        if not schedule.t_min < float(chosen["noise_level"]) <= schedule.t_max:
            raise MeddiffError(f"--noise-level {chosen['noise_level']:g} must be in ({schedule.t_min:g}, "
                               f"{schedule.t_max:g}], the time range of {path}'s schedule")
    detector = Detector(method, model, meta, seed=seed, device=device,
                        noise_level=float(chosen.get("noise_level", 0.0)),
                        guidance_scale=float(chosen.get("guidance_scale", 100.0)), steps=int(chosen.get("steps", 25)),
                        residual=chosen["residual"], samples=int(chosen.get("samples", 1)),
                        map_channels=contrast_indices(chosen["map_contrasts"], channels),
                        pixel_mm=BRATS_FIELD_OF_VIEW_MM / int(meta["image_size"][0]) if is_brats_mr(channels) else None)
    if method in STOCHASTIC_METHODS:
        noise = _read_training_noise(path)
        simplex = bool(noise) and noise.get("kind") == "simplex"
        if (method == "anoddpm") != simplex:
            trained = "simplex" if simplex else "Gaussian"
            raise MeddiffError(f"{path} was trained with {trained} noise; use --method "
                               f"{'anoddpm' if simplex else 'anoddpm-gaussian'} with it (AnoDDPM samples with the "
                               "noise the model was trained on)")
        detector.noise = noise if simplex else None
    if method == "wolleb":
        cpath = resolve_checkpoint(classifier or default_classifier)
        detector.classifier, cmeta = load_checkpoint(cpath, device=device)
        if cmeta.get("task") != "classifier":
            raise MeddiffError(f"--classifier {cpath} is not a noise-aware classifier (task {cmeta.get('task')!r})")
        if cmeta["channels"] != meta["channels"] or list(cmeta["image_size"]) != list(meta["image_size"]):
            raise MeddiffError(f"classifier {cpath} ({cmeta['channels']} x {cmeta['image_size']}) does not match the "
                               f"diffusion model {path} ({meta['channels']} x {meta['image_size']})")
    return detector


def contrast_indices(contrasts: Sequence[str | int] | None, channels: int) -> tuple[int, ...] | None:
    """Channel indices of ``contrasts`` (names of the BraTS convention for ``channels`` or indices); None or
    ["all"]: all channels (returned as None)."""
    if contrasts is None or [str(c).lower() for c in contrasts] == ["all"]:
        return None
    names = CONTRASTS_BY_CHANNELS.get(channels, ())
    out = []
    for c in contrasts:
        if isinstance(c, int) or str(c).isdigit():
            index = int(c)
        elif str(c).lower() in names:
            index = names.index(str(c).lower())
        else:
            raise MeddiffError(f"--map-contrasts {c!r}: the checkpoint's {channels} channel(s) are "
                               f"{', '.join(names) if names else 'unnamed'}; give one of those or a channel index")
        if not 0 <= index < channels:
            raise MeddiffError(f"--map-contrasts {c!r}: channel index out of range for a {channels}-channel model")
        out.append(index)
    if not out:
        raise MeddiffError("--map-contrasts is empty: name at least one contrast (or leave it out for all)")
    return tuple(dict.fromkeys(out))


def check_input(detector: Detector, shape: Sequence[int]) -> None:
    """Refuse an input the checkpoint was not trained for: channel count, or a size smaller than its training size
    or of another aspect ratio (another modality, e.g. a 28 x 28 X-ray given to a 48 x 48 BraTS model)."""
    channels, spatial = int(shape[0]), tuple(int(s) for s in shape[1:])
    if channels != detector.channels:
        contrasts = CONTRASTS_BY_CHANNELS.get(detector.channels)
        hint = f" (BraTS contrasts {', '.join(contrasts)}: give a case folder)" if contrasts and detector.channels > 1 else ""
        raise MeddiffError(f"the input has {channels} channel(s) but the checkpoint was trained on {detector.channels}"
                           f"{hint}; use a checkpoint for this modality")
    size = detector.image_size
    if any(s < m for s, m in zip(spatial, size)) or abs(math.log((spatial[0] / spatial[1]) / (size[0] / size[1]))) > 0.3:
        raise MeddiffError(f"the input is {spatial[0]} x {spatial[1]} but the checkpoint was trained on "
                           f"{size[0]} x {size[1]} images (inputs must be at least that large, same aspect ratio); "
                           "is it another modality than the checkpoint's?")
