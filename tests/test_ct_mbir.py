"""DiffusionMBIR (meddiff.tasks.ct.mbir): the z-difference adjoint, the ADMM consistency step, and the solver on a
tiny stack with a tiny untrained prior (data consistency improves; TV along z reduces slice-to-slice jumps against
the same solver with lam_z = 0)."""

import numpy as np
import torch

import meddiff.tasks.ct as ct
from helpers import tiny_prior
from meddiff.tasks.ct.mbir import ZTVConsistency, diff_z, diff_z_adjoint, soft_threshold, z_jumps


def _stack(depth: int = 4, size: int = 32, views: int = 12):
    """An HU stack (D, size, size): an ellipse of water whose bright insert moves a little from slice to slice."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    hu = np.full((depth, size, size), -1000.0, np.float32)
    for d in range(depth):
        hu[d][yy**2 / 150 + xx**2 / 110 < 1] = 0
        hu[d][(yy - 2 - d) ** 2 + xx**2 < 12] = 400
    sino, angles, _ = ct.simulate(hu, views)
    return hu, sino, angles


def test_diff_z_adjoint_and_soft_threshold():
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(5, 6, 7, generator=g, dtype=torch.float64), torch.randn(4, 6, 7, generator=g,
                                                                                 dtype=torch.float64)
    assert abs(float((diff_z(v) * w).sum() - (v * diff_z_adjoint(w)).sum())) < 1e-10
    assert torch.equal(diff_z(v)[1], v[2] - v[1])
    s = soft_threshold(torch.tensor([-3.0, -0.5, 0.2, 2.0]), 1.0)
    assert torch.equal(s, torch.tensor([-2.0, 0.0, 0.0, 1.0]))
    assert z_jumps(v[:1]) == 0.0


def test_consistency_step_reduces_the_residual_and_z_jumps():
    hu, sino, angles = _stack()
    problem = ct.make_problem(sino, angles)
    model = ct.CTImageModel(problem, 0, problem.size)
    model.b = problem.y - problem.op.A(torch.ones(problem.size))
    norm_sq = problem.op.norm(torch.zeros(problem.size), iters=20, generator=torch.Generator().manual_seed(0))
    truth = torch.from_numpy(hu) / 1000
    noisy = (truth + 0.3 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1)))[:, None]

    def residual(v):
        return float((problem.op.A(v[:, 0]) - model.b).norm() / model.b.norm())

    plain = ZTVConsistency(model, rho=0.05, lam_z=0.0, cg_iters=10, norm_sq=norm_sq)(noisy, 1.0)
    step = ZTVConsistency(model, rho=0.05, lam_z=0.02, cg_iters=10, norm_sq=norm_sq)
    with_z = step(noisy, 1.0)
    assert residual(plain) < 0.3 * residual(noisy) and residual(with_z) < 0.5 * residual(noisy)
    assert z_jumps(with_z[:, 0]) < z_jumps(plain[:, 0])
    assert step.z is not None and step.z.shape == (3, 32, 32)  # the ADMM state carries over to the next step


def test_mbir_solver_on_a_tiny_stack():
    hu, sino, angles = _stack()
    prior = tiny_prior()
    kwargs = dict(prior=prior, steps=3, start=0.3, init="fbp", cg_iters=8, rho=0.05)
    with_z = ct.reconstruct(sino, angles, "mbir", lam_z=0.02, **kwargs)
    without = ct.reconstruct(sino, angles, "mbir", lam_z=0.0, **kwargs)
    assert with_z.image.shape == (4, 32, 32) and with_z.image.dtype == np.float32
    assert np.isfinite(with_z.image).all() and with_z.nfe == 3 * 4
    problem = ct.make_problem(sino, angles)

    def residual(image):
        x = torch.from_numpy(image) / 1000 + 1
        return float((problem.op.A(x) - problem.y).norm() / problem.y.norm())

    fbp = ct.reconstruct(sino, angles, "fbp").image
    assert residual(without.image) < residual(fbp) and residual(with_z.image) < residual(fbp)
    assert z_jumps(torch.from_numpy(with_z.image)) < z_jumps(torch.from_numpy(without.image))
    again = ct.reconstruct(sino, angles, "mbir", lam_z=0.02, **kwargs)
    np.testing.assert_array_equal(with_z.image, again.image)
