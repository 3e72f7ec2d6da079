"""Sampling time grids: the times a sampler visits, from noise to clean, with alpha and sigma at each.

A grid of N steps holds N+1 times: N model-evaluation times in decreasing order followed by CLEAN_TIME.
Samplers read the "previous" time as ``times[i + 1]`` from this list, never from a fixed stride, which
avoids the stride bugs of MONAI's and diffusers' DDIM steps at step counts that do not divide T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meddiff.diffusion.schedules import CLEAN_TIME, NoiseSchedule
from meddiff.errors import MeddiffError, check_choice

DISCRETE_SPACINGS = ("trailing", "leading", "linspace", "logsnr", "karras")
CONTINUOUS_SPACINGS = ("uniform", "logsnr", "karras")


@dataclass(frozen=True)
class TimeGrid:
    """Times (N+1,) float64, decreasing, last = CLEAN_TIME; alphas and sigmas (N+1,) float64 at those times."""

    schedule: NoiseSchedule
    times: Tensor
    alphas: Tensor
    sigmas: Tensor

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, times) -> "TimeGrid":
        """Grid from explicit model-evaluation times (decreasing, inside the schedule's range); CLEAN_TIME is appended."""
        times = torch.as_tensor(times, dtype=torch.float64).flatten()
        if times.numel() < 1:
            raise MeddiffError("a time grid needs at least one time")
        if not bool((times[1:] < times[:-1]).all()):
            raise MeddiffError(f"grid times must be strictly decreasing, got {times.tolist()[:8]}...")
        lo, hi = schedule.t_min, schedule.t_max
        if times.min() < lo - 1e-9 or times.max() > hi + 1e-9:
            raise MeddiffError(f"grid times must lie in [{lo}, {hi}], got [{float(times.min())}, {float(times.max())}]")
        times = torch.cat([times, torch.tensor([CLEAN_TIME], dtype=torch.float64)])
        alphas, sigmas = schedule.alpha_sigma(times)
        return cls(schedule, times, alphas, sigmas)

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    def prior_std(self) -> float:
        """Std of x at the first time for data of unit second moment: sqrt(alpha^2 + sigma^2)."""
        return float((self.alphas[0] ** 2 + self.sigmas[0] ** 2).sqrt())


def make_grid(
    schedule: NoiseSchedule,
    steps: int,
    spacing: str | None = None,
    *,
    rho: float = 7.0,
) -> TimeGrid:
    """Grid of ``steps`` model evaluations over the schedule.

    Spacings (default "trailing" for discrete schedules, "uniform" for continuous ones; see
    ``recommended_spacing`` in samplers.py for the best one per sampler, measured by benchmarks/sampler_accuracy.py):
    - "trailing": t_i = round(T - i T/N) - 1, includes T-1 (Lin et al. 2024, table 2);
    - "leading": t_i = (N-1-i) * (T // N), as DDIM's original code;
    - "linspace": round(linspace(T-1, 0, N));
    - "uniform": linspace(t_max, t_min, N) (continuous schedules);
    - "logsnr": uniform in log-SNR between t_max and t_min (Lu et al. 2022, DPM-Solver);
    - "karras": sigma/alpha following Karras et al. 2022, eq. 5, with exponent ``rho``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MeddiffError(f"steps={steps!r} must be an integer >= 1")
    if schedule.is_discrete:
        spacing = spacing or "trailing"
        check_choice("spacing", spacing, DISCRETE_SPACINGS)
        total = schedule.num_train_steps
        if steps > total:
            raise MeddiffError(f"steps={steps} exceeds the {total} training steps of the schedule; use steps <= {total}")
    else:
        spacing = spacing or "uniform"
        check_choice("spacing", spacing, CONTINUOUS_SPACINGS)

    t_min, t_max = schedule.t_min, schedule.t_max
    if spacing == "trailing":
        # Index-based, not a float-step arange: arange(T, 0, -T/N) yields N+1 values for 62 of the N <= 1000
        # (e.g. N=61), the last rounding to -1. With N <= T the rounded times stay strictly decreasing and >= 0.
        times = torch.round(total - torch.arange(steps, dtype=torch.float64) * (total / steps)) - 1
    elif spacing == "leading":
        times = (torch.arange(steps, dtype=torch.float64) * (total // steps)).flip(0)
    elif spacing == "linspace":
        times = torch.round(torch.linspace(t_max, t_min, steps, dtype=torch.float64))
    elif spacing == "uniform":
        times = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
    else:
        log_snr_max, log_snr_min = schedule.log_snr(t_min), schedule.log_snr(t_max)
        if not torch.isfinite(log_snr_min):
            raise MeddiffError(
                f"spacing={spacing!r} needs a finite SNR at t_max; this schedule reaches SNR 0 "
                "(zero terminal SNR or flow at t=1): use spacing='trailing' or 'uniform'"
            )
        if spacing == "logsnr":
            log_snr = torch.linspace(float(log_snr_min), float(log_snr_max), steps, dtype=torch.float64)
        else:  # karras: interpolate sigma/alpha = exp(-log_snr / 2) in the 1/rho power
            s_max, s_min = torch.exp(-log_snr_min / 2), torch.exp(-log_snr_max / 2)
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            scaled = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            log_snr = -2 * scaled.log()
        times = schedule.time_from_log_snr(log_snr)
        times[0], times[-1] = (t_max, t_min) if steps > 1 else (t_max, t_max)
    return TimeGrid.from_times(schedule, times)


def partial_grid(schedule: NoiseSchedule, start: float, steps: int) -> TimeGrid:
    """Grid of at most ``steps`` times evenly spaced from time ``start`` down to t_min, for chains that begin from a
    partly noised image instead of pure noise: SDEdit (Meng et al. 2022), AnoDDPM's partial diffusion (Wyatt et al.
    2022), Wolleb's encoding depth L, "come closer, diffuse faster" (Chung et al. 2022). Discrete schedules round to
    integer times and drop the duplicates that rounding makes (so a start of 30 with 50 steps visits 31 times)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MeddiffError(f"steps={steps!r} must be an integer >= 1")
    if not schedule.t_min < start <= schedule.t_max:
        raise MeddiffError(f"start time {start!r} must be in ({schedule.t_min:g}, {schedule.t_max:g}] "
                           "(the schedule's time range)")
    times = torch.linspace(float(start), schedule.t_min, steps, dtype=torch.float64)
    if schedule.is_discrete:
        times = times.round().unique().flip(0)
    return TimeGrid.from_times(schedule, times)


def start_grid(schedule: NoiseSchedule, steps: int, start: float) -> TimeGrid:
    """``steps`` times from ``start`` x t_max down to t_min (``partial_grid``); start = 1: the full ``make_grid``."""
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 < start <= 1:
        raise MeddiffError(f"start={start!r} must be in (0, 1] (fraction of the diffusion time to start from)")
    if start == 1:
        return make_grid(schedule, steps)
    if start * schedule.t_max <= schedule.t_min:
        raise MeddiffError(f"start={start!r} is below the schedule's first time ({schedule.t_min:g} of "
                           f"{schedule.t_max:g}); use a larger fraction")
    return partial_grid(schedule, start * schedule.t_max, steps)
