"""Progressive distillation of a trained meddiff checkpoint into a 1-4 step DDIM sampler (Salimans & Ho 2022).

Rounds halve the step count (start_steps -> start_steps/2 -> ... -> steps). In each round the student starts from
the teacher's (EMA) weights and learns to make one DDIM step of its grid equal two DDIM steps of the teacher on the
teacher's grid (`meddiff.diffusion.distill.two_step_target`); the round's EMA student is the next round's teacher.
Grids are "trailing" grids over the discrete schedule (t_i = round(T - i T/N) - 1), which nest exactly: the N/2-step
grid is every other time of the N-step grid, and every grid starts at T - 1.

Each round is an ordinary `Trainer` run (checkpoints, EMA, JSONL/CSV log, exact --resume, progress bar) whose loss is
the distillation loss; the run directory holds ``distill.yaml`` (the settings), ``steps_<N>/`` per round and, when
done, ``student/``: a checkpoint whose meta.json records ``sampling`` (sampler "ddim", steps, the grid's times,
the guidance scale the teacher was distilled at), which `meddiff sample` uses by default.
Class-conditional teachers are distilled at one classifier-free guidance scale (Ho & Salimans 2022), so the student
needs one network evaluation per step; or, with ``guidance_range: [low, high]``, by guided distillation (Meng et al.
2023): a first round (``guided/``, `GuidanceTrainer`) teaches a student with the guidance scale as an input
(``model.guidance_input``, warm-started from the teacher, its scale embedding at zero) the teacher's guided estimate
at scales drawn uniformly from the range, at all training times (that student already halves the cost of CFG with
any sampler); the progressive rounds then distil it with the scale an input of teacher and student, so the final
student samples at any scale of the range in ``steps`` evaluations (`meddiff sample --guidance-scale S`).

``method: consistency`` (Song et al. 2023, consistency distillation, `meddiff.diffusion.distill`): one round
(``consistency_<N>/``) of `ConsistencyTrainer`: the student (started from the teacher) learns a consistency function
on the teacher's N-step trailing grid (N = start_steps), pairs of adjacent grid times joined by one teacher DDIM step,
against an EMA target network (decay ``target_decay``, default 0.95 as in the paper's CD runs; saved in state.pt for
exact resume); the student's Trainer EMA is what is shipped. The student samples with multistep consistency
sampling (sampler "consistency") on the ``steps``-step trailing grid, which nests in the N-step one.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from meddiff.diffusion import ClassifierFreeGuidance, ClipDenoised, ModelDenoiser, TimeGrid, make_grid, make_schedule
from meddiff.diffusion.distill import (BOUNDARY_SIGMA, CONSISTENCY_SAMPLER, WEIGHTINGS, ConsistencyFunction,
                                       consistency_loss, consistency_target, distillation_loss, guided_x0,
                                       sample_consistency, two_step_target)
from meddiff.diffusion.samplers import initial_noise, sample_ddim
from meddiff.errors import MeddiffError, check_choice
from meddiff.files import atomic_path, read_yaml_mapping, write_text
from meddiff.nets import CLASS_LABELS, GUIDANCE_SCALE
from meddiff.training.checkpoint import list_checkpoints, load_checkpoint, load_state, resolve_checkpoint
from meddiff.training.trainer import IMAGE, LABEL, Trainer

METHODS = ("progressive", "consistency")
TARGET_DECAY = 0.95  # consistency distillation: EMA decay of the target network (Song et al. 2023, CD runs)
SUPPORTED_PREDICTIONS = ("eps", "x0", "v")
GRID_SPACING = "trailing"  # nests under halving (see the module docstring)
STUDENT_DIR = "student"
GUIDED_DIR = "guided"  # the first round of guided distillation

DISTILL_DEFAULTS: dict = {
    "method": "progressive",
    "steps": 4,                 # the final student's sampling steps
    "start_steps": 64,          # the teacher's DDIM steps in the first round
    "iterations": 400,          # optimiser steps per round
    "batch_size": 32,
    "lr": 1e-4,                 # AdamW, linear decay to 0 within each round (after warmup_steps)
    "warmup_steps": 10,
    "ema_decay": 0.995,
    "weighting": "truncated_snr",
    "guidance_scale": None,     # class-conditional teachers: CFG scale distilled into the student (None: 1.0)
    "guidance_range": None,     # [low, high]: guided distillation (Meng et al. 2023), the scale a student input
    "guidance_iterations": None,  # guided distillation: optimiser steps of the first (guided/) round (None: iterations)
    "clip_denoised": None,      # clamp the teacher's x0 estimates to [-1, 1] (None: unless the data was z-scored)
    "seed": 0,
    "data": None,               # None: the teacher's training data (its meta.json), else a dataset config
    "checkpoint_every": 100,
    "log_every": 10,
    "sample_every": 0,
    "progress": True,
    "target_decay": None,       # consistency: EMA decay mu of the target network (None: 0.95)
    "boundary_sigma": None,     # consistency: s_b of c_skip/c_out (None: 0.002, meddiff.diffusion.distill)
}


def plan_rounds(start_steps: int, steps: int) -> list[int]:
    """Student step counts of the rounds: start_steps/2, start_steps/4, ..., steps (each round halves)."""
    for name, value in (("--steps", steps), ("--start-steps", start_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MeddiffError(f"{name} {value!r} must be a positive integer")
    ratio, rest = divmod(start_steps, steps)
    if steps >= start_steps or rest or ratio & (ratio - 1):
        raise MeddiffError(f"--steps {steps} must be start_steps / 2^k for the teacher's {start_steps}-step grid "
                           f"(each round halves the steps): choose one of "
                           f"{', '.join(str(start_steps >> k) for k in range(1, start_steps.bit_length()))} "
                           "or change --start-steps")
    rounds, n = [], start_steps
    while n > steps:
        n //= 2
        rounds.append(n)
    return rounds


def consistency_grid_check(start_steps: int, steps: int) -> None:
    """Consistency distillation: the student's ``steps``-step grid must nest in the teacher's ``start_steps`` grid."""
    for name, value in (("--steps", steps), ("--start-steps", start_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MeddiffError(f"{name} {value!r} must be a positive integer")
    if steps > start_steps or start_steps % steps:
        raise MeddiffError(f"--steps {steps} must divide --start-steps {start_steps} (the student samples on a grid "
                           "nested in the teacher's); e.g. --start-steps 32 with --steps 1, 2, 4 or 8")


def distill_grid(schedule, steps: int) -> TimeGrid:
    """The ``steps``-step trailing grid the student of that many steps samples on (times (steps + 1,))."""
    return make_grid(schedule, steps, GRID_SPACING)


def check_teacher(teacher: str | Path) -> tuple[Path, dict]:
    """(checkpoint directory, meta) of a teacher that progressive distillation supports, else a one-line error."""
    try:
        path = resolve_checkpoint(teacher)
    except MeddiffError as error:
        raise MeddiffError(f"--teacher {teacher}: {error}") from None
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("task") != "synthesis" or "network" not in meta:
        raise MeddiffError(f"--teacher {teacher}: is a {meta.get('task')!r} checkpoint; distillation needs a synthesis "
                           "(denoising) model written by meddiff train")
    prediction = meta.get("prediction")
    if prediction not in SUPPORTED_PREDICTIONS:
        raise MeddiffError(f"--teacher {teacher}: prediction {prediction!r} is not supported by progressive "
                           f"distillation; supported: {', '.join(SUPPORTED_PREDICTIONS)} (retrain with one of them)")
    kind = (meta.get("schedule") or {}).get("kind", "discrete")
    if kind != "discrete":
        raise MeddiffError(f"--teacher {teacher}: schedule kind {kind!r} is not supported; progressive distillation "
                           "here runs on discrete (DDPM) schedules only")
    return path, meta


def load_distill_settings(path: str | Path) -> dict:
    """Distillation settings from a YAML mapping (keys of DISTILL_DEFAULTS and ``teacher``); errors name the file."""
    return read_yaml_mapping(path, "distillation config")


def resolve_distill_config(settings: dict) -> dict:
    """DISTILL_DEFAULTS filled in and checked; ``teacher`` is required. Unknown keys are an error."""
    unknown = sorted(set(settings) - set(DISTILL_DEFAULTS) - {"teacher"})
    if unknown:
        raise MeddiffError(f"unknown distillation setting(s) {unknown}; allowed: teacher, {', '.join(DISTILL_DEFAULTS)}")
    if not settings.get("teacher"):
        raise MeddiffError("no teacher given: pass --teacher CHECKPOINT (a run dir, checkpoint dir or shipped name)")
    config = {"teacher": str(settings["teacher"]), **copy.deepcopy(DISTILL_DEFAULTS),
              **{k: v for k, v in settings.items() if k != "teacher" and v is not None}}
    check_choice("--method", config["method"], METHODS)
    check_choice("weighting", config["weighting"], WEIGHTINGS)
    if config["method"] == "progressive":
        plan_rounds(config["start_steps"], config["steps"])
    else:
        consistency_grid_check(config["start_steps"], config["steps"])
        if config["target_decay"] is not None and not 0 <= config["target_decay"] < 1:
            raise MeddiffError(f"target_decay={config['target_decay']} must be in [0, 1)")
        if config["boundary_sigma"] is not None and not config["boundary_sigma"] > 0:
            raise MeddiffError(f"boundary_sigma={config['boundary_sigma']} must be positive")
    for key in ("iterations", "batch_size", "checkpoint_every", "log_every"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise MeddiffError(f"{key}={config[key]!r} must be a positive integer")
    if config["lr"] <= 0:
        raise MeddiffError(f"lr={config['lr']} must be positive")
    if config["guidance_scale"] is not None and config["guidance_scale"] < 0:
        raise MeddiffError(f"--guidance-scale {config['guidance_scale']} must be >= 0")
    if config["guidance_range"] is not None:
        scales = config["guidance_range"]
        if not isinstance(scales, (list, tuple)) or len(scales) != 2 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales) \
                or not 0 <= scales[0] <= scales[1]:
            raise MeddiffError(f"--guidance-range {scales!r} must be two scales LOW HIGH with 0 <= LOW <= HIGH "
                               "(e.g. 1 4)")
        config["guidance_range"] = [float(v) for v in scales]
        if config["guidance_scale"] is not None:
            raise MeddiffError("--guidance-scale and --guidance-range exclude each other: one fixed scale is built "
                               "into the student, a range makes the scale a student input")
        if config["method"] != "progressive":
            raise MeddiffError("--guidance-range (guided distillation) runs with --method progressive")
        iterations = config["guidance_iterations"]
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                       or iterations < 1):
            raise MeddiffError(f"guidance_iterations={iterations!r} must be a positive integer")
    return config


class GuidedDenoiser:
    """x0 estimate of a class-conditional model under classifier-free guidance at ``scale`` (one callable)."""

    def __init__(self, denoiser: ModelDenoiser, scale: float) -> None:
        self.denoiser, self.guidance = denoiser, ClassifierFreeGuidance(denoiser, scale)

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        return self.guidance.denoised(x, self.denoiser(x, t, **cond), t)


def teacher_denoiser(teacher: torch.nn.Module, meta: dict, schedule, device, guidance_scale: float = 1.0):
    """The frozen teacher network as an x0-denoiser on ``device``, under CFG at ``guidance_scale`` when it is not 1."""
    teacher = teacher.to(device).eval().requires_grad_(False)
    denoiser = ModelDenoiser(teacher, schedule, meta["prediction"])
    return GuidedDenoiser(denoiser, guidance_scale) if guidance_scale != 1.0 else denoiser


def _index_and_noise(trainer: Trainer, batch: int, steps: int, scale_range: list[float] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """A distillation trainer's random draws for one batch, in a fixed order from the run's generator (so a resumed
    run draws the same): indices (B,) int64 in 0..steps-1, noise (B, C, *spatial), and guidance scales (B,) uniform in
    ``scale_range`` (None without one)."""
    model = trainer.config["model"]
    index = torch.randint(0, steps, (batch,), generator=trainer.generator)
    noise = torch.randn((batch, model["in_channels"], *model["image_size"]), generator=trainer.generator)
    scales = None
    if scale_range is not None:
        low, high = scale_range
        scales = low + (high - low) * torch.rand(batch, generator=trainer.generator)
    return index, noise, scales


def _noised(trainer: Trainer, batch: dict, t: Tensor, noise: Tensor) -> tuple[Tensor, dict]:
    """(x_t = alpha_t x0 + sigma_t noise (B, C, *spatial) on the trainer's device, the batch's class condition)."""
    x0 = batch[IMAGE].to(trainer.device, non_blocking=True)
    alpha, sigma = trainer.schedule.alpha_sigma(t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_t = alpha.reshape(shape).to(x0) * x0 + sigma.reshape(shape).to(x0) * noise.to(trainer.device, non_blocking=True)
    cond = {CLASS_LABELS: batch[LABEL].to(trainer.device).long()} if trainer.config["model"].get("num_classes") else {}
    return x_t, cond


def _sample_start(trainer: Trainer, grid: TimeGrid, num: int | None, seed: int | None,
                  scale: float | None = None) -> tuple[Tensor, dict, torch.Generator]:
    """Initial noise, condition (class labels cycling, the guidance ``scale`` for guidance-input students) and the
    generator of a distillation trainer's preview samples."""
    run, model = trainer.config["run"], trainer.config["model"]
    num = num or run["num_samples"]
    generator = torch.Generator().manual_seed(run["seed"] if seed is None else seed)
    x = initial_noise(grid, (num, model["in_channels"], *model["image_size"]), generator=generator,
                      device=trainer.device)
    cond = {CLASS_LABELS: torch.arange(num, device=trainer.device) % model["num_classes"]} \
        if model.get("num_classes") else {}
    if model.get("guidance_input"):
        cond[GUIDANCE_SCALE] = torch.full((num,), 1.0 if scale is None else scale, device=trainer.device)
    return x, cond, generator


def preview_scale(scale_range: list[float] | None) -> float | None:
    """The guidance scale of a guidance-input student's preview samples: 1 (the conditional model) clamped into its
    range; None without a range."""
    return None if scale_range is None else min(max(1.0, scale_range[0]), scale_range[1])


class GuidanceTrainer(Trainer):
    """Guided distillation, first round (Meng et al. 2023, sec. 3.1): the student network (``guidance_input``,
    warm-started from the teacher) learns the teacher's classifier-free-guided x0, x0_u + s (x0_c - x0_u), with s an
    input drawn uniformly from ``scale_range`` and t uniform over the teacher's training times; the loss is the
    weighted x0 error of progressive distillation (`distillation_loss`). Afterwards one student call replaces CFG's
    two with any sampler."""

    def __init__(self, config: dict, teacher: torch.nn.Module, teacher_meta: dict, scale_range: list[float], *,
                 weighting: str = "truncated_snr", sampling: dict | None = None, dataset: Dataset | None = None,
                 run_dir: str | Path | None = None) -> None:
        super().__init__(config, dataset, run_dir=run_dir)
        self.scale_range, self.weighting = scale_range, weighting
        self.teacher = teacher_denoiser(teacher, teacher_meta, self.schedule, self.device)
        self.sampling = sampling or {}

    def _draws(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """(training times (B,) int64 in 0..T-1, noise (B, C, *spatial), scales (B,)): from the run's generator."""
        return _index_and_noise(self, batch, self.schedule.num_train_steps, self.scale_range)

    def _micro_loss(self, batch: dict, t: Tensor, noise: Tensor, scales: Tensor) -> Tensor:
        x_t, cond = _noised(self, batch, t, noise)
        t_dev, scales = t.float().to(self.device), scales.to(self.device)
        with torch.no_grad():
            target = guided_x0(self.teacher, x_t, t_dev, scales, cond=cond)
        return distillation_loss(self.train_model, x_t, t_dev, target, self.schedule,
                                 self.config["diffusion"]["prediction"], weighting=self.weighting,
                                 cond={**cond, GUIDANCE_SCALE: scales})

    def meta(self) -> dict:
        return {**super().meta(), "sampling": {**self.sampling, "guidance_range": self.scale_range}}

    @torch.no_grad()
    def sample(self, num: int | None = None, seed: int | None = None) -> Tensor:
        """EMA student samples, DDIM on the 32-step trailing grid at scale 1 clamped into the range."""
        grid = distill_grid(self.schedule, 32)
        x, cond, _ = _sample_start(self, grid, num, seed, preview_scale(self.scale_range))
        denoiser = ModelDenoiser(self.ema.module, self.schedule, self.config["diffusion"]["prediction"])
        return sample_ddim(denoiser, x, grid, cond=cond, hook=ClipDenoised(-1.0, 1.0)).float()


class DistillTrainer(Trainer):
    """One progressive-distillation round: the Trainer's loop with the loss of Salimans & Ho 2022, Alg. 2.

    ``teacher`` is the teacher network (eval mode, frozen) and ``teacher_meta`` its meta; the student (this trainer's
    network) starts from run.init_from. A training draw is a student step index i (B,) in 0..N-1 and noise; the
    student is trained at t_i of its N-step grid with the teacher's 2N-step grid times 2i+1 and 2i+2 as t', t''.
    With ``scale_range`` (guided distillation, stage two) teacher and student take the guidance scale as an input,
    drawn uniformly from the range per sample.
    """

    def __init__(self, config: dict, teacher: torch.nn.Module, teacher_meta: dict, student_steps: int, *,
                 guidance_scale: float = 1.0, weighting: str = "truncated_snr", clip_denoised: bool = True,
                 scale_range: list[float] | None = None, sampling: dict | None = None, dataset: Dataset | None = None,
                 run_dir: str | Path | None = None) -> None:
        super().__init__(config, dataset, run_dir=run_dir)
        self.student_steps, self.weighting, self.guidance_scale = student_steps, weighting, guidance_scale
        self.scale_range = scale_range
        self.student_grid = distill_grid(self.schedule, student_steps)
        self.teacher_grid = distill_grid(self.schedule, 2 * student_steps)
        if not torch.equal(self.teacher_grid.times[::2], self.student_grid.times):
            raise AssertionError("trailing grids must nest")  # guaranteed by construction (module docstring)
        self.teacher = teacher_denoiser(teacher, teacher_meta, self.schedule, self.device, guidance_scale)
        self.clip = (-1.0, 1.0) if clip_denoised else None
        self.sampling = sampling or {}

    def _draws(self, batch: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """(student step indices (B,) int64, noise (B, C, *spatial), guidance scales (B,) or None): all from the
        run's generator."""
        return _index_and_noise(self, batch, self.student_steps, self.scale_range)

    def _micro_loss(self, batch: dict, index: Tensor, noise: Tensor, scales: Tensor | None) -> Tensor:
        times = self.teacher_grid.times
        t, t_mid, t_next = times[2 * index], times[2 * index + 1], times[2 * index + 2]
        x_t, cond = _noised(self, batch, t, noise)
        if scales is not None:
            cond[GUIDANCE_SCALE] = scales.to(self.device)
        t_dev = t.float().to(self.device)
        with torch.no_grad():
            x_tilde = two_step_target(self.teacher, x_t, t_dev, t_mid.float().to(self.device),
                                      t_next.float().to(self.device), self.schedule, cond=cond, clip=self.clip)
        return distillation_loss(self.train_model, x_t, t_dev, x_tilde, self.schedule,
                                 self.config["diffusion"]["prediction"], weighting=self.weighting, cond=cond)

    def meta(self) -> dict:
        times = [float(v) for v in self.student_grid.times[:-1]]
        scale = {"guidance_range": self.scale_range} if self.scale_range is not None \
            else {"guidance_scale": self.guidance_scale}
        return {**super().meta(), "sampling": {
            **self.sampling, "sampler": "ddim", "steps": self.student_steps, "spacing": GRID_SPACING, "times": times,
            **scale}}

    @torch.no_grad()
    def sample(self, num: int | None = None, seed: int | None = None) -> Tensor:
        """EMA student samples on its own grid (DDIM, x0 clamped to [-1, 1]); class labels cycle."""
        x, cond, _ = _sample_start(self, self.student_grid, num, seed, preview_scale(self.scale_range))
        denoiser = ModelDenoiser(self.ema.module, self.schedule, self.config["diffusion"]["prediction"])
        return sample_ddim(denoiser, x, self.student_grid, cond=cond, hook=ClipDenoised(-1.0, 1.0)).float()


class ConsistencyTrainer(Trainer):
    """Consistency distillation (Song et al. 2023, Alg. 2): the Trainer's loop with the consistency loss.

    The student network (this trainer's, started from run.init_from = the teacher) is the consistency function's
    x0 estimate; ``target_net`` is the EMA target (decay ``target_decay``), updated after every optimiser step and
    stored in state.pt. A training draw is a grid index n (B,) in 0..N-1 and noise: x at the grid's time n, one
    teacher DDIM step to time n + 1 (CLEAN_TIME for n = N - 1, where the target is that step itself).
    """

    def __init__(self, config: dict, teacher: torch.nn.Module, teacher_meta: dict, grid_steps: int,
                 student_steps: int, *, guidance_scale: float = 1.0, clip_denoised: bool = True,
                 target_decay: float = TARGET_DECAY, boundary_sigma: float = BOUNDARY_SIGMA,
                 sampling: dict | None = None, dataset: Dataset | None = None, run_dir: str | Path | None = None
                 ) -> None:
        super().__init__(config, dataset, run_dir=run_dir)
        self.grid_steps, self.student_steps, self.guidance_scale = grid_steps, student_steps, guidance_scale
        self.grid = distill_grid(self.schedule, grid_steps)
        self.student_grid = distill_grid(self.schedule, student_steps)
        if not torch.equal(self.grid.times[::grid_steps // student_steps], self.student_grid.times):
            raise AssertionError("trailing grids must nest")  # guaranteed when student_steps divides grid_steps
        self.teacher = teacher_denoiser(teacher, teacher_meta, self.schedule, self.device, guidance_scale)
        self.clip = (-1.0, 1.0) if clip_denoised else None
        self.target_decay, self.boundary_sigma = target_decay, boundary_sigma
        self.target_net = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.sampling = sampling or {}

    def _function(self, network) -> ConsistencyFunction:
        return ConsistencyFunction(ModelDenoiser(network, self.schedule, self.config["diffusion"]["prediction"]),
                                   self.schedule, self.boundary_sigma)

    def _draws(self, batch: int) -> tuple[Tensor, Tensor, None]:
        """(grid indices n (B,) int64 in 0..N-1, noise (B, C, *spatial), None): all from the run's generator."""
        return _index_and_noise(self, batch, self.grid_steps)

    def _micro_loss(self, batch: dict, index: Tensor, noise: Tensor, drop: None) -> Tensor:
        t, t_next = self.grid.times[index], self.grid.times[index + 1]
        x_t, cond = _noised(self, batch, t, noise)
        t_dev = t.float().to(self.device)
        with torch.no_grad():
            target = consistency_target(self.teacher, self._function(self.target_net), x_t, t_dev,
                                        t_next.float().to(self.device), self.schedule, cond=cond, clip=self.clip)
        return consistency_loss(self._function(self.train_model), x_t, t_dev, target, cond=cond)

    def _train_step(self, micro_batches: list[dict]):
        result = super()._train_step(micro_batches)
        with torch.no_grad():  # theta_minus <- mu theta_minus + (1 - mu) theta (Alg. 2)
            for target, online in zip(self.target_net.parameters(), self.net.parameters()):
                target.lerp_(online.detach(), 1.0 - self.target_decay)
        return result

    def _state(self) -> dict:
        return {**super()._state(), "target": {k: v.detach().cpu() for k, v in self.target_net.state_dict().items()}}

    def _restore(self, checkpoint: Path) -> None:
        super()._restore(checkpoint)
        self.target_net.load_state_dict(load_state(checkpoint)["target"])

    def meta(self) -> dict:
        times = [float(v) for v in self.student_grid.times[:-1]]
        return {**super().meta(), "sampling": {
            **self.sampling, "sampler": CONSISTENCY_SAMPLER, "steps": self.student_steps, "spacing": GRID_SPACING,
            "times": times, "guidance_scale": self.guidance_scale, "boundary_sigma": self.boundary_sigma}}

    @torch.no_grad()
    def sample(self, num: int | None = None, seed: int | None = None) -> Tensor:
        """EMA student samples by multistep consistency sampling on its grid (x0 clamped to [-1, 1])."""
        x, cond, generator = _sample_start(self, self.student_grid, num, seed)
        return sample_consistency(self._function(self.ema.module), x, self.student_grid, cond=cond,
                                  generator=generator, hook=ClipDenoised(-1.0, 1.0)).float()


def round_config(settings: dict, teacher_meta: dict, init_from: str, name: str, out_dir: Path,
                 iterations: int | None = None) -> dict:
    """The Trainer config of one round: the teacher's network (with a guidance input under guided distillation),
    schedule, parametrisation and data; ``iterations`` overrides the settings' optimiser steps."""
    model = copy.deepcopy(teacher_meta["network"])
    if settings.get("guidance_range") is not None:
        model["guidance_input"] = True
    return {
        "task": "synthesis",
        "model": model,
        "diffusion": {"schedule": teacher_meta["schedule"], "prediction": teacher_meta["prediction"]},
        "data": settings["data"] or teacher_meta.get("data"),
        "optimiser": {"lr": settings["lr"], "grad_clip": 1.0},
        "schedule": {"kind": "linear", "warmup_steps": settings["warmup_steps"], "min_lr_ratio": 0.0},
        "run": {"name": name, "out_dir": str(out_dir), "steps": iterations or settings["iterations"],
                "batch_size": settings["batch_size"], "seed": settings["seed"], "ema_decay": settings["ema_decay"],
                "checkpoint_every": settings["checkpoint_every"], "keep_checkpoints": 1,
                "log_every": settings["log_every"], "sample_every": settings["sample_every"],
                "progress": settings["progress"], "init_from": init_from, "device": "auto"},
    }


def _round_done(round_dir: Path, iterations: int) -> Path | None:
    found = list_checkpoints(round_dir / "checkpoints")
    if found and json.loads((found[-1] / "meta.json").read_text()).get("step") == iterations:
        return found[-1]
    return None


def distill(settings: dict, out_dir: str | Path, *, resume: bool = False, dataset: Dataset | None = None,
            on_round=None) -> Path:
    """Run every round of progressive distillation into ``out_dir``; returns the final student checkpoint
    (``out_dir/student``). ``resume`` continues an interrupted run (finished rounds are kept, the current one resumes
    from its last checkpoint); the settings must equal the saved ``distill.yaml``. ``on_round(steps, checkpoint)`` is
    called after each round."""
    settings = resolve_distill_config(settings)
    teacher_path, teacher_meta = check_teacher(settings["teacher"])
    out_dir = Path(out_dir)
    saved = out_dir / "distill.yaml"
    if saved.is_file():
        if not resume:
            raise MeddiffError(f"{out_dir} already holds a distillation run; pass --resume to continue it or choose "
                               "another --out")
        previous = yaml.safe_load(saved.read_text())
        ignored = {"progress", "checkpoint_every", "log_every", "sample_every"}
        changed = sorted(k for k in set(previous) | set(settings)
                         if k not in ignored and previous.get(k) != settings.get(k))
        if changed:
            raise MeddiffError(f"--resume with settings that differ from {saved} in {', '.join(changed)}; use the "
                               "original ones or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(saved, yaml.safe_dump(settings, sort_keys=False))
    schedule = make_schedule(teacher_meta["schedule"])
    if teacher_meta.get("num_classes"):
        scale = settings["guidance_scale"] if settings["guidance_scale"] is not None else 1.0
    elif settings["guidance_scale"] not in (None, 1.0) or settings["guidance_range"] is not None:
        raise MeddiffError("--guidance-scale and --guidance-range need a class-conditional teacher (this one is "
                           "unconditional)")
    else:
        scale = 1.0
    if (teacher_meta.get("network") or {}).get("guidance_input") and (
            settings["guidance_range"] is not None or settings["method"] != "progressive"):
        raise MeddiffError(f"--teacher {settings['teacher']}: already takes the guidance scale as an input; distil it "
                           "with --method progressive and without --guidance-range (its rounds keep the scale an "
                           "input)")
    if settings["start_steps"] > schedule.num_train_steps:
        raise MeddiffError(f"--start-steps {settings['start_steps']} exceeds the teacher's "
                           f"{schedule.num_train_steps} training steps")
    bounded = (teacher_meta.get("normalisation") or {}).get("mode") != "zscore"
    clip = bounded if settings["clip_denoised"] is None else bool(settings["clip_denoised"])
    teacher_source = str(teacher_path)
    if settings["method"] == "consistency":
        teacher_source = _consistency_round(settings, teacher_path, teacher_meta, out_dir, scale, clip, resume,
                                            dataset, on_round)
    scale_range = settings["guidance_range"] or (teacher_meta.get("sampling") or {}).get("guidance_range")
    if settings["guidance_range"] is not None:
        teacher_source = _guidance_round(settings, teacher_path, teacher_meta, out_dir, resume, dataset)
    for steps in (plan_rounds(settings["start_steps"], settings["steps"]) if settings["method"] == "progressive"
                  else []):
        name = f"steps_{steps:03d}"
        done = _round_done(out_dir / name, settings["iterations"])
        if done is None:
            teacher, meta = load_checkpoint(teacher_source)
            sampling = {"method": settings["method"], "teacher": settings["teacher"],
                        "teacher_steps": 2 * steps, "start_steps": settings["start_steps"],
                        "distilled_from": str(teacher_path), "iterations_per_round": settings["iterations"],
                        "weighting": settings["weighting"], "clip_denoised": clip}
            trainer = DistillTrainer(round_config(settings, teacher_meta, teacher_source, name, out_dir), teacher, meta,
                                     steps, guidance_scale=scale, weighting=settings["weighting"], clip_denoised=clip,
                                     scale_range=scale_range, sampling=sampling, dataset=dataset,
                                     run_dir=out_dir / name)
            try:
                trainer.fit(resume=resume and bool(list_checkpoints(out_dir / name / "checkpoints")))
            finally:
                trainer.close()
            done = _round_done(out_dir / name, settings["iterations"])
        if on_round is not None:
            on_round(steps, done)
        teacher_source = str(done)
    final = out_dir / STUDENT_DIR
    with atomic_path(final, directory=True) as tmp:
        shutil.copytree(Path(teacher_source), tmp, dirs_exist_ok=True)
    return final


def _guidance_round(settings: dict, teacher_path: Path, teacher_meta: dict, out_dir: Path, resume: bool,
                    dataset: Dataset | None) -> str:
    """Guided distillation's first round (``guided/``, `GuidanceTrainer`); returns its final checkpoint."""
    iterations = settings["guidance_iterations"] or settings["iterations"]
    done = _round_done(out_dir / GUIDED_DIR, iterations)
    if done is None:
        teacher, meta = load_checkpoint(str(teacher_path))
        sampling = {"method": "guided", "teacher": settings["teacher"], "distilled_from": str(teacher_path),
                    "iterations": iterations, "weighting": settings["weighting"]}
        config = round_config(settings, teacher_meta, str(teacher_path), GUIDED_DIR, out_dir, iterations)
        trainer = GuidanceTrainer(config, teacher, meta, settings["guidance_range"], weighting=settings["weighting"],
                                  sampling=sampling, dataset=dataset, run_dir=out_dir / GUIDED_DIR)
        try:
            trainer.fit(resume=resume and bool(list_checkpoints(out_dir / GUIDED_DIR / "checkpoints")))
        finally:
            trainer.close()
        done = _round_done(out_dir / GUIDED_DIR, iterations)
    return str(done)


def _consistency_round(settings: dict, teacher_path: Path, teacher_meta: dict, out_dir: Path, scale: float,
                       clip: bool, resume: bool, dataset: Dataset | None, on_round) -> str:
    """The one round of consistency distillation (``consistency_<N>/``); returns its final checkpoint."""
    name = f"consistency_{settings['start_steps']:03d}"
    done = _round_done(out_dir / name, settings["iterations"])
    if done is None:
        teacher, meta = load_checkpoint(str(teacher_path))
        target_decay = TARGET_DECAY if settings["target_decay"] is None else settings["target_decay"]
        boundary = BOUNDARY_SIGMA if settings["boundary_sigma"] is None else settings["boundary_sigma"]
        sampling = {"method": "consistency", "teacher": settings["teacher"], "teacher_steps": settings["start_steps"],
                    "start_steps": settings["start_steps"], "distilled_from": str(teacher_path),
                    "iterations_per_round": settings["iterations"], "target_decay": target_decay,
                    "clip_denoised": clip}
        trainer = ConsistencyTrainer(round_config(settings, teacher_meta, str(teacher_path), name, out_dir), teacher,
                                     meta, settings["start_steps"], settings["steps"], guidance_scale=scale,
                                     clip_denoised=clip, target_decay=target_decay, boundary_sigma=boundary,
                                     sampling=sampling, dataset=dataset, run_dir=out_dir / name)
        try:
            trainer.fit(resume=resume and bool(list_checkpoints(out_dir / name / "checkpoints")))
        finally:
            trainer.close()
        done = _round_done(out_dir / name, settings["iterations"])
    if on_round is not None:
        on_round(settings["steps"], done)
    return str(done)


def student_sampling(meta: dict) -> dict | None:
    """The ``sampling`` entry of a distilled student's meta (sampler, steps, times, guidance), or None."""
    sampling = meta.get("sampling")
    return sampling if isinstance(sampling, dict) and sampling.get("steps") else None


__all__ = ["ConsistencyTrainer", "DISTILL_DEFAULTS", "DistillTrainer", "GuidanceTrainer", "GuidedDenoiser", "METHODS",
           "SUPPORTED_PREDICTIONS", "check_teacher", "consistency_grid_check", "distill", "distill_grid",
           "load_distill_settings", "plan_rounds", "preview_scale", "resolve_distill_config", "round_config",
           "student_sampling", "teacher_denoiser"]
