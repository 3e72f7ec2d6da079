"""CT reconstruction: post-log sinograms (views, detectors) + view angles (radians) -> images in HU.

Methods: the classical baselines FBP (ramp / Shepp-Logan / Hann), SIRT / OS-SART and TV (Chambolle-Pock) of
``meddiff.physics.ct``, and the diffusion solvers DDNM, DPS and PC through the generic hooks of
``meddiff.diffusion.inverse`` with the parallel-beam operator (``solvers``; the DDNM pseudo-inverse is CG on the
normal equations), and DiffusionMBIR for slice stacks (``mbir``: the 2D prior per slice, TV along z in the ADMM
data-consistency step). The default prior is the shipped ``ct_chest_prior`` (``checkpoint=`` overrides it).

Units (``problem``): sinograms hold int mu dl with mu in 1/mm and the detector spacing equal to one output pixel of
``pixel_size`` mm (default 1 mm); HU = 1000 (mu / mu_water - 1) with ``MU_WATER`` = 0.0193 / mm. ``simulate``
turns an HU image into such a sinogram (optionally with low-dose noise) and its angles.

Modules: ``data`` (HU images, sinograms, angles, the geometry sidecar), ``problem`` (operator, units, simulation),
``baselines``, ``mbir`` (the z-TV consistency step), ``solvers`` (``reconstruct``, the one entry point),
``lowdose`` (the supervised low-dose UNet baseline: training pairs and inference), ``evaluation`` (body mask,
windowed PSNR / SSIM in HU, error-map figures), ``report`` (the demo report's CT section).
"""

from meddiff.tasks.ct.baselines import BASELINE_PARAMS, BASELINES, baseline
from meddiff.tasks.ct.data import (HU_RANGE, check_angles, check_sinogram, load_array, read_hu, read_sidecar, save_npy,
                                   sidecar_path)
from meddiff.tasks.ct.problem import DEFAULT_PIXEL_MM, CTProblem, make_problem, simulate
from meddiff.tasks.ct.solvers import (CT_WINDOW, INITS, METHODS, SOLVER_DEFAULTS, SOLVERS, CTImageModel, Reconstruction,
                                      load_ct_prior, reconstruct, solve, solve_stack)
from meddiff.tasks.ct.mbir import MBIR_DEFAULTS, ZTVConsistency, diff_z, diff_z_adjoint, z_jumps

__all__ = [
    "BASELINES", "BASELINE_PARAMS", "CTImageModel", "CTProblem", "CT_WINDOW", "DEFAULT_PIXEL_MM", "HU_RANGE", "INITS",
    "METHODS", "Reconstruction", "SOLVERS", "SOLVER_DEFAULTS", "baseline", "check_angles", "check_sinogram",
    "load_array", "load_ct_prior", "make_problem", "read_hu", "read_sidecar", "reconstruct", "save_npy",
    "sidecar_path", "simulate", "solve", "solve_stack", "MBIR_DEFAULTS", "ZTVConsistency", "diff_z",
    "diff_z_adjoint", "z_jumps",
]
