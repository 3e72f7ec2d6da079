"""MedSegDiff-style segmentation (meddiff.tasks.segment.medsegdiff, issue 25): one-hot coding, majority fusion and
the vote entropy against hand computations, the sampler's labels (valid ids; with an oracle network every sample is
the oracle's map and the uncertainty is 0), a short training run lowering the denoising loss, the expected
calibration error against a hand computation, a checkpoint through ``meddiff segment --samples K`` end to end, and
the one-line errors (wrong grid, K < 1, label ids out of range)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from meddiff.cli.main import main
from meddiff.diffusion import make_schedule
from meddiff.diffusion.losses import diffusion_loss
from meddiff.errors import MeddiffError
from meddiff.tasks.segment import NUM_CLASSES, SlicePrep, expected_calibration_error, save_segmenter
from meddiff.tasks.segment.medsegdiff import (PREDICTION, MedSegDiffSegmenter, checkpoint_meta, decode_labels,
                                              encode_labels, fit_medsegdiff, fuse_votes, network_config,
                                              random_network)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = {"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000}
TINY = {"channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1, "norm_num_groups": 4}


def test_encode_decode_round_trip_and_range():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    x = encode_labels(labels, 3)
    assert x.shape == (1, 3, 2, 2) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(x.sum(1), torch.full((1, 2, 2), -1.0))  # one +1 and two -1 per pixel
    assert torch.equal(decode_labels(x), labels)
    with pytest.raises(MeddiffError, match=r"labels must lie in 0..2, got 0..3"):
        encode_labels(torch.tensor([[[0, 3]]]), 3)


def test_majority_fusion_and_entropy_by_hand():
    # 3 samples of a 1 x 4 map; pixel 0 unanimous, pixel 1 two votes for 1, pixel 2 a three-way tie, pixel 3 2:1 for 2
    samples = torch.tensor([[[0, 1, 0, 2]], [[0, 1, 1, 2]], [[0, 2, 2, 0]]])
    labels, freq, unc = fuse_votes(samples, 3)
    assert labels.tolist() == [[0, 1, 0, 2]]  # the tie goes to the lowest class id
    third = 1 / 3
    want = torch.tensor([[[1, 0, third, third]], [[0, 2 * third, third, 0]], [[0, third, third, 2 * third]]])
    torch.testing.assert_close(freq, want)
    h21 = -(2 * third * math.log(2 * third) + third * math.log(third))
    torch.testing.assert_close(unc, torch.tensor([[0.0, h21, math.log(3), h21]]))
    with pytest.raises(MeddiffError, match="K >= 1"):
        fuse_votes(torch.zeros((0, 2, 2), dtype=torch.long), 3)


def test_ece_by_hand():
    # 4 voxels, 2 classes: confidences 0.9, 0.9 (one right, one wrong), 0.6, 0.6 (both right); 15 bins
    probs = np.array([[0.9, 0.9, 0.4, 0.6], [0.1, 0.1, 0.6, 0.4]])
    ref = np.array([0, 1, 1, 0])
    region = np.ones(4, dtype=bool)
    # bin of 0.9: |0.5 - 0.9| x 0.5; bin of 0.6: |1 - 0.6| x 0.5
    assert expected_calibration_error(probs, ref, region) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    onehot = np.eye(2)[ref].T  # a perfectly confident, perfectly right map
    assert expected_calibration_error(onehot, ref, region) == pytest.approx(0.0)


class _Oracle(nn.Module):
    """Predicts the same clean one-hot map x0 at every t (x0-parametrisation): DDIM must return it exactly."""

    def __init__(self, labels: torch.Tensor, k: int) -> None:
        super().__init__()
        self.register_buffer("x0", encode_labels(labels, k))
        self.config = {"image_size": list(labels.shape[-2:])}
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond_image=None):
        assert cond_image is not None and cond_image.shape[1] == 1
        return self.x0[: x.shape[0]].expand_as(x)


def test_sampler_labels_valid_and_oracle_gives_zero_uncertainty():
    k = 4
    truth = torch.randint(0, k, (3, 8, 8), generator=torch.Generator().manual_seed(0))
    schedule = make_schedule(SCHEDULE)
    seg = MedSegDiffSegmenter(_Oracle(truth, k), schedule, k, steps=3)
    samples = seg.sample_labels(torch.zeros(3, 1, 8, 8), samples=5, batch=3)
    assert samples.shape == (5, 3, 8, 8) and all(torch.equal(s, truth) for s in samples)
    freq = seg.predict(torch.zeros(3, 1, 8, 8), samples=5, batch=3)
    labels, _, unc = fuse_votes(samples, k)
    assert torch.equal(labels, truth) and torch.equal(freq.argmax(1), truth) and float(unc.abs().max()) == 0.0
    # an untrained network: still valid labels, frequencies are multiples of 1/K summing to 1, reproducible
    net = random_network({**network_config(k, (8, 8), TINY)}, seed=1)
    rand = MedSegDiffSegmenter(net, schedule, k, steps=2, seed=3)
    s1 = rand.sample_labels(torch.randn(2, 1, 8, 8), samples=3)
    assert s1.dtype == torch.long and int(s1.min()) >= 0 and int(s1.max()) < k
    p = rand.predict(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), samples=3)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 8, 8))
    torch.testing.assert_close(p * 3, (p * 3).round())
    p2 = rand.predict(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), samples=3)
    assert torch.equal(p, p2)


def test_sampler_failure_paths():
    net = random_network(network_config(3, (8, 8), TINY))
    seg = MedSegDiffSegmenter(net, make_schedule(SCHEDULE), 3, steps=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MeddiffError, match="K >= 1"):
            seg.predict(torch.zeros(1, 1, 8, 8), samples=bad)
    with pytest.raises(MeddiffError, match=r"12 x 8 do not match the model's 8 x 8 grid") as info:
        seg.predict(torch.zeros(1, 1, 12, 8), samples=2)
    assert "\n" not in str(info.value)
    with pytest.raises(MeddiffError, match="steps must be >= 1"):
        MedSegDiffSegmenter(net, make_schedule(SCHEDULE), 3, steps=0)


def test_short_training_lowers_the_denoising_loss():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(8, 8, 8, generator=g) > 0.5).long() + (torch.rand(8, 8, 8, generator=g) > 0.7).long()
    images = labels[:, None].float() - 1 + 0.05 * torch.randn(8, 1, 8, 8, generator=g)
    net = random_network(network_config(3, (8, 8), TINY))
    schedule = make_schedule(SCHEDULE)
    t = torch.tensor([100.0, 400.0, 700.0, 900.0] * 2)
    noise = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def loss(model):
        with torch.no_grad():
            return float(diffusion_loss(model.eval(), encode_labels(labels, 3), schedule, PREDICTION, t=t,
                                        noise=noise, cond={"cond_image": images}))

    before = loss(net)
    saved = []
    net, ema, steps = fit_medsegdiff(net, images, labels, schedule, seconds=1e9, max_steps=60, batch=8, lr=3e-3,
                                     ema_decay=0.9, checkpoint=lambda e, s, sec: saved.append(s))
    assert steps == 60 and saved == [60]
    assert loss(net) < 0.7 * before and loss(ema) < 0.8 * before, (before, loss(net), loss(ema))


def test_checkpoint_through_meddiff_segment(tmp_path, capsys):
    prep = SlicePrep(image_size=(16, 24))
    mcfg = {"network": TINY, "schedule": SCHEDULE, "sampling_steps": 2, "samples": 3}
    meta = checkpoint_meta({"prior": "none"}, mcfg, prep, ["s1"], {"labelled_subjects": 1, "steps": 0})
    net = random_network(meta["medsegdiff"]["network"], seed=0)
    ckpt = save_segmenter(tmp_path / "msd", MedSegDiffSegmenter(net, make_schedule(SCHEDULE), NUM_CLASSES, 2),
                          meta=meta)
    vol = np.zeros((14, 24, 6), np.float32)
    vol[2:12, 3:21] = 100 + np.random.default_rng(0).normal(0, 5, (10, 18, 6))
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "t1.nii.gz")
    rc = main(["segment", "--checkpoint", str(ckpt), "--input", str(tmp_path / "t1.nii.gz"), "--out",
               str(tmp_path / "l.nii.gz"), "--samples", "3", "--uncertainty-out", str(tmp_path / "u.nii.gz"),
               "--probabilities-out", str(tmp_path / "p.nii.gz"), "--cleanup", "none"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    labels = np.asarray(nib.load(tmp_path / "l.nii.gz").dataobj)
    probs = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    unc = np.asarray(nib.load(tmp_path / "u.nii.gz").dataobj)
    assert labels.shape == vol.shape and probs.shape == vol.shape + (NUM_CLASSES,)
    np.testing.assert_allclose(probs * 3, np.round(probs * 3), atol=1e-5)  # vote frequencies of 3 samples
    np.testing.assert_array_equal(labels, probs.argmax(-1))
    p = np.clip(probs, 1e-12, None)
    np.testing.assert_allclose(unc, -(probs * np.log(p)).sum(-1), atol=1e-5)
    assert np.all(unc[probs.max(-1) == 1] < 1e-8)  # unanimous voxels (the entropy clamps p at 1e-12)
    rc = main(["segment", "--checkpoint", str(ckpt), "--input", str(tmp_path / "t1.nii.gz"), "--out",
               str(tmp_path / "l2.nii.gz"), "--samples", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and "--samples 0" in err and "Traceback" not in err
