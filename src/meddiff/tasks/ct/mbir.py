"""DiffusionMBIR for a stack of CT slices: a 2D diffusion prior slice by slice plus total variation along z inside
the data-consistency step (Chung, Ryu, Ye, "Solving 3D inverse problems using pre-trained 2D diffusion models",
CVPR 2023).

The D slices of the stack are one batch of the 2D prior. After each x0 prediction v0 (B = D, 1, Hp, Wp), on the
crops (D, H, W), one ADMM iteration (the paper's Alg. 1: its variables z, w carry over from one diffusion step to
the next) solves
    min_v 1/(2 ||A||^2) sum_d ||A v_d - b_d||^2 + lam_z ||D_z v||_1,     D_z v = v[1:] - v[:-1]  (D - 1, H, W)
    v <- CG on (A^T A / ||A||^2 + rho D_z^T D_z) v = A^T b / ||A||^2 + rho D_z^T (z - w), from v0 (``cg_iters``)
    z <- soft-threshold(D_z v + w, lam_z / rho);   w <- w + D_z v - z
Few CG iterations from the prediction keep the prior's image where the data say little (the early-stopped CG that
the paper and its follow-up DDS use). The data term is divided by ||A||^2 (as in ``meddiff.physics.ct.tv``), so
rho and lam_z hardly depend on the view count. ``lam_z = 0`` drops the z term: plain CG data consistency per slice,
the same solver without the 3D regulariser (the ablation of the paper's Table 1).

Differences from the paper, stated: the sampler is DDIM (``eta``) on the VP schedule of meddiff's priors with the
consistency step on the x0 prediction (as DDNM here), where the paper runs a VE predictor-corrector sampler and
applies the step to the noisy sample; TV in-plane is left out (as in the paper's main variant, TV along z only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.physics.operators import conjugate_gradient

MBIR_DEFAULTS = {"steps": 50, "samples": 1, "eta": 0.85, "start": 1.0, "init": "fbp", "init_lam": None, "cg_iters": 5,
                 "rho": 0.05, "lam_z": 0.002}


def diff_z(v: Tensor) -> Tensor:
    """D_z v: (D, H, W) -> (D - 1, H, W), forward differences between neighbouring slices."""
    return v[1:] - v[:-1]


def diff_z_adjoint(g: Tensor) -> Tensor:
    """D_z^T g: (D - 1, H, W) -> (D, H, W), the exact adjoint of ``diff_z``."""
    zero = torch.zeros_like(g[:1])
    return torch.cat([zero, g]) - torch.cat([g, zero])


def soft_threshold(v: Tensor, kappa: float) -> Tensor:
    return torch.sign(v) * (v.abs() - kappa).clamp_min(0.0)


def z_jumps(v: Tensor) -> float:
    """Mean |v[d+1] - v[d]| over a stack (D, H, W): the slice-to-slice jumps that the z term reduces."""
    return float(diff_z(v).abs().mean()) if len(v) > 1 else 0.0


class ZTVConsistency:
    """The DiffusionMBIR data-consistency step on a stack (module docstring) as a ``Projection`` callable
    project(v (D, 1, Hp, Wp), alpha) -> (D, 1, Hp, Wp); ``model`` is a ``CTImageModel`` whose ``b`` holds the whole
    stack (D, V, Det). Keeps the ADMM variables z, w between calls."""

    def __init__(self, model, *, rho: float, lam_z: float, cg_iters: int, norm_sq: float) -> None:
        if not (rho > 0 and lam_z >= 0):
            raise MeddiffError(f"rho={rho!r} must be > 0 and lam_z={lam_z!r} >= 0 (the DiffusionMBIR weights)")
        if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
            raise MeddiffError(f"cg_iters={cg_iters!r} must be a positive integer")
        self.model, self.rho, self.lam_z, self.cg_iters, self.scale = model, rho, lam_z, cg_iters, 1.0 / norm_sq
        self.z = self.w = None

    def __call__(self, v: Tensor, alpha: float) -> Tensor:
        op, m = self.model.op, self.model
        vc = m.inside(v)
        depth = len(vc)
        rhs = self.scale * op.A_adjoint(alpha * m.b.expand(depth, -1, -1))
        use_z = self.lam_z > 0 and depth > 1
        if use_z:
            if self.z is None:
                # warm start: z from the first prediction's differences, shrunk as the z-update would
                self.z, self.w = soft_threshold(diff_z(vc), self.lam_z / self.rho), torch.zeros_like(vc[1:])
            rhs = rhs + self.rho * diff_z_adjoint(self.z - self.w)

            def apply(x):
                return self.scale * op.normal(x) + self.rho * diff_z_adjoint(diff_z(x))
        else:
            def apply(x):
                return self.scale * op.normal(x)
        x = conjugate_gradient(apply, rhs, x0=vc, maxiter=self.cg_iters, tol=1e-6)
        if use_z:
            dz = diff_z(x)
            self.z = soft_threshold(dz + self.w, self.lam_z / self.rho)
            self.w = self.w + dz - self.z
        return m.embed(x, alpha)
