"""Connected-component clean-up of label maps (meddiff.tasks.segment.postprocess) on hand-made volumes."""

import numpy as np
import pytest

from meddiff.errors import MeddiffError
from meddiff.tasks.segment.postprocess import clean_labels, largest_foreground, remove_islands


def one_hot_probs(labels, k, second=None):
    """Probabilities with 0.6 on the label, 0.3 on ``second`` (a map or int) and the rest spread."""
    p = np.full((k,) + labels.shape, 0.1 / max(k - 2, 1), dtype=np.float32)
    second = np.broadcast_to(np.asarray(second if second is not None else 0), labels.shape)
    for c in range(k):
        p[c][second == c] = 0.3
        p[c][labels == c] = 0.6
    return p


def head():
    """A 12^3 volume: a 'brain' block of class 2 with two equal class-1 blobs (left/right) and a class-1 speck in
    the middle; plus a detached class-3 island far away."""
    lab = np.zeros((12, 12, 12), dtype=np.int64)
    lab[1:8, 1:11, 1:8] = 2
    lab[2:5, 2:4, 2:5] = 1
    lab[2:5, 8:10, 2:5] = 1
    lab[5, 6, 5] = 1           # speck of class 1 inside class 2
    lab[10:12, 10:12, 10:12] = 3  # detached island
    return lab


def test_largest_foreground_removes_the_detached_island_only():
    lab = head()
    out = largest_foreground(lab)
    assert (out[10:, 10:, 10:] == 0).all()
    np.testing.assert_array_equal(out[:9], lab[:9])
    empty = np.zeros((4, 4, 4), dtype=np.int64)
    np.testing.assert_array_equal(largest_foreground(empty), empty)


def test_remove_islands_relabels_specks_to_the_next_most_probable_class():
    lab = head()
    probs = one_hot_probs(lab, 4, second=2)
    out = remove_islands(lab, probs, min_fraction=0.1)
    assert out[5, 6, 5] == 2                        # the speck (1 voxel < 10 % of 18) -> its second class
    assert (out[2:5, 2:4, 2:5] == 1).all() and (out[2:5, 8:10, 2:5] == 1).all()  # both equal blobs kept
    assert (out[10:, 10:, 10:] == 3).all()          # the only class-3 component is its largest: kept
    assert (out != lab).sum() == 1


def test_clean_labels_variants_and_errors():
    lab = head()
    probs = one_hot_probs(lab, 4, second=2)
    np.testing.assert_array_equal(clean_labels(lab, probs, "none"), lab)
    both = clean_labels(lab, probs, "brain+islands", 0.1)
    assert both[5, 6, 5] == 2 and (both[10:, 10:, 10:] == 0).all()
    with pytest.raises(MeddiffError, match="choose one of"):
        clean_labels(lab, probs, "largest")
    with pytest.raises(MeddiffError, match="do not match"):
        remove_islands(lab, probs[:, :-1])
    with pytest.raises(MeddiffError, match="min_fraction"):
        remove_islands(lab, probs, min_fraction=2)
