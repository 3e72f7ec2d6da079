"""meddiff.nets: UNet and classifier factories, conditioning, config round trip and error messages."""

from __future__ import annotations

import pytest
import torch

from meddiff.errors import MeddiffError
from meddiff.nets import build_classifier, build_network, build_unet

TINY = {"channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1}


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """MONAI zero-initialises the output convolution; give every weight a random value so outputs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


@pytest.mark.parametrize("dims,size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_unet_shapes_2d_3d(dims, size):
    net = build_unet({**TINY, "dims": dims, "in_channels": 2})
    x = torch.randn(2, 2, *size)
    assert net(x, torch.tensor([1.0, 500.0])).shape == x.shape
    assert net.config["out_channels"] == 2
    assert net.config["use_flash_attention"] is torch.cuda.is_available()  # auto default, resolved


def test_flash_attention_default_is_auto_and_explicit_values_are_kept(monkeypatch):
    from meddiff.nets import resolve_unet_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_unet_config(TINY)["use_flash_attention"] is False
    assert build_classifier({**TINY, "num_classes": 2}).config["use_flash_attention"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_unet_config(TINY)["use_flash_attention"] is True
    for value in (True, False):  # explicit values win over auto, and survive a round trip
        net = build_unet({**TINY, "use_flash_attention": value})
        assert net.config["use_flash_attention"] is value
        assert build_network(net.config).config == net.config
    with pytest.raises(MeddiffError, match="use_flash_attention='yes' must be true, false or null"):
        build_unet({**TINY, "use_flash_attention": "yes"})


def test_class_conditioning_null_class_and_labels_matter():
    torch.manual_seed(0)
    net = _randomise(build_unet({**TINY, "num_classes": 3})).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10.0, 10.0])
    null = net(x, t, class_labels=torch.tensor([3, 3]))
    torch.testing.assert_close(net(x, t), null, rtol=0, atol=0)  # omitted labels = null class
    a, b = net(x, t, class_labels=torch.tensor([0, 0])), net(x, t, class_labels=torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-3
    assert net.unet.class_embedding.num_embeddings == 4  # 3 classes + null
    with pytest.raises(MeddiffError, match=r"class labels must lie in \[0, 2\]"):
        net(x, t, class_labels=torch.tensor([0, 4]))


def test_image_conditioning_by_concatenation():
    net = _randomise(build_unet({**TINY, "cond_channels": 2})).eval()
    assert net.unet.conv_in.conv.in_channels == 3
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5.0, 5.0])
    c1, c2 = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)
    assert (net(x, t, cond_image=c1) - net(x, t, cond_image=c2)).abs().max() > 1e-3
    with pytest.raises(MeddiffError, match="pass cond_image"):
        net(x, t)
    with pytest.raises(MeddiffError, match="resample it to x's grid"):
        net(x, t, cond_image=torch.randn(2, 2, 8, 8))


def test_flash_attention_matches_default_attention():
    torch.manual_seed(0)
    fast = _randomise(build_unet({**TINY, "use_flash_attention": True})).eval()
    slow = build_unet({**TINY, "use_flash_attention": False}).eval()
    slow.load_state_dict(fast.state_dict())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 900.0])
    torch.testing.assert_close(fast(x, t), slow(x, t), rtol=1e-4, atol=1e-4)


def test_config_round_trip_rebuilds_the_same_network():
    net = _randomise(build_unet({**TINY, "num_classes": 2, "cond_channels": 1, "time_scale": 1000.0}))
    again = build_network(net.config)
    assert again.config == net.config
    again.load_state_dict(net.state_dict())
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([0.3])
    cond = {"class_labels": torch.tensor([1]), "cond_image": torch.randn(1, 1, 16, 16)}
    torch.testing.assert_close(again(x, t, **cond), net(x, t, **cond), rtol=0, atol=0)


def test_size_not_divisible_names_the_fix():
    net = build_unet({"channels": [8, 8, 16, 16], "attention_levels": [False] * 4})
    with pytest.raises(MeddiffError, match=r"not divisible by 8.*pad or crop to a multiple of 8 \(e.g. \(32, 24\)\)"):
        net(torch.randn(1, 1, 28, 20), torch.zeros(1))
    with pytest.raises(MeddiffError, match="pad or crop to a multiple of 8"):
        build_unet({"channels": [8, 8, 16, 16], "attention_levels": [False] * 4, "image_size": 28})


def test_channel_and_config_errors():
    net = build_unet(TINY)
    with pytest.raises(MeddiffError, match="set model.in_channels=3"):
        net(torch.randn(1, 3, 16, 16), torch.zeros(1))
    with pytest.raises(MeddiffError, match=r"expects input \(B, C, H, W\)"):
        net(torch.randn(1, 1, 16, 16, 16), torch.zeros(1))
    with pytest.raises(MeddiffError, match="network is unconditional; set model.num_classes"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1), class_labels=torch.tensor([0]))
    with pytest.raises(MeddiffError, match=r"unknown key\(s\) \['chanels'\]"):
        build_unet({"chanels": [8]})
    with pytest.raises(MeddiffError, match="attention_levels has 1 entries but model.channels has 2"):
        build_unet({"channels": [8, 16], "attention_levels": [True]})
    with pytest.raises(MeddiffError, match="multiples of model.norm_num_groups=8"):
        build_unet({**TINY, "channels": [8, 12], "norm_num_groups": 8})
    with pytest.raises(MeddiffError, match="model.kind='gan' is not supported"):
        build_network({"kind": "gan"})


@pytest.mark.parametrize("dims,size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_classifier_logits_and_gradients(dims, size):
    clf = build_classifier({**TINY, "dims": dims, "num_classes": 3})
    x = torch.randn(2, 1, *size)
    logits = clf(x, torch.tensor([0.0, 999.0]))
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in clf.parameters())
    # it depends on the noise level (time embedding), as a noise-aware classifier must (MONAI zero-initialises
    # the residual branches, so use random weights)
    _randomise(clf)
    assert (clf(x, torch.tensor([0.0, 0.0])) - clf(x, torch.tensor([900.0, 900.0]))).abs().max() > 0
    with pytest.raises(MeddiffError, match="pad or crop to a multiple of 2"):
        clf(torch.randn(1, 1, *[s - 1 for s in size]), torch.zeros(1))


def test_classifier_works_with_classifier_guidance_hook():
    from meddiff.diffusion import ClassifierGuidance, make_schedule

    clf = build_classifier({**TINY, "num_classes": 2})
    hook = ClassifierGuidance(clf, make_schedule("linear"), labels=torch.tensor([1, 0]), scale=1.0)
    x = torch.randn(2, 1, 16, 16)
    out = hook.denoised(x, torch.zeros_like(x), torch.tensor([500.0, 500.0]))
    assert out.shape == x.shape and out.abs().sum() > 0
