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
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def decay_at(self, updates: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Blend in ``model``'s weights; ``updates`` counts optimiser steps so far, this one included."""
        d = self.decay_at(updates)
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
