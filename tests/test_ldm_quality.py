"""Quality test of the shipped brain3d_ldm (issue 27; listed in tests/test_shipped_quality.py's
``test_every_shipped_model_has_a_quality_test``): the autoencoder and the latent UNet on two held-out IXI heads,
against random-weight and shuffled-weight copies of each (the helpers and the random/shuffled convention of
tests/test_shipped_quality.py). Thresholds are constants set from the measured values (torch 2.13 CPU), quoted
next to each."""

from __future__ import annotations

import json

import pytest
import torch
from test_shipped_quality import assert_below, denoising_losses, shuffled_copy

from meddiff.training.shipped import shipped_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 val subjects (split.json next to the checkpoint; the models saw the train subjects only), measured:
# autoencoder L1 (model range) of posterior-mean reconstructions of the central 48 x 64 x 64 voxels: shipped
# 0.205, random 0.579, shuffled 0.628; latent UNet v-MSE with the subject's own
# label map at t = 300, 600: shipped 0.100, random 1.009, shuffled 1.133; with the
# two subjects' label maps swapped: 0.116 (1.16x).
LDM_AE_MAX_L1 = 0.3
LDM_TIMES = (300, 600)
LDM_MAX_LOSS = 0.4


@pytest.fixture(scope="module")
def brain3d_ldm_val(shared_data):
    """(heads (2, 1, 96, 128, 128) in model range, latent conditions (2, 10, 24, 32, 32)) of the first two val
    subjects, prepared as in training (meddiff.data.heads)."""
    from meddiff.data.heads import HEAD_GRID, normalize_head, pad_volume
    from meddiff.tasks.segment.data import load_labelled
    from meddiff.tasks.synthesis3d.labelmap import condition_from_labels

    split = json.loads((shipped_path("brain3d_ldm") / "split.json").read_text())
    heads, conds = [], []
    for subject in split["val"][:2]:
        s = load_labelled(shared_data / "ixi_t1_2mm_dlmuse", subject)
        heads.append(torch.from_numpy(pad_volume(normalize_head(s.image), HEAD_GRID, -1.0))[None])
        conds.append(condition_from_labels(pad_volume(s.labels, HEAD_GRID, 0), 10, 4)[0])
    return torch.stack(heads), torch.stack(conds)


@torch.no_grad()
def test_brain3d_ldm_reconstructs_and_denoises_held_out_heads(brain3d_ldm_val):
    """brain3d_ldm on 2 held-out (val) heads: its autoencoder's reconstruction L1 and its latent UNet's v-MSE on the
    scaled latents of those heads, conditioned on their own label maps; random and shuffled autoencoders / UNets
    fail both, and swapping the two subjects' label maps raises the UNet's loss (the condition is used)."""
    from meddiff.nets import build_network
    from meddiff.tasks.synthesis3d import load_ldm
    from meddiff.tasks.synthesis3d.autoencoder import decode, encode

    heads, conds = brain3d_ldm_val
    ldm = load_ldm("brain3d_ldm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        aes = {"shipped": ldm.ae, "random": build_network(ldm.ae.config).eval(),
               "shuffled": shuffled_copy(ldm.ae, build_network(ldm.ae.config))}
        unets = {"shipped": ldm.unet, "random": build_network(ldm.meta["network"]).eval(),
                 "shuffled": shuffled_copy(ldm.unet, build_network(ldm.meta["network"]))}
    crop = heads[:, :, 24:72, 32:96, 32:96]  # the centre of the head (the autoencoder is fully convolutional)
    l1 = {k: float((decode(ae, encode(ae, crop)) - crop).abs().mean()) for k, ae in aes.items()}
    assert_below(l1, LDM_AE_MAX_L1, "brain3d_ldm autoencoder L1 (held-out IXI heads)")
    z = encode(ldm.ae, heads) * ldm.info["scale_factor"]
    losses = denoising_losses(unets, ldm.meta, z, LDM_TIMES, cond={"cond_image": conds})
    swapped = denoising_losses({"swapped": ldm.unet}, ldm.meta, z, LDM_TIMES, cond={"cond_image": conds.flip(0)})
    print(f"\nbrain3d_ldm v-MSE with swapped label maps: {swapped['swapped']:.4f}")
    assert swapped["swapped"] > 1.05 * losses["shipped"], "the latent UNet ignores its label map"
    assert_below(losses, LDM_MAX_LOSS, "brain3d_ldm latent v-MSE (held-out IXI heads)")
