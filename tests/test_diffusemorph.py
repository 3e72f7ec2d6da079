"""DiffuseMorph / DDM model (meddiff.tasks.register.diffusemorph): the latent scaling gives the identity at gamma 0
and the registration field at gamma 1, the ablation's velocity scales linearly, the SVF semigroup holds for the
scaled fields, the joint loss trains both networks, 2D and 3D, checkpoints round-trip in fp16, bad checkpoints
fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.register.diffusemorph import (DiffuseMorph, DiffuseMorphConfig, diffusemorph_loss,
                                                 load_diffusemorph, pair_scale, save_diffusemorph)
from meddiff.tasks.register.fields import identity_grid, integrate_velocity, sample, warp
from meddiff.tasks.register.interpolate import ddm_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(score_channels=(4, 8), latent_channels=3, channels=(4, 8), strides=(2,), features=4, num_res_units=0,
            kernel=3)


def _blob(shape=(32, 32), centre=(15.5, 15.5), width=4.0):
    g = identity_grid(shape, dtype=torch.float64).numpy()
    c = np.asarray(centre, dtype=np.float64).reshape((len(shape),) + (1,) * len(shape))
    return np.exp(-((g - c) ** 2).sum(0) / (2 * width**2)).astype(np.float32)


def _net(diffusion=True, dims=2, seed=0, perturb=True):
    torch.manual_seed(seed)
    net = DiffuseMorph(DiffuseMorphConfig(spatial_dims=dims, diffusion=diffusion, **TINY))
    if perturb:  # untrained output layers are zero / near zero: give them weight so the fields are not trivial
        with torch.no_grad():
            net.flow.weight.normal_(0, 0.05)
            if net.score is not None:
                for p in net.score.unet.out.parameters():
                    p.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("diffusion", [True, False])
def test_gamma_zero_is_the_identity_and_gamma_one_the_registration_field(diffusion):
    net = _net(diffusion)
    a, b = _blob(), _blob(centre=(18.5, 14.5))
    fields = ddm_fields(net, a, b, [0.0, 1.0])
    assert torch.count_nonzero(fields[0]) == 0  # exactly: v = G(s, 0 c) - G(s, 0) = 0
    src = torch.from_numpy(a)[None, None]
    assert torch.equal(warp(src, fields[0]), src)  # the source itself
    scale = pair_scale(a, b)
    with torch.no_grad():
        full = net(torch.from_numpy(a / scale)[None, None], torch.from_numpy(b / scale)[None, None])
    assert fields[1].abs().max() > 1e-3
    torch.testing.assert_close(fields[1], full)  # gamma 1: the field the registration loss trains


def test_ablation_velocity_scales_linearly_and_fields_compose():
    """Without the diffusion part v_gamma = gamma v: exp(0.5 v) applied twice ~ exp(v) (SVF semigroup)."""
    net = _net(diffusion=False)
    s, t = torch.from_numpy(_blob())[None, None], torch.from_numpy(_blob(centre=(18.5, 14.5)))[None, None]
    with torch.no_grad():
        v1, vh = net.velocity(s, t, 1.0), net.velocity(s, t, 0.5)
    torch.testing.assert_close(vh, 0.5 * v1)
    v = 20 * v1 / v1.abs().max()  # a smooth field of up to 2 voxels
    half, full = integrate_velocity(0.5 * v), integrate_velocity(v)
    grid = identity_grid(v.shape[2:])[None]
    composed = half + sample(half, grid + half, padding="border")  # u(p) + u(p + u(p))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert (composed - full)[inner].abs().max() < 0.05 * full.abs().max()


def test_latent_scaling_moves_monotonically_between_the_frames():
    """DDM: the displacement grows with gamma from 0 (source) to the full field."""
    net = _net(True)
    a, b = _blob(), _blob(centre=(18.5, 14.5))
    norms = [float(f.norm()) for f in ddm_fields(net, a, b, [0.0, 0.25, 0.5, 1.0])]
    assert norms[0] == 0 and norms[1] > 0 and norms[-1] > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_joint_loss_trains_both_networks(dims):
    torch.manual_seed(0)
    net = DiffuseMorph(DiffuseMorphConfig(spatial_dims=dims, **TINY))
    shape = (16,) * dims
    s = torch.from_numpy(_blob(shape, (7.5,) * dims, 3.0))[None, None]
    t = torch.from_numpy(_blob(shape, (8.5,) * dims, 3.0))[None, None]
    loss, parts = diffusemorph_loss(net, s, t, torch.Generator().manual_seed(0))
    loss.backward()
    assert np.isfinite(float(loss)) and parts["diffusion"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.score.parameters())
    assert net.flow.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert net(s, t).shape == (1, dims) + shape


def test_training_a_few_steps_registers_a_shifted_blob():
    torch.manual_seed(0)
    net = DiffuseMorph(DiffuseMorphConfig(**{**TINY, "similarity": "mse", "reg_weight": 0.01,
                                             "registration_weight": 100.0}))
    s, t = torch.from_numpy(_blob(width=3.0))[None, None], torch.from_numpy(_blob(centre=(17.5, 15.5),
                                                                                   width=3.0))[None, None]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = diffusemorph_loss(net, s, t, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        warped = warp(s, net.eval()(s, t))
    assert float(((warped - t) ** 2).mean()) < 0.7 * float(((s - t) ** 2).mean())


def test_checkpoint_round_trip_and_errors(tmp_path):
    net = _net(True)
    save_diffusemorph(tmp_path / "ck", net, {"note": "tiny"}, {"command.txt": "x\n"})
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert meta["method"] == "diffusemorph" and meta["config"]["latent_channels"] == 3
    loaded = load_diffusemorph(tmp_path / "ck")
    a, b = _blob(), _blob(centre=(18.5, 14.5))
    x, y = ddm_fields(net, a, b, [0.5])[0], ddm_fields(loaded.net, a, b, [0.5])[0]
    torch.testing.assert_close(x, y, atol=2e-3 * float(x.abs().max()) + 1e-5, rtol=0)  # fp16 weights
    with pytest.raises(MeddiffError, match="no diffusemorph registration checkpoint there"):
        load_diffusemorph(tmp_path / "missing")
    meta["method"] = "voxelmorph"
    (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MeddiffError, match="not a diffusemorph registration checkpoint"):
        load_diffusemorph(tmp_path / "ck")
    with pytest.raises(MeddiffError, match="unknown keys"):
        DiffuseMorphConfig.from_dict({"spatial_dims": 2, "colour": 1})


@pytest.mark.parametrize("diffusion", [True, False])
def test_meeting_term_needs_reverse_pairs_and_compares_the_half_way_warps(diffusion):
    torch.manual_seed(0)
    net = DiffuseMorph(DiffuseMorphConfig(diffusion=diffusion, meeting_weight=1.0, **TINY))
    a = torch.from_numpy(_blob((16, 16), (7.5, 7.5), 3.0))[None, None]
    b = torch.from_numpy(_blob((16, 16), (8.5, 7.5), 3.0))[None, None]
    loss, parts = diffusemorph_loss(net, torch.cat([a, b]), torch.cat([b, a]), torch.Generator().manual_seed(0))
    assert np.isfinite(float(loss)) and parts["meeting"] < 0  # -LNCC of the two half-way warps
    with pytest.raises(MeddiffError, match="reverse pairs"):
        diffusemorph_loss(net, torch.cat([a, b]), torch.cat([b, b]))
