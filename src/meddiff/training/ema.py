"""Exponential moving average of network weights, used for sampling (Polyak averaging; Ho et al. 2020, sec. 4)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy ``ema.module`` with w_ema <- d w_ema + (1 - d) w after each optimiser step.

    With warm-up the decay of update n (1-based) is min(decay, (1 + n) / (10 + n)), as in TensorFlow's
    ExponentialMovingAverage(num_updates), so early averages are not dominated by the random initialisation.
    Buffers are copied, not averaged.

    The update is one ``torch._foreach_lerp_`` over flat parameter lists (and one ``_foreach_copy_`` for buffers),
    built on the first update with a model and reused while the same model is passed: ``load_state_dict`` and
    ``.to()`` keep parameter objects, so the lists stay valid.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self._pairs: tuple | None = None  # (model, ema params, model params, ema buffers, model buffers)

    def decay_at(self, updates: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + updates) / (10 + updates))

    def _lists(self, model: nn.Module) -> tuple:
        if self._pairs is None or self._pairs[0] is not model:
            ema_params, params = list(self.module.parameters()), list(model.parameters())
            ema_buffers, buffers = list(self.module.buffers()), list(model.buffers())
            if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
                raise ValueError("EMA.update got a model with a different structure from the averaged one")
            self._pairs = (model, ema_params, params, ema_buffers, buffers)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Blend in ``model``'s weights; ``updates`` counts optimiser steps so far, this one included."""
        d = self.decay_at(updates)
        ema_params, params, ema_buffers, buffers = self._lists(model)
        torch._foreach_lerp_(ema_params, params, 1 - d)
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)
