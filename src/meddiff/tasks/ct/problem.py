"""The measurement model of a CT slice stack: validated sinograms, the parallel-beam operator on the output grid and
the unit conversions.

Units: a sinogram holds post-log line integrals p = int mu dl (mu in 1/mm, dl in mm), detector spacing = one image
pixel of ``pixel_size`` mm. The solvers work in water units x = mu / mu_water per pixel, so the measurement is
y = p / (mu_water pixel_size) = A x with A in pixel lengths; water is x = 1, air 0, HU = 1000 (x - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.ct import MU_WATER, ParallelBeamCT, counts_to_line_integrals, implied_size
from meddiff.tasks.ct.data import check_angles, check_sinogram

DEFAULT_PIXEL_MM = 1.0


@dataclass
class CTProblem:
    """op (image (H, W) <-> (V, D)), y (S, V, D) in water units, angles (V,), pixel size (mm), mu_water (1/mm)."""

    op: ParallelBeamCT
    y: Tensor
    angles: Tensor
    pixel_size: float
    mu_water: float

    @property
    def size(self) -> tuple[int, int]:
        return self.op.image_size

    def to_hu(self, x: Tensor) -> Tensor:
        """Water units -> HU."""
        return 1000.0 * (x - 1.0)


def make_problem(sinogram, angles, *, size: tuple[int, int] | None = None, pixel_size: float | None = None,
                 dose: float | None = None, mu_water: float = MU_WATER) -> CTProblem:
    """Sinogram (V, D) or (S, V, D) of post-log line integrals (or photon counts with incident flux ``dose``), angles
    (V,) radians -> ``CTProblem``. ``size`` (H, W) defaults to the detector-implied square floor(D / sqrt 2); a grid
    smaller than that (the detector sees beyond it) is refused, naming --size."""
    s = check_sinogram(sinogram, counts=dose is not None)
    if s.ndim == 2:
        s = s[None]
    views, detectors = s.shape[-2:]
    a = torch.as_tensor(check_angles(angles, views))
    pixel_size = DEFAULT_PIXEL_MM if pixel_size is None else pixel_size
    if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and pixel_size > 0):
        raise MeddiffError(f"--pixel-size {pixel_size!r} must be a positive number (mm)")
    need = implied_size(detectors)
    if size is None:
        size = (need, need)
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 1:
        raise MeddiffError(f"--size {size} must be two positive integers H W")
    if min(size) < need:
        raise MeddiffError(f"--size {size[0]} {size[1]} is smaller than the {need} x {need} field of view that "
                           f"{detectors} detectors imply; use --size {need} {need} or larger")
    y = torch.from_numpy(s)
    if dose is not None:
        y = counts_to_line_integrals(y.double(), float(dose)).float()
    y = y / (mu_water * pixel_size)
    return CTProblem(ParallelBeamCT(size, a, n_detectors=detectors), y, a, float(pixel_size), mu_water)


def simulate(hu: np.ndarray, views: int, *, arc: float = 180.0, dose: float | None = None,
             pixel_size: float = DEFAULT_PIXEL_MM, seed: int = 0, mu_water: float = MU_WATER):
    """HU image (H, W) or stack (S, H, W) -> (post-log sinogram float32 (S?, V, D), angles (V,), counts or None):
    non-square slices are padded to a square with air (-1000 HU) first; D covers the diagonal."""
    from meddiff.physics.ct import default_detectors, simulate_sinogram, view_angles

    image = torch.as_tensor(np.asarray(hu, dtype=np.float32))
    h, w = image.shape[-2:]
    n = max(h, w)
    if h != w:
        top, left = (n - h) // 2, (n - w) // 2
        image = torch.nn.functional.pad(image, (left, n - w - left, top, n - h - top), value=-1000.0)
    angles = view_angles(views, arc)
    op = ParallelBeamCT(n, angles, n_detectors=default_detectors(n))
    generator = torch.Generator().manual_seed(seed)
    sino, counts = simulate_sinogram(image, op, pixel_size=pixel_size, i0=dose, mu_water=mu_water,
                                     generator=generator)
    return sino.numpy().astype(np.float32), angles.numpy(), None if counts is None else counts.numpy()
