"""meddiff.training: the trainer (EMA, checkpoints, DDP, mixed precision), its YAML config and checkpoint IO."""

from meddiff.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_state,
    load_weights,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    training_steps,
)
from meddiff.training.config import SECTION_DEFAULTS, load_config, resolve_config
from meddiff.training.ema import EMA
from meddiff.training.images import image_grid, save_image_grid
from meddiff.training.trainer import (
    StepBatchSampler,
    Trainer,
    TrainingDiverged,
    classifier_loss,
    lr_factor,
    train,
    versions,
)

__all__ = [
    "EMA", "SECTION_DEFAULTS", "StepBatchSampler", "Trainer", "TrainingDiverged", "classifier_loss",
    "image_grid", "list_checkpoints", "load_checkpoint", "load_config", "load_state",
    "load_weights", "lr_factor", "read_meta", "resolve_checkpoint", "training_steps", "resolve_config", "save_checkpoint",
    "save_image_grid", "train", "versions",
]
