"""`meddiff turing-test create`: draw a balanced, shuffled, de-identified reading set and write the study folder.

A study folder holds

- ``manifest.json``: the organiser's key (which opaque id is real or synthetic, where each image came from, its
  pixel hash, the window). The server reads it to know the ids but never serves it.
- ``images/<id>.png``: what raters see, with no name, metadata or order that reveals the kind: both kinds are
  mapped to [-1, 1] by one intensity rule (``window``), written as 8-bit PNG of one size, and in shuffled order.
  3D volumes give ``<id>.png`` (three middle planes) and ``<id>/<k>.png`` (the axial stack, scrollable).
- ``index.html``: the reading page (`meddiff.tasks.turing.page`).
- ``answers.jsonl``: written by the server, one line per answer (`meddiff.tasks.turing.answers`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
from pathlib import Path

import numpy as np
import torch

from meddiff.data.transforms import WINDOW_PRESETS
from meddiff.errors import MeddiffError
from meddiff.files import atomic_path, write_png, write_text

MANIFEST = "manifest.json"
PAGE = "index.html"
ANSWERS = "answers.jsonl"
IMAGES = "images"
MIN_N = 10  # fewer images than this cannot say anything about 55 % (the Wilson interval spans +-30 points)
KINDS = ("real", "synthetic")
WINDOW_HELP = ("one intensity rule for both sets: auto (default: uint8 as 0..255, float as [0, 1] or [-1, 1], HU "
               "as -1024..3071; `meddiff sample` folders by their checkpoint), uint8, uint16, unit, symmetric, hu, "
               "min-max, percentile (each image's 0.5-99.5 percentiles), a CT preset ("
               + ", ".join(WINDOW_PRESETS) + ") or LO,HI")


def parse_window(window: str | None):
    """``--window`` -> the `meddiff.tasks.evaluate` range rule: a CT preset becomes its (LO, HI) in HU."""
    from meddiff.tasks.evaluate import parse_range

    if window in WINDOW_PRESETS:
        centre, width = WINDOW_PRESETS[window]
        return centre - width / 2, centre + width / 2
    try:
        return parse_range(window)
    except MeddiffError:
        raise MeddiffError(f"--window {window}: {WINDOW_HELP}") from None


def _load(path: str | Path, what: str, rule):
    from meddiff.tasks.evaluate import load_image_set

    images = load_image_set(path, what=what, intensity_range=rule)
    if images.images.ndim not in (4, 5):
        raise MeddiffError(f"{what} {path}: expected 2D or 3D images, got shape {tuple(images.images.shape[1:])}")
    return images


def _resize(x: torch.Tensor, size: tuple[int, ...] | None, what: str) -> torch.Tensor:
    if size is None or tuple(x.shape[2:]) == tuple(size):
        return x
    if len(size) != x.ndim - 2:
        raise MeddiffError(f"--size {' '.join(map(str, size))}: {what} images are {x.ndim - 2}D; give "
                           f"{x.ndim - 2} numbers")
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return torch.nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False,
                                           antialias=x.ndim == 4).clamp(-1, 1)


def to_display(image: torch.Tensor) -> np.ndarray:
    """One image (C, *spatial) in [-1, 1] -> uint8 (*spatial) grey or (*spatial, 3) colour; other channel
    counts show their mean."""
    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    if x.shape[0] == 3:
        return np.moveaxis(x, 0, -1)
    return x[0] if x.shape[0] == 1 else np.round(x.mean(axis=0)).astype(np.uint8)


def pixel_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + str(pixels.shape).encode()).hexdigest()


def three_planes(volume: np.ndarray) -> np.ndarray:
    """uint8 (D, H, W) -> the middle axial, coronal and sagittal planes side by side (padded to one height)."""
    d, h, w = volume.shape[:3]
    planes = [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]
    height = max(p.shape[0] for p in planes)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4)) + ((0, 0),) * (p.ndim - 2)) for p in planes]
    return np.concatenate(padded, axis=1)[:, :-4]


def create_study(real: str | Path, synthetic: str | Path, out: str | Path, *, n: int = 40, seed: int = 0,
                 window: str | None = None, size: tuple[int, ...] | None = None) -> dict:
    """Draw ``n / 2`` real and ``n / 2`` synthetic images, shuffle them under opaque ids and write the study
    folder ``out`` (atomically: a failed run leaves no half study). Returns the manifest."""
    out = Path(out)
    if n < MIN_N or n % 2:
        raise MeddiffError(f"--n {n}: a balanced study needs an even number of images, at least {MIN_N} "
                           f"(e.g. --n 40)")
    if out.exists() and (out / ANSWERS).exists():
        raise MeddiffError(f"--out {out}: holds answers of a running study; choose another folder")
    rule = parse_window(window)
    sets = {"real": _load(real, "--real", rule), "synthetic": _load(synthetic, "--synthetic", rule)}
    tensors = {}
    for kind, image_set in sets.items():
        if len(image_set.names) < n // 2:
            raise MeddiffError(f"--{kind} {image_set.source}: {len(image_set.names)} images, too few for --n {n} "
                               f"(it needs {n // 2} of each kind); lower --n or add images")
        tensors[kind] = _resize(image_set.images, size, f"--{kind}")
    shapes = {kind: tuple(t.shape[1:]) for kind, t in tensors.items()}
    if shapes["real"] != shapes["synthetic"]:
        raise MeddiffError(f"--real images are (C, *spatial) {shapes['real']} but --synthetic ones "
                           f"{shapes['synthetic']}: raters would tell them apart by size; give --size "
                           f"{' '.join(map(str, shapes['real'][1:]))} (resamples both) or resample one set")
    pixels = {kind: [to_display(img) for img in t] for kind, t in tensors.items()}
    hashes = {kind: [pixel_hash(p) for p in ps] for kind, ps in pixels.items()}
    real_hashes = {h: i for i, h in enumerate(hashes["real"])}
    for j, h in enumerate(hashes["synthetic"]):
        if h in real_hashes:
            raise MeddiffError(f"--synthetic {sets['synthetic'].source}: {sets['synthetic'].names[j]} is the same "
                               f"image as --real {sets['real'].source}: {sets['real'].names[real_hashes[h]]} "
                               "(identical pixels): the sets must not overlap; remove the copy")
    rng = np.random.default_rng(seed)
    drawn = [(kind, int(i)) for kind in KINDS
             for i in np.sort(rng.choice(len(pixels[kind]), n // 2, replace=False))]
    order = rng.permutation(len(drawn))
    ids: set[str] = set()
    items = []
    with atomic_path(out, directory=True) as tmp:
        (tmp / IMAGES).mkdir()
        for position in order:
            kind, index = drawn[position]
            image_id = secrets.token_hex(6)
            while image_id in ids:
                image_id = secrets.token_hex(6)
            ids.add(image_id)
            picture = pixels[kind][index]
            item = {"id": image_id, "kind": kind, "source": sets[kind].source, "name": sets[kind].names[index],
                    "index": index, "sha256": hashes[kind][index]}
            if tensors[kind].ndim == 5:  # a volume (D, H, W)
                write_png(tmp / IMAGES / f"{image_id}.png", three_planes(picture))
                (tmp / IMAGES / image_id).mkdir()
                for k in range(picture.shape[0]):
                    write_png(tmp / IMAGES / image_id / f"{k}.png", picture[k])
                item["slices"] = int(picture.shape[0])
            else:
                write_png(tmp / IMAGES / f"{image_id}.png", picture)
            items.append(item)
        manifest = {
            "format": "meddiff-turing-study/1", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "n": n, "seed": seed, "order_key": secrets.token_hex(16),
            "window": rule if isinstance(rule, str) else list(rule),
            "intensity_rules": {kind: sorted(set(s.normalisation)) for kind, s in sets.items()},
            "sources": {kind: s.source for kind, s in sets.items()},
            "shape": list(shapes["real"]), "spatial_dims": tensors["real"].ndim - 2, "items": items,
        }
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        from meddiff.tasks.turing.page import page_html

        write_text(tmp / PAGE, page_html())
    return manifest


def load_manifest(study: str | Path) -> dict:
    """The organiser's manifest of a study folder (error naming the folder when it is not one)."""
    path = Path(study) / MANIFEST
    if not path.is_file():
        raise MeddiffError(f"{study}: not a study folder (no {MANIFEST}); create one with `meddiff turing-test "
                           "create`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ids = {item["id"]: item for item in manifest["items"]}
    except (ValueError, KeyError, TypeError) as error:
        raise MeddiffError(f"{path}: unreadable study manifest ({error}); recreate the study") from None
    if len(ids) != len(manifest["items"]):
        raise MeddiffError(f"{path}: repeated image ids; recreate the study")
    return manifest


def rater_order(manifest: dict, rater: str) -> list[dict]:
    """The rater's own random order of the images, the same on every visit (seeded by the study's secret key
    and the name): [{"id", "slices"?}, ...], nothing that reveals the kind."""
    digest = hashlib.sha256(f"{manifest['order_key']}\0{rater}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    items = manifest["items"]
    return [{"id": items[i]["id"], **({"slices": items[i]["slices"]} if "slices" in items[i] else {})}
            for i in rng.permutation(len(items))]
