"""Offline feature extractors for FID / KID / precision-recall: a registry of named extractors.

No Inception (or any pretrained) weights can be downloaded and no installed package ships image weights
(torchvision is absent; MONAI and diffusers ship none), so:

- ``pneumonia-cnn``: `SmallCNN` trained by ``scripts/train_feature_net.py`` to tell normal from pneumonia
  chest X-rays (PneumoniaMNIST train split); weights shipped in ``assets/checkpoints/feature_net_pneumonia/``.
  Features are the global-average-pooled last convolution (128 values), the layer before the classifier.
- ``random-cnn``: the same architecture with seeded random weights, the usual random-network baseline for
  domains without a pretrained embedding. Weaker: it measures low-level texture and intensity statistics, not
  anatomy or pathology; use it for images other than chest X-rays and say so.

Every extractor takes images (N, C, H, W) in [-1, 1] of any size: channels are averaged to one (or, with
``channels="each"``, each channel is embedded on its own and the features concatenated) and the image is
resized to the network input (28 x 28, `meddiff.data.transforms.resize`, area averaging).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from meddiff.data.assets import ASSETS_DIR
from meddiff.data.transforms import resize
from meddiff.errors import MeddiffError, check_choice
from meddiff.nets.small_cnn import SmallCNN

FEATURE_NET_DIR = ASSETS_DIR / "checkpoints" / "feature_net_pneumonia"
INPUT_SIZE = 28
CHANNEL_MODES = ("mean", "each")


def prepare_images(images: Tensor, size: int = INPUT_SIZE, channels: str = "mean") -> Tensor:
    """(N, C, H, W) in [-1, 1] -> (N', 1, size, size) float32: channel mean (N' = N) or each channel (N' = N C)."""
    check_choice("channels", channels, CHANNEL_MODES)
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise MeddiffError(f"feature extractors take 2D images (N, C, H, W), got shape {tuple(images.shape)}; "
                           "for volumes pass slices (meddiff.data.extract_slices)")
    x = images.float()
    x = x.mean(1, keepdim=True) if channels == "mean" else x.reshape(-1, 1, *x.shape[-2:])
    if tuple(x.shape[-2:]) != (size, size):
        x = resize(x[:, 0], size)[:, None]  # the batch axis as channels of one (C, H, W) image
    return x.contiguous()


def central_planes(volumes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, C, D, H, W) -> the three central orthogonal planes (N, C, H, W), (N, C, D, W), (N, C, D, H)."""
    d, h, w = volumes.shape[2:]
    return volumes[:, :, d // 2], volumes[:, :, :, h // 2], volumes[:, :, :, :, w // 2]


@dataclass
class FeatureExtractor:
    """``extractor(images (N, C, H, W) in [-1, 1]) -> features (N, dim)`` float64, with the name to report."""

    name: str
    description: str
    net: SmallCNN
    info: dict = field(default_factory=dict)
    channels: str = "mean"
    batch_size: int = 256

    @property
    def dim(self) -> int:
        return self.net.config["widths"][-1]

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, dim) (x C with channels="each"); volumes (N, C, D, H, W) -> (N, 3 dim): the features
        of the three central orthogonal planes concatenated (slice-wise "2.5D" features, the usual stand-in for a
        3D feature network in medical generative papers)."""
        images = torch.as_tensor(images)
        if images.ndim == 5:
            return torch.cat([self(plane) for plane in central_planes(images)], dim=1)
        n = images.shape[0]
        x = prepare_images(images, channels=self.channels)
        self.net.eval()
        out = torch.cat([self.net.features(x[s:s + self.batch_size]) for s in range(0, x.shape[0], self.batch_size)])
        return out.double().reshape(n, -1)

    def card(self) -> dict:
        """What to write next to every number computed with these features."""
        return {"name": self.name, "description": self.description, "dim_per_channel": self.dim,
                "channels": self.channels, **self.info}


def _pneumonia_cnn() -> FeatureExtractor:
    from safetensors.torch import load_file

    weights, meta = FEATURE_NET_DIR / "weights.safetensors", FEATURE_NET_DIR / "meta.json"
    if not weights.is_file() or not meta.is_file():
        raise MeddiffError(f"the pneumonia-cnn weights are missing from {FEATURE_NET_DIR}; retrain them with "
                           "scripts/train_feature_net.py (see its README) or use features='random-cnn'")
    info = json.loads(meta.read_text())
    net = SmallCNN(tuple(info["config"]["widths"]), info["config"]["num_classes"])
    net.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    summary = {k: info[k] for k in ("val_accuracy", "val_auroc", "train_data", "val_data") if k in info}
    return FeatureExtractor("pneumonia-cnn", "SmallCNN normal-vs-pneumonia classifier trained on PneumoniaMNIST "
                            "(penultimate 128-d features)", net, summary)


RANDOM_SEED = 0


def _random_cnn() -> FeatureExtractor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = SmallCNN()
    return FeatureExtractor("random-cnn", f"SmallCNN with random weights (torch.manual_seed({RANDOM_SEED}), "
                            "PyTorch default init; random-feature baseline, weaker than trained features)", net,
                            {"seed": RANDOM_SEED, "torch": torch.__version__.split("+")[0]})


FEATURE_EXTRACTORS = {"pneumonia-cnn": _pneumonia_cnn, "random-cnn": _random_cnn}


def get_feature_extractor(name: str, channels: str = "mean") -> FeatureExtractor:
    """The feature extractor registered as ``name`` (see FEATURE_EXTRACTORS)."""
    check_choice("features", name, FEATURE_EXTRACTORS)
    check_choice("channels", channels, CHANNEL_MODES)
    extractor = FEATURE_EXTRACTORS[name]()
    extractor.channels = channels
    return extractor


def save_feature_net(net: SmallCNN, directory: str | Path, meta: dict, files: dict[str, str] | None = None) -> Path:
    """Write weights.safetensors (fp16, as the shipped diffusion models), meta.json (config + ``meta``) and the text
    ``files`` {name: content} into ``directory`` via a temporary directory renamed when complete."""
    import shutil

    from safetensors.torch import save_file

    from meddiff.files import atomic_path

    directory = Path(directory)
    weights = {k: v.detach().cpu().half().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory, directory=True) as tmp:
        save_file(weights, tmp / "weights.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"config": net.config, **meta}, indent=2) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for f in tmp.iterdir():
            f.chmod(0o644)  # package data: readable by everyone (safetensors writes 0600)
        if directory.is_dir():
            for f in directory.iterdir():  # keep files written by hand beside the weights (README.md)
                if not (tmp / f.name).exists() and f.is_file():
                    shutil.copy2(f, tmp / f.name)
    return directory
