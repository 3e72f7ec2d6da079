"""Downstream utility of synthetic data (train on synthetic, test on real; Esteban et al. 2017, "Real-valued
(medical) time series generation with recurrent conditional GANs"): train the same small classifier on
synthetic only, real only and real + synthetic images, and score each on real held-out images (accuracy, AUROC).

The classifier is `meddiff.nets.SmallCNN` (narrower by default), trained for a fixed number of AdamW
steps on class-balanced cross-entropy (each class weighted by N / (K n_k)), seeded, so the three arms differ
only in their training images. Volumes are classified from their three central orthogonal planes, resized to
28 x 28 and stacked as channels (2.5D).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meddiff.errors import MeddiffError
from meddiff.metrics.features import central_planes, prepare_images
from meddiff.metrics.segmentation import auroc
from meddiff.nets import SmallCNN

UTILITY_WIDTHS = (16, 32, 64)


def class_auroc(scores, labels) -> float:
    """AUROC of class scores: binary labels (N,) with scores (N,) or (N, 2) for class 1, or K classes with
    scores (N, K): macro average of one-vs-rest AUROCs (`meddiff.metrics.segmentation.auroc`, Mann-Whitney)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).reshape(-1)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    if scores.ndim == 1:
        return auroc(scores, labels == 1)
    present = [k for k in range(scores.shape[1]) if 0 < (labels == k).sum() < len(labels)]
    if not present:
        raise MeddiffError("AUROC needs at least two classes among the labels")
    return float(np.mean([auroc(scores[:, k], labels == k) for k in present]))


def classifier_input(images) -> Tensor:
    """Images (N, C, H, W) -> (N, 1, 28, 28) channel mean; volumes (N, C, D, H, W) -> (N, 3, 28, 28): the
    channel means of the three central planes as channels."""
    images = torch.as_tensor(images)
    if images.ndim == 5:
        return torch.cat([prepare_images(plane) for plane in central_planes(images)], dim=1)
    return prepare_images(images)


def _check_labelled(name: str, images, labels) -> tuple[Tensor, Tensor]:
    images, labels = torch.as_tensor(images), torch.as_tensor(labels).reshape(-1).long()
    if images.ndim not in (4, 5) or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise MeddiffError(f"{name}: need images (N, C, H, W) or volumes (N, C, D, H, W) and one label per image, "
                           f"got {tuple(images.shape)} and {tuple(labels.shape)} labels")
    if int(labels.min()) < 0:
        raise MeddiffError(f"{name}: labels must be class indices 0..K-1, got {int(labels.min())}")
    return images, labels


def train_classifier(images, labels, *, num_classes: int | None = None, widths=UTILITY_WIDTHS, steps: int = 400,
                     batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                     log=None) -> SmallCNN:
    """Train SmallCNN(widths) on images (N, C, H, W) or volumes in [-1, 1] (`classifier_input`) and labels
    (N,) for ``steps`` AdamW steps with class-balanced cross-entropy; seeded. ``log(step, loss)`` every 50 steps."""
    images, labels = _check_labelled("training data", images, labels)
    if not isinstance(steps, int) or steps < 20:
        raise MeddiffError(f"steps={steps!r} must be an integer >= 20 (the one-cycle schedule warms up for 10%)")
    k = int(num_classes or int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=k).double()
    if int((counts > 0).sum()) < 2:
        raise MeddiffError(f"training data has a single class ({counts.tolist()} images per class); need two or more")
    weight = (len(labels) / (k * counts.clamp_min(1))).float()
    x = classifier_input(images)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(tuple(widths), k, in_channels=x.shape[1])
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        loss = F.cross_entropy(net(x[idx]), labels[idx], weight=weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if log is not None and (step % 50 == 0 or step == steps):
            log(step, float(loss.detach()))
    return net.eval()


@torch.no_grad()
def predict(net: SmallCNN, images, batch_size: int = 512) -> Tensor:
    """Class probabilities (N, K) float64 of images (N, C, H, W) or volumes (N, C, D, H, W) in [-1, 1]."""
    x = classifier_input(images)
    net.eval()
    return torch.cat([net(x[s:s + batch_size]).softmax(-1) for s in range(0, x.shape[0], batch_size)]).double()


def classification_scores(net: SmallCNN, images, labels) -> dict:
    """{"accuracy", "auroc", "n"} of a classifier on labelled images."""
    images, labels = _check_labelled("test data", images, labels)
    probs = predict(net, images)
    return {"accuracy": float((probs.argmax(1) == labels).double().mean()),
            "auroc": class_auroc(probs.numpy(), labels.numpy()), "n": int(labels.shape[0])}


def train_synthetic_test_real(synthetic: tuple, real_train: tuple, real_test: tuple, *, seed: int = 0,
                              **train_kwargs) -> dict:
    """Train on synthetic (images, labels), real_train and their union; test each on real_test (images, labels).
    -> {"synthetic": {accuracy, auroc, n, n_train}, "real": {...}, "real+synthetic": {...}}."""
    sx, sy = _check_labelled("synthetic", *synthetic)
    rx, ry = _check_labelled("real train", *real_train)
    tx, ty = _check_labelled("real test", *real_test)
    if sx.shape[1:] != rx.shape[1:]:
        raise MeddiffError(f"synthetic images {tuple(sx.shape[1:])} and real ones {tuple(rx.shape[1:])} differ in "
                           "shape; resize them to one size first")
    k = int(max(sy.max(), ry.max(), ty.max())) + 1
    arms = {"synthetic": (sx, sy), "real": (rx, ry), "real+synthetic": (torch.cat([rx, sx]), torch.cat([ry, sy]))}
    results = {}
    for name, (x, y) in arms.items():
        net = train_classifier(x, y, num_classes=k, seed=seed, **train_kwargs)
        results[name] = {**classification_scores(net, tx, ty), "n_train": int(y.shape[0])}
    return results
