"""2.5D distribution metrics and MS-SSIM diversity of generated heads (benchmarks/synthesis3d.py --distribution)."""

from __future__ import annotations

import numpy as np
import pytest

from meddiff.errors import MeddiffError
from meddiff.metrics.features import get_feature_extractor
from meddiff.tasks.synthesis3d.evaluate import distribution_scores, ms_ssim_diversity, orthogonal_slices


def _heads(n: int, seed: int, shape=(24, 28, 32)) -> list[np.ndarray]:
    """Air (-1) volumes with a bright noisy ellipsoid 'head' of random size."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    out = []
    for _ in range(n):
        radii = rng.uniform(0.6, 0.9, 3)
        inside = ((grid / radii[:, None, None, None]) ** 2).sum(0) < 1
        out.append(np.where(inside, rng.uniform(-0.2, 0.8, shape), -1.0).astype(np.float32))
    return out


def test_orthogonal_slices_keep_every_kth_non_air_slice_per_axis():
    v = np.full((12, 16, 20), -1.0, dtype=np.float32)
    v[2:10, 4:12, 5:15] = 0.5  # a box: non-air along X at 2..9, Y at 4..11, Z at 5..14
    slices = orthogonal_slices([v, v], every=2, min_foreground=0.1)
    # every 2nd index that lies inside the box (the box covers >= 10 % of each such slice); two volumes
    assert len(slices["sagittal"]) == 2 * len([i for i in range(0, 12, 2) if 2 <= i < 10])
    assert len(slices["coronal"]) == 2 * len([i for i in range(0, 16, 2) if 4 <= i < 12])
    assert len(slices["axial"]) == 2 * len([i for i in range(0, 20, 2) if 5 <= i < 15])
    assert tuple(slices["axial"].shape[1:]) == (1, 12, 16) and tuple(slices["sagittal"].shape[1:]) == (1, 16, 20)


def test_distribution_scores_separate_a_shifted_set_from_the_same_set():
    extractor = get_feature_extractor("random-cnn")
    real = _heads(6, seed=0)
    same = distribution_scores(real, real, extractor, every=2)
    assert same["fid"] < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    darker = [np.where(v > -1, 0.3 * v - 0.6, -1.0).astype(np.float32) for v in real]
    shifted = distribution_scores(real, darker, extractor, every=2)
    assert shifted["fid"] > 10 * max(same["fid"], 1e-3) and shifted["precision"] < 1.0
    assert set(shifted["per_axis"]) == {"sagittal", "coronal", "axial"} and shifted["features"] == "random-cnn"
    assert np.isclose(shifted["fid"], np.mean([shifted["per_axis"][a]["fid"] for a in shifted["per_axis"]]))


def test_ms_ssim_diversity_is_one_for_copies_and_lower_for_different_heads():
    heads = _heads(3, seed=1, shape=(48, 48, 48))
    assert ms_ssim_diversity([heads[0], heads[0].copy()]) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim_diversity(heads) < 0.9
    with pytest.raises(MeddiffError, match="at least two"):
        ms_ssim_diversity(heads[:1])
