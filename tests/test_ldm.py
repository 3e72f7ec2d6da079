"""Issue 27, first stage: the KL autoencoder network, its loss, `meddiff train` with task autoencoder (exact resume),
the whole-head helpers (padding, label pooling) and the head / latent datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meddiff.data.heads import HeadDataset, LatentDataset, one_hot_latent, pad_volume, unpad_volume
from meddiff.errors import MeddiffError
from meddiff.nets import build_network
from meddiff.nets.autoencoder_kl import autoencoder_loss, kl_divergence, resolve_loss_config
from meddiff.training import Trainer
from meddiff.training.config import resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g) + 0.1
    q = torch.distributions.Normal(mu, sigma)
    reference = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1).mean()
    assert kl_divergence(mu, sigma).item() == pytest.approx(reference.item(), rel=1e-5)
    assert kl_divergence(torch.zeros(1, 2), torch.ones(1, 2)).item() == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_autoencoder_shapes_and_loss_in_2d_and_3d(dims):
    net = build_network({"kind": "autoencoder_kl", "dims": dims, "channels": [4, 8], "latent_channels": 2})
    x = torch.rand((2, 1) + (8,) * dims) * 2 - 1
    mu, sigma = net.encode(x)
    assert net.factor == 2 and mu.shape == (2, 2) + (4,) * dims and (sigma > 0).all()
    assert net.decode(mu).shape == x.shape
    torch.manual_seed(0)
    loss = autoencoder_loss(net, x, {"l1_weight": 2.0, "kl_weight": 0.5})
    torch.manual_seed(0)  # the same reparametrisation draw, computed by hand
    mu, sigma = net.encode(x)
    z = mu + sigma * torch.randn_like(sigma)
    expected = 2.0 * (net.decode(z) - x).abs().mean() + 0.5 * kl_divergence(mu, sigma)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(MeddiffError, match="not a multiple of 2"):
        net.encode(torch.zeros((1, 1) + (7,) * dims))


def test_config_errors_name_the_fix():
    with pytest.raises(MeddiffError, match="loss.kl_weight"):
        resolve_loss_config({"kl_weight": -1})
    with pytest.raises(MeddiffError, match="unknown key"):
        resolve_loss_config({"adv_weight": 0.1})
    with pytest.raises(MeddiffError, match="only used by task: autoencoder"):
        resolve_config({"task": "synthesis", "loss": {}, "run": {"name": "x"}})
    assert resolve_config({"task": "autoencoder", "run": {"name": "x"}})["loss"] == {"l1_weight": 1.0, "kl_weight": 1e-6}
    assert "loss" not in resolve_config({"run": {"name": "x"}})  # other tasks' configs are unchanged
    with pytest.raises(MeddiffError, match="num_classes"):
        build_network({"kind": "autoencoder_kl", "num_classes": 2})


def test_pad_unpad_round_trip_and_grid_error():
    v = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    padded = pad_volume(v, (4, 8, 4), -1.0)
    assert padded.shape == (4, 8, 4) and (padded == -1).sum() == 4 * 8 * 4 - v.size
    assert np.array_equal(unpad_volume(padded, v.shape, (4, 8, 4)), v)
    assert np.array_equal(padded[0:3, 2:6, 1:3], v)  # centred, the odd margin after
    with pytest.raises(MeddiffError, match="does not fit the model grid"):
        pad_volume(np.zeros((5, 4, 2)), (4, 8, 4))


def test_one_hot_latent_equals_class_fractions_per_block():
    g = np.random.default_rng(0)
    labels = g.integers(0, 4, (1, 4, 4, 8))
    pooled = one_hot_latent(torch.from_numpy(labels), 4, 2)
    assert pooled.shape == (1, 4, 2, 2, 4)
    for c, i, j, k in [(0, 0, 0, 0), (3, 1, 1, 3), (2, 0, 1, 2)]:
        block = labels[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2]
        assert pooled[0, c, i, j, k].item() == pytest.approx((block == c).mean())
    assert torch.allclose(pooled.sum(1), torch.ones(1, 2, 2, 4))
    with pytest.raises(MeddiffError, match="label ids must lie in"):
        one_hot_latent(torch.full((1, 2, 2, 2), 4), 4, 2)


def _tiny_cache(tmp_path, n=6):
    g = np.random.default_rng(0)
    subjects = np.asarray([f"S{i}" for i in range(n)])
    images = g.uniform(-1, 1, (n, 8, 8, 8)).astype(np.float16)
    labels = g.integers(0, 10, (n, 8, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "heads.npz", images=images, labels=labels, subjects=subjects,
             affines=np.stack([np.eye(4)] * n), shape=np.asarray([7, 8, 8]))
    split = tmp_path / "split.json"
    split.write_text('{"train": ["S0", "S1", "S2", "S3"], "val": ["S4"], "test": ["S5"]}')
    return tmp_path / "heads.npz", split


def test_head_dataset_split_and_patches(tmp_path):
    heads, split = _tiny_cache(tmp_path)
    train = HeadDataset(heads, "train", split, patch_size=[4, 4, 4])
    assert len(train) == 4 and train.subjects == ["S0", "S1", "S2", "S3"] and train.image_shape == (1, 4, 4, 4)
    patch = train[1]["image"][0].numpy()
    whole = np.load(heads)["images"][1].astype(np.float32)
    hits = [(a, b, c) for a in range(5) for b in range(5) for c in range(5)
            if np.array_equal(whole[a:a + 4, b:b + 4, c:c + 4], patch)]
    assert hits  # the patch is a crop of subject S1's head
    assert HeadDataset(heads, "val", split)[0]["image"].shape == (1, 8, 8, 8)
    with pytest.raises(MeddiffError, match="patch_size"):
        HeadDataset(heads, "train", split, patch_size=[9, 4, 4])
    with pytest.raises(MeddiffError, match="cache not found"):
        HeadDataset(tmp_path / "missing.npz")


def ae_config(heads, split, **run):
    return {"task": "autoencoder", "model": {"channels": [4, 8], "latent_channels": 2},
            "data": {"kind": "heads", "path": str(heads), "split_file": str(split), "patch_size": [4, 4, 4]},
            "loss": {"kl_weight": 1e-3},
            "run": {"name": "ae", "steps": 5, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                    "progress": False, **run}}


def test_trainer_task_autoencoder_resumes_bit_for_bit(tmp_path):
    """Patch crops and the reparametrisation noise come from torch's global RNG (seeded here, as a caller would);
    the checkpoint stores it and the trainer restores it after building the data loader, so a resumed run repeats
    the uninterrupted one exactly."""
    heads, split = _tiny_cache(tmp_path)
    torch.manual_seed(0)
    full = Trainer(ae_config(heads, split), run_dir=tmp_path / "full")
    uninterrupted = full.fit()
    assert full.meta()["network"]["kind"] == "autoencoder_kl" and full.config["loss"]["kl_weight"] == 1e-3

    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ae_config(heads, split), run_dir=tmp_path / "cut").fit(on_step=stop)
    torch.manual_seed(123)  # whatever the caller's RNG holds now, the checkpoint's state is what counts
    after = Trainer(ae_config(heads, split), run_dir=tmp_path / "cut").fit(resume=True)
    assert after == uninterrupted[2:]  # steps 3..5 from the step-2 checkpoint, exact floats (patch draws included)


def test_latent_dataset_items(tmp_path):
    cond = np.random.default_rng(1).uniform(0, 1, (3, 10, 2, 2, 2)).astype(np.float16)
    np.savez(tmp_path / "latents.npz", latents=np.ones((3, 2, 2, 2, 2), np.float32), cond=cond,
             subjects=np.asarray(["S0", "S4", "S5"]), scale_factor=np.float64(0.5))
    (tmp_path / "split.json").write_text('{"train": ["S0"], "val": ["S4"], "test": ["S5"]}')
    data = LatentDataset(tmp_path / "latents.npz", "train", tmp_path / "split.json")
    assert len(data) == 1 and data.image_shape == (2, 2, 2, 2) and data.normalisation["scale_factor"] == 0.5
    assert torch.equal(data[0]["cond_image"], torch.from_numpy(cond[0].astype(np.float32)))


class _LocalDecoder:
    """A stand-in decoder whose output voxel depends on its own latent cell only (nearest upsampling of the channel
    sum), so tiled decoding must reproduce whole-grid decoding exactly whatever the tiles and blending."""

    factor = 4

    def decode(self, z):
        return torch.nn.functional.interpolate(z.sum(1, keepdim=True), scale_factor=self.factor, mode="nearest")


@pytest.mark.parametrize("tile, overlap", [(3, 1), (4, 2), (5, 0), (16, 2)])
def test_tiled_decoding_equals_whole_decoding_for_a_local_decoder(tile, overlap):
    from meddiff.tasks.synthesis3d.autoencoder import _tile_starts, decode

    z = torch.randn(2, 3, 6, 7, 5, generator=torch.Generator().manual_seed(0))
    ae = _LocalDecoder()
    whole = decode(ae, z, tile=None)
    assert whole.shape == (2, 1, 24, 28, 20)
    torch.testing.assert_close(decode(ae, z, tile=tile, overlap=overlap), whole, rtol=1e-5, atol=1e-5)
    for size in (6, 7, 5, 32):  # tiles cover the grid, stay inside it and share at least `overlap` cells
        starts = _tile_starts(size, min(tile, size), overlap)
        covered = set().union(*(range(s, s + min(tile, size)) for s in starts))
        assert covered == set(range(size)) and starts[-1] + min(tile, size) == size
        assert all(b - a <= min(tile, size) - overlap for a, b in zip(starts, starts[1:])) or len(starts) == 1


@torch.no_grad()
def test_tiled_decoding_of_a_real_autoencoder_matches_within_its_tiles():
    """A real (random) 3D autoencoder: one tile covering the grid is exactly whole decoding; smaller tiles differ
    (the group norms see other statistics), which is why the default tile is the training patch."""
    from meddiff.tasks.synthesis3d.autoencoder import decode

    torch.manual_seed(0)
    ae = build_network({"kind": "autoencoder_kl", "dims": 3, "channels": [8, 8], "num_res_blocks": 1,
                        "latent_channels": 2, "norm_num_groups": 4}).eval()
    z = torch.randn(1, 2, 4, 6, 4)
    torch.testing.assert_close(decode(ae, z, tile=6, overlap=2), decode(ae, z, tile=None))
    assert decode(ae, z, tile=2, overlap=0).shape == decode(ae, z, tile=None).shape
