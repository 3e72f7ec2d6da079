"""`meddiff evaluate`: score synthetic images against real ones (issue 6).

Distribution metrics on features of a named extractor (`meddiff.metrics.features`): FID, KID, precision and
recall; memorisation in pixel space against the training images (``train``); train-synthetic-test-real
utility when every set has class labels; optionally paired PSNR / SSIM / MS-SSIM. ``real`` should be images
the generator never saw (e.g. the val split), since it calibrates the near-copy test and is the test set of
the utility classifiers. Images are model space [-1, 1]; fake images of another size are resized to the real
size (area averaging) before anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff import __version__
from meddiff.data import FolderDataset, MedMNISTDataset, read_image
from meddiff.data.assets import resolve_path
from meddiff.data.io import is_medmnist, load_npz
from meddiff.data.transforms import default_norm_for, denormalize, normalize, resize
from meddiff.errors import MeddiffError
from meddiff.metrics.features import get_feature_extractor
from meddiff.metrics.generative import DEFAULT_K, fid, kid, precision_recall
from meddiff.metrics.image import MS_SSIM_WEIGHTS, ms_ssim, psnr, ssim
from meddiff.metrics.memorisation import DEFAULT_QUANTILE, memorisation
from meddiff.metrics.utility import train_synthetic_test_real
from meddiff.training.checkpoint import read_meta

LABEL_KEYS = ("labels", "label", "y")
MODEL_SPACE_TOLERANCE = 1.05  # float images within +-this are taken as model space [-1, 1] (then clipped)


@dataclass
class ImageSet:
    """Images (N, C, *spatial) float32 in [-1, 1], optional labels (N,) int64, names and how they were scaled."""

    images: Tensor
    labels: Tensor | None
    names: list[str]
    source: str
    normalisation: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"source": self.source, "n": len(self.names), "shape": list(self.images.shape[1:]),
                "labels": None if self.labels is None else np.bincount(self.labels.numpy()).tolist(),
                "normalisation": sorted(set(self.normalisation))}


def _to_model_space(arr: np.ndarray, meta) -> tuple[Tensor, str]:
    """One array -> float32 in [-1, 1]: float data already within [-1, 1] is kept (clipped), anything else goes
    through `default_norm_for` (uint8 0..255 fixed, otherwise per-image 0.5-99.5 percentiles)."""
    if arr.dtype.kind == "f" and float(np.abs(arr).max(initial=0.0)) <= MODEL_SPACE_TOLERANCE:
        return torch.from_numpy(np.clip(arr, -1, 1).astype(np.float32)), "model space [-1, 1]"
    cfg = default_norm_for(arr, meta)
    y, _ = normalize(torch.from_numpy(np.array(arr, dtype=np.float32)), cfg)
    label = f"fixed {cfg.a_min:g}..{cfg.a_max:g}" if cfg.mode == "fixed" else f"{cfg.mode} per image"
    return torch.as_tensor(y).float(), label


def _read_labels(path: str | Path, n: int, what: str) -> Tensor:
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{what} {path}: no such file (one integer class label per image)")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
    except Exception as error:
        raise MeddiffError(f"{what} {path}: not readable as integers ({error})") from error
    values = np.asarray(values).reshape(-1)
    if len(values) != n or not np.all(values == np.round(values)) or values.min(initial=0) < 0:
        raise MeddiffError(f"{what} {path}: need {n} non-negative integer labels (one per image, sorted file "
                           f"order), got {len(values)}")
    return torch.from_numpy(values.astype(np.int64))


def _array_layout(arr: np.ndarray, path: Path) -> np.ndarray:
    """A stack of images -> (N, C, *spatial): (N, H, W) -> C 1; (N, C<=4, H, W); (N, D, H, W) -> 1 channel;
    (N, C, D, H, W) as is."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        return arr if arr.shape[1] <= 4 else arr[:, None]
    if arr.ndim == 5:
        return arr
    raise MeddiffError(f"{path}: expected a stack of images (N, H, W), (N, C, H, W) or (N, C, D, H, W); got "
                       f"shape {arr.shape}")


def _sample_folder(path: Path, what: str) -> tuple[Tensor, Tensor | None, str]:
    """A `meddiff sample` output folder: samples.npy (N, C, *spatial) back to model space, labels.npy if any."""
    manifest = json.loads((path / "manifest.json").read_text())
    files = manifest.get("files", {})
    arr = np.load(path / files.get("samples", "samples.npy"), allow_pickle=False).astype(np.float32)
    how = "model space [-1, 1]"
    if manifest.get("intensity_range") == "original":
        try:
            stats = read_meta(manifest["checkpoint"])["normalisation"]
        except (MeddiffError, KeyError, OSError) as error:
            raise MeddiffError(f"{what} {path}: samples are in original intensities but the checkpoint "
                               f"{manifest.get('checkpoint')!r} named in manifest.json (with the normalisation to "
                               "undo) cannot be read here; evaluate where the checkpoint is") from error
        offset = np.asarray(denormalize(np.zeros(1, np.float32), stats))  # the inverse map is affine
        gain = np.asarray(denormalize(np.ones(1, np.float32), stats)) - offset
        arr, how = (arr - offset) / gain, f"checkpoint normalisation ({stats.get('mode')})"
    labels = path / files.get("labels", "labels.npy")
    label_tensor = torch.from_numpy(np.load(labels).reshape(-1).astype(np.int64)) if labels.is_file() else None
    return torch.from_numpy(np.clip(arr, -1, 1)), label_tensor, how


def load_image_set(path: str | Path, *, split: str | None = None, labels: str | Path | None = None,
                   what: str = "images") -> ImageSet:
    """Read a folder of images (PNG/NPY/NIfTI/DICOM; class sub-folders give labels), a `meddiff sample` output
    folder (samples.npy + manifest.json), or an array file (.npy, .npz with an images array and optional
    ``labels``; a MedMNIST .npz gives ``split``) -> ImageSet."""
    path = Path(resolve_path(str(path)))
    if not path.exists():
        raise MeddiffError(f"{what} {path}: no such file or folder")
    norms: list[str] = []
    label_tensor, source = None, str(path)
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "samples.npy").is_file():
        images, label_tensor, how = _sample_folder(path, what)
        names, norms = [f"samples.npy[{i}]" for i in range(len(images))], [how]
    elif path.is_dir():
        dataset = FolderDataset(path, split="all")
        arrays, names = [], []
        for file, label, _ in dataset.items:
            arr, meta = dataset.read(file)
            x, how = _to_model_space(arr, meta)
            if arrays and x.shape != arrays[0].shape:
                raise MeddiffError(f"{what} {file}: shape {tuple(x.shape)} differs from {tuple(arrays[0].shape)} "
                                   f"of {names[0]}; every image of a set must have one size and channel count")
            arrays.append(x)
            names.append(str(file.relative_to(path)))
            norms.append(how)
        images = torch.stack(arrays)
        if dataset.num_classes:
            label_tensor = torch.tensor([label for _, label, _ in dataset.items], dtype=torch.int64)
    else:
        arrays_in = load_npz(path) if path.suffix == ".npz" else None
        if arrays_in is not None and is_medmnist(arrays_in):
            dataset = MedMNISTDataset(path, split=split or "train")
            images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
            label_tensor = None if dataset.multilabel else torch.from_numpy(dataset.labels[:, 0])
            norms, source = ["fixed 0..255"], f"{path} ({split or 'train'} split)"
            names = [f"{split or 'train'}[{i}]" for i in range(len(dataset))]
        else:
            arr, meta = read_image(path)
            arr = _array_layout(arr, path)
            if len(arr) == 0:
                raise MeddiffError(f"{what} {path}: holds no images")
            converted = [_to_model_space(a, meta) for a in arr]
            images = torch.stack([x for x, _ in converted])
            norms = [how for _, how in converted]
            names = [f"{path.name}[{i}]" for i in range(len(arr))]
            found = [k for k in LABEL_KEYS if arrays_in is not None and k in arrays_in]
            if found:
                label_tensor = torch.from_numpy(np.asarray(arrays_in[found[0]]).reshape(-1).astype(np.int64))
                if len(label_tensor) != len(images):
                    raise MeddiffError(f"{what} {path}: {len(label_tensor)} {found[0]} for {len(images)} images")
    if len(images) == 0:
        raise MeddiffError(f"{what} {path}: holds no images")
    if labels is not None:
        label_tensor = _read_labels(labels, len(images), f"labels for {what}")
    return ImageSet(images.float(), label_tensor, names, source, norms)


def _match_size(fake: Tensor, shape: torch.Size) -> Tensor:
    """Resize fake (N, C, *spatial) to the spatial shape of ``shape`` (C, *spatial) with area averaging."""
    if fake.shape[1:] == shape:
        return fake
    n, c = fake.shape[:2]
    flat = resize(fake.reshape(n * c, *fake.shape[2:]), tuple(shape[1:]))  # the batch as channels of one image
    return flat.reshape(n, c, *shape[1:])


def _paired(real: Tensor, fake: Tensor) -> dict:
    """Mean and std of PSNR / SSIM / MS-SSIM over (real[i], fake[i]) pairs, data range 2 (model space)."""
    dims = real.ndim - 2
    if real.shape != fake.shape:
        raise MeddiffError(f"paired metrics need as many real as fake images of one shape; got {tuple(real.shape)} "
                           f"and {tuple(fake.shape)}")
    out = {"data_range": 2.0, "pairs": int(real.shape[0])}
    whole = lambda a: a.flatten(2)[:, :, None]  # noqa: E731  (N, C, 1, voxels): one PSNR per image
    funcs = {"psnr": (1, lambda a, b: psnr(whole(a), whole(b), data_range=2.0)),
             "ssim": (11, lambda a, b: ssim(a, b, 2.0, spatial_dims=dims)),
             "ms_ssim": (11 * 2 ** (len(MS_SSIM_WEIGHTS) - 1), lambda a, b: ms_ssim(a, b, 2.0, spatial_dims=dims))}
    for name, (min_side, func) in funcs.items():
        if min(real.shape[2:]) < min_side:
            out[name] = None
            out[f"{name}_note"] = f"images of size {tuple(real.shape[2:])} are too small (need sides >= {min_side})"
            continue
        values = func(fake, real).reshape(-1)
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std()) if values.numel() > 1 else 0.0
    return out


def evaluate_folders(real: str | Path, fake: str | Path, *, features: str = "pneumonia-cnn",
                     train: str | Path | None = None, labels: str | Path | None = None, real_split: str = "val",
                     train_split: str = "train", fake_split: str | None = None, k: int = DEFAULT_K,
                     kid_subsets: int = 100, kid_subset_size: int = 1000, quantile: float = DEFAULT_QUANTILE,
                     utility: bool = True, utility_steps: int = 400, paired: bool = False, seed: int = 0,
                     channels: str = "mean") -> dict:
    """Score the synthetic images ``fake`` against the real held-out ``real`` (and the training images ``train``)
    -> a JSON-ready dict; ``labels`` is a label file for ``fake`` when its format carries none. Volumes are embedded
    by their three central planes (2.5D features and classifier)."""
    real_set = load_image_set(real, split=real_split, what="--real")
    fake_set = load_image_set(fake, split=fake_split, labels=labels, what="--fake")
    train_set = load_image_set(train, split=train_split, what="--train") if train is not None else None
    shape = real_set.images.shape[1:]
    for name, s in (("--fake", fake_set), ("--train", train_set)):
        if s is not None and (s.images.shape[1] != shape[0] or s.images.ndim != real_set.images.ndim):
            raise MeddiffError(f"{name} images are {tuple(s.images.shape[1:])} (C, *spatial) but --real images are "
                               f"{tuple(shape)}: channel counts and dimensionality must match")
    fake_images = _match_size(fake_set.images, shape)
    train_images = _match_size(train_set.images, shape) if train_set is not None else None
    for name, s in (("--real", real_set), ("--fake", fake_set)):
        if len(s.names) < k + 1:
            raise MeddiffError(f"{name} has {len(s.names)} images; precision/recall with k={k} needs at least {k + 1} "
                               "(FID and KID need many more: hundreds)")
    result = {"meddiff_version": __version__, "real": real_set.describe(), "fake": fake_set.describe(),
              "train": train_set.describe() if train_set is not None else None}
    extractor = get_feature_extractor(features, channels=channels)
    f_real, f_fake = extractor(real_set.images), extractor(fake_images)
    kid_mean, kid_std = kid(f_real, f_fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    precision, recall = precision_recall(f_real, f_fake, k=k)
    card = extractor.card()
    if real_set.images.ndim == 5:
        card = {**card, "name": f"{card['name']} (3 central planes)",
                "volumes": "2.5D: features of the three central orthogonal planes of each volume, concatenated"}
    result.update({
        "features": card, "fid": fid(f_real, f_fake),
        "kid": kid_mean, "kid_std": kid_std, "kid_subsets": kid_subsets,
        "kid_subset_size": min(kid_subset_size, len(f_real), len(f_fake)),
        "precision": precision, "recall": recall, "k": k,
    })
    for name, before, after in (("fake", fake_set.images, fake_images), ("train", train_set and train_set.images,
                                                                          train_images)):
        if after is not None and after.shape[1:] != before.shape[1:]:
            result[name]["resized_to"] = list(shape[1:])
    if train_set is None:
        result["memorisation"] = {"skipped": "no --train images given"}
    else:
        flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
        mem = memorisation(flat(fake_images), flat(train_images), flat(real_set.images), quantile=quantile)
        if mem["summary"]["median_holdout_to_train"] == 0:
            raise MeddiffError("--real and --train hold the same images; --real must be images the model was not "
                               "trained on (e.g. the val split)")
        result["memorisation"] = {"space": "pixels (model space [-1, 1], Euclidean)", **mem["summary"],
                                  "flagged_images": [fake_set.names[i] for i in np.flatnonzero(mem["flagged"].numpy())],
                                  "distance": mem["distance"].tolist(), "nearest_train": mem["index"].tolist()}
    missing = [n for n, s in (("--fake", fake_set), ("--real", real_set), ("--train", train_set))
               if s is None or s.labels is None]
    if not utility:
        result["utility"] = {"skipped": "disabled"}
    elif missing:
        result["utility"] = {"skipped": f"no class labels for {', '.join(missing)} (class sub-folders, a labels "
                                        "array in the .npz, or --labels for --fake)"}
    else:
        result["utility"] = {"test": "--real", "classifier": "SmallCNN (16, 32, 64), class-balanced" + (
                                 ", on the three central planes" if real_set.images.ndim == 5 else ""), "steps":
                             utility_steps, **train_synthetic_test_real(
                                 (fake_images, fake_set.labels), (train_images, train_set.labels),
                                 (real_set.images, real_set.labels), seed=seed, steps=utility_steps)}
    if paired:
        result["paired"] = _paired(real_set.images, fake_images)
    return result


def _f(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def headline_rows(result: dict) -> list[dict]:
    """The headline numbers of an `evaluate_folders` result as {"metric", "value", "notes"} rows."""
    feats = result["features"]["name"]
    rows = [("FID", _f(result["fid"]), f"features: {feats}"),
            ("KID", f"{result['kid']:.3g} +- {result['kid_std']:.2g}",
             f"{result['kid_subsets']} subsets of {result['kid_subset_size']}, features: {feats}"),
            ("precision", _f(result["precision"]), f"k = {result['k']}, features: {feats}"),
            ("recall", _f(result["recall"]), f"k = {result['k']}, features: {feats}")]
    mem = result["memorisation"]
    if "skipped" in mem:
        rows.append(("near-copies", "n/a", mem["skipped"]))
    else:
        rows.append(("near-copies", f"{mem['flagged']}/{mem['n_fake']} ({100 * mem['flagged_fraction']:.1f}%)",
                     f"chance {100 * mem['quantile']:.0f}%; median d(fake, train) {mem['median_fake_to_train']:.3g} vs "
                     f"d(real, train) {mem['median_holdout_to_train']:.3g} (pixels)"))
    util = result["utility"]
    if "skipped" in util:
        rows.append(("train-synthetic-test-real", "n/a", util["skipped"]))
    else:
        for arm in ("synthetic", "real", "real+synthetic"):
            r = util[arm]
            rows.append((f"classifier trained on {arm}", f"acc {r['accuracy']:.3f}, AUROC {r['auroc']:.3f}",
                         f"{r['n_train']} training images, tested on {r['n']} real"))
    for name in ("psnr", "ssim", "ms_ssim"):
        if "paired" in result:
            p = result["paired"]
            rows.append((f"paired {name.upper().replace('_', '-')}", _f(p.get(name)),
                         p.get(f"{name}_note", f"mean over {p['pairs']} pairs, data range 2")))
    return [{"metric": a, "value": b, "notes": c} for a, b, c in rows]


def caption(result: dict) -> str:
    """One line: how many images were compared, and with which features."""
    described = f"{result['features']['name']} ({result['features']['description']})"
    return f"{result['fake']['n']} fake vs {result['real']['n']} real images; features: {described}"


def format_table(result: dict) -> str:
    """Markdown table of the headline numbers, with the feature extractor named."""
    lines = [caption(result), "", "| metric | value | notes |", "|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']} | {r['notes']} |" for r in headline_rows(result)]
    return "\n".join(lines)
