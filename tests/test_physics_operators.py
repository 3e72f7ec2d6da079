"""Physics operators: adjointness over a registry, FFT unitarity, pseudo-inverse, data-consistency projections,
wavelet orthogonality and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.physics import (FFT2, CoilSensitivity, Compose, Downsampling, FiniteDifference, Inpainting,
                             MultiCoilMRI, SingleCoilMRI, dwt2, fft2c, from_channels, idwt2, ifft2c, inner,
                             make_mask, rss, sense_combine, to_channels)
from meddiff.physics.wavelets import FILTERS

H, W, C = 24, 20, 4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _crandn(*shape, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def _maps(seed: int = 1) -> torch.Tensor:
    s = _crandn(C, H, W, seed=seed)
    return s / rss(s)  # sum_c |S_c|^2 = 1


MASK = make_mask((H, W), 4, "random", acs_fraction=0.1, seed=3)
MASK_2X = make_mask((H, W), 2, "equispaced", acs_fraction=0.2, seed=0)  # well-posed with C = 4 coils
PIXEL_MASK = (torch.rand(H, W, generator=_gen(5)) > 0.5).float()

# name -> (operator factory, example input x)
REGISTRY = {
    "fft2": (lambda: FFT2(), lambda: _crandn(2, H, W)),
    "single_coil_mri": (lambda: SingleCoilMRI(MASK), lambda: _crandn(2, H, W)),
    "coil_sensitivity": (lambda: CoilSensitivity(_maps()), lambda: _crandn(2, H, W)),
    "multi_coil_mri": (lambda: MultiCoilMRI(_maps(), MASK), lambda: _crandn(2, H, W)),
    "multi_coil_mri_2x": (lambda: MultiCoilMRI(_maps(), MASK_2X), lambda: _crandn(2, H, W)),
    "composed_mri": (lambda: SingleCoilMRI(MASK) @ CoilSensitivity(_maps()), lambda: _crandn(2, H, W)),
    "inpainting_real": (lambda: Inpainting(PIXEL_MASK), lambda: torch.randn(2, 3, H, W, generator=_gen())),
    "inpainting_complex": (lambda: Inpainting(PIXEL_MASK), lambda: _crandn(2, H, W)),
    "downsampling_real": (lambda: Downsampling(4), lambda: torch.randn(2, 1, H, W, generator=_gen())),
    "downsampling_complex": (lambda: Downsampling(2), lambda: _crandn(H, W)),
    "finite_difference": (lambda: FiniteDifference(), lambda: _crandn(2, H, W)),
}
# Operators with a closed-form (or quickly converging CG) projection and prox.
# multi_coil_mri_2x uses the generic CG projection (R = 4 with 4 random coils is too ill-posed for 1e-5).
PROJECTABLE = ["fft2", "single_coil_mri", "multi_coil_mri_2x", "inpainting_real", "inpainting_complex",
               "downsampling_real", "downsampling_complex"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_adjointness(name):
    make_op, make_x = REGISTRY[name]
    err = make_op().adjointness_test(make_x(), generator=_gen(7))
    assert err < 1e-5, f"{name}: <Ax, y> vs <x, A^H y> relative mismatch {err:.2e}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_adjointness_test_catches_a_wrong_adjoint(name):
    make_op, make_x = REGISTRY[name]
    op = make_op()
    op.A_adjoint = lambda y, _f=op.A_adjoint: 1.1 * _f(y)  # a wrong adjoint must be detected
    assert op.adjointness_test(make_x(), generator=_gen(7)) > 1e-2


@pytest.mark.parametrize("name", PROJECTABLE)
def test_projection_is_idempotent_and_consistent(name):
    make_op, make_x = REGISTRY[name]
    op, x = make_op(), make_x()
    y = op.A(make_x() * 0 + _like(x, seed=11))
    p = op.project(x, y)
    atol = 1e-4 if name == "multi_coil_mri_2x" else 1e-5  # generic CG vs closed form
    assert torch.allclose(op.A(p), y, atol=atol), "projection must satisfy A x = y exactly"
    assert torch.allclose(op.project(p, y), p, atol=atol), "projection must be idempotent"
    # Closest point: the correction is in the range of A^H (orthogonal to the null space), so
    # ||x - p||^2 + ||p - z||^2 = ||x - z||^2 for any other consistent z.
    z = op.project(_like(x, seed=12), y)
    lhs = float(inner(x - p, x - p) + inner(p - z, p - z))
    assert math.isclose(lhs, float(inner(x - z, x - z)), rel_tol=1e-4)


@pytest.mark.parametrize("name", PROJECTABLE)
def test_prox_limits_and_generic_cg_agree(name):
    make_op, make_x = REGISTRY[name]
    op, x = make_op(), make_x()
    y = op.A(_like(x, seed=13))
    assert torch.allclose(op.prox(x, y, 0.0), x, atol=1e-6)
    assert torch.allclose(op.prox(x, y, math.inf), op.project(x, y), atol=1e-5)
    from meddiff.physics import LinearOperator
    generic = LinearOperator.prox(op, x, y, 0.7, maxiter=100)  # CG on (I + g A^H A) z = x + g A^H y
    assert torch.allclose(op.prox(x, y, 0.7), generic, atol=1e-4)


def _like(x, seed):
    return _crandn(*x.shape, seed=seed) if x.is_complex() else torch.randn(x.shape, generator=_gen(seed))


def test_fft_is_unitary_and_centred():
    x = _crandn(3, H, W)
    k = fft2c(x)
    assert torch.allclose(k.norm(), x.norm(), rtol=1e-5), "orthonormal FFT preserves the norm"
    assert torch.allclose(ifft2c(k), x, atol=1e-5), "round trip"
    const = torch.ones(H, W, dtype=torch.complex64)
    kc = fft2c(const)
    assert abs(kc[H // 2, W // 2] - math.sqrt(H * W)) < 1e-3, "DC sits at (H//2, W//2) with value sqrt(HW)"
    assert float(kc.abs().sum() - kc[H // 2, W // 2].abs()) < 1e-3
    assert torch.allclose(ifft2c(fft2c(_crandn(C, 2, H, W))), _crandn(C, 2, H, W), atol=1e-5)


def test_multicoil_equals_composition_and_pinv_matches_cg():
    maps, x = _maps(), _crandn(2, H, W)
    op = MultiCoilMRI(maps, MASK)
    assert torch.allclose(op.A(x), (SingleCoilMRI(MASK) @ CoilSensitivity(maps)).A(x), atol=1e-6)
    assert op.norm(x, iters=50) <= 1.0 + 1e-4, "normalised maps and a 0/1 mask give ||A|| <= 1"
    # Full sampling: pinv recovers x exactly, and dc_step(1) is the coil-wise k-space replacement.
    full = MultiCoilMRI(maps, torch.ones(H, W))
    assert torch.allclose(full.A_dagger(full.A(x), maxiter=50), x, atol=1e-4)
    y = op.A(_crandn(2, H, W, seed=9))
    step = op.dc_step(x, y, 1.0)
    replaced = (maps.conj() * op.project_coils(CoilSensitivity(maps).A(x), y)).sum(-3)
    assert torch.allclose(step, replaced, atol=1e-5)


def test_per_call_mask_overrides_and_does_not_mutate():
    x = _crandn(H, W)
    other = make_mask((H, W), 2, "equispaced", acs_fraction=0.1, seed=0)
    op = SingleCoilMRI(MASK)
    y = op.A(x, mask=other)
    assert torch.equal(op.mask, MASK)
    assert torch.allclose(y, other * fft2c(x))
    with pytest.raises(MeddiffError, match="needs a mask"):
        SingleCoilMRI().A(x)


def test_downsampling_pinv_and_single_coil_project_restore_kspace():
    x = torch.randn(1, 1, H, W, generator=_gen())
    op = Downsampling(2)
    assert torch.allclose(op.A(op.A_dagger(op.A(x))), op.A(x), atol=1e-6)
    img, truth = _crandn(H, W), _crandn(H, W, seed=4)
    y = SingleCoilMRI(MASK).A(truth)
    k = fft2c(SingleCoilMRI(MASK).project(img, y))
    assert torch.allclose(k[MASK.bool()], fft2c(truth)[MASK.bool()], atol=1e-5), "measured k-space restored"
    assert torch.allclose(k[~MASK.bool()], fft2c(img)[~MASK.bool()], atol=1e-5), "unmeasured k-space kept"


def test_channels_round_trip_and_sense_combine():
    x = _crandn(2, H, W)
    assert torch.equal(from_channels(to_channels(x)), x)
    maps = _maps()
    assert torch.allclose(sense_combine(maps * x.unsqueeze(-3), maps), x, atol=1e-5)
    assert torch.allclose(rss(maps * x.unsqueeze(-3)), x.abs(), atol=1e-5)


@pytest.mark.parametrize("wavelet", sorted(FILTERS))
def test_wavelet_is_orthogonal(wavelet):
    x = _crandn(2, 32, 48)
    c = dwt2(x, 3, wavelet)
    assert torch.allclose(idwt2(c, 3, wavelet), x, atol=1e-5), "round trip"
    assert math.isclose(float(c.norm()), float(x.norm()), rel_tol=1e-5), "Parseval"
    y = _crandn(2, 32, 48, seed=5)
    assert math.isclose(float(inner(dwt2(y, 3, wavelet), c)), float(inner(y, x)), rel_tol=1e-4, abs_tol=1e-3)
    ramp = torch.outer(torch.linspace(0, 1, 32), torch.ones(48))  # piecewise smooth -> sparse in wavelets
    cr = dwt2(ramp, 3, wavelet).flatten().abs().sort(descending=True).values
    assert float((cr[:100] ** 2).sum() / (cr**2).sum()) > 0.95


def test_bad_inputs_name_the_argument():
    x = _crandn(H, W)
    op = SingleCoilMRI(MASK)
    with pytest.raises(MeddiffError, match="x must be complex"):
        op.A(x.real)
    with pytest.raises(MeddiffError, match="y must be complex"):
        op.A_adjoint(fft2c(x).real)
    with pytest.raises(MeddiffError, match="mask has shape"):
        op.A(x, mask=torch.ones(H + 1, W))
    with pytest.raises(MeddiffError, match="mask is empty"):
        op.A(x, mask=torch.zeros(H, W))
    with pytest.raises(MeddiffError, match="only 0 and 1"):
        op.A(x, mask=torch.full((H, W), 0.5))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(MeddiffError, match="x contains 1 NaN"):
        op.A(bad)
    with pytest.raises(MeddiffError, match="mask contains"):
        op.A(x, mask=torch.full((H, W), float("nan")))
    with pytest.raises(MeddiffError, match="maps has shape"):
        MultiCoilMRI(_crandn(C, H, W + 2), MASK).A(x)
    with pytest.raises(MeddiffError, match="divisible by factor"):
        Downsampling(7).A(torch.randn(H, W))
    with pytest.raises(MeddiffError, match="gamma"):
        op.prox(x, op.A(x), -1.0)
    with pytest.raises(MeddiffError, match="divisible by 2"):
        dwt2(torch.randn(30, 30), 3)
    with pytest.raises(MeddiffError, match="wavelet"):
        dwt2(torch.randn(32, 32), 3, "db3")
    assert isinstance(Compose(FFT2(), FFT2()), Compose)


def test_calibration_and_baseline_bad_inputs():
    from meddiff.physics import cg_sense, estimate_sensitivity_maps

    k = fft2c(_maps() * _crandn(H, W, seed=2))  # [C,H,W] fully sampled
    with pytest.raises(MeddiffError, match="kspace must be complex"):
        estimate_sensitivity_maps(k.abs())
    with pytest.raises(MeddiffError, match="not fully sampled"):
        estimate_sensitivity_maps(k * MASK, acs=12)
    with pytest.raises(MeddiffError, match="method"):
        estimate_sensitivity_maps(k, acs=8, method="walsh")
    with pytest.raises(MeddiffError, match="kspace must be"):
        estimate_sensitivity_maps(k[None], acs=8)
    op = MultiCoilMRI(_maps(), MASK)
    with pytest.raises(MeddiffError, match="y must be complex"):
        cg_sense(op, k.abs())
    with pytest.raises(MeddiffError, match="mask has shape"):
        cg_sense(MultiCoilMRI(_maps(), torch.ones(H, W + 1)), k)


def test_docstring_examples_run():
    import doctest

    import meddiff.physics.operators as module

    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 5 and result.failed == 0
