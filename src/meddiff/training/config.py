"""Training config: YAML sections (model, diffusion, data, optimiser, schedule, run), defaults and validation.

``resolve_config`` fills every default so that the run directory's config.yaml states everything the run
used; unknown keys are errors naming the allowed ones.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from meddiff.diffusion import PREDICTIONS, make_schedule
from meddiff.diffusion.noise import resolve_noise_config
from meddiff.errors import MeddiffError, check_choice
from meddiff.files import read_yaml_mapping
from meddiff.nets.unet import check_keys

TASKS = ("synthesis", "classifier", "autoencoder")  # what the network is trained for: denoising, noisy-image
# classification, or reconstruction by a KL autoencoder (the first stage of latent diffusion; its `loss:` section)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "linear")

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "diffusion": {
        "schedule": {"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000},
        "prediction": "eps",
        "min_snr_gamma": None,
        "noise": None,             # null: Gaussian; {kind: simplex, octaves, persistence, frequency}: AnoDDPM noise
        "time_focus": None,        # null: t uniform; {below: f, probability: p}: a share p of t uniform in [0, f T)
    },
    "optimiser": {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "grad_clip": 1.0,          # max global gradient norm; null: no clipping
        "fused": "auto",           # fused AdamW kernel: auto (where torch supports it), true, false
    },
    "schedule": {
        "kind": "constant",        # learning rate after warm-up: constant, cosine or linear decay
        "warmup_steps": 100,
        "min_lr_ratio": 0.0,
    },
    "run": {
        "name": None,              # runs/<name>/; default: the config file's stem
        "out_dir": "runs",
        "steps": 1000,             # optimiser steps
        "batch_size": 16,          # global batch per optimiser step (all processes, all accumulation steps)
        "grad_accum": 1,
        "seed": 0,
        "ema_decay": 0.9999,
        "ema_warmup": True,        # decay_n = min(ema_decay, (1 + n) / (10 + n))
        "precision": "auto",       # auto: bf16 autocast on CUDA if supported (else fp16), fp32 on CPU
        "channels_last": "auto",   # auto: on CUDA only (measured slower on CPU, see benchmarks/README.md)
        "compile": False,          # torch.compile the network
        "device": "auto",
        "num_workers": 0,
        "checkpoint_every": 500,
        "keep_checkpoints": 3,
        "log_every": 10,
        "sample_every": 0,         # 0: never; else save a PNG grid of EMA samples every N steps
        "num_samples": 16,
        "sampler": "ddim",
        "sample_steps": 50,
        "tensorboard": False,      # also write the step scalars to <run>/tensorboard (needs the tensorboard package)
        "progress": True,
        "init_from": None,         # warm start: a checkpoint (path or shipped name) whose EMA weights start the
                                   # network and its EMA at step 0; optimiser, schedule and step start fresh
    },
}

TOP_LEVEL = ("task", "model", "diffusion", "data", "optimiser", "schedule", "run", "loss")


def _number(name: str, value) -> float:
    """A real number from YAML: PyYAML reads ``4e-4`` (no dot) as a string, so such a string is converted;
    anything else that is not a number is an error naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MeddiffError(f"{name}={value!r} must be a number (e.g. 4.0e-4)")
    try:
        return float(value)
    except ValueError:
        raise MeddiffError(f"{name}={value!r} must be a number (e.g. 4.0e-4)") from None


def load_config(path: str | Path) -> dict:
    """Read a YAML training config; errors name the file."""
    path = Path(path)
    config = read_yaml_mapping(path, "training config")
    if not isinstance(config.get("run"), dict):
        config["run"] = {}
    if config["run"].get("name") is None:
        config["run"]["name"] = path.stem
    return config


def resolve_config(config: dict) -> dict:
    """Defaults filled in and values checked; model-dependent fields (channels, size) are filled by the trainer."""
    config = copy.deepcopy(config)
    check_keys("the training config", config, dict.fromkeys(TOP_LEVEL))
    config.setdefault("task", "synthesis")
    check_choice("task", config["task"], TASKS)
    config["model"] = dict(config.get("model") or {})
    config["model"].setdefault("kind", {"classifier": "classifier", "autoencoder": "autoencoder_kl"}.get(config["task"], "unet"))
    if config["task"] == "autoencoder":  # the loss weights; other tasks have no `loss:` section (nor a key for it)
        from meddiff.nets.autoencoder_kl import resolve_loss_config

        config["loss"] = resolve_loss_config(config.get("loss"))
    elif "loss" in config:
        raise MeddiffError(f"a `loss:` section is only used by task: autoencoder (this config has task: {config['task']})")
    config["data"] = config.get("data")
    for section, defaults in SECTION_DEFAULTS.items():
        given = config.get(section) or {}
        if not isinstance(given, dict):
            raise MeddiffError(f"config section {section!r} must be a mapping")
        check_keys(section, given, defaults)
        config[section] = {**copy.deepcopy(defaults), **given}
    diffusion, optimiser, schedule, run = (config[k] for k in ("diffusion", "optimiser", "schedule", "run"))
    noise_schedule = make_schedule(diffusion["schedule"])
    diffusion["schedule"] = noise_schedule.to_config()  # validates and makes explicit
    check_choice("diffusion.prediction", diffusion["prediction"], PREDICTIONS)
    if config["task"] == "synthesis" and diffusion["prediction"] in ("eps", "score") \
            and noise_schedule.has_zero_terminal_snr:
        # it would train (min-SNR is defined there) but never sample: x0 = (x - sigma eps) / alpha at alpha = 0
        raise MeddiffError(f"diffusion.prediction={diffusion['prediction']!r} cannot be sampled on a schedule that "
                           "reaches zero SNR (alpha = 0 at the last time); use prediction 'v' or 'x0'")
    diffusion["noise"] = resolve_noise_config(diffusion["noise"])
    focus = diffusion["time_focus"]
    if focus is not None:
        numbers = isinstance(focus, dict) and set(focus) == {"below", "probability"} \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in focus.values())
        if not numbers or not 0 < focus["below"] <= 1 or not 0 <= focus["probability"] <= 1:
            raise MeddiffError(f"diffusion.time_focus={focus!r} must be null or {{below: f, probability: p}} with "
                               "0 < f <= 1 and 0 <= p <= 1 (e.g. {below: 0.2, probability: 0.7})")
    check_choice("schedule.kind", schedule["kind"], LR_SCHEDULES)
    check_choice("run.precision", run["precision"], PRECISIONS)
    check_choice("run.channels_last", run["channels_last"], ("auto", True, False))
    check_choice("optimiser.fused", optimiser["fused"], ("auto", True, False))
    for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
                "num_samples", "sample_steps"):
        if not isinstance(run[key], int) or run[key] < 1:
            raise MeddiffError(f"run.{key}={run[key]!r} must be a positive integer")
    if not isinstance(run["sample_every"], int) or run["sample_every"] < 0:
        raise MeddiffError(f"run.sample_every={run['sample_every']!r} must be an integer >= 0 (0: no samples)")
    if not 0 <= run["ema_decay"] < 1:
        raise MeddiffError(f"run.ema_decay={run['ema_decay']} must be in [0, 1)")
    optimiser["lr"] = _number("optimiser.lr", optimiser["lr"])
    if optimiser["lr"] <= 0:
        raise MeddiffError(f"optimiser.lr={optimiser['lr']} must be positive")
    if optimiser["grad_clip"] is not None and optimiser["grad_clip"] <= 0:
        raise MeddiffError(f"optimiser.grad_clip={optimiser['grad_clip']} must be positive or null (no clipping)")
    if run["init_from"] is not None and not isinstance(run["init_from"], str):
        raise MeddiffError(f"run.init_from={run['init_from']!r} must be a checkpoint path or shipped name")
    if run["name"] is None:
        raise MeddiffError("run.name is not set; add `run: {name: ...}` to the config (the run goes to runs/<name>/)")
    # the time embedding expects timesteps of order 1000: continuous schedules (t in [0, 1]) are scaled
    config["model"].setdefault("time_scale", 1.0 if diffusion["schedule"]["kind"] == "discrete" else 1000.0)
    return config


def dump_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
