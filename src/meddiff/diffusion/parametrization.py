"""Model parametrisations (eps, x0, v, score), exact conversions between them, and the denoiser wrapper.

With x_t = alpha x0 + sigma eps (any schedule, VP or not):
    eps   = (x_t - alpha x0) / sigma
    v     = alpha eps - sigma x0                    (Salimans & Ho 2022, sec. 4)
    score = grad log p(x_t) = -eps / sigma = (alpha x0 - x_t) / sigma^2   (Tweedie)
and back to x0: x0 = (x_t - sigma eps) / alpha = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
              = (x_t + sigma^2 score) / alpha.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from meddiff.diffusion.schedules import NoiseSchedule
from meddiff.errors import MeddiffError, check_choice

PREDICTIONS = ("eps", "x0", "v", "score")


class Denoiser(Protocol):
    """denoiser(x_t, t, **cond) -> x0_hat, with x_t (B, C, *spatial) or (B, D) and t (B,) in schedule time."""

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor: ...


def broadcast_to(values: Tensor, x: Tensor) -> Tensor:
    """Per-sample values (B,) or a scalar, reshaped to broadcast over x (B, ...) and cast to x's dtype."""
    values = torch.as_tensor(values, device=x.device).to(x.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def to_x0(prediction: Tensor, kind: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a network output of parametrisation ``kind`` into x0_hat; alpha, sigma broadcast over x."""
    if kind == "x0":
        return prediction
    if kind == "eps":
        return (x - sigma * prediction) / alpha
    if kind == "v":
        return (alpha * x - sigma * prediction) / (alpha**2 + sigma**2)
    if kind == "score":
        return (x + sigma**2 * prediction) / alpha
    check_choice("prediction", kind, PREDICTIONS)
    raise AssertionError("unreachable")


def from_x0(x0: Tensor, kind: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Express x0_hat in parametrisation ``kind`` (inverse of ``to_x0``)."""
    if kind == "x0":
        return x0
    eps = (x - alpha * x0) / sigma
    if kind == "eps":
        return eps
    if kind == "v":
        return alpha * eps - sigma * x0
    if kind == "score":
        return -eps / sigma
    check_choice("prediction", kind, PREDICTIONS)
    raise AssertionError("unreachable")


def training_target(kind: str, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Regression target for a network of parametrisation ``kind`` at x_t = alpha x0 + sigma noise."""
    check_choice("prediction", kind, PREDICTIONS)
    return {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0, "score": -noise / sigma}[kind]


class ModelDenoiser:
    """Turns ``model(x_t, t, **cond)`` predicting eps, x0, v or score into the x0-denoiser samplers use.

    ``cpu_chunk_pixels``: on CPU, run the network on chunks of at most this many pixels (at least one sample) instead
    of the whole batch: the same result, faster when the batch's activations outgrow the CPU caches (None: one call).
    """

    def __init__(self, model: Callable[..., Tensor], schedule: NoiseSchedule, prediction: str = "eps",
                 cpu_chunk_pixels: int | None = None) -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        if prediction in ("eps", "score") and schedule.has_zero_terminal_snr:
            raise MeddiffError(
                f"prediction={prediction!r} cannot give x0 where alpha_t = 0 (zero terminal SNR); use 'v' or 'x0'"
            )
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.cpu_chunk_pixels = cpu_chunk_pixels

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.detach().cpu())
        output = self._model_output(x, t, cond)
        return to_x0(output, self.prediction, x, broadcast_to(alpha, x), broadcast_to(sigma, x))

    def _model_output(self, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        """The network on the whole batch, or on CPU in chunks of samples (``cpu_chunk_pixels``); tensors in ``t``
        and ``cond`` with the batch's leading size are split with it."""
        batch = x.shape[0]
        size = max(1, self.cpu_chunk_pixels // max(1, x[0].numel())) if self.cpu_chunk_pixels else batch
        if x.device.type != "cpu" or size >= batch:
            return self.model(x, t, **cond)

        def part(value, i: int):
            return value[i:i + size] if torch.is_tensor(value) and value.ndim and value.shape[0] == batch else value

        return torch.cat([self.model(x[i:i + size], part(t, i), **{k: part(v, i) for k, v in cond.items()})
                          for i in range(0, batch, size)])
