"""`meddiff evaluate`: score synthetic images against real ones (issue 6).

Distribution metrics on features of a named extractor (`meddiff.metrics.features`): FID, KID, precision and
recall; memorisation in pixel space against the training images (``train``); train-synthetic-test-real
utility when every set has class labels; optionally paired PSNR / SSIM / MS-SSIM. ``real`` should be images
the generator never saw (e.g. the val split), since it calibrates the near-copy test and is the test set of
the utility classifiers. Stored intensities are mapped to model space [-1, 1] by one rule decided for all sets
together and recorded in the result (``--range``, `_choose_mappings`): the same images stored as uint8, float
[0, 1], float [-1, 1] or HU give the same metrics. Fake images of another size are resized to the real size
(area averaging) before anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from meddiff import __version__
from meddiff.data import FolderDataset, MedMNISTDataset, read_image
from meddiff.data.assets import resolve_path
from meddiff.data.io import is_medmnist, load_npz, read_npy
from meddiff.data.transforms import denormalize, resize
from meddiff.errors import MeddiffError
from meddiff.metrics.features import get_feature_extractor
from meddiff.metrics.generative import DEFAULT_K, fid, kid, precision_recall
from meddiff.metrics.image import MS_SSIM_WEIGHTS, ms_ssim, psnr, ssim
from meddiff.metrics.memorisation import DEFAULT_QUANTILE, memorisation
from meddiff.metrics.utility import train_synthetic_test_real
from meddiff.training.checkpoint import read_meta

LABEL_KEYS = ("labels", "label", "y")
# --range values: the named ones and what each maps linearly onto [-1, 1] (then clipped).
FIXED_RANGES = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "unit": (0.0, 1.0), "symmetric": (-1.0, 1.0),
                "hu": (-1024.0, 3071.0)}
INTENSITY_RANGES = ("auto", *FIXED_RANGES, "min-max", "percentile")
RANGE_HELP = ("auto (default; uint8 data as 0..255, float data as [0, 1] or [-1, 1] from its values, CT in HU as "
              "the window -1024..3071), uint8 (0..255), uint16 (0..65535), unit ([0, 1]), symmetric ([-1, 1]), "
              "hu (-1024..3071 HU, clipped), min-max (one min and max over all inputs together), percentile "
              "(each image's 0.5-99.5 percentiles, as training does for MR), or LO HI (a window, clipped)")
SLACK = 0.05  # float data may overshoot its range by this much (sampler output) before it no longer fits


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


@dataclass(frozen=True)
class Mapping:
    """A linear map of stored intensities [lo, hi] onto model space [-1, 1] (clipped); ``rule`` names it,
    ``why`` says how it was chosen. ``rule`` "percentile" maps each image by its own 0.5-99.5 percentiles."""

    rule: str
    lo: float | None
    hi: float | None
    why: str

    def label(self) -> str:
        if self.rule == "percentile":
            return f"percentile: each image's 0.5..99.5 percentiles -> [-1, 1] ({self.why})"
        return f"{self.rule}: [{self.lo:g}, {self.hi:g}] -> [-1, 1] ({self.why})"

    def record(self) -> dict:
        return {"rule": self.rule, "from": None if self.lo is None else [self.lo, self.hi], "to": [-1.0, 1.0],
                "clipped": True, "why": self.why}

    def apply(self, array: np.ndarray) -> Tensor:
        """(N, C, *spatial) stored values -> float32 tensor in [-1, 1]."""
        x = np.array(array, dtype=np.float32)  # a copy: the stored array stays as read
        if self.rule == "percentile":
            lo, hi = np.percentile(x.reshape(len(x), -1), (0.5, 99.5), axis=1).astype(np.float32)
            lo, hi = (v.reshape(-1, *[1] * (x.ndim - 1)) for v in (lo, hi))
            x -= lo
            x *= 2 / np.maximum(hi - lo, 1e-12)
        else:
            x -= np.float32(self.lo)
            x *= np.float32(2 / (self.hi - self.lo))
        x -= 1
        return torch.from_numpy(np.clip(x, -1, 1, out=x))


@dataclass
class _Part:
    """The images of one file (N, C, *spatial) as stored, before the intensity mapping; ``mapping`` is set when
    the dtype or the file fixes it (uint8, MedMNIST, a `meddiff sample` folder), otherwise by `_choose_mappings`."""

    array: np.ndarray
    file: str
    units: str | None = None
    image_file: bool = False  # a PNG/TIFF (so uint16 means 0..65535)
    mapping: Mapping | None = None


@dataclass
class _RawSet:
    parts: list[_Part]
    labels: Tensor | None
    names: list[str]
    source: str
    what: str


def parse_range(value: str | Sequence[str | float] | None) -> str | tuple[float, float]:
    """``--range`` -> a name of INTENSITY_RANGES or a (LO, HI) window; accepts a name, "LO HI", "LO,HI" or two
    values (the CLI passes its list of words)."""
    if value is None:
        return "auto"
    words = [value] if isinstance(value, (str, int, float)) else list(value)
    if len(words) == 1 and words[0] in INTENSITY_RANGES:
        return words[0]
    words = [w for v in words for w in str(v).replace(",", " ").split()]
    try:
        lo, hi = (float(w) for w in words)
    except ValueError:
        raise MeddiffError(f"--range {' '.join(words)}: give one of {', '.join(INTENSITY_RANGES)} or two numbers "
                           "LO HI (e.g. --range -1000 400 for a CT window)") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise MeddiffError(f"--range {lo:g} {hi:g}: LO must be finite and below HI")
    return lo, hi


def _span(parts: list[_Part]) -> tuple[float, float, str]:
    """Min and max over the parts, and the file holding the value furthest from [-1, 1]."""
    lows = [float(p.array.min()) for p in parts]
    highs = [float(p.array.max()) for p in parts]
    worst = max(range(len(parts)), key=lambda i: max(-lows[i] - 1, highs[i] - 1))
    return min(lows), max(highs), parts[worst].file


def _refuse(what: str, file: str, detail: str) -> MeddiffError:
    return MeddiffError(f"{what} {file}: {detail}; pass --range with one of {', '.join(INTENSITY_RANGES[1:])} "
                        "or LO HI so that every input gets a stated mapping")


def _choose_mappings(sets: list[_RawSet], intensity_range) -> dict:
    """Give every part of every set its Mapping, all sets decided together; returns the record for the JSON.

    Fixed by the data: uint8 arrays are 0..255, MedMNIST files are uint8, `meddiff sample` folders carry their
    checkpoint normalisation. Every other part follows ``intensity_range``; "auto" uses, per part, units HU ->
    the window -1024..3071; PNG/TIFF uint16 -> 0..65535; other integers within 0..255 -> uint8; and, per set,
    float values within [0, 1] -> unit, within [-1, 1] reaching below -0.5 -> symmetric (both with SLACK).
    Anything else, or float sets that disagree (one in [0, 1], another in [-1, 1]: the first could be either),
    is refused with a message asking for --range. Explicit unit/symmetric/uint8/uint16 refuse data outside their
    range; hu, LO HI and min-max clip (a window); min-max takes one min and max over all inputs together.
    """
    requested = parse_range(intensity_range)
    open_parts = [(s, p) for s in sets for p in s.parts if p.mapping is None]
    if isinstance(requested, tuple):
        for _, p in open_parts:
            p.mapping = Mapping("window", requested[0], requested[1], "--range LO HI")
    elif requested == "min-max" and open_parts:
        lo = min(float(p.array.min()) for _, p in open_parts)
        hi = max(float(p.array.max()) for _, p in open_parts)
        if not hi > lo:
            raise MeddiffError(f"--range min-max: every input holds the single value {lo:g}; give --range LO HI")
        for _, p in open_parts:
            p.mapping = Mapping("min-max", lo, hi, "--range min-max: one min and max over all inputs")
    elif requested == "percentile":
        for _, p in open_parts:
            p.mapping = Mapping("percentile", None, None, "--range percentile")
    elif requested in FIXED_RANGES:
        lo, hi = FIXED_RANGES[requested]
        for s, p in open_parts:
            a, b = float(p.array.min()), float(p.array.max())
            slack = SLACK * (hi - lo)
            if requested != "hu" and (a < lo - slack or b > hi + slack):
                raise MeddiffError(f"{s.what} {p.file}: values span [{a:.4g}, {b:.4g}], outside --range {requested} "
                                   f"[{lo:g}, {hi:g}]; choose the range the data is stored in")
            p.mapping = Mapping(requested, lo, hi, f"--range {requested}")
    else:
        _auto(sets)
    for s in sets:
        for p in s.parts:
            p.mapping = p.mapping or Mapping("symmetric", -1.0, 1.0, "empty")
    return {"range": requested if isinstance(requested, str) else list(requested),
            "sets": {s.what: sorted({p.mapping.label() for p in s.parts}) for s in sets}}


def _auto(sets: list[_RawSet]) -> None:
    decided: dict[str, tuple[str, str]] = {}  # float rule -> (set, file) that decided it
    for s in sets:
        floats = []
        for p in (p for p in s.parts if p.mapping is None):
            kind = p.array.dtype.kind
            if p.units == "HU":
                p.mapping = Mapping("hu", *FIXED_RANGES["hu"], "auto: units HU, window -1024..3071")
            elif kind == "u" and p.array.dtype.itemsize == 2 and p.image_file:
                p.mapping = Mapping("uint16", *FIXED_RANGES["uint16"], "auto: 16-bit image file")
            elif kind in "iub":
                a, b = float(p.array.min()), float(p.array.max())
                if a < 0 or b > 255:
                    raise _refuse(s.what, p.file, f"{p.array.dtype} values span [{a:g}, {b:g}] with no units that "
                                                   "say what they are (HU for CT)")
                p.mapping = Mapping("uint8", *FIXED_RANGES["uint8"], f"auto: {p.array.dtype} values within 0..255")
            elif kind == "f":
                floats.append(p)
            else:
                raise _refuse(s.what, p.file, f"{p.array.dtype} images cannot be scored")
        if not floats:
            continue
        lo, hi, worst = _span(floats)
        if lo >= -SLACK and hi <= 1 + SLACK:
            rule, why = "unit", f"auto: float values of {s.what} span [{lo:.3g}, {hi:.3g}]"
        elif -1 - SLACK <= lo <= -0.5 and hi <= 1 + SLACK:
            rule, why = "symmetric", f"auto: float values of {s.what} span [{lo:.3g}, {hi:.3g}]"
        else:
            raise _refuse(s.what, worst, f"float values span [{lo:.4g}, {hi:.4g}], neither [0, 1] nor [-1, 1]")
        other = "symmetric" if rule == "unit" else "unit"
        if other in decided:
            unit_at = (s.what, floats[0].file) if rule == "unit" else decided["unit"]
            sym_at = (s.what, floats[0].file) if rule == "symmetric" else decided["symmetric"]
            raise _refuse(*unit_at, f"float values lie in [0, 1] while those of {sym_at[0]} {sym_at[1]} lie in "
                                    "[-1, 1], so it may be either (e.g. --range unit or --range symmetric)")
        decided.setdefault(rule, (s.what, floats[0].file))
        for p in floats:
            p.mapping = Mapping(rule, *FIXED_RANGES[rule], why)


def _finish(raw: _RawSet) -> ImageSet:
    """Apply the chosen mappings -> ImageSet (N, C, *spatial) in [-1, 1]; every image of a set has one shape."""
    tensors, norms = [], []
    for p in raw.parts:
        x = p.mapping.apply(p.array)
        if tensors and x.shape[1:] != tensors[0].shape[1:]:
            raise MeddiffError(f"{raw.what} {p.file}: shape {tuple(x.shape[1:])} differs from "
                               f"{tuple(tensors[0].shape[1:])} of {raw.parts[0].file}; every image of a set must "
                               "have one size and channel count")
        tensors.append(x)
        norms += [p.mapping.label()] * len(x)
    images = torch.cat(tensors) if tensors else torch.zeros(0)
    return ImageSet(images, raw.labels, raw.names, raw.source, norms)


def _read_labels(path: str | Path, n: int, what: str) -> Tensor:
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{what} {path}: no such file (one integer class label per image)")
    try:
        if path.suffix == ".npy":
            values = read_npy(path)[0]  # the header's claimed size is checked before reading
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


def _sample_folder(path: Path, what: str) -> tuple[_Part, Tensor | None]:
    """A `meddiff sample` output folder: samples.npy (N, C, *spatial) with the mapping its manifest states (the
    checkpoint normalisation for samples in original intensities, else model space), labels.npy if any."""
    manifest = json.loads((path / "manifest.json").read_text())
    files = manifest.get("files", {})
    arr = read_npy(path / files.get("samples", "samples.npy"))[0].astype(np.float32)
    mapping = Mapping("symmetric", -1.0, 1.0, "meddiff sample folder in model space")
    if manifest.get("intensity_range") == "original":
        try:
            stats = read_meta(manifest["checkpoint"])["normalisation"]
        except (MeddiffError, KeyError, OSError) as error:
            raise MeddiffError(f"{what} {path}: samples are in original intensities but the checkpoint "
                               f"{manifest.get('checkpoint')!r} named in manifest.json (with the normalisation to "
                               "undo) cannot be read here; evaluate where the checkpoint is") from error
        offset = float(np.asarray(denormalize(np.zeros(1, np.float32), stats))[0])  # the inverse map is affine
        gain = float(np.asarray(denormalize(np.ones(1, np.float32), stats))[0]) - offset
        mapping = Mapping("checkpoint", offset - gain, offset + gain,
                          f"meddiff sample folder: checkpoint normalisation ({stats.get('mode')})")
    labels = path / files.get("labels", "labels.npy")
    label_tensor = torch.from_numpy(read_npy(labels)[0].reshape(-1).astype(np.int64)) if labels.is_file() else None
    return _Part(arr, str(path / files.get("samples", "samples.npy")), mapping=mapping), label_tensor


def _part(array: np.ndarray, file: str, meta) -> _Part:
    """Stored images of one file; uint8 is always 0..255 and bool 0/1, whatever --range says."""
    mapping = None
    if array.dtype == np.uint8:
        mapping = Mapping("uint8", *FIXED_RANGES["uint8"], "dtype uint8")
    elif array.dtype == np.bool_:
        mapping = Mapping("unit", *FIXED_RANGES["unit"], "dtype bool")
    return _Part(array, file, units=getattr(meta, "units", None),
                 image_file=getattr(meta, "format", None) in ("png", "tiff", "image"), mapping=mapping)


def _read_raw_set(path: str | Path, *, split: str | None = None, labels: str | Path | None = None,
                  what: str = "images") -> _RawSet:
    """The images of ``path`` as stored (see `load_image_set`), before the intensity mapping."""
    path = Path(resolve_path(str(path)))
    if not path.exists():
        raise MeddiffError(f"{what} {path}: no such file or folder")
    label_tensor, source = None, str(path)
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "samples.npy").is_file():
        part, label_tensor = _sample_folder(path, what)
        parts, names = [part], [f"samples.npy[{i}]" for i in range(len(part.array))]
    elif path.is_dir():
        dataset = FolderDataset(path, split="all")
        parts, names = [], []
        for file, label, _ in dataset.items:
            arr, meta = dataset.read(file)
            parts.append(_part(arr[None], str(file), meta))
            names.append(str(file.relative_to(path)))
        if dataset.num_classes:
            label_tensor = torch.tensor([label for _, label, _ in dataset.items], dtype=torch.int64)
    else:
        arrays_in = load_npz(path) if path.suffix == ".npz" else None
        if arrays_in is not None and is_medmnist(arrays_in):
            dataset = MedMNISTDataset(path, split=split or "train")
            stored = dataset.images.transpose(0, 3, 1, 2) if dataset._layout == "rgb" else dataset.images[:, None]
            parts = [_part(stored, f"{path} ({split or 'train'} split)", None)]
            label_tensor = None if dataset.multilabel else torch.from_numpy(dataset.labels[:, 0])
            source = f"{path} ({split or 'train'} split)"
            names = [f"{split or 'train'}[{i}]" for i in range(len(dataset))]
        else:
            arr, meta = read_image(path)
            arr = _array_layout(arr, path)
            parts, names = [_part(arr, str(path), meta)], [f"{path.name}[{i}]" for i in range(len(arr))]
            found = [k for k in LABEL_KEYS if arrays_in is not None and k in arrays_in]
            if found:
                label_tensor = torch.from_numpy(np.asarray(arrays_in[found[0]]).reshape(-1).astype(np.int64))
                if len(label_tensor) != len(names):
                    raise MeddiffError(f"{what} {path}: {len(label_tensor)} {found[0]} for {len(names)} images")
    if not names:
        raise MeddiffError(f"{what} {path}: holds no images")
    if labels is not None:
        label_tensor = _read_labels(labels, len(names), f"labels for {what}")
    return _RawSet(parts, label_tensor, names, source, what)


def load_image_set(path: str | Path, *, split: str | None = None, labels: str | Path | None = None,
                   what: str = "images", intensity_range="auto") -> ImageSet:
    """Read a folder of images (PNG/NPY/NIfTI/DICOM; class sub-folders give labels), a `meddiff sample` output
    folder (samples.npy + manifest.json), or an array file (.npy, .npz with an images array and optional
    ``labels``; a MedMNIST .npz gives ``split``) -> ImageSet in [-1, 1], mapped by ``intensity_range`` (see
    `_choose_mappings`; decided from this set alone: `evaluate_folders` decides for all its sets together)."""
    raw = _read_raw_set(path, split=split, labels=labels, what=what)
    _choose_mappings([raw], intensity_range)
    return _finish(raw)


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
                     channels: str = "mean", intensity_range="auto") -> dict:
    """Score the synthetic images ``fake`` against the real held-out ``real`` (and the training images ``train``)
    -> a JSON-ready dict; ``labels`` is a label file for ``fake`` when its format carries none. Volumes are embedded
    by their three central planes (2.5D features and classifier). ``intensity_range`` (``--range``): how stored
    intensities map to [-1, 1], decided for real, fake and train together (`_choose_mappings`); the JSON records it
    under "intensity"."""
    raws = [_read_raw_set(real, split=real_split, what="--real"),
            _read_raw_set(fake, split=fake_split, labels=labels, what="--fake")]
    if train is not None:
        raws.append(_read_raw_set(train, split=train_split, what="--train"))
    intensity = _choose_mappings(raws, intensity_range)  # one decision for all sets
    real_set, fake_set, *rest = (_finish(r) for r in raws)
    train_set = rest[0] if rest else None
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
              "train": train_set.describe() if train_set is not None else None, "intensity": intensity}
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
    lines = [caption(result)]
    for what, labels in result.get("intensity", {}).get("sets", {}).items():
        lines.append(f"intensities of {what}: {'; '.join(labels)}")
    lines += ["", "| metric | value | notes |", "|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']} | {r['notes']} |" for r in headline_rows(result)]
    return "\n".join(lines)
