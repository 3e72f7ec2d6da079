"""Parallel- and fan-beam CT projectors: sparse system matrices (Joseph's method) with exact transposes.

Geometry (2D, units of image pixels, origin at the image centre): pixel (row i, column j) of an (H, W) image sits at
X = j - (W - 1) / 2, Y = (H - 1) / 2 - i (x to the right, y up; scikit-image's ``radon`` convention, whose centre
is the pixel N // 2, the same for odd N). For view angle theta, e = (cos theta, sin theta) is the detector axis and
d = (sin theta, -cos theta) the ray direction:
- parallel beam: detector k of D at u_k = (k - (D - 1) / 2) * spacing measures
  p(theta, u_k) = int f(u_k e + t d) dt (the Radon transform, s = X cos theta + Y sin theta);
- fan beam (flat detector): source S = -R_s d (``source_distance`` R_s from the isocentre), detector centre
  S + R_sd d (``detector_distance`` R_sd from the source), detector k at S + R_sd d + u_k e; ray k runs from S
  through that point.
A sinogram is (..., V, D): views, detectors.

Discretisation: Joseph's method (P. M. Joseph, IEEE TMI 1:192, 1982): a ray steps one column at a time where
|d_x| >= |d_y| (else one row at a time), samples the image by linear interpolation between the two nearest pixels
of that column (row) with zero outside the image, and weights each sample by the step length 1 / |d_x|
(1 / |d_y|). These weights form a sparse matrix M (V D, H W), built once per geometry and cached (``MAX_CACHED``
geometries, keyed by every geometry parameter, per device and dtype): A x = M x and A^T y = M^T y, where M^T is
the transpose of the same entries, so forward and adjoint are exact transposes (the adjointness test is ~1e-7 in
float32, only summation order differs). Memory: about 2 H W entries per view (12 bytes each, twice with M^T);
a 256 x 256 image with 180 views is ~0.3 GB.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.operators import LinearOperator

MAX_CACHED = 4  # geometries whose matrices are kept (least recently used dropped first)
_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()


def as_angles(angles, name: str = "angles") -> Tensor:
    """Angles in radians as a float64 CPU tensor (V,); a MeddiffError names ``name`` if not 1D, empty or finite."""
    a = torch.as_tensor(np.asarray(angles.detach().cpu() if isinstance(angles, Tensor) else angles, dtype=np.float64))
    if a.ndim != 1 or a.numel() == 0:
        raise MeddiffError(f"{name} must be a 1D array of view angles in radians; got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise MeddiffError(f"{name} contains NaN/Inf values; give finite view angles in radians")
    return a


def _image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise MeddiffError(f"image_size={image_size!r} must be a positive int or (H, W)")
    return int(size[0]), int(size[1])


def default_detectors(image_size) -> int:
    """Detectors (spacing 1 pixel) that cover the image diagonal: ceil(sqrt(H^2 + W^2)); for a square N x N image
    floor(D / sqrt 2) = N again (``implied_size``)."""
    h, w = _image_size(image_size)
    return int(math.ceil(math.hypot(h, w) - 1e-9))


def implied_size(n_detectors: int) -> int:
    """The square image a parallel-beam detector of D pixels covers edge to edge: floor(D / sqrt 2)
    (scikit-image ``iradon``'s default output size for circle=False)."""
    return max(1, int(math.floor(n_detectors / math.sqrt(2) + 1e-9)))


def _joseph(points: Tensor, dirs: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(ray, pixel, weight) entries of Joseph's projector for rays point + t dir (R, 2) in (X, Y) pixel units."""
    h, w = shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rays_all, pix_all, val_all = [], [], []
    horiz = dirs[:, 0].abs() >= dirs[:, 1].abs()
    for along_x in (True, False):
        r = torch.nonzero(horiz if along_x else ~horiz).flatten()
        if r.numel() == 0:
            continue
        p, d = points[r], dirs[r]
        a, b = (0, 1) if along_x else (1, 0)  # a: stepping axis, b: interpolated axis
        n_steps, n_other = (w, h) if along_x else (h, w)
        # stepping coordinate of column j: X = j - cx; of row i: Y = cy - i
        step = torch.arange(n_steps, dtype=torch.float64)
        coord = step - cx if along_x else cy - step  # [S]
        t = (coord[None] - p[:, a:a + 1]) / d[:, a:a + 1]  # [R,S]
        other = p[:, b:b + 1] + t * d[:, b:b + 1]
        frac_index = cy - other if along_x else other + cx  # fractional row (col) index
        i0 = torch.floor(frac_index)
        f = frac_index - i0
        length = 1.0 / d[:, a:a + 1].abs()  # [R,1]
        for idx, wt in ((i0, (1 - f) * length), (i0 + 1, f * length)):
            ok = (idx >= 0) & (idx < n_other) & (wt > 0)
            rr, ss = torch.nonzero(ok, as_tuple=True)
            ii = idx[rr, ss].long()
            pix = ii * w + ss if along_x else ss * w + ii
            rays_all.append(r[rr])
            pix_all.append(pix)
            val_all.append(wt[rr, ss])
    return torch.cat(rays_all), torch.cat(pix_all), torch.cat(val_all)


def _csr(rows: Tensor, cols: Tensor, val: Tensor, shape: tuple[int, int], dtype, device) -> Tensor:
    """CSR matrix from (row, col, value) entries without duplicates (rows sorted, columns sorted within rows)."""
    order = torch.argsort(rows * shape[1] + cols)
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        m = torch.sparse_csr_tensor(crow, cols[order], val[order].to(dtype), shape, check_invariants=False)
    return m.to(device)


class _CTProjector(LinearOperator):
    """Shared machinery: a geometry -> rays, the cached sparse matrices, shape checks and the matrix products."""

    def __init__(self, image_size, angles, n_detectors: int | None, detector_spacing: float) -> None:
        self.image_size = _image_size(image_size)
        self.angles = as_angles(angles)
        self.n_detectors = default_detectors(self.image_size) if n_detectors is None else n_detectors
        if isinstance(self.n_detectors, bool) or not isinstance(self.n_detectors, (int, np.integer)) \
                or self.n_detectors < 1:
            raise MeddiffError(f"n_detectors={n_detectors!r} must be a positive integer")
        self.n_detectors = int(self.n_detectors)
        if not (math.isfinite(detector_spacing) and detector_spacing > 0):
            raise MeddiffError(f"detector_spacing={detector_spacing!r} must be a positive number (pixels)")
        self.detector_spacing = float(detector_spacing)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return len(self.angles), self.n_detectors

    def _key(self) -> tuple:
        return (type(self).__name__, self.image_size, self.n_detectors, self.detector_spacing,
                tuple(float(a) for a in self.angles), *self._extra_key())

    def _extra_key(self) -> tuple:
        return ()

    def _rays(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _detector_u(self) -> Tensor:
        return (torch.arange(self.n_detectors, dtype=torch.float64) - (self.n_detectors - 1) / 2) \
            * self.detector_spacing

    def matrices(self, device, dtype) -> tuple[Tensor, Tensor]:
        """(M, M^T) as CSR tensors on ``device`` with ``dtype`` (built on the CPU once per geometry, cached)."""
        key = self._key()
        entry = _CACHE.get(key)
        if entry is None:
            points, dirs = self._rays()
            ray, pix, val = _joseph(points, dirs, self.image_size)
            shape = (len(self.angles) * self.n_detectors, self.image_size[0] * self.image_size[1])
            entry = {"coo": (torch.stack((ray, pix)), val, shape)}
            _CACHE[key] = entry
            while len(_CACHE) > MAX_CACHED:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        sub = (str(torch.device(device)), dtype)
        if sub not in entry:
            index, val, shape = entry["coo"]
            entry[sub] = (_csr(index[0], index[1], val, shape, dtype, device),
                          _csr(index[1], index[0], val, shape[::-1], dtype, device))
        return entry[sub]

    def _check(self, name: str, v: Tensor, tail: tuple[int, int], what: str) -> None:
        if not isinstance(v, Tensor) or v.is_complex() or not v.is_floating_point():
            raise MeddiffError(f"{name} must be a real floating-point tensor {what}")
        if v.ndim < 2 or tuple(v.shape[-2:]) != tuple(tail):
            raise MeddiffError(f"{name} has shape {tuple(v.shape)}; expected (..., {tail[0]}, {tail[1]}) {what}")

    @staticmethod
    def _apply(m: Tensor, v: Tensor, out_tail: tuple[int, int]) -> Tensor:
        lead = v.shape[:-2]
        flat = v.reshape(-1, v.shape[-2] * v.shape[-1]).t()  # [in, B]
        out = torch.sparse.mm(m, flat.contiguous()).t()  # [B, out]
        return out.reshape(*lead, *out_tail)

    def A(self, x: Tensor) -> Tensor:
        """Image (..., H, W) -> sinogram (..., V, D) of line integrals (pixel lengths)."""
        self._check("x", x, self.image_size, "(image)")
        m, _ = self.matrices(x.device, x.dtype)
        return self._apply(m, x, self.sinogram_shape)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Sinogram (..., V, D) -> back-projection (..., H, W), the exact transpose of ``A``."""
        self._check("y", y, self.sinogram_shape, "(sinogram: views, detectors)")
        _, mt = self.matrices(y.device, y.dtype)
        return self._apply(mt, y, self.image_size)

    def ray_lengths(self, device=None, dtype=torch.float32) -> Tensor:
        """A 1: the length of every ray inside the image grid (V, D)."""
        return self.A(torch.ones(self.image_size, device=device, dtype=dtype))


class ParallelBeamCT(_CTProjector):
    """2D parallel-beam Radon transform y = R x: image (..., H, W) -> sinogram (..., V, D), angles (V,) in radians;
    D detectors spaced ``detector_spacing`` pixels (default D: ``default_detectors``, the image diagonal)."""

    def __init__(self, image_size, angles, n_detectors: int | None = None, detector_spacing: float = 1.0) -> None:
        super().__init__(image_size, angles, n_detectors, detector_spacing)

    def _rays(self) -> tuple[Tensor, Tensor]:
        theta = self.angles[:, None]
        u = self._detector_u()[None]
        e = torch.stack((torch.cos(theta), torch.sin(theta)), -1)  # [V,1,2]
        d = torch.stack((torch.sin(theta), -torch.cos(theta)), -1)
        points = (u[..., None] * e).reshape(-1, 2)  # [V*D,2]
        dirs = d.expand(-1, self.n_detectors, -1).reshape(-1, 2)
        return points, dirs

    def subset(self, views) -> "ParallelBeamCT":
        """The operator for the views ``views`` (indices) only (for ordered-subset methods)."""
        return ParallelBeamCT(self.image_size, self.angles[views], self.n_detectors, self.detector_spacing)


class FanBeamCT(_CTProjector):
    """2D fan-beam CT with a flat detector: source at ``source_distance`` R_s from the isocentre, detector at
    ``detector_distance`` R_sd from the source (pixel units, R_sd > R_s > half the image diagonal). Default
    detector spacing: the magnification R_sd / R_s (one image pixel at the isocentre); default D: enough detectors
    for the fan to cover the image diagonal."""

    def __init__(self, image_size, angles, source_distance: float, detector_distance: float,
                 n_detectors: int | None = None, detector_spacing: float | None = None) -> None:
        size = _image_size(image_size)
        radius = math.hypot(*size) / 2
        if not (math.isfinite(source_distance) and source_distance > radius):
            raise MeddiffError(f"source_distance={source_distance!r} must exceed half the image diagonal "
                               f"({radius:.1f} pixels): the source must lie outside the image")
        if not (math.isfinite(detector_distance) and detector_distance > source_distance):
            raise MeddiffError(f"detector_distance={detector_distance!r} (source to detector) must exceed "
                               f"source_distance={source_distance!r} (source to isocentre)")
        self.source_distance, self.detector_distance = float(source_distance), float(detector_distance)
        spacing = self.detector_distance / self.source_distance if detector_spacing is None else detector_spacing
        if n_detectors is None:
            half = detector_distance * radius / math.sqrt(source_distance**2 - radius**2)  # R_sd tan(half fan)
            n_detectors = int(math.ceil(2 * half / spacing)) + 1
        super().__init__(size, angles, n_detectors, spacing)

    def _extra_key(self) -> tuple:
        return (self.source_distance, self.detector_distance)

    def _rays(self) -> tuple[Tensor, Tensor]:
        theta = self.angles[:, None]
        u = self._detector_u()[None]
        e = torch.stack((torch.cos(theta), torch.sin(theta)), -1)  # [V,1,2]
        d = torch.stack((torch.sin(theta), -torch.cos(theta)), -1)
        source = -self.source_distance * d  # [V,1,2]
        target = source + self.detector_distance * d + u[..., None] * e  # [V,D,2]
        dirs = target - source
        dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
        return source.expand(-1, self.n_detectors, -1).reshape(-1, 2), dirs.reshape(-1, 2)

    def subset(self, views) -> "FanBeamCT":
        """The operator for the views ``views`` (indices) only (for ordered-subset methods)."""
        return FanBeamCT(self.image_size, self.angles[views], self.source_distance, self.detector_distance,
                         self.n_detectors, self.detector_spacing)
