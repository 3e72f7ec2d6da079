"""meddiff.physics.ct: 2D CT physics and classical reconstruction.

- ``projectors``: ``ParallelBeamCT`` (Radon transform) and ``FanBeamCT`` (flat detector) as ``LinearOperator``s with
  exact adjoints (Joseph's method as a cached sparse matrix), image (..., H, W) <-> sinogram (..., V, D);
- ``angles``: full, sparse-view and limited-angle view sets;
- ``fbp``: filtered back-projection (ramp, Shepp-Logan, Hann) for parallel beams;
- ``dose``: HU <-> attenuation and the low-dose measurement (Poisson counts, electronic noise, log);
- ``iterative``: SIRT / OS-SART and TV (Chambolle-Pock) baselines.

>>> import math, torch
>>> from meddiff.physics.ct import ParallelBeamCT, fbp, view_angles
>>> angles = view_angles(90)                           # 90 views over [0, pi)
>>> op = ParallelBeamCT(32, angles)                    # 46 detectors cover the 32 x 32 image's diagonal
>>> disc = torch.zeros(1, 32, 32)
>>> yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
>>> disc[0][yy**2 + xx**2 < 100] = 1.0
>>> y = op.A(disc)                                     # [B,V,D] line integrals in pixel lengths
>>> tuple(y.shape), op.adjointness_test(disc) < 1e-5
((1, 90, 46), True)
>>> round(float(y[0, 0].max()), 1)                     # chord through the centre ~ diameter 20
20.0
>>> float((fbp(y, angles, 32) - disc).abs().mean()) < 0.05
True
"""

from meddiff.physics.ct.dose import (ELECTRONIC_VARIANCE, MU_WATER, counts_to_line_integrals, hu_to_mu, mu_to_hu,
                                     simulate_sinogram)
from meddiff.physics.ct.fbp import FILTERS, angular_weight, fbp, fourier_filter
from meddiff.physics.ct.iterative import DEFAULTS, sirt, tv
from meddiff.physics.ct.projectors import (FanBeamCT, ParallelBeamCT, as_angles, default_detectors, implied_size)
from meddiff.physics.ct.angles import ANGLE_SETS, SPARSE_VIEWS, LIMITED_ARCS, view_angles, angle_set

__all__ = [
    "ANGLE_SETS", "DEFAULTS", "ELECTRONIC_VARIANCE", "FILTERS", "FanBeamCT", "LIMITED_ARCS", "MU_WATER",
    "ParallelBeamCT", "SPARSE_VIEWS", "angle_set", "angular_weight", "as_angles", "counts_to_line_integrals",
    "default_detectors", "fbp", "fourier_filter", "hu_to_mu", "implied_size", "mu_to_hu", "simulate_sinogram",
    "sirt", "tv", "view_angles",
]
