"""The training engine: one loop for denoising networks and noise-aware classifiers, 2D or 3D, on CPU or CUDA,
in one process or under ``torchrun`` (PyTorch DDP).

Reproducibility: the data order and every random draw (timesteps, noise, label drop-out) are functions of
the seed and the global step, drawn for the whole global batch on every process and then sliced; so a
resumed run repeats the loss sequence of an uninterrupted one bit for bit on CPU, and N processes with
global batch B take the same step as one process with batch B (up to the all-reduce's rounding).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Sampler

import meddiff
from meddiff.diffusion import ClipDenoised, ModelDenoiser, get_sampler, initial_noise, make_grid, make_schedule
from meddiff.diffusion.losses import diffusion_loss, focus_training_times
from meddiff.diffusion.noise import make_noise
from meddiff.diffusion.parametrization import broadcast_to
from meddiff.errors import MeddiffError
from meddiff.files import atomic_path, write_text
from meddiff.nets import CLASS_LABELS, COND_IMAGE, build_network
from meddiff.training.checkpoint import (list_checkpoints, load_state, load_weights, read_meta, resolve_checkpoint,
                                       save_checkpoint, training_steps)
from meddiff.training.config import dump_yaml, resolve_config
from meddiff.training.ema import EMA
from meddiff.training.images import save_image_grid

IMAGE, LABEL = "image", "label"  # dataset item keys (COND_IMAGE = "cond_image" for image conditioning)
STEP_LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s")


class TrainingDiverged(MeddiffError):
    """The loss became NaN or Inf; the weights of that step were not applied."""


# --- environment --------------------------------------------------------------------------------------


def versions() -> dict:
    """Package versions and the git commit of the meddiff source tree (None outside a checkout)."""
    import monai
    import numpy
    import safetensors

    info = {"meddiff": meddiff.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}
    source = Path(meddiff.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    info["git_commit"], info["git_dirty"] = commit, dirty
    return info


def _distributed_setup(device_choice: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we initialised the process group) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MeddiffError(f"run.device={device_choice!r} but CUDA is not available; use 'auto' or 'cpu'")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialised = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        initialised = True
    return rank, world, device, initialised


# --- data order -----------------------------------------------------------------------------------------


class StepBatchSampler(Sampler):
    """Index lists for this process, step by step from ``start_step``: a stream over per-epoch permutations.

    Global batch s covers stream positions [s B, (s + 1) B); epoch e is randperm(N) seeded with seed + e.
    The global batch is cut into accum x world chunks; chunk (micro m, rank r) has index m * world + r.
    """

    def __init__(self, size: int, batch: int, accum: int, rank: int, world: int, seed: int, start_step: int,
                 steps: int) -> None:
        self.size, self.batch, self.accum, self.rank, self.world = size, batch, accum, rank, world
        self.seed, self.start_step, self.steps = seed, start_step, steps
        self.chunk = batch // (accum * world)
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._epoch = epoch
        return int(self._perm[offset])

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            for micro in range(self.accum):
                start = step * self.batch + (micro * self.world + self.rank) * self.chunk
                yield [self._index(p) for p in range(start, start + self.chunk)]

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum


def dataset_image_shape(dataset: Dataset) -> tuple[int, ...]:
    shape = getattr(dataset, "image_shape", None)
    if shape is None:
        shape = tuple(dataset[0][IMAGE].shape)
    return tuple(int(s) for s in shape)


# --- losses -----------------------------------------------------------------------------------------------


def classifier_loss(model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, schedule,
                    labels: Tensor) -> Tensor:
    """Cross-entropy of a noise-aware classifier on x_t ~ q(x_t | x0) (Dhariwal & Nichol 2021, sec. 4)."""
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = broadcast_to(alpha, x0) * x0 + broadcast_to(sigma, x0) * noise
    return F.cross_entropy(model(x_t, t.to(x0.device)).float(), labels)


def lr_factor(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up, then constant/cosine/linear."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return 1.0


# --- the trainer ------------------------------------------------------------------------------------------


class Trainer:
    """Train the network described by ``config`` (see meddiff.training.config) on ``dataset``.

    ``dataset`` items are dicts with "image" (C, *spatial) float32 in [-1, 1], optional "label" (int64) and
    optional "cond_image" (C', *spatial); when omitted it is built by ``meddiff.data.build_dataset(config["data"])``.
    """

    def __init__(self, config: dict, dataset: Dataset | None = None, *, run_dir: str | Path | None = None) -> None:
        config = resolve_config(config)
        run = config["run"]
        self.rank, self.world, self.device, self._owns_group = _distributed_setup(run["device"])
        self.is_main = self.rank == 0
        if dataset is None:
            dataset = _build_dataset(config["data"])
        self.dataset = dataset
        self.config = config = self._complete_model_config(config, dataset)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(run["out_dir"]) / run["name"]
        if run["batch_size"] % (run["grad_accum"] * self.world):
            raise MeddiffError(
                f"run.batch_size={run['batch_size']} must be divisible by run.grad_accum x processes = "
                f"{run['grad_accum']} x {self.world}")
        self.schedule = make_schedule(config["diffusion"]["schedule"])
        self.task = config["task"]
        with torch.random.fork_rng(devices=[]):  # initialisation from run.seed, identical on every process,
            torch.manual_seed(run["seed"])       # without touching the caller's global RNG
            self.net = build_network(config["model"]).to(self.device)
        self.warm_start: dict | None = None  # {"source", "steps"}: the checkpoint this run started from, its steps
        if run["init_from"]:
            self._warm_start(run["init_from"])
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if run["channels_last"] == "auto" else bool(run["channels_last"])
        if self.channels_last:
            self.memory_format = torch.channels_last if config["model"]["dims"] == 2 else torch.channels_last_3d
            self.net = self.net.to(memory_format=self.memory_format)
        self.ema = EMA(self.net, run["ema_decay"], run["ema_warmup"])
        self._params = list(self.net.parameters())  # flat list for the foreach norm/clip (same objects for the run)
        self._foreach = True if self.device.type in ("cpu", "cuda") else None  # None: torch decides per device
        self.amp_dtype = self._amp_dtype(run["precision"], cuda)
        opt = config["optimiser"]
        fused = opt["fused"]
        if fused == "auto":
            fused = cuda
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]),
                                           eps=opt["eps"], weight_decay=opt["weight_decay"], fused=bool(fused) or None)
        sched = config["schedule"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _LrLambda(sched["warmup_steps"], run["steps"], sched["kind"], sched["min_lr_ratio"]))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        model: nn.Module = self.net
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        if run["compile"]:
            model = torch.compile(model)
        self.train_model = model
        self.generator = torch.Generator().manual_seed(run["seed"] + 1)
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self._versions = versions()

    # -- configuration -------------------------------------------------------------------------------

    def _warm_start(self, source: str) -> None:
        """Start from the EMA weights of checkpoint ``source`` (fine-tuning or a new schedule after a finished run)."""
        checkpoint = resolve_checkpoint(source)
        source_meta = read_meta(checkpoint)
        network, model = source_meta.get("network"), self.config["model"]
        # its training steps (over all its own warm starts), so the meta can say how long the weights trained in all
        self.warm_start = {"source": str(source), "steps": int(training_steps(source_meta) or 0)}
        # a guidance input may be added (guidance distillation): its embedding is new and starts at zero
        adds_guidance = bool(model.get("guidance_input")) and network is not None \
            and not network.get("guidance_input")
        if network is not None:  # guidance_input compared as a flag: metas written before it existed lack it
            keys = sorted(k for k in set(network) | set(model) if (
                bool(network.get(k)) != bool(model.get(k)) and not adds_guidance if k == "guidance_input"
                else network.get(k) != model.get(k)))
            if keys:
                raise MeddiffError(f"run.init_from={source}: its network differs from this config's model in "
                                   f"{', '.join(keys)}; use the same model section as the checkpoint's config.yaml")
        weights = load_file(checkpoint / "ema.safetensors")
        result = self.net.load_state_dict({k: v.float() for k, v in weights.items()}, strict=not adds_guidance)
        if adds_guidance and (result.unexpected_keys or any(not k.startswith("guidance_embed.")
                                                            for k in result.missing_keys)):
            raise MeddiffError(f"run.init_from={source}: weights do not match this network apart from its guidance "
                               f"input (missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")

    def _complete_model_config(self, config: dict, dataset: Dataset) -> dict:
        """Fill channels, dimensions, image size, classes and conditioning channels from the dataset."""
        model = config["model"]
        shape = dataset_image_shape(dataset)
        channels, spatial = shape[0], list(shape[1:])
        for key, value in (("in_channels", channels), ("dims", len(spatial)), ("image_size", spatial)):
            if model.get(key) is not None and model[key] != value:
                raise MeddiffError(f"model.{key}={model[key]} does not match the data ({key} = {value}, image shape "
                                   f"{shape}); remove model.{key} or set it to {value}")
            model[key] = value
        if model.get("num_classes") == "auto" or (config["task"] == "classifier" and model.get("num_classes") is None):
            classes = getattr(dataset, "num_classes", None)
            if not classes:
                raise MeddiffError("model.num_classes='auto' but the dataset has no num_classes; set it explicitly")
            model["num_classes"] = int(classes)
        item = dataset[0]
        if model.get("num_classes") and LABEL not in item:
            raise MeddiffError(f"a class-conditional model needs dataset items with a {LABEL!r}; "
                               "use an unconditional model or a labelled dataset")
        if COND_IMAGE in item and model["kind"] == "unet" and model.get("cond_channels") is None:
            model["cond_channels"] = int(item[COND_IMAGE].shape[0])
        if model.get("cond_channels") and COND_IMAGE not in item:
            raise MeddiffError(f"model.cond_channels={model['cond_channels']} needs dataset items with {COND_IMAGE!r}")
        config["model"] = build_network(model).config  # resolved: every default explicit
        return config

    @staticmethod
    def _amp_dtype(precision: str, cuda: bool) -> torch.dtype | None:
        if precision == "fp32":
            return None
        if not cuda:
            if precision != "auto":
                raise MeddiffError(f"run.precision={precision!r} needs CUDA (mixed precision is CUDA-only); "
                                   "use 'auto' or 'fp32' on CPU")
            return None
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16

    def meta(self) -> dict:
        """Everything needed to rebuild the network and its pre/post-processing (checkpoint meta.json)."""
        model = self.config["model"]
        return {
            "task": self.task,
            "network": model,
            "image_size": model["image_size"],
            "channels": model["in_channels"],
            "num_classes": model.get("num_classes"),
            "normalisation": getattr(self.dataset, "normalisation", {"model_range": [-1.0, 1.0]}),
            "schedule": self.config["diffusion"]["schedule"],
            "prediction": self.config["diffusion"]["prediction"],
            "data": self.config["data"],
            "step": self.step,
            "versions": self._versions,
            # a warm-started run (run.init_from): what it started from, and the steps of both together
            **({"init_from": self.warm_start, "total_steps": self.warm_start["steps"] + self.step}
               if self.warm_start else {}),
        }

    # -- run directory ---------------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> Path | None:
        """Create runs/<name>/ (rank 0) and return the checkpoint to resume from, if any."""
        checkpoints = list_checkpoints(self.run_dir / "checkpoints")
        if checkpoints and not resume:
            raise MeddiffError(f"{self.run_dir} already has checkpoints; pass --resume to continue it "
                               "or choose another run.name")
        saved = self.run_dir / "config.yaml"
        if resume and saved.is_file():
            import yaml

            _check_same_config(yaml.safe_load(saved.read_text()), self.config, saved)
        if self.is_main:
            for sub in ("checkpoints", "samples"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            write_text(saved, dump_yaml(self.config))
            write_text(self.run_dir / "environment.json", json.dumps(self._versions, indent=2))
        return checkpoints[-1] if (resume and checkpoints) else None

    def _restore(self, checkpoint: Path) -> None:
        saved = read_meta(checkpoint).get("init_from")
        if saved:  # what the run started from, as it was then (the source may since have been replaced by this run)
            self.warm_start = saved
        load_weights(self.net, checkpoint, "model")
        load_weights(self.ema.module, checkpoint, "ema")
        state = load_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the schedule's length follows this run's run.steps (a resume may extend or shorten a run; LambdaLR's state
        # would otherwise bring back the total it started with and, e.g., never anneal a shortened run)
        schedule_fn = self.scheduler.lr_lambdas[0]
        total = int(self.config["run"]["steps"])
        if schedule_fn.total != total:
            if self.is_main:
                print(f"resume: run.steps {schedule_fn.total} -> {total}; the learning-rate schedule now ends at step "
                      f"{total}", flush=True)
            schedule_fn.total = total
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):  # next step's rate
                group["lr"] = base * schedule_fn(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def _state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 only); returns its directory."""
        if not self.is_main:
            return None
        return save_checkpoint(self.run_dir / "checkpoints", self.step, self.net, self.ema.module, self._state(),
                               self.meta(), keep=self.config["run"]["keep_checkpoints"])

    # -- one optimiser step ----------------------------------------------------------------------------

    def _draws(self, batch: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Random draws of one global batch, identical on every process: (t, noise, label-drop uniforms)."""
        model = self.config["model"]
        drop = None
        if self.task == "synthesis" and model.get("class_dropout"):
            drop = torch.rand(batch, generator=self.generator)
        t = self.schedule.sample_training_times(batch, self.generator)
        focus = self.config["diffusion"].get("time_focus")
        if focus is not None:
            t = focus_training_times(t, self.schedule, focus["below"], focus["probability"], self.generator)
        shape = (batch, model["in_channels"], *model["image_size"])
        noise = make_noise(self.config["diffusion"].get("noise"))(shape, self.generator)  # Gaussian or simplex
        return t, noise, drop

    def _micro_loss(self, batch: dict, t: Tensor, noise: Tensor, drop: Tensor | None) -> Tensor:
        x0 = batch[IMAGE].to(self.device, non_blocking=True)
        noise = noise.to(self.device, non_blocking=True)
        if self.channels_last:
            x0, noise = x0.contiguous(memory_format=self.memory_format), noise.contiguous(memory_format=self.memory_format)
        diffusion = self.config["diffusion"]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if self.task == "classifier":
                return classifier_loss(self.train_model, x0, t, noise, self.schedule,
                                       batch[LABEL].to(self.device).long())
            if self.task == "autoencoder":  # reconstruction + KL (meddiff.nets.autoencoder_kl); t and noise unused
                from meddiff.nets.autoencoder_kl import autoencoder_loss

                return autoencoder_loss(self.train_model, x0, self.config["loss"])
            cond = {}
            if self.config["model"].get("num_classes"):
                labels = batch[LABEL].to(self.device).long()
                if drop is not None:
                    null = torch.full_like(labels, self.net.null_class)
                    labels = torch.where(drop.to(self.device) < self.config["model"]["class_dropout"], null, labels)
                cond[CLASS_LABELS] = labels
            if self.config["model"].get("cond_channels"):
                cond[COND_IMAGE] = batch[COND_IMAGE].to(self.device)
            return diffusion_loss(self.train_model, x0, self.schedule, diffusion["prediction"], t=t, noise=noise,
                                  min_snr_gamma=diffusion["min_snr_gamma"], cond=cond)

    def _train_step(self, micro_batches: list[dict]) -> tuple[float, Tensor, float]:
        """Forward/backward over the accumulation steps, clip, optimiser and EMA update; (loss, grad norm, lr).

        The loss is read back every step (the NaN/Inf check must come before the update); the gradient norm stays a
        0-dim tensor on the device, read only at log steps, so CUDA does not wait for the optimiser and EMA each step.
        """
        run = self.config["run"]
        accum, chunk = run["grad_accum"], run["batch_size"] // (run["grad_accum"] * self.world)
        t, noise, drop = self._draws(run["batch_size"])
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        for micro, batch in enumerate(micro_batches):
            part = slice((micro * self.world + self.rank) * chunk, (micro * self.world + self.rank + 1) * chunk)
            sync = micro == accum - 1 or self.world == 1
            context = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with context:
                loss = self._micro_loss(batch, t[part], noise[part], None if drop is None else drop[part])
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach().double().cpu() / accum
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        value = float(total)
        if not math.isfinite(value):
            last = list_checkpoints(self.run_dir / "checkpoints")
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"the loss became {value} at step {self.step + 1}; training stopped before applying that update "
                f"and {where}. Lower optimiser.lr, set optimiser.grad_clip, or use run.precision='fp32', "
                "then continue with --resume")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # The global gradient norm, then the clip, each as one foreach pass over the flat parameter list: the same
        # values as clip_grad_norm_ (whose CPU default is a per-parameter Python loop), bit for bit.
        clip = self.config["optimiser"]["grad_clip"]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None],
                                                  foreach=self._foreach)
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self._params, clip, grad_norm, foreach=self._foreach)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.net, self.step)
        return value, grad_norm.detach(), lr

    # -- samples -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, num: int | None = None, seed: int | None = None) -> Tensor:
        """EMA samples (num, C, *spatial) with run.sampler and run.sample_steps; class labels cycle over classes."""
        run, model = self.config["run"], self.config["model"]
        num = num or run["num_samples"]
        generator = torch.Generator().manual_seed(run["seed"] if seed is None else seed)
        grid = make_grid(self.schedule, min(run["sample_steps"], getattr(self.schedule, "num_train_steps", 10**9)))
        x = initial_noise(grid, (num, model["in_channels"], *model["image_size"]), generator=generator,
                          device=self.device)
        cond = {}
        if model.get("num_classes"):
            cond[CLASS_LABELS] = torch.arange(num, device=self.device) % model["num_classes"]
        if model.get("cond_channels"):
            images = [self.dataset[i % len(self.dataset)][COND_IMAGE] for i in range(num)]
            cond[COND_IMAGE] = torch.stack([torch.as_tensor(c) for c in images]).to(self.device)
        denoiser = ModelDenoiser(self.ema.module, self.schedule, self.config["diffusion"]["prediction"])
        zscored = (getattr(self.dataset, "normalisation", None) or {}).get("mode") == "zscore"
        clip = None if zscored else ClipDenoised(-1.0, 1.0)  # as `meddiff sample`: x0 estimates kept in range
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return get_sampler(run["sampler"])(denoiser, x, grid, generator=generator, cond=cond, hook=clip).float()

    # -- the loop ------------------------------------------------------------------------------------------

    def fit(self, *, resume: bool = False, on_step: Callable[[int, float], None] | None = None) -> list[tuple[int, float]]:
        """Train to run.steps; returns [(step, loss)] of the steps run now. ``on_step(step, loss)`` is called after each."""
        from tqdm import tqdm

        run = self.config["run"]
        checkpoint = self._prepare_run_dir(resume) if self.is_main else None
        if self.world > 1:
            shared = [str(checkpoint) if checkpoint else None]
            dist.broadcast_object_list(shared, src=0)
            checkpoint = Path(shared[0]) if shared[0] else None
        if checkpoint is not None:
            self._restore(checkpoint)
        logger = _Logger(self.run_dir, self.step, run["tensorboard"]) if self.is_main else None
        sampler = StepBatchSampler(len(self.dataset), run["batch_size"], run["grad_accum"], self.rank, self.world,
                                   run["seed"], self.step, run["steps"])
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=run["num_workers"],
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        restored_rng = torch.get_rng_state() if checkpoint is not None else None
        batches = iter(loader)  # draws its base seed from torch's global RNG, as at the start of the original run:
        if restored_rng is not None:  # so a resumed run restores the saved state after it (global-RNG draws in the
            torch.set_rng_state(restored_rng)  # dataset or the loss, e.g. an autoencoder's, then repeat exactly)
        bar = tqdm(total=run["steps"], initial=self.step, disable=not (self.is_main and run["progress"]),
                   desc=f"train {run['name']}", unit="step", dynamic_ncols=True)
        history: list[tuple[int, float]] = []
        window_losses, window_start, start = [], time.perf_counter(), time.perf_counter()
        micro: list[dict] = []
        self.net.train()
        try:
            for batch in batches:
                micro.append(batch)
                if len(micro) < run["grad_accum"]:
                    continue
                loss, grad_norm, lr = self._train_step(micro)
                micro = []
                history.append((self.step, loss))
                self.history.append((self.step, loss))
                window_losses.append(loss)
                last = self.step == run["steps"]
                if self.is_main and (self.step % run["log_every"] == 0 or last):
                    elapsed = time.perf_counter() - window_start
                    rate = len(window_losses) * run["batch_size"] / max(elapsed, 1e-9)
                    logger.log({"step": self.step, "loss": sum(window_losses) / len(window_losses),
                                "lr": lr, "grad_norm": float(grad_norm),
                                "images_per_s": rate, "elapsed_s": time.perf_counter() - start})
                    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
                    window_losses, window_start = [], time.perf_counter()
                bar.update(1)
                if self.step % run["checkpoint_every"] == 0 or last:
                    self.save()
                if self.is_main and run["sample_every"] and self.task == "synthesis" and (
                        self.step % run["sample_every"] == 0 or last):
                    save_image_grid(self.sample(), self.run_dir / "samples" / f"step_{self.step:08d}.png")
                if on_step is not None:
                    on_step(self.step, loss)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        if self.world > 1:
            dist.barrier()
        return history

    def close(self) -> None:
        """Tear down the process group if this trainer created it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


class _LrLambda:
    """Picklable LR multiplier for LambdaLR."""

    def __init__(self, warmup: int, total: int, kind: str, min_ratio: float) -> None:
        self.warmup, self.total, self.kind, self.min_ratio = warmup, total, kind, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup, self.total, self.kind, self.min_ratio)


class _Logger:
    """log.jsonl and log.csv (and TensorBoard when asked); on resume, lines after the restored step are dropped."""

    def __init__(self, run_dir: Path, step: int, tensorboard: bool) -> None:
        self.jsonl, self.csv = run_dir / "log.jsonl", run_dir / "log.csv"
        kept = []
        if self.jsonl.is_file():
            kept = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text(self.jsonl, "".join(line + "\n" for line in kept))
        with atomic_path(self.csv) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, STEP_LOG_FIELDS)
            writer.writeheader()
            writer.writerows({k: json.loads(line).get(k) for k in STEP_LOG_FIELDS} for line in kept)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MeddiffError("run.tensorboard=true needs the tensorboard package; install it or set it to false") from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as handle:
            csv.DictWriter(handle, STEP_LOG_FIELDS).writerow(record)
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


IGNORED_ON_RESUME = {("run", "steps"), ("run", "progress"), ("run", "num_workers"), ("run", "log_every"),
                     ("run", "sample_every"), ("run", "checkpoint_every"), ("run", "keep_checkpoints"),
                     ("run", "tensorboard"), ("run", "device")}


def _same_setting(a, b) -> bool:
    """Equal values; a key one side lacks equals an off value (None / False) on the other: a run saved before a
    newer meddiff added an option with an off default resumes under that default."""
    return a == b or (a is None or a is False) and (b is None or b is False)  # `is`: 0 is a setting, not off


def _check_same_config(saved: dict, current: dict, path: Path) -> None:
    """A resumed run must use the config it started with, except for bookkeeping keys (IGNORED_ON_RESUME)."""
    differences = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if (section, key) not in IGNORED_ON_RESUME and not _same_setting(a.get(key), b.get(key)):
                    differences.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
        elif a != b:
            differences.append(f"{section}: {a!r} -> {b!r}")
    if differences:
        raise MeddiffError(f"--resume with a config that differs from {path}: {'; '.join(differences)}; "
                           "use the original config or start a new run.name")


def _build_dataset(data_config: dict | None) -> Dataset:
    if not data_config:
        raise MeddiffError("the config has no `data:` section; add one (e.g. {kind: medmnist, path: ..., size: 28})")
    try:
        from meddiff.data import build_dataset
    except ImportError:
        raise MeddiffError("meddiff.data.build_dataset is not available in this version; "
                           "pass a dataset to meddiff.training.Trainer directly") from None
    return build_dataset(data_config, split="train")


def train(config: dict, *, dataset: Dataset | None = None, resume: bool = False,
          run_dir: str | Path | None = None) -> Trainer:
    """Build a Trainer, run it to the end and return it (its ``run_dir`` holds the checkpoints)."""
    trainer = Trainer(config, dataset, run_dir=run_dir)
    try:
        trainer.fit(resume=resume)
    finally:
        trainer.close()
    return trainer
