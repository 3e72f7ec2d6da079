"""Noise schedules: every schedule maps a time t to (alpha_t, sigma_t) with x_t = alpha_t x_0 + sigma_t eps.

Discrete DDPM schedules use integer timesteps 0..T-1 (non-integer t interpolates log alpha_bar linearly);
continuous SDE schedules use t in [t_min, 1]. The time ``CLEAN_TIME`` (-1) means clean data for every
schedule: alpha = 1, sigma = 0 (the "alpha_bar_prev = 1" convention of DDPM/DDIM's final step).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

CLEAN_TIME = -1.0


# --- beta schedules for discrete DDPM (float64, shape (T,)) -------------------------------------------


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear betas of Ho et al. 2020 (DDPM), sec. 4."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Linear in sqrt(beta), as in latent diffusion (Rombach et al. 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2) of Nichol & Dhariwal 2021, eq. 17, betas clipped."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas following a sigmoid over [-6, 6] between beta_start and beta_end (GeoDiff, Xu et al. 2022)."""
    ramp = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64))
    return ramp * (beta_end - beta_start) + beta_start


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 exactly (Lin et al. 2024, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# --- schedule objects -------------------------------------------------------------------------------


class NoiseSchedule:
    """Base class: subclasses define ``_alpha_sigma`` on [t_min, t_max]; CLEAN_TIME is handled here."""

    t_min: float
    t_max: float
    is_discrete: bool = False

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) as float64 tensors of t's shape; t = CLEAN_TIME gives (1, 0)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        clean = t < 0
        alpha, sigma = self._alpha_sigma(t.clamp(self.t_min, self.t_max))
        return torch.where(clean, 1.0, alpha), torch.where(clean, 0.0, sigma)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2), decreasing in t."""
        alpha, sigma = self.alpha_sigma(t)
        return 2 * (alpha.log() - sigma.log())

    def time_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Invert log_snr(t) by interpolation on a dense table (float64 times in [t_min, t_max])."""
        table_t = self._dense_times()
        table_l = self.log_snr(table_t)
        keep = torch.isfinite(table_l)
        table_t, table_l = table_t[keep], table_l[keep]
        # np.interp needs increasing x: log-SNR decreases with t, so flip both.
        t = np.interp(log_snr.double().numpy(), table_l.flip(0).numpy(), table_t.flip(0).numpy())
        return torch.from_numpy(t)

    def _dense_times(self) -> Tensor:
        return torch.linspace(self.t_min, self.t_max, 20001, dtype=torch.float64)

    def sde(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Forward SDE dx = f(t) x dt + g(t) dw: returns (f, g^2) at t, per unit of this schedule's time.

        Generic form from alpha and sigma (Song et al. 2021; Kingma et al. 2021, eq. 32):
        f = d log(alpha)/dt, g^2 = d(sigma^2)/dt - 2 f sigma^2, by central differences.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        h = 1e-4 * (self.t_max - self.t_min)
        lo, hi = (t - h).clamp(self.t_min, self.t_max), (t + h).clamp(self.t_min, self.t_max)
        (a_lo, s_lo), (a_hi, s_hi) = self._alpha_sigma(lo), self._alpha_sigma(hi)
        _, sigma = self._alpha_sigma(t)
        f = (a_hi.log() - a_lo.log()) / (hi - lo)
        g2 = (s_hi**2 - s_lo**2) / (hi - lo) - 2 * f * sigma**2
        return f, g2

    def sample_training_times(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Times for a training batch, shape (batch,), float32: uniform over the schedule's range."""
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return (self.t_min + u * (self.t_max - self.t_min)).float()

    @property
    def has_zero_terminal_snr(self) -> bool:
        return bool(self.alpha_sigma(self.t_max)[0] == 0)

    def to_config(self) -> dict:
        raise NotImplementedError


class DiscreteSchedule(NoiseSchedule):
    """DDPM schedule over integer timesteps 0..T-1: alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)."""

    is_discrete = True

    def __init__(
        self,
        beta_schedule: str = "linear",
        num_train_steps: int = 1000,
        *,
        beta_start: float | None = None,
        beta_end: float | None = None,
        zero_terminal_snr: bool = False,
    ) -> None:
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if not isinstance(num_train_steps, int) or num_train_steps < 2:
            raise MeddiffError(f"num_train_steps={num_train_steps!r} must be an integer >= 2")
        kwargs = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
        if beta_schedule == "cosine" and kwargs:
            raise MeddiffError("beta_start/beta_end do not apply to the cosine schedule; leave them unset")
        betas = BETA_SCHEDULES[beta_schedule](num_train_steps, **kwargs)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.beta_schedule = beta_schedule
        self.num_train_steps = num_train_steps
        self.beta_start, self.beta_end = beta_start, beta_end
        self.zero_terminal_snr = zero_terminal_snr
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.t_min, self.t_max = 0.0, float(num_train_steps - 1)

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lower = t.floor().long().clamp(0, self.num_train_steps - 1)
        upper = (lower + 1).clamp(max=self.num_train_steps - 1)
        w = t - lower
        log_ab = self.alphas_cumprod.log()  # -inf at T-1 with zero terminal SNR: avoid 0 * -inf
        alpha_bar = torch.exp(torch.where(w > 0, (1 - w) * log_ab[lower] + w * log_ab[upper], log_ab[lower]))
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp(min=0).sqrt()

    def _dense_times(self) -> Tensor:
        return torch.arange(self.num_train_steps, dtype=torch.float64)

    def sde(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """VP SDE per timestep: f = -beta_t / 2, g^2 = beta_t (Song et al. 2021, eq. 11, with beta(t) = T beta_i)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(self.t_min, self.t_max)
        beta = torch.as_tensor(np.interp(t.numpy(), np.arange(self.num_train_steps), self.betas.numpy()), dtype=torch.float64)
        return -0.5 * beta, beta

    def sample_training_times(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Integer timesteps uniform in 0..T-1, shape (batch,), as float32 (the networks embed floats)."""
        return torch.randint(0, self.num_train_steps, (batch,), generator=generator).float()

    def to_config(self) -> dict:
        config = {"kind": "discrete", "beta_schedule": self.beta_schedule, "num_train_steps": self.num_train_steps}
        if self.beta_start is not None:
            config["beta_start"] = self.beta_start
        if self.beta_end is not None:
            config["beta_end"] = self.beta_end
        config["zero_terminal_snr"] = self.zero_terminal_snr
        return config


class VPSDE(NoiseSchedule):
    """Variance-preserving SDE with linear beta(t) on t in [t_min, 1] (Song et al. 2021, eq. 11 and 29)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        if not 0 < beta_min < beta_max:
            raise MeddiffError(f"VP SDE needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max
        self.t_min, self.t_max = t_min, 1.0

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def sde(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        beta = self.beta_min + torch.as_tensor(t, dtype=torch.float64) * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta

    def to_config(self) -> dict:
        return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VESDE(NoiseSchedule):
    """Variance-exploding SDE of NCSN: alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t (Song et al. 2021, eq. 9)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise MeddiffError(f"VE SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = t_min, 1.0

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.ones_like(sigma), sigma

    def sde(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        _, sigma = self._alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return torch.zeros_like(sigma), 2 * sigma**2 * math.log(self.sigma_max / self.sigma_min)

    def to_config(self) -> dict:
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}


class FlowSchedule(NoiseSchedule):
    """Rectified flow / linear interpolation: alpha = 1 - t, sigma = t on [t_min, 1] (Liu et al. 2023)."""

    def __init__(self, t_min: float = 1e-3) -> None:
        self.t_min, self.t_max = t_min, 1.0

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    def to_config(self) -> dict:
        return {"kind": "flow", "t_min": self.t_min}


SCHEDULE_KINDS: dict[str, type[NoiseSchedule]] = {
    "discrete": DiscreteSchedule,
    "vp": VPSDE,
    "ve": VESDE,
    "flow": FlowSchedule,
}


def make_schedule(config: dict | str) -> NoiseSchedule:
    """Build a schedule from ``to_config()`` output, or from a bare beta-schedule name (1000 DDPM steps)."""
    if isinstance(config, str):
        return DiscreteSchedule(config)
    config = dict(config)
    kind = config.pop("kind", "discrete")
    check_choice("schedule kind", kind, SCHEDULE_KINDS)
    try:
        return SCHEDULE_KINDS[kind](**config)
    except TypeError as error:
        raise MeddiffError(f"bad parameters for the {kind!r} schedule: {error}") from None
