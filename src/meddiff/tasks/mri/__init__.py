"""MRI reconstruction: centred k-space + sampling mask -> magnitude image on the RSS scale (and a per-pixel std).

Methods: the classical baselines of ``meddiff.physics`` (zero-filled RSS, CG-SENSE, L1-wavelet and TV CS) and five
diffusion solvers that run a brain prior through the generic hooks of ``meddiff.diffusion.inverse``:
- "pc": predictor-corrector (reverse diffusion + Langevin) with noised-measurement replacement after every step
  (Song et al. 2022, score-MRI style);
- "dps": DDIM (eta = 1) with the DPS measurement-gradient step (Chung et al. 2023);
- "ddnm": DDIM (eta = 0.85) with the DDNM null-space projection of every x0 prediction (Wang et al. 2023);
- "coarse-to-fine": K fast ancestral samples with noised-measurement replacement, averaged, then a short
  deterministic DDNM refinement (DDIM eta = 0) of the re-noised mean (after DiffuseRecon, Peng et al. 2022);
- "mc-ddpm": DDPM on the unmeasured k-space only, the measured lines kept equal to the data in every state (after
  MC-DDPM, Xie & Li 2022, with the unconditional prior in place of their conditional network; ``mcddpm``).
Every solver may start from noise (start = 1) or from an initial image (CG-SENSE or CS, ``init``) noised to
start x T ("come closer, diffuse faster", Chung et al. 2022); the defaults (``SOLVER_DEFAULTS``) do the latter.
With today's prior none of them beats CS by more than about 0.1 dB; ``untrained_prior`` is the control that shows
what the trained prior adds (benchmarks/README.md).

How the prior meets the k-space (documented choices, measured in benchmarks/README.md):
- Multi-coil data use the SENSE model with ESPIRiT maps from the fully sampled centre (``estimate_sensitivity_maps``);
  single-coil (H, W) data use ``SingleCoilMRI``. The output is |x|, on the RSS scale because sum_c |S_c|^2 = 1.
- The prior is real (one channel): the image is x = s (v + 1) / 2 exp(i phi) with v the prior's [-1, 1] variable,
  phi the phase of the initial CG-SENSE (or CS) image (a low-resolution ACS phase lost 1.5 dB on CS: 30.3 vs
  31.8 dB) and s the 99.5th percentile of its magnitude (the training patches were scaled by their volume's 99.5th
  percentile). Data consistency replaces the measured
  k-space coil by coil and recombines with the maps (S^H F^H((1 - M) F S z + M y), score-MRI's multi-coil step),
  then keeps the real part in the phase frame. The exact SENSE projection x - A^+(A x - y) is not used: with 8
  coils at 4x-8x the data over-determine the image, so it returns the noise-amplified unregularised SENSE solution
  (measured: 22.4 dB vs 28.8 dB for 10-iteration CG-SENSE at 4x). The final magnitude is taken after one more
  complex consistency step, so the phase of the output comes from the data.
- The prior is fully convolutional; any (H, W) runs: the image is zero-padded (model value -1 = air) to a
  multiple of 2^(levels - 1) and cropped back. No resizing.
- K posterior samples run as one batch; the image is the mean of their magnitudes, the std map their per-pixel
  standard deviation (for coarse-to-fine: of the K coarse samples).
- Output magnitude (``combine``, every method): "sense" |x| of the SENSE-model image (default), or "rss", the RSS
  of the data-consistent coil images, the reference's own combination, which keeps the measured noise of every
  coil. The choice moves whole-image PSNR against the RSS reference by ~1 dB (background noise floor) and the
  foreground by ~0.1 dB (benchmarks/README.md): compare methods under one combination.

Modules: ``data`` (k-space / mask readers, prior training patches), ``problem`` (operator, coil maps, baselines,
output combination), ``prior`` (the diffusion prior; a k-space size it cannot run at is a ``MeddiffError`` naming
both sizes), ``mcddpm`` (the MC-DDPM sampler), ``solvers`` (the diffusion solvers and ``reconstruct``),
``evaluation`` (std-error calibration), ``report`` (the demo section).
"""

from meddiff.tasks.mri.data import (IXI_T1_DIR, ONE_MM_MEDIAN, ONE_MM_T1, PRIOR_PATCH, PRIOR_VAL_SUBJECTS, PRIOR_ZOOM,
                                    check_inputs, load_kspace, load_mask, make_prior_patches)
from meddiff.tasks.mri.evaluation import calibration_plot
from meddiff.tasks.mri.prior import Prior, load_prior, untrained_prior
from meddiff.tasks.mri.problem import (BASELINES, COMBINES, PHASE_ACS, MRIProblem, baseline, combine_coils,
                                       low_resolution_phase, make_problem)
from meddiff.tasks.mri.report import report_section
from meddiff.tasks.mri.solvers import (HIGH_ACCELERATION, HIGH_ACCELERATION_DEFAULTS, INITS, METHODS, SCALE_PERCENTILE,
                                       SOLVER_DEFAULTS, SOLVERS, RealImageModel, Reconstruction, method_defaults,
                                       reconstruct, solve)

__all__ = [
    "BASELINES", "COMBINES", "HIGH_ACCELERATION", "HIGH_ACCELERATION_DEFAULTS", "INITS", "IXI_T1_DIR", "METHODS", "MRIProblem", "ONE_MM_MEDIAN", "ONE_MM_T1", "PHASE_ACS",
    "PRIOR_PATCH", "PRIOR_VAL_SUBJECTS", "PRIOR_ZOOM", "Prior", "RealImageModel", "Reconstruction", "SCALE_PERCENTILE",
    "SOLVERS", "SOLVER_DEFAULTS", "baseline", "calibration_plot", "check_inputs", "combine_coils", "load_kspace",
    "load_mask", "load_prior", "low_resolution_phase", "make_prior_patches", "make_problem", "method_defaults", "reconstruct",
    "report_section", "solve", "untrained_prior",
]
