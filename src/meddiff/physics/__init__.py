"""meddiff.physics: forward operators (MRI single/multi-coil, inpainting, downsampling), data consistency,
coil calibration, undersampling masks and classical reconstruction baselines; CT (parallel/fan beam, FBP, low-dose
simulation, SIRT/TV) in ``meddiff.physics.ct``."""

from meddiff.physics.baselines import (DEFAULTS, FiniteDifference, cg_sense, cs_tv, cs_wavelet, data_residual,
                                       zero_filled_rss)
from meddiff.physics.coils import CALIBRATION_METHODS, acs_region, estimate_sensitivity_maps
from meddiff.physics.ct import FanBeamCT, ParallelBeamCT
from meddiff.physics.fft import (check_complex, check_mask, fft2c, from_channels, ifft2c, rss, sense_combine,
                                 to_channels)
from meddiff.physics.masks import (PATTERNS, PATTERNS_1D, PATTERNS_2D, acceleration_of, acs_slice, centre_block,
                                   make_mask, poisson_disc_mask)
from meddiff.physics.operators import (FFT2, CoilSensitivity, Compose, Downsampling, Inpainting, LinearOperator,
                                       MultiCoilMRI, SingleCoilMRI, conjugate_gradient, inner)
from meddiff.physics.wavelets import dwt2, idwt2

__all__ = [
    "DEFAULTS", "FiniteDifference", "cg_sense", "cs_tv", "cs_wavelet", "data_residual", "zero_filled_rss",
    "CALIBRATION_METHODS", "acs_region", "estimate_sensitivity_maps",
    "check_complex", "check_mask", "fft2c", "from_channels", "ifft2c", "rss", "sense_combine", "to_channels",
    "PATTERNS", "PATTERNS_1D", "PATTERNS_2D", "acceleration_of", "acs_slice", "centre_block", "make_mask",
    "poisson_disc_mask",
    "FFT2", "CoilSensitivity", "Compose", "Downsampling", "Inpainting", "LinearOperator", "MultiCoilMRI",
    "SingleCoilMRI", "conjugate_gradient", "inner", "dwt2", "idwt2", "FanBeamCT", "ParallelBeamCT",
]
