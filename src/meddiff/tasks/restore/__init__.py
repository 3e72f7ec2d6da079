"""Restoration: super-resolution, inpainting and denoising of 2D images and 3D volumes (slice by slice), with the
classical baselines and zero-shot diffusion methods on an unconditional prior, K samples -> mean and per-pixel std.

Modules: ``problems`` (degradations: area-averaging downsampling (default) or a Gaussian kernel, hole masks (box,
random strokes), Gaussian and Rician noise; input checks), ``baselines`` (nearest, bicubic, Lanczos, TV by ADMM,
biharmonic inpainting, BM3D from the optional ``bm3d`` package), ``methods`` (DDNM, DPS, RePaint and matched-start
denoising through ``meddiff.diffusion``'s samplers and inverse-problem hooks), ``evaluation`` (PSNR/SSIM over the
whole image, a brain mask and the hole; ``volume_scores`` inside missing slices), ``slices3d`` (whole missing slices
of a 3D volume: interpolation along the slice axis, 3D biharmonic, DDNM / SDEdit refinement with the axial prior),
``pipeline`` (``restore`` and ``restore_file``, behind ``meddiff restore``).

The prior: ``--checkpoint`` or the shipped default for ``restore``, falling back to the one for ``reconstruct``
(``default_prior``); it is loaded by ``meddiff.tasks.prior.load_prior`` (an unconditional one-channel image prior).
Its images are whole axial slices scaled by ``meddiff.data.magnitude_scale`` (99.5th percentile of the pixels above
10 % of the max -> 1, zero -> -1 in model space); restoration inputs are scaled the same way (``methods``).
Trained super-resolution (``learned``): SR3 (a conditional diffusion model on the bicubic upsampling, DDIM, K samples
-> mean and std) and the supervised UNet baseline, on the pairs of ``meddiff.data.superres`` (shipped: sr3_ixi_4x,
unet_sr_ixi_4x; trained by scripts/train_sr.py for the same wall time).
"""

from meddiff.tasks.restore.baselines import BASELINES, TV_WEIGHTS, baseline, biharmonic, tv_restore, upsample
from meddiff.tasks.restore.evaluation import scores, volume_scores
from meddiff.tasks.restore.learned import (DEFAULT_MODELS, LEARNED, LEARNED_DEFAULTS, SRModel, load_sr_model,
                                           solve_learned, untrained_sr3)
from meddiff.tasks.restore.methods import SOLVER_DEFAULTS, SOLVERS, ZERO_SHOT, ModelSpace, repaint_schedule, solve
from meddiff.tasks.restore.pipeline import (ALL_METHODS, METHODS, SAMPLING, Restoration, default_prior, restore,
                                            restore_file, restore_prior, scaled_affine)
from meddiff.tasks.restore.problems import (KERNELS, NOISES, TASKS, GaussianDownsampling, Identity, Problem, add_noise,
                                            box_mask, degradation_operator, degrade_sr, estimate_sigma, make_problem,
                                            missing_slices_mask, stroke_mask)
from meddiff.tasks.restore.slices3d import (SLICE_DEFAULTS, SLICE_METHODS, biharmonic_slices, interpolate_slices,
                                            missing_slices, restore_slices)

__all__ = [
    "ALL_METHODS", "BASELINES", "DEFAULT_MODELS", "KERNELS", "LEARNED", "LEARNED_DEFAULTS", "METHODS", "NOISES",
    "SAMPLING", "SOLVERS", "SOLVER_DEFAULTS", "SRModel", "TASKS", "TV_WEIGHTS", "ZERO_SHOT", "load_sr_model",
    "solve_learned", "untrained_sr3", "GaussianDownsampling", "Identity", "ModelSpace", "Problem", "Restoration",
    "add_noise", "baseline", "biharmonic", "box_mask", "default_prior", "degradation_operator", "degrade_sr", "estimate_sigma", "make_problem",
    "repaint_schedule", "restore", "restore_file", "restore_prior", "scaled_affine", "scores", "solve", "stroke_mask",
    "tv_restore", "upsample", "SLICE_DEFAULTS", "SLICE_METHODS", "biharmonic_slices", "interpolate_slices",
    "missing_slices", "missing_slices_mask", "restore_slices", "volume_scores",
]
