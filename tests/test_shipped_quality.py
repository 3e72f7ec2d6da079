"""Quality tests of the shipped models (issue 20, item 8): one test per folder of assets/checkpoints/.

Each test measures the shipped model on held-out data (which data: its docstring) and asserts a fixed threshold
that (a) the shipped weights pass with margin and (b) the same architecture FAILS when it is
- ``random``: built from the checkpoint's own network config with fresh initial weights (torch seed 0; MONAI's
  diffusion UNet zero-initialises its output layer, so an untrained UNet predicts 0 everywhere), or
- ``shuffled``: the shipped tensors with their elements permuted (same weight statistics, structure destroyed).
Both checks sit in the same test, so every test shows that it can fail. One known gap is recorded as a strict xfail:
brats_classifier does not recognise tumour in unseen subjects (its model card says so; its passing test is on its
training subject). Two tests need ../shared/data (the held-out IXI subjects, AdrenalMNIST3D val); the rest use the
assets shipped in the package.

Diffusion models: the unweighted denoising MSE in the checkpoint's parametrisation (eps or v), via
``meddiff.diffusion.diffusion_loss``, at fixed timesteps with fixed noise (seeded per timestep; the training noise
kind, simplex for the AnoDDPM models), averaged over the timesteps. For eps models a loss of 1 is what predicting
zero gives. Thresholds are constants set from the measured values (torch 2.13 CPU), quoted next to each.
The work is kept small (a few images, a few timesteps) so the file runs in the default suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from meddiff.data import asset_path
from meddiff.diffusion import make_schedule
from meddiff.diffusion.losses import diffusion_loss
from meddiff.diffusion.noise import make_noise
from meddiff.metrics.segmentation import auroc
from meddiff.nets import CLASS_LABELS, SmallCNN, build_network
from meddiff.tasks.anomaly import (
    brain_masks,
    brats_case_subject,
    brats_npz_subjects,
    model_inputs,
    to_model_size,
)
from meddiff.training.checkpoint import load_checkpoint
from meddiff.training.shipped import SHIPPED_DIR, shipped_path

BROKEN = ("random", "shuffled")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ShippedBelowThreshold(AssertionError):
    """The shipped model misses a threshold (what an xfail of a known quality gap expects; a broken variant that
    passes raises a plain AssertionError instead, which such an xfail does not swallow)."""


# ----------------------------------------------------------------------------------------------- helpers
def shuffled_copy(model: torch.nn.Module, net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``net`` (same architecture) loaded with ``model``'s tensors, each with its elements randomly permuted."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (v.flatten()[torch.randperm(v.numel(), generator=g)].reshape(v.shape) if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    net.load_state_dict(state)
    return net.eval()


def variants(name: str) -> tuple[dict[str, torch.nn.Module], dict]:
    """{"shipped", "random", "shuffled"} networks of a shipped checkpoint, and its meta."""
    model, meta = load_checkpoint(name)
    with torch.random.fork_rng(devices=[]):       # the global RNG of other tests stays as it was
        torch.manual_seed(0)
        random = build_network(meta["network"]).eval()
    shuffled = shuffled_copy(model, build_network(meta["network"]))
    return {"shipped": model, "random": random, "shuffled": shuffled}, meta


def training_noise(name: str) -> dict | None:
    """diffusion.noise of the config the shipped model was trained with (None: Gaussian)."""
    config = yaml.safe_load((shipped_path(name) / "config.yaml").read_text())
    return (config.get("diffusion") or {}).get("noise")


@torch.no_grad()
def denoising_losses(models: dict, meta: dict, x0: torch.Tensor, times, *, cond: dict | None = None,
                     noise: dict | None = None) -> dict[str, float]:
    """Per model: the mean over ``times`` of the unweighted denoising MSE (the checkpoint's parametrisation), every
    model seeing the same noise (``noise``: the training noise config; None: Gaussian), seeded per timestep."""
    schedule = make_schedule(meta["schedule"])
    draw = make_noise(noise)
    noises = [draw(tuple(x0.shape), torch.Generator().manual_seed(1000 + int(t))).to(x0.dtype) for t in times]
    out = {}
    for name, model in models.items():
        losses = [float(diffusion_loss(model, x0, schedule, meta["prediction"], t=torch.full((len(x0),), float(t)),
                                       noise=eps, cond=cond)) for t, eps in zip(times, noises)]
        out[name] = float(np.mean(losses))
    return out


def assert_below(values: dict[str, float], threshold: float, what: str) -> None:
    """The shipped value is below ``threshold`` and every broken variant's is not (the test can fail)."""
    print(f"\n{what}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) + f" (threshold < {threshold})")
    for name in BROKEN:
        assert values[name] >= threshold, f"{what}: the {name} model passes ({values[name]:.4f} < {threshold}): " \
                                          "the threshold cannot tell a broken model"
    if not values["shipped"] < threshold:
        raise ShippedBelowThreshold(f"{what}: shipped model {values['shipped']:.4f} >= {threshold}")


def assert_above(values: dict[str, float], threshold: float, what: str) -> None:
    print(f"\n{what}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()) + f" (threshold >= {threshold})")
    for name in BROKEN:
        assert values[name] < threshold, f"{what}: the {name} model passes ({values[name]:.4f} >= {threshold}): " \
                                         "the threshold cannot tell a broken model"
    if not values["shipped"] >= threshold:
        raise ShippedBelowThreshold(f"{what}: shipped model {values['shipped']:.4f} < {threshold}")


def test_every_shipped_model_has_a_quality_test():
    tested = {"adrenal3d_cond", "brain_mri_prior", "brain_slices_2d", "brain_t1_ixi", "brats_anoddpm", "brats_anoddpm_gaussian",
              "brats_autoencoder", "brats_classifier", "chestxray_anoddpm", "chestxray_autoencoder",
              "chestxray_classifier", "feature_net_pneumonia", "pneumonia_cond",
              "pneumonia_cond_student",  # its quality test: tests/test_distill.py
              "pneumonia_cond_guided_student",  # its quality test: tests/test_distill_guided.py
              "brain_slices_2d_student",  # its quality test: tests/test_distill_brain_student.py
              "brain_parcellation_ixi",  # its quality test: tests/test_segment.py
              "brain3d_ldm",  # its quality test: tests/test_ldm_quality.py
              "sr3_ixi_4x", "unet_sr_ixi_4x",  # their quality tests: tests/test_sr3.py
              "t1_to_t2_flair",  # its quality test: tests/test_translate.py
              "ct_chest_prior",  # its quality test: tests/test_ct_prior.py
              "voxelmorph_ixi",  # its quality test: tests/test_cli_register.py
              "ddm_rat_cine",  # its quality test: tests/test_interpolate.py
              "slices_unet_ixi"}  # its quality test: tests/test_restore_slices_learned.py
    shipped = {p.name for p in SHIPPED_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert shipped == tested, f"shipped models without a quality test: {sorted(shipped - tested)}"


# ----------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def pneumonia_val() -> tuple[torch.Tensor, torch.Tensor]:
    """The 200 val images (100 normal, 100 pneumonia) of the shipped PneumoniaMNIST subset, in [-1, 1]: the
    official val split, which no shipped chest model was trained on (they used the train split)."""
    data = np.load(asset_path("pneumoniamnist/pneumoniamnist_small.npz"))
    x = torch.from_numpy(data["val_images"]).float()[:, None] / 127.5 - 1
    return x, torch.from_numpy(data["val_labels"].reshape(-1)).long()


@pytest.fixture(scope="module")
def brats_unseen() -> torch.Tensor:
    """The 6 BraTS 2020 slices of subjects 001 and 006 (asset brats2020_slices; all with tumour) as the anomaly task
    feeds them to the BraTS models: t1ce/t2/flair, per-slice brain-median scaling, 48 x 48. The BraTS models were
    trained on another subject (TCGA-FG-6692)."""
    slices = []
    for subject in brats_npz_subjects(asset_path("brats2020_slices/brats_slices.npz"), 3):
        raw = np.moveaxis(subject.image, -1, 0)
        slices.append(to_model_size(torch.from_numpy(model_inputs(raw, brain_masks(raw))), (48, 48)))
    return torch.cat(slices)


@pytest.fixture(scope="module")
def brats_training_subject() -> tuple[torch.Tensor, np.ndarray]:
    """Axial slices of the training subject TCGA-FG-6692 (asset brats_tcga_2mm, 2 mm) with >= 5 % brain, padded back
    to the 240 mm field of view of the 1 mm training slices (the asset is the brain box [44:196, 44:220]), then
    prepared like the training data (t1ce/t2/flair, brain-median scaling, 48 x 48); labels: slice has tumour."""
    subject = brats_case_subject(asset_path("brats_tcga_2mm/TCGA-FG-6692"), 3)
    raw = np.moveaxis(subject.image, -1, 0)
    full = np.zeros(raw.shape[:2] + (120, 120), np.float32)
    full[:, :, 22:22 + raw.shape[2], 22:22 + raw.shape[3]] = raw
    masks = brain_masks(full)
    keep = masks.reshape(len(masks), -1).mean(1) >= 0.05
    x = to_model_size(torch.from_numpy(model_inputs(full[keep], masks[keep])), (48, 48))
    return x, subject.labels_per_slice()[keep]


# ----------------------------------------------------------------------------------------------- chest X-ray
PNEUMONIA_TIMES = (200, 500, 800)
# v-MSE on 32 val images, true labels: shipped 0.0651, random 0.349, shuffled 0.367
PNEUMONIA_COND_MAX_LOSS = 0.10
# same images and noise with the labels swapped (normal <-> pneumonia), over the true-label loss: shipped 1.208,
# random 1.000 (its output is zero whatever the class), shuffled 0.998
PNEUMONIA_COND_MIN_SWAP_RATIO = 1.10


def test_pneumonia_cond_denoises_held_out_xrays_and_uses_the_class(pneumonia_val):
    """pneumonia_cond on 32 PneumoniaMNIST val images (the first 16 of each class; held out): v-prediction MSE at
    t = 200, 500, 800 with the true labels, and its rise when the labels are swapped (the class condition matters)."""
    x, y = pneumonia_val
    pick = torch.cat([torch.nonzero(y == c)[:16, 0] for c in (0, 1)])
    x, y = x[pick], y[pick]
    models, meta = variants("pneumonia_cond")
    true = denoising_losses(models, meta, x, PNEUMONIA_TIMES, cond={CLASS_LABELS: y})
    assert_below(true, PNEUMONIA_COND_MAX_LOSS, "pneumonia_cond v-MSE (val)")
    swapped = denoising_losses(models, meta, x, PNEUMONIA_TIMES, cond={CLASS_LABELS: 1 - y})
    ratio = {k: swapped[k] / true[k] for k in models}
    assert_above(ratio, PNEUMONIA_COND_MIN_SWAP_RATIO, "pneumonia_cond swapped / true label loss")


# eps-MSE (simplex noise, as trained) on 32 normal val images: shipped 0.0879, random 0.996, shuffled 1.008
CHEST_ANODDPM_TIMES = (50, 200, 500, 800)
CHEST_ANODDPM_MAX_LOSS = 0.13


def test_chestxray_anoddpm_denoises_held_out_normal_xrays(pneumonia_val):
    """chestxray_anoddpm (trained on the 388 normal train images) on 32 normal PneumoniaMNIST val images (held
    out): eps-MSE with its training noise (simplex, frequency 7) at t = 50, 200, 500, 800."""
    x, y = pneumonia_val
    x = x[y == 0][:32]
    models, meta = variants("chestxray_anoddpm")
    noise = training_noise("chestxray_anoddpm")
    assert noise and noise["kind"] == "simplex"
    losses = denoising_losses(models, meta, x, CHEST_ANODDPM_TIMES, noise=noise)
    assert_below(losses, CHEST_ANODDPM_MAX_LOSS, "chestxray_anoddpm eps-MSE (val normal)")


# reconstruction MSE on the 100 normal val images: shipped 0.0068, random 0.286, shuffled 0.244; the mean
# normal training image 0.0624
CHEST_AE_MAX_MSE = 0.012


@torch.no_grad()
def test_chestxray_autoencoder_reconstructs_held_out_normal_xrays(pneumonia_val):
    """chestxray_autoencoder (trained on the normal train images) on the 100 normal PneumoniaMNIST val images (held
    out): reconstruction MSE, also against the trivial baseline of predicting the mean training image (the mean of
    the shipped subset's 300 normal train images, which the model was trained on)."""
    x, y = pneumonia_val
    x = x[y == 0]
    data = np.load(asset_path("pneumoniamnist/pneumoniamnist_small.npz"))
    train = data["train_images"][data["train_labels"].reshape(-1) == 0]
    mean = torch.from_numpy(train).float().mean(0) / 127.5 - 1
    models, _ = variants("chestxray_autoencoder")
    errors = {k: float(((m(x) - x) ** 2).mean()) for k, m in models.items()}
    errors["mean image"] = float(((x - mean) ** 2).mean())
    assert errors["mean image"] >= CHEST_AE_MAX_MSE, "the trivial mean-image baseline passes"
    assert_below(errors, CHEST_AE_MAX_MSE, "chestxray_autoencoder reconstruction MSE (val normal)")


# AUROC pneumonia vs normal on the 200 val images at t = 0: shipped 0.945, random 0.352, shuffled 0.603; noised to
# t = 300: shipped 0.815, random 0.489, shuffled 0.513. (Accuracy at p = 0.5 is only 0.51: trained on 90 %
# pneumonia, it calls most normals of this balanced set pneumonia; guidance uses its gradient, so the ranking is what
# matters.)
CHEST_CLASSIFIER_MIN_AUROC = 0.85
CHEST_CLASSIFIER_MIN_AUROC_300 = 0.70


@torch.no_grad()
def test_chestxray_classifier_ranks_held_out_xrays(pneumonia_val):
    """chestxray_classifier (noise-aware, trained on the train split) on the 200 PneumoniaMNIST val images (held
    out): AUROC of p(pneumonia) at t = 0 and at t = 300 (noised with a fixed seed; guidance asks it there)."""
    x, labels = pneumonia_val
    y = labels.numpy() == 1
    models, meta = variants("chestxray_classifier")
    alpha, sigma = (float(v) for v in make_schedule(meta["schedule"]).alpha_sigma(300.0))
    x300 = alpha * x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    for t, xt, threshold in ((0, x, CHEST_CLASSIFIER_MIN_AUROC), (300, x300, CHEST_CLASSIFIER_MIN_AUROC_300)):
        scores = {k: auroc(m(xt, torch.full((len(x),), float(t))).softmax(-1)[:, 1].numpy(), y)
                  for k, m in models.items()}
        assert_above(scores, threshold, f"chestxray_classifier AUROC at t = {t} (val)")


# the classification head on the 200 val images: accuracy shipped 0.985, random 0.500, shuffled 0.500;
# AUROC shipped 0.998, random 0.738 (random features already rank the classes somewhat), shuffled 0.479
FEATURE_NET_MIN_ACCURACY = 0.90
FEATURE_NET_MIN_AUROC = 0.97


@torch.no_grad()
def test_feature_net_pneumonia_classifies_held_out_xrays(pneumonia_val):
    """feature_net_pneumonia (the ``pneumonia-cnn`` features of FID/KID; trained on the train split) on the 200
    PneumoniaMNIST val images (held out): accuracy and AUROC of its classification head."""
    from meddiff.metrics.features import get_feature_extractor

    x, y = pneumonia_val
    shipped = get_feature_extractor("pneumonia-cnn").net.eval()
    config = shipped.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = SmallCNN(tuple(config["widths"]), config["num_classes"], config["in_channels"]).eval()
    shuffled = shuffled_copy(shipped, SmallCNN(tuple(config["widths"]), config["num_classes"], config["in_channels"]))
    models = {"shipped": shipped, "random": random, "shuffled": shuffled}
    p = {k: m(x).softmax(-1)[:, 1] for k, m in models.items()}
    accuracy = {k: float(((v > 0.5).long() == y).float().mean()) for k, v in p.items()}
    assert_above(accuracy, FEATURE_NET_MIN_ACCURACY, "feature_net_pneumonia accuracy (val)")
    scores = {k: auroc(v.numpy(), y.numpy() == 1) for k, v in p.items()}
    assert_above(scores, FEATURE_NET_MIN_AUROC, "feature_net_pneumonia AUROC (val)")


# ----------------------------------------------------------------------------------------------- BraTS
BRATS_TIMES = (50, 200, 500, 800)
# eps-MSE on the 6 unseen BraTS 2020 slices: simplex model shipped 0.145, random 0.996, shuffled 1.116;
# Gaussian model shipped 0.0966, random 1.006, shuffled 1.353
BRATS_ANODDPM_MAX_LOSS = 0.22
BRATS_ANODDPM_GAUSSIAN_MAX_LOSS = 0.15


@pytest.mark.parametrize("name, threshold", [("brats_anoddpm", BRATS_ANODDPM_MAX_LOSS),
                                             ("brats_anoddpm_gaussian", BRATS_ANODDPM_GAUSSIAN_MAX_LOSS)])
def test_brats_diffusion_models_denoise_unseen_subjects(brats_unseen, name, threshold):
    """brats_anoddpm (simplex noise) and brats_anoddpm_gaussian, trained on healthy slices of TCGA-FG-6692, on the 6
    BraTS 2020 slices of two other subjects (held out; they contain tumour, which is also unseen): eps-MSE with the
    training noise at t = 50, 200, 500, 800."""
    models, meta = variants(name)
    noise = training_noise(name)
    assert (noise or {}).get("kind", "gaussian") == ("simplex" if name == "brats_anoddpm" else "gaussian")
    losses = denoising_losses(models, meta, brats_unseen, BRATS_TIMES, noise=noise)
    assert_below(losses, threshold, f"{name} eps-MSE (unseen BraTS 2020 slices)")


# reconstruction MSE on the 6 unseen slices: shipped 0.0366, random 0.755, shuffled 0.408; the mean tumour-free
# training slice 0.102
BRATS_AE_MAX_MSE = 0.055


@torch.no_grad()
def test_brats_autoencoder_reconstructs_unseen_subjects(brats_unseen, brats_training_subject):
    """brats_autoencoder (trained on healthy slices of TCGA-FG-6692) on the 6 BraTS 2020 slices of two other
    subjects (held out): reconstruction MSE, also against the trivial baseline of predicting the mean training
    image (the mean of the training subject's tumour-free slices)."""
    x = brats_unseen
    seen, labels = brats_training_subject
    mean = seen[~labels].mean(0)
    models, _ = variants("brats_autoencoder")
    errors = {k: float(((m(x) - x) ** 2).mean()) for k, m in models.items()}
    errors["mean image"] = float(((x - mean) ** 2).mean())
    assert errors["mean image"] >= BRATS_AE_MAX_MSE, "the trivial mean-image baseline passes"
    assert_below(errors, BRATS_AE_MAX_MSE, "brats_autoencoder reconstruction MSE (unseen BraTS 2020 slices)")


# training subject, 60 slices (27 with tumour), t = 0: accuracy shipped 0.983, random 0.45, shuffled 0.55;
# AUROC shipped 1.000, random 0.249, shuffled 0.075 (random networks rank by brain size, which goes with tumour
# presence here, so AUROC alone is a weak check; accuracy at p = 0.5 is the main one)
BRATS_CLASSIFIER_MIN_ACCURACY = 0.85
BRATS_CLASSIFIER_MIN_AUROC = 0.95


@torch.no_grad()
def test_brats_classifier_separates_its_training_subject(brats_training_subject):
    """brats_classifier on the slices of its own training subject TCGA-FG-6692 (NOT held out: no tumour-free slices
    of another subject are shipped, and it does not generalise to the unseen subjects, see the xfail test below):
    accuracy and AUROC of p(tumour) at t = 0. A regression check of the shipped weights, not a quality claim."""
    x, y = brats_training_subject
    models, _ = variants("brats_classifier")
    p = {k: m(x, torch.zeros(len(x))).softmax(-1)[:, 1].numpy() for k, m in models.items()}
    accuracy = {k: float(((v > 0.5) == y).mean()) for k, v in p.items()}
    assert_above(accuracy, BRATS_CLASSIFIER_MIN_ACCURACY, "brats_classifier accuracy (training subject)")
    scores = {k: auroc(v, y) for k, v in p.items()}
    assert_above(scores, BRATS_CLASSIFIER_MIN_AUROC, "brats_classifier AUROC (training subject)")


# sensitivity (p > 0.5) on the 6 unseen tumour slices: shipped 0/6 (p <= 0.005), random 6/6 (p = 0.57 everywhere),
# shuffled 0/6; specificity on the training subject's 33 tumour-free slices: shipped 0.97, random 0, shuffled 1
BRATS_CLASSIFIER_MIN_UNSEEN_SENSITIVITY = 5 / 6


@pytest.mark.xfail(strict=True, raises=ShippedBelowThreshold,
                   reason="known (model card): brats_classifier memorised its one training subject and gives "
                          "p(tumour) <= 0.005 on the unseen BraTS 2020 tumour slices")
@torch.no_grad()
def test_brats_classifier_detects_tumour_in_unseen_subjects(brats_unseen, brats_training_subject):
    """brats_classifier on the 6 BraTS 2020 tumour slices of two unseen subjects (held out): at least 5 of 6 called
    tumour at t = 0, while still calling >= 85 % of the training subject's tumour-free slices healthy (no held-out
    tumour-free slices are shipped; the specificity part keeps a constant "tumour" answer from passing)."""
    x_seen, y_seen = brats_training_subject
    models, _ = variants("brats_classifier")
    passed = {}
    for k, m in models.items():
        sensitivity = float((m(brats_unseen, torch.zeros(len(brats_unseen))).softmax(-1)[:, 1] > 0.5).float().mean())
        specificity = float((m(x_seen[~y_seen], torch.zeros(int((~y_seen).sum()))).softmax(-1)[:, 1] <= 0.5)
                            .float().mean())
        print(f"\nbrats_classifier {k}: unseen sensitivity {sensitivity:.3f}, seen specificity {specificity:.3f}")
        passed[k] = float(sensitivity >= BRATS_CLASSIFIER_MIN_UNSEEN_SENSITIVITY and specificity >= 0.85)
    assert_above(passed, 1.0, "brats_classifier unseen sensitivity and specificity")


# ----------------------------------------------------------------------------------------------- brain MR
# v-MSE on 8 slices of the two held-out IXI subjects: shipped 0.0922, random 0.812, shuffled 0.789
BRAIN_SLICES_TIMES = (50, 200, 500, 800)
BRAIN_SLICES_MAX_LOSS = 0.14


def test_brain_slices_2d_denoises_held_out_subjects(shared_data):
    """brain_slices_2d on 8 evenly spaced axial slices (of 202) of its validation subjects IXI159-HH-1549 and
    IXI661-HH-2788 (held out by subject; needs ../shared/data: the shipped IXI slices are of training subjects),
    prepared with the training data config: v-prediction MSE at t = 50, 200, 500, 800."""
    from meddiff.data.volumes import SliceDataset

    config = yaml.safe_load((shipped_path("brain_slices_2d") / "config.yaml").read_text())["data"]
    options = {k: v for k, v in config.items() if k not in ("kind", "path", "cache_dir")}
    data = SliceDataset(shared_data / "ixi_t1_2mm_nichart", split="val", **options)
    assert sorted(data.subjects) == ["IXI159-HH-1549", "IXI661-HH-2788"]
    x = torch.stack([data[i]["image"] for i in np.linspace(0, len(data) - 1, 8).round().astype(int)])
    models, meta = variants("brain_slices_2d")
    losses = denoising_losses(models, meta, x, BRAIN_SLICES_TIMES)
    assert_below(losses, BRAIN_SLICES_MAX_LOSS, "brain_slices_2d v-MSE (held-out IXI subjects)")


# v-MSE on the central 128 x 128 of the k-space test slice at t = 10, 50, 150: shipped 0.228, random 0.918,
# shuffled 0.905
BRAIN_PRIOR_TIMES = (10, 50, 150)
BRAIN_PRIOR_MAX_LOSS = 0.34


def test_brain_mri_prior_denoises_the_held_out_kspace_slice():
    """brain_mri_prior on the fully sampled k-space test slice's RSS image (asset kspace_brain_8ch, the ESPIRiT demo
    subject: in none of its training data), scaled as `meddiff reconstruct` scales images for the prior (99.5th
    foreground percentile -> 1), central 128 x 128: v-prediction MSE at the low times it was focused on."""
    from meddiff.tasks import mri

    ref = torch.from_numpy(np.load(asset_path("kspace_brain_8ch/rss_reference.npy")))
    scale = float(torch.quantile(ref[ref > 0.1 * ref.max()].double(), mri.SCALE_PERCENTILE / 100))
    x = (2 * ref / scale - 1).clamp(-1, 1.5)
    top, left = (x.shape[0] - 128) // 2, (x.shape[1] - 128) // 2
    x = x[top:top + 128, left:left + 128][None, None].float()
    models, meta = variants("brain_mri_prior")
    losses = denoising_losses(models, meta, x, BRAIN_PRIOR_TIMES)
    assert_below(losses, BRAIN_PRIOR_MAX_LOSS, "brain_mri_prior v-MSE (k-space test slice)")


# v-MSE on 8 val-subject slices at t = 10, 50, 150, 500: shipped 0.171 (step 4200; step 3200: 0.175, step 2200: 0.180,
# step 1400: 0.186, step 900: 0.193), random 0.906, shuffled 0.964
BRAIN_T1_IXI_TIMES = (10, 50, 150, 500)
BRAIN_T1_IXI_MAX_LOSS = 0.30


def test_brain_t1_ixi_denoises_held_out_subjects(shared_data):
    """brain_t1_ixi on 8 evenly spaced axial slices of its 10 validation subjects (split file next to the checkpoint;
    held out by subject, not its test subjects), prepared with its training data config (whole 90 x 120 slices
    padded to 96 x 120, each scaled as the MRI solvers scale a slice): v-prediction MSE at low to middle times,
    where the reconstruction solvers use it."""
    import json

    from meddiff.data.volumes import SliceDataset

    folder = shipped_path("brain_t1_ixi")
    config = yaml.safe_load((folder / "config.yaml").read_text())["data"]
    split = json.loads((folder / "split.json").read_text())
    options = {k: v for k, v in config.items() if k not in ("kind", "path", "cache_dir", "split_file", "augment")}
    data = SliceDataset(shared_data / "ixi_t1_2mm_dlmuse", split="val", split_file=str(folder / "split.json"),
                        **options)
    assert sorted(data.subjects) == sorted(split["val"]) and len(split["val"]) == 10
    assert not set(split["test"]) & set(split["train"])
    x = torch.stack([data[i]["image"] for i in np.linspace(0, len(data) - 1, 8).round().astype(int)])
    models, meta = variants("brain_t1_ixi")
    losses = denoising_losses(models, meta, x, BRAIN_T1_IXI_TIMES)
    assert_below(losses, BRAIN_T1_IXI_MAX_LOSS, "brain_t1_ixi v-MSE (held-out IXI subjects)")


# ----------------------------------------------------------------------------------------------- adrenal 3D
# v-MSE on 6 val volumes (3 per class) at t = 200, 800: shipped 0.0404, random 0.987, shuffled 0.709
ADRENAL_TIMES = (200, 800)
ADRENAL_MAX_LOSS = 0.06


def test_adrenal3d_cond_denoises_held_out_volumes(shared_data):
    """adrenal3d_cond on 6 AdrenalMNIST3D val volumes (3 normal, 3 mass; held out; needs ../shared/data), resized
    64^3 -> 28^3 as in training: v-prediction MSE with the true labels at t = 200 and 800. (The class condition is
    not tested: swapping the labels changes this loss by < 1 %, as the model card's weak class signal suggests.)"""
    from meddiff.data.transforms import resize

    data = np.load(shared_data / "medmnist" / "adrenalmnist3d_64.npz")
    images, labels = data["val_images"], data["val_labels"].reshape(-1)
    pick = np.concatenate([np.nonzero(labels == c)[0][:3] for c in (0, 1)])
    x = torch.stack([resize(torch.from_numpy(images[i]).float()[None] / 127.5 - 1, 28) for i in pick]).float()
    y = torch.from_numpy(labels[pick]).long()
    models, meta = variants("adrenal3d_cond")
    losses = denoising_losses(models, meta, x, ADRENAL_TIMES, cond={CLASS_LABELS: y})
    assert_below(losses, ADRENAL_MAX_LOSS, "adrenal3d_cond v-MSE (val)")
