"""DDeP-style segmentation (meddiff.tasks.segment.ddep, issue 25): the shipped prior's denoiser with a K-class head
keeps every pre-trained tensor (and leaves the prior untouched), a short fine-tune lowers the Dice + CE loss on a
synthetic task (whole network and decoder only, the encoder then unchanged), the random-weight control differs from
the pre-trained network, and bad input fails with one-line errors."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from meddiff.errors import MeddiffError
from meddiff.nets import build_network
from meddiff.tasks.segment.ddep import DDePNet, DDePSegmenter, build_ddep, fit_ddep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"kind": "unet", "channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
        "norm_num_groups": 4}


def _tiny_net(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(TINY)


def _task(n=12, size=16, seed=0):
    """Images (n, 1, size, size): a bright square (class 1) and a dark disc (class 2) on tissue, with noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        a, b = torch.randint(1, size - 6, (2,), generator=g).tolist()
        c, d = torch.randint(3, size - 3, (2,), generator=g).tolist()
        lab = torch.zeros(size, size, dtype=torch.long)
        lab[((yy - c) ** 2 + (xx - d) ** 2) <= 4] = 2
        lab[a:a + 5, b:b + 5] = 1
        img = torch.where(lab == 1, 0.8, torch.where(lab == 2, -0.8, 0.0)) + 0.1 * torch.randn(size, size, generator=g)
        images.append(img[None])
        labels.append(lab)
    return torch.stack(images), torch.stack(labels)


def _loss(model, x, y):
    with torch.no_grad():
        return float(DiceCELoss(to_onehot_y=True, softmax=True)(model.eval()(x), y[:, None]))


def test_head_has_k_channels_and_keeps_the_prior_weights():
    from meddiff.tasks.prior import load_prior

    prior = load_prior("brain_t1_ixi")
    net = prior.denoiser.model
    model = DDePNet(net, 10, t=10.0)
    assert model.head.out_channels == 10 and model.head.in_channels == net.unet.out[-1].conv.in_channels
    ours, theirs = model.net.state_dict(), net.state_dict()
    head = {k for k in theirs if k.startswith("unet.out.2.")}
    assert head and all(torch.equal(ours[k], theirs[k]) for k in theirs if k not in head)
    key = "unet.down_blocks.1.resnets.0.conv1.conv.weight"
    assert torch.equal(ours[key], theirs[key]) and ours[key].abs().sum() > 0
    assert net.unet.out[-1].conv.out_channels == 1  # the prior itself is not modified
    x = torch.zeros(1, 1, 96, 120)
    assert model(x).shape == (1, 10, 96, 120)
    p = DDePSegmenter(model).predict(x)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 96, 120))
    control = build_ddep(prior.meta["network"], 10, 10.0, seed=0)
    assert not torch.equal(control.net.state_dict()[key], theirs[key])


@pytest.mark.parametrize("part", ["all", "decoder"])
def test_short_fine_tune_lowers_the_loss(part):
    x, y = _task()
    model = DDePNet(_tiny_net(), 3, t=10.0, seed=0)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _loss(model, x, y)
    model, steps = fit_ddep(model, x, y, seconds=1e9, max_steps=40, train=part, batch=6, lr=3e-3, head_lr=1e-2)
    after = _loss(model, x, y)
    assert steps == 40 and after < 0.8 * before, (before, after)
    after_state = model.state_dict()
    enc = [k for k in before_state if ".down_blocks." in k or ".conv_in." in k]
    dec = [k for k in before_state if ".up_blocks." in k]
    changed = lambda ks: any(not torch.equal(before_state[k], after_state[k]) for k in ks)  # noqa: E731
    assert changed(dec)
    assert changed(enc) == (part == "all")


def test_bad_input_one_line_errors():
    x, y = _task(n=2)
    with pytest.raises(MeddiffError, match="at least 2 classes"):
        DDePNet(_tiny_net(), 1, t=10.0)
    model = DDePNet(_tiny_net(), 3, t=10.0)
    with pytest.raises(MeddiffError, match="train part 'encoder'"):
        fit_ddep(model, x, y, seconds=1, max_steps=1, train="encoder")
    with pytest.raises(MeddiffError, match=r"images \(S, 1, H, W\) and labels"):
        fit_ddep(model, x, y[:1], seconds=1, max_steps=1)
    with pytest.raises(MeddiffError, match=r"must be \(B, 1, H, W\)") as info:
        model(torch.zeros(1, 2, 16, 16))
    assert "\n" not in str(info.value)
    with pytest.raises(MeddiffError, match="multiple of"):  # a grid the network cannot take: names the fix
        model(torch.zeros(1, 1, 15, 16))
