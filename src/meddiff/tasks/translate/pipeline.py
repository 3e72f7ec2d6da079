"""``translate_volume`` / ``translate_file`` (behind ``meddiff translate``): a source MR volume (and optionally a
second source contrast on the same grid) -> the target contrast, slice by slice along the RAS axial axis (the
volume is reoriented to RAS, down-sampled in-plane to the model's spacing by block means, translated, up-sampled
back and reoriented, so the output lies on the input's grid with its affine), in the target contrast's units of the
training data. The checkpoint's ``translation.json`` (``translation_card``) names the contrasts, normalisation,
spacing and the training histograms; Palette is the checkpoint's network, the supervised UNet lives in its
``unet/`` folder, SDEdit needs an unconditional prior of the target contrast (``prior``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError, check_choice
from meddiff.tasks.translate import methods as M
from meddiff.tasks.translate.data import (NORM, block_mean, brain_mask, denormalise, from_ras, normalise, to_ras)

METHODS = ("palette", "sdedit", "unet", "histogram")
DIFFUSION = ("palette", "sdedit")
DEFAULTS = {"palette": {"steps": 20, "samples": 4}, "sdedit": {"steps": 20, "samples": 4, "t0": 0.5}}
CARD_FILE = "translation.json"
AXIS = 2  # RAS axis 2: axial slices


def translation_card(dataset, data: dict) -> dict:
    """The ``translation.json`` of a shipped translation model: contrasts, normalisation, spacing, the reference
    stats that map model space back to each contrast's units (the first training subject's), the quantiles of each
    contrast's brain voxels in model space over all training slices (for histogram matching), the subjects."""
    first = data["subjects"][0]
    card = {"source": list(data["source"]), "targets": list(data["targets"]), "axis": "RAS axis 2 (axial)",
            "spacing_mm": float(data["factor"]), "normalisation": NORM,
            "reference_subject": first, "reference_stats": dataset.stats[first],
            "train_subjects": list(data["subjects"]), "test_subjects": list(data.get("test_subjects", [])),
            "histograms": {}}
    brain = dataset.cond[:, 0] > -1.0  # brain voxels (the mask was cut from the source; air is exactly -1)
    for i, c in enumerate(data["targets"]):
        card["histograms"][c] = M.quantiles(dataset.image[:, i][brain].numpy())
    for i, c in enumerate(data["source"]):
        card["histograms"][c] = M.quantiles(dataset.cond[:, i][brain].numpy())
    return card


@dataclass
class Translator:
    """What a translation needs from a checkpoint: its card, the Palette network (+ schedule, parametrisation),
    the supervised UNet (or None) and the folder."""

    card: dict
    net: object = None
    schedule: object = None
    prediction: str = "v"
    unet: object = None
    path: Path | None = None
    multiple: int = 8

    @property
    def source(self) -> list[str]:
        return list(self.card["source"])

    @property
    def targets(self) -> list[str]:
        return list(self.card["targets"])


def load_translator(checkpoint: str | Path) -> Translator:
    """The Translator of a checkpoint (path, run directory or shipped name) whose folder has ``translation.json``."""
    from meddiff.diffusion import make_schedule
    from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint

    try:
        path = resolve_checkpoint(checkpoint)
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {checkpoint}: {error}") from None
    if not (path / CARD_FILE).is_file():
        raise MeddiffError(f"--checkpoint {checkpoint}: no {CARD_FILE} in {path}; not a translation model (see "
                           "`meddiff checkpoints list`, e.g. t1_to_t2_flair)")
    card = json.loads((path / CARD_FILE).read_text())
    net, meta = load_checkpoint(path)
    for p in net.parameters():
        p.requires_grad_(False)
    unet = None
    if (path / "unet").is_dir():
        from meddiff.training.regression import load_regression

        unet = load_regression(path / "unet")
    return Translator(card, net, make_schedule(meta["schedule"]), meta["prediction"], unet, path,
                      2 ** (len(meta["network"]["channels"]) - 1))


def check_contrasts(translator: Translator, target: str | None, sources: list[str]) -> str:
    """The target contrast to produce (default: the only one, or the first) after checking ``target`` and the
    ``sources`` against the checkpoint; ``MeddiffError`` names what it was trained for."""
    card = translator.card
    if list(sources) != card["source"]:
        options = " and ".join("--input" + ("" if i == 0 else str(i + 1)) for i in range(len(card["source"])))
        raise MeddiffError(f"the checkpoint was trained on source contrast(s) {card['source']}, not {list(sources)}; "
                           f"give {options} as {', '.join(card['source'])}")
    if target is None:
        return card["targets"][0]
    if target not in card["targets"]:
        raise MeddiffError(f"--target {target!r}: the checkpoint was not trained for it; it translates "
                           f"{'+'.join(card['source'])} -> {', '.join(card['targets'])}")
    return target


def translate_slices(translator: Translator, cond: torch.Tensor, mask: np.ndarray, method: str, *, steps=None,
                     samples=None, seed: int = 0, prior=None, t0: float | None = None, batch: int = 16,
                     targets: list[str] | None = None):
    """Model-space slices cond (B, S, H, W) and brain mask (B, H, W) -> (mean (B, T, H, W), std or None, NFE per
    slice and sample, settings) for ``targets`` (default: every target of the checkpoint), in that order; air -1.
    SDEdit's ``prior`` is one target contrast's: give that one target."""
    check_choice("--method", method, METHODS)
    targets = list(targets or translator.targets)
    pick = [translator.targets.index(c) for c in targets]
    settings = dict(DEFAULTS.get(method, {}))
    for key, value in (("steps", steps), ("samples", samples), ("t0", t0)):
        if value is not None and method in DIFFUSION and key in settings:
            settings[key] = value
    for k in ("steps", "samples"):
        if k in settings and (isinstance(settings[k], bool) or not isinstance(settings[k], int) or settings[k] < 1):
            raise MeddiffError(f"--{k} {settings[k]!r} must be a positive integer")
    mask_t = torch.as_tensor(np.asarray(mask, dtype=bool))[:, None]
    nfe, std = 0, None
    if method == "histogram":
        out = np.stack([M.histogram_match(cond[:, 0].numpy(), mask, translator.card["histograms"][c])
                        for c in targets], 1)
        mean = torch.from_numpy(out)
    elif method == "unet":
        if translator.unet is None:
            raise MeddiffError(f"--method unet: the checkpoint {translator.path} has no unet/ folder (the supervised "
                               "baseline); use a shipped translation model such as t1_to_t2_flair")
        mean = torch.cat([M.regression(translator.unet, cond[i:i + batch])
                          for i in range(0, len(cond), batch)])[:, pick]
        nfe = 1
    elif method == "palette":
        parts = [M.palette(translator.net, translator.schedule, translator.prediction, cond[i:i + batch],
                           len(translator.targets),
                           steps=settings["steps"], samples=settings["samples"], seed=seed + i,
                           multiple=translator.multiple) for i in range(0, len(cond), batch)]
        mean, std = torch.cat([p[0] for p in parts])[:, pick], torch.cat([p[1] for p in parts])[:, pick]
        nfe = parts[0][2]
    else:  # sdedit: ``prior`` is an unconditional prior of the target; the guide is the histogram-matched source
        if prior is None:
            raise MeddiffError("--method sdedit needs --prior: an unconditional one-channel prior of the target "
                               "contrast (none is shipped yet; train one with a one-channel synthesis config on "
                               "T2 or FLAIR slices)")
        means, stds = [], []
        for c in targets:
            guide = torch.from_numpy(np.stack([M.histogram_match(cond[:, 0].numpy(), mask,
                                                                 translator.card["histograms"][c])], 1))
            parts = [M.sdedit(prior, guide[i:i + batch], t0=settings["t0"], steps=settings["steps"],
                              samples=settings["samples"], seed=seed + i) for i in range(0, len(guide), batch)]
            means.append(torch.cat([p[0] for p in parts]))
            stds.append(torch.cat([p[1] for p in parts]))
            nfe = parts[0][2]
        mean, std = torch.cat(means, 1), torch.cat(stds, 1)
    mean = torch.where(mask_t, mean, torch.tensor(-1.0))
    if std is not None:
        std = torch.where(mask_t, std, torch.tensor(0.0))
    return mean, std, nfe, settings


@dataclass
class Translation:
    """The translated volume (float32, the input's grid, target units), the per-voxel std over the samples in the
    same units (diffusion methods; else None), the brain mask, NFE per slice per sample, seconds, settings."""

    image: np.ndarray
    std: np.ndarray | None
    mask: np.ndarray
    nfe: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def _upsample(vol: np.ndarray, factors: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(X', Y', Z) -> (X, Y, Z): bilinear in-plane up-sampling by ``factors`` (the inverse grid of ``block_mean``),
    cropped to ``shape``."""
    if factors == (1, 1):
        return vol
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, -1, 0)))[:, None].float()
    up = torch.nn.functional.interpolate(t, scale_factor=factors, mode="bilinear", align_corners=False)
    return np.moveaxis(up[:, 0, : shape[0], : shape[1]].numpy(), 0, -1)


def translate_volume(sources: list[np.ndarray], affine: np.ndarray, translator: Translator, method: str, *,
                     target: str | None = None, source_names: list[str] | None = None, mask: np.ndarray | None = None,
                     steps=None, samples=None, seed: int = 0, prior=None, t0=None) -> Translation:
    """Translate source volume(s) (X, Y, Z), all on one grid with ``affine``, into ``target`` (default: the
    checkpoint's first target). ``mask``: the brain (default: ``brain_mask`` of the first source)."""
    start = time.perf_counter()
    source_names = source_names or translator.source[: len(sources)]
    target = check_contrasts(translator, target, source_names)
    shapes = {np.shape(s) for s in sources}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise MeddiffError(f"the source volumes must be 3D and on one grid; got shapes {sorted(shapes)}")
    ras, ornt = [], None
    for s in sources:
        arr, ras_affine, ornt = to_ras(np.asarray(s, dtype=np.float32), affine)
        ras.append(arr)
    zooms = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    spacing = float(translator.card.get("spacing_mm", 2.0))
    factors = tuple(max(1, int(round(spacing / float(z)))) for z in zooms[:2])
    full_shape = ras[0].shape
    if mask is None:
        mask_full = brain_mask(ras[0])
    else:
        mask_full = to_ras(np.asarray(mask) > 0, affine)[0]
        if mask_full.shape != full_shape or not mask_full.any():
            raise MeddiffError(f"--mask: empty brain mask or shape {np.shape(mask)} differs from the input's "
                               f"{np.shape(sources[0])}")
    small = [block_mean(a, factors + (1,)) for a in ras]
    mask_small = block_mean(mask_full.astype(np.float32), factors + (1,)) >= 0.5
    if not mask_small.any():
        raise MeddiffError("--input: empty brain mask after down-sampling to the model's spacing")
    model_space, stats = [], []
    for a in small:
        y, st = normalise(a, mask_small)
        model_space.append(y)
        stats.append(st)
    keep = [z for z in range(mask_small.shape[2]) if mask_small[..., z].any()]
    cond = torch.from_numpy(np.stack([np.moveaxis(y[..., keep], -1, 0) for y in model_space], 1))
    mask_slices = np.moveaxis(mask_small[..., keep], -1, 0)
    mean, std, nfe, settings = translate_slices(translator, cond, mask_slices, method, steps=steps, samples=samples,
                                                seed=seed, prior=prior, t0=t0, targets=[target])
    ti = 0
    out = np.full(mask_small.shape, -1.0, dtype=np.float32)
    out[..., keep] = np.moveaxis(mean[:, ti].numpy(), 0, -1)
    ref = translator.card["reference_stats"][target]
    units = _upsample(denormalise(out, ref), factors, full_shape[:2])
    units = np.where(mask_full, units, 0.0).astype(np.float32)
    std_units = None
    if std is not None:
        s = np.zeros(mask_small.shape, dtype=np.float32)
        s[..., keep] = np.moveaxis(std[:, ti].numpy(), 0, -1)
        scale = (ref["a_max"] - ref["a_min"]) / (ref["b_max"] - ref["b_min"])
        std_units = np.where(mask_full, _upsample(s * scale, factors, full_shape[:2]), 0.0).astype(np.float32)
    info = {"method": method, "source": source_names, "target": target, "slice_axis": "RAS axis 2 (axial)",
            "model_spacing_mm": spacing, "downsample": list(factors), **settings,
            "normalisation": (f"target units = those of {target} of the training subject "
                              f"{translator.card['reference_subject']}: model space y in [-1, 1] -> "
                              f"a_min + (y + 1) / 2 (a_max - a_min), a_min {ref['a_min']:.4g}, "
                              f"a_max {ref['a_max']:.4g} "
                              "(the 0.5th / 99.5th percentiles of its brain voxels); 0 outside the brain mask"),
            "input_normalisation": [{"a_min": s["a_min"], "a_max": s["a_max"]} for s in stats]}
    return Translation(from_ras(units, ornt), None if std_units is None else from_ras(std_units, ornt),
                       from_ras(mask_full, ornt), nfe, time.perf_counter() - start, info)


def _read(path, what: str):
    from meddiff.data.io import read_image

    if not Path(path).is_file():
        raise MeddiffError(f"{what} {path}: no such file")
    array, meta = read_image(path, expect_ndim=3)
    if meta.affine is None:
        raise MeddiffError(f"{what} {path}: no affine (give a NIfTI volume)")
    return np.asarray(array, dtype=np.float32), meta


def translate_file(input_path, out, *, checkpoint, method: str, input2=None, target: str | None = None,
                   source_contrasts: list[str] | None = None, std_out=None, mask_path=None, prior_checkpoint=None,
                   **kwargs) -> tuple[Translation, list[Path]]:
    """Read the source NIfTI volume(s), ``translate_volume``, write ``out`` (and ``std_out``) atomically with the
    input's affine, the normalisation in the header description and a sidecar ``<out>.json``."""
    from meddiff.data.io import suffix_of
    from meddiff.files import write_text

    check_choice("--method", method, METHODS)
    for path, what in ((out, "--out"), (std_out, "--std-out")):
        if path is not None and suffix_of(path) not in (".nii.gz", ".nii"):
            raise MeddiffError(f"{what} {path}: write a NIfTI volume (.nii.gz or .nii)")
    if std_out is not None and method not in DIFFUSION:
        raise MeddiffError(f"--std-out needs a diffusion method ({', '.join(DIFFUSION)}); {method!r} gives one image")
    first, meta = _read(input_path, "--input")
    sources = [first]
    if input2 is not None:
        second, meta2 = _read(input2, "--input2")
        if second.shape != first.shape or not np.allclose(meta2.affine, meta.affine, atol=1e-3):
            raise MeddiffError(f"--input {input_path} and --input2 {input2} are on different grids (shapes "
                               f"{first.shape} vs {second.shape} or affines differ); resample --input2 onto --input")
        sources.append(second)
    translator = load_translator(checkpoint)
    names = list(source_contrasts) if source_contrasts else translator.source[: len(sources)]
    if len(names) != len(sources) or len(sources) != len(translator.source):
        raise MeddiffError(f"the checkpoint was trained on source contrast(s) {translator.source}: give "
                           f"{len(translator.source)} input(s) (--input, --input2) and as many --source-contrast "
                           f"names; got {len(sources)} input(s), contrasts {names}")
    check_contrasts(translator, target, names)
    mask = None if mask_path is None else _read(mask_path, "--mask")[0]
    prior = None
    if method == "sdedit" and prior_checkpoint is not None:
        from meddiff.tasks.prior import load_prior

        prior = load_prior(prior_checkpoint)
    result = translate_volume(sources, meta.affine, translator, method, target=target, source_names=names,
                              mask=mask, prior=prior, **kwargs)
    written = [_write(out, result.image, meta.affine, result.settings)]
    if std_out is not None:
        written.append(_write(std_out, result.std, meta.affine, {**result.settings, "map": "std over samples"}))
    side = Path(str(out).removesuffix(".gz").removesuffix(".nii") + ".json")
    write_text(side, json.dumps({**result.settings, "checkpoint": str(translator.path), "nfe_per_sample": result.nfe,
                                 "seconds": result.seconds}, indent=1))
    written.append(side)
    return result, written


def _write(path, array, affine, settings: dict) -> Path:
    """NIfTI with the affine and an 80-character description naming the method, target and its units."""
    import nibabel as nib

    from meddiff.files import atomic_path

    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    descr = f"meddiff {settings['method']} {'+'.join(settings['source'])}->{settings['target']}; units of train " \
            f"{settings['target']}; see .json"
    img.header["descrip"] = descr[:79].encode()
    with atomic_path(Path(path)) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
