"""Segmentation checkpoints (save / load, the prior's fingerprint check) and whole-volume segmentation behind
``meddiff segment``: a 3D T1 volume is reoriented to RAS, cut into the prior's axial slices, segmented slice by slice
and the labels, mean probabilities and uncertainty (entropy of the mean) are put back on the input's grid.

A checkpoint is a folder: ``meta.json`` (task "segmentation", the method, preprocessing, for the diffusion-feature
method the prior's name and the sha256 of its ``ema.safetensors``, feature blocks and t), ``ema.safetensors`` (the
classifier's or UNet's weights, float16), ``labels.json`` (the merged classes and their DLMUSE ids).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.segment.data import SlicePrep, unpad, volume_slices
from meddiff.tasks.segment.labels import CLASSES, labels_json, read_labels
from meddiff.tasks.segment.postprocess import CLEANUPS, DEFAULT_CLEANUP, clean_labels

METHOD_KINDS = ("diffusion_features", "unet", "medsegdiff")
MIN_SLICE_FOREGROUND = 0.01  # slices with less head than this (fraction above air) are background without a model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prior_fingerprint(name_or_path: str | Path) -> dict:
    """{"name", "sha256", "step"} of a prior checkpoint (shipped name, directory or run directory)."""
    from meddiff.training.checkpoint import resolve_checkpoint, training_steps

    folder = resolve_checkpoint(name_or_path)
    meta = json.loads((folder / "meta.json").read_text())
    return {"name": str(name_or_path), "sha256": file_sha256(folder / "ema.safetensors"), "step": training_steps(meta)}


def save_segmenter(folder: str | Path, segmenter, *, meta: dict, classes=CLASSES,
                   files: dict[str, str] | None = None) -> Path:
    """Write a segmentation checkpoint (atomically): weights as float16, ``meta`` (must name ``method`` and
    ``preprocessing``), labels.json, and ``files`` ({name: text}, e.g. the model card, log, command)."""
    from safetensors.torch import save_file

    from meddiff.files import atomic_path
    from meddiff.tasks.segment.methods import FeatureSegmenter

    module = segmenter.ensemble if isinstance(segmenter, FeatureSegmenter) else segmenter.network
    weights = {k: (v.half() if v.is_floating_point() and not k.endswith(("mean", "std")) else v).contiguous()
               for k, v in module.state_dict().items()}
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder, directory=True) as tmp:
        save_file(weights, tmp / "ema.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"task": "segmentation", "channels": 1, **meta}, indent=1,
                                                  default=str))
        (tmp / "labels.json").write_text(labels_json(classes) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return folder


@dataclass
class LoadedSegmenter:
    """A checkpoint ready to run: the segmenter (``predict(slices, samples)``), preprocessing, classes, meta."""

    segmenter: object
    prep: SlicePrep
    classes: list[dict]
    meta: dict = field(default_factory=dict)


def _retrain_hint(folder: Path, meta: dict) -> str:
    command = (folder / "command.txt").read_text().strip() if (folder / "command.txt").is_file() else \
        meta.get("command", "scripts/train_segmentation.py")
    return command.splitlines()[-1] if command else "scripts/train_segmentation.py"


def load_segmenter(checkpoint: str | Path) -> LoadedSegmenter:
    """A segmentation checkpoint (folder or shipped name). The diffusion-feature method loads its prior by the stored
    name and refuses (one line, naming the retrain command) when that prior's weights differ from the ones it was
    trained on."""
    from safetensors.torch import load_file

    from meddiff.training.shipped import shipped_path

    folder = Path(checkpoint)
    if not (folder / "meta.json").is_file():
        shipped = shipped_path(str(checkpoint)) if not folder.exists() else None
        if shipped is None:
            raise MeddiffError(f"--checkpoint {checkpoint}: no segmentation checkpoint there (expected a folder with "
                               "meta.json, ema.safetensors and labels.json, or a shipped name such as "
                               "brain_parcellation_ixi)")
        folder = shipped
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("task") != "segmentation" or meta.get("method") not in METHOD_KINDS:
        raise MeddiffError(f"--checkpoint {checkpoint}: not a segmentation checkpoint (task {meta.get('task')!r}, "
                           f"method {meta.get('method')!r}); see `meddiff checkpoints list`")
    classes = read_labels(folder / "labels.json")
    prep = SlicePrep.from_dict(meta["preprocessing"])
    weights = {k: v.float() for k, v in load_file(folder / "ema.safetensors").items()}
    if meta["method"] == "unet":
        from meddiff.tasks.segment.methods import UNetSegmenter, build_unet

        net = build_unet(len(classes), meta.get("unet"))
        net.load_state_dict(weights)
        return LoadedSegmenter(UNetSegmenter(net), prep, classes, meta)
    if meta["method"] == "medsegdiff":
        from meddiff.diffusion import make_schedule
        from meddiff.nets import build_network
        from meddiff.tasks.segment.medsegdiff import MedSegDiffSegmenter

        m = meta["medsegdiff"]
        net = build_network(m["network"])
        net.load_state_dict(weights)
        segmenter = MedSegDiffSegmenter(net, make_schedule(m["schedule"]), len(classes), int(m["sampling_steps"]))
        return LoadedSegmenter(segmenter, prep, classes, meta)
    from meddiff.tasks.prior import load_prior
    from meddiff.tasks.segment.features import DiffusionFeatures
    from meddiff.tasks.segment.methods import FeatureSegmenter, PixelEnsemble

    want = meta["prior"]
    try:
        have = prior_fingerprint(want["name"])
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {checkpoint}: its prior {want['name']!r} cannot be found ({error}); "
                           f"retrain with: {_retrain_hint(folder, meta)}") from None
    if have["sha256"] != want["sha256"]:
        raise MeddiffError(f"--checkpoint {checkpoint}: trained on prior {want['name']} with ema.safetensors sha256 "
                           f"{want['sha256'][:12]}... (step {want.get('step')}), but the installed one is "
                           f"{have['sha256'][:12]}... (step {have.get('step')}); retrain with: "
                           f"{_retrain_hint(folder, meta)}")
    prior = load_prior(want["name"])
    feats = meta["features"]
    extractor = DiffusionFeatures(prior.denoiser.model, prior.schedule, feats["blocks"], feats["timesteps"],
                                  feats.get("seed", 0))
    cfg = meta["classifier"]
    ensemble = PixelEnsemble(cfg["in_channels"], cfg["num_classes"], cfg["hidden"], cfg["members"])
    ensemble.load_state_dict(weights)
    return LoadedSegmenter(FeatureSegmenter(extractor, ensemble.eval()), prep, classes, meta)


def volume_to_model(volume: np.ndarray, prep: SlicePrep, what: str = "image") -> tuple[np.ndarray, list[int]]:
    """A RAS volume (X, Y, Z) -> its model slices (S, 1, H, W) along ``prep.axis`` and the indices of those with at
    least ``MIN_SLICE_FOREGROUND`` of head (after scaling, above -0.95); the others are background without a model."""
    from meddiff.data.transforms import foreground_fraction

    slices = volume_slices(volume, prep, what=what)  # [S,1,H,W]
    keep = [i for i in range(slices.shape[0]) if foreground_fraction(slices[i, 0], -0.95) >= MIN_SLICE_FOREGROUND]
    return slices, keep


def model_to_volume(probs: np.ndarray, keep: list[int], volume_shape: tuple[int, int, int], prep: SlicePrep,
                    num_classes: int) -> np.ndarray:
    """Probabilities (len(keep), K, H, W) of the kept slices -> (K, X, Y, Z) on the RAS volume's grid (left-out
    slices: background with probability 1; padding removed)."""
    n = volume_shape[prep.axis]
    full = np.zeros((n, num_classes) + tuple(prep.image_size), dtype=np.float32)
    full[:, 0] = 1.0
    if keep:
        full[keep] = probs
    in_plane = tuple(s for a, s in enumerate(volume_shape) if a != prep.axis)
    full = unpad(full, in_plane, prep)  # [S,K,x,y]
    out = np.moveaxis(full, (0, 1), (-1, 0))  # [K,x,y,S]
    return np.ascontiguousarray(np.moveaxis(out, -1, prep.axis + 1), dtype=np.float32)


def segment_volume(volume: np.ndarray, segmenter, prep: SlicePrep, *, samples: int = 1, batch: int = 8,
                   num_classes: int | None = None, what: str = "image") -> np.ndarray:
    """A RAS volume (X, Y, Z) -> mean class probabilities (K, X, Y, Z) float32, slice by slice along ``prep.axis``
    (``volume_to_model``, the segmenter's ``predict``, ``model_to_volume``)."""
    slices, keep = volume_to_model(volume, prep, what)
    k = num_classes or len(CLASSES)
    probs = segmenter.predict(torch.from_numpy(slices[keep]), samples=samples, batch=batch).numpy() if keep else None
    if probs is not None:
        k = probs.shape[1]
    return model_to_volume(probs, keep, np.asarray(volume).shape, prep, k)


def _check_output(path: str | Path | None, option: str) -> None:
    from meddiff.data.io import NIFTI_SUFFIXES, suffix_of

    if path is not None and suffix_of(Path(path)) not in NIFTI_SUFFIXES:
        raise MeddiffError(f"{option} {path}: the output must be a NIfTI file (.nii.gz or .nii)")


def _from_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo the RAS reorientation of ``to_canonical`` on the first three axes of ``array`` (trailing axes kept)."""
    import nibabel as nib

    source = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), source)
    return nib.orientations.apply_orientation(array, back)


@dataclass
class SegmentationResult:
    labels: np.ndarray       # (X, Y, Z) int on the input grid
    probabilities: np.ndarray  # (X, Y, Z, K) float32
    uncertainty: np.ndarray  # (X, Y, Z) float32, entropy (nats) of the mean probabilities
    seconds: float
    written: list[Path]


def segment_file(input_path: str | Path, out: str | Path, checkpoint: str | Path, *, samples: int = 1,
                 uncertainty_out: str | Path | None = None, probabilities_out: str | Path | None = None,
                 loaded: LoadedSegmenter | None = None, cleanup: str = DEFAULT_CLEANUP) -> SegmentationResult:
    """``meddiff segment``: segment a 3D T1 NIfTI and write integer labels (the argmax, cleaned up by ``cleanup``,
    ``postprocess.clean_labels``; and optionally the per-class mean probabilities (X, Y, Z, K) and the entropy map)
    on the input's grid and affine."""
    from meddiff.data.io import read_nifti_input, write_nifti
    from meddiff.data.transforms import to_canonical
    from meddiff.tasks.segment.methods import entropy

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MeddiffError(f"--samples {samples!r} must be a positive integer")
    if cleanup not in CLEANUPS:
        raise MeddiffError(f"--cleanup {cleanup!r}: choose one of {', '.join(CLEANUPS)}")
    for path, option in ((out, "--out"), (uncertainty_out, "--uncertainty-out"),
                         (probabilities_out, "--probabilities-out")):
        _check_output(path, option)
    source = Path(input_path)
    array, meta = read_nifti_input(source, "--input")
    if array.ndim != 3:
        raise MeddiffError(f"--input {source}: expected a 3D volume, got {array.ndim} dimensions (shape "
                           f"{tuple(array.shape)})")
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise MeddiffError(f"--input {source}: the volume contains NaN or infinite values")
    if array.size == 0 or float(array.max()) <= float(array.min()):
        raise MeddiffError(f"--input {source}: the volume is empty or constant (every voxel "
                           f"{float(array.flat[0]) if array.size else 'missing'}); nothing to segment")
    loaded = load_segmenter(checkpoint) if loaded is None else loaded
    start = time.perf_counter()
    ras, _ = to_canonical(array[None], meta)
    probs = segment_volume(np.asarray(ras)[0], loaded.segmenter, loaded.prep, samples=samples,
                           what=f"--input {source}")
    probs = np.ascontiguousarray(_from_ras(np.moveaxis(probs, 0, -1), meta.affine))  # [X,Y,Z,K] input grid
    labels = clean_labels(probs.argmax(-1), np.moveaxis(probs, -1, 0), cleanup)
    labels = labels.astype(np.uint8 if probs.shape[-1] <= 255 else np.int16)
    unc = entropy(probs, axis=-1).numpy().astype(np.float32)
    seconds = time.perf_counter() - start
    written = [write_nifti(out, labels, meta)]
    if uncertainty_out is not None:
        written.append(write_nifti(uncertainty_out, unc, meta))
    if probabilities_out is not None:
        written.append(write_nifti(probabilities_out, np.ascontiguousarray(probs, dtype=np.float32), meta))
    return SegmentationResult(labels, probs, unc, seconds, written)
