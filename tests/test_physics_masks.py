"""Undersampling masks: acceleration, fully sampled centre, seeding, variable density, the `meddiff mask` CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.physics import PATTERNS, PATTERNS_1D, acceleration_of, acs_slice, centre_block, make_mask
from meddiff.physics.masks import POISSON_TOLERANCE

SHAPE = (96, 80)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("accel", [2, 4, 8, 12])
def test_acceleration_within_tolerance(pattern, accel):
    mask = make_mask(SHAPE, accel, pattern, acs_fraction=0.06, seed=0)
    assert mask.dtype == torch.float32 and tuple(mask.shape) == SHAPE
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    got = acceleration_of(mask)
    n = SHAPE[1] if pattern in PATTERNS_1D else SHAPE[0] * SHAPE[1]
    # 1D: the line count is round(n / accel), so the error is at most half a line; 2D: bisection tolerance.
    tol = accel * (0.5 / (n / accel) + 1e-9) if pattern in PATTERNS_1D else accel * POISSON_TOLERANCE
    assert abs(got - accel) <= tol + 1e-9, f"{pattern}: asked {accel}x, got {got:.3f}x"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_centre_fully_sampled_and_seeding(pattern):
    a = make_mask(SHAPE, 6, pattern, acs_fraction=0.1, seed=1)
    sy, sx = acs_slice(SHAPE[0], 0.1), acs_slice(SHAPE[1], 0.1)
    if pattern in PATTERNS_1D:  # whole columns (axis -1): the ACS columns are fully sampled, lines are complete
        assert bool(a[:, sx].all())
        assert bool((a == a[:1]).all()), "1D masks sample complete lines"
    else:
        assert bool(a[sy, sx].all())
    assert torch.equal(a, make_mask(SHAPE, 6, pattern, acs_fraction=0.1, seed=1)), "same seed -> same mask"
    assert not torch.equal(a, make_mask(SHAPE, 6, pattern, acs_fraction=0.1, seed=2)), "new seed -> new mask"


def test_axis_and_centre_block():
    rows = make_mask(SHAPE, 4, "random", acs_fraction=0.1, seed=0, axis=-2)
    assert bool((rows == rows[:, :1]).all()), "axis=-2 samples whole rows"
    ay, ax = centre_block(rows)
    h, w = SHAPE
    assert ay >= 8 and ax == 24
    assert bool(rows[h // 2 - ay // 2: h // 2 - ay // 2 + ay, w // 2 - ax // 2: w // 2 - ax // 2 + ax].all())


def test_variable_density_is_denser_in_the_centre():
    for pattern in ("gaussian", "poisson", "vd_random"):
        m = make_mask(SHAPE, 6, pattern, acs_fraction=0.04, seed=0)
        h, w = SHAPE
        inner = m[h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean()
        outer = (m.sum() - m[h // 4: 3 * h // 4, w // 4: 3 * w // 4].sum()) / (m.numel() * 0.75)
        assert inner > 1.5 * outer, f"{pattern}: centre density {inner:.2f} vs periphery {outer:.2f}"
    eq = make_mask(SHAPE, 4, "equispaced", acs_fraction=0.0, seed=0)[0]
    gaps = torch.diff(torch.nonzero(eq).flatten())
    assert int(gaps.max()) - int(gaps.min()) <= 1, "equispaced lines have a constant gap"


def test_mask_bad_arguments():
    with pytest.raises(MeddiffError, match="pattern"):
        make_mask(SHAPE, 4, "spiral")
    with pytest.raises(MeddiffError, match="acceleration"):
        make_mask(SHAPE, 0.5, "random")
    with pytest.raises(MeddiffError, match="acs_fraction"):
        make_mask(SHAPE, 12, "random", acs_fraction=0.3)
    with pytest.raises(MeddiffError, match="shape"):
        make_mask((8,), 4, "random")


def _cli(argv):
    from meddiff.cli import mask as mask_cli

    parser = argparse.ArgumentParser()
    mask_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_mask_cli_writes_npy(tmp_path, capsys):
    out = tmp_path / "m.npy"
    assert _cli(["mask", "--shape", "64", "48", "--acceleration", "8", "--pattern", "poisson", "--seed", "3",
                 "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved.dtype == np.uint8 and saved.shape == (64, 48)
    assert np.array_equal(saved, make_mask((64, 48), 8, "poisson", seed=3).numpy().astype(np.uint8))
    assert "acceleration" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out], "no temporary file left behind"
    with pytest.raises(MeddiffError, match="must end in .npy"):
        _cli(["mask", "--shape", "64", "48", "--acceleration", "4", "--out", str(tmp_path / "m.txt")])
