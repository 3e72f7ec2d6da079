"""meddiff.diffusion: schedules, forward process, parametrisations, losses, samplers and hooks.

No medical code lives here: everything works on tensors (B, ...) and a denoiser(x, t, **cond) -> x0_hat.
"""

from meddiff.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance, ClipDenoised, HookChain
from meddiff.diffusion.losses import add_noise, diffusion_loss, min_snr_weight
from meddiff.diffusion.parametrization import PREDICTIONS, Denoiser, ModelDenoiser, from_x0, to_x0
from meddiff.diffusion.samplers import (
    SAMPLERS,
    Hook,
    get_sampler,
    initial_noise,
    invert_ddim,
    network_evaluations,
    recommended_spacing,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_pc,
)
from meddiff.diffusion.schedules import (
    BETA_SCHEDULES,
    CLEAN_TIME,
    DiscreteSchedule,
    FlowSchedule,
    NoiseSchedule,
    VESDE,
    VPSDE,
    make_schedule,
)
from meddiff.diffusion.timesteps import TimeGrid, make_grid, partial_grid, start_grid

__all__ = [
    "BETA_SCHEDULES", "CLEAN_TIME", "PREDICTIONS", "SAMPLERS",
    "ClassifierFreeGuidance", "ClassifierGuidance", "ClipDenoised", "Denoiser", "DiscreteSchedule", "FlowSchedule", "Hook",
    "HookChain", "ModelDenoiser", "NoiseSchedule", "TimeGrid", "VESDE", "VPSDE",
    "add_noise", "diffusion_loss", "from_x0", "get_sampler", "initial_noise", "invert_ddim", "make_grid", "partial_grid", "make_schedule",
    "min_snr_weight", "network_evaluations", "recommended_spacing", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_euler",
    "sample_heun", "sample_pc", "start_grid", "to_x0",
]
