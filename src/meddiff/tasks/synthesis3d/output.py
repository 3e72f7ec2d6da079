"""``meddiff sample`` for latent diffusion bundles: conditions from a label map (or the bundle's defaults), sampling,
and the outputs: one NIfTI per head on the label map's (or the training data's) grid and affine, a three-plane PNG
per head (with its label map beside it when one was given), a grid of all heads and manifest.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.synthesis3d.labelmap import condition_from_labels, from_ras, read_label_map
from meddiff.tasks.synthesis3d.pipeline import LatentDiffusion, load_ldm, sample_heads


def to_file_intensity(volume: np.ndarray) -> np.ndarray:
    """Model range (air -1, bright tissue about 1) -> float32 [0, ~1] for the NIfTI files (air 0)."""
    return np.clip((np.asarray(volume, dtype=np.float32) + 1.0) / 2.0, 0.0, None)


def three_planes(volume: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """uint8 image of the central sagittal, coronal and axial planes of a RAS volume (X, Y, Z) in model range;
    with ``labels`` (X, Y, Z) a second row shows the label map (class id x 25)."""
    from meddiff.training.images import image_grid

    v = torch.from_numpy(np.asarray(volume, dtype=np.float32))
    rows = [v]
    if labels is not None:
        rows.append(torch.from_numpy(np.asarray(labels, dtype=np.float32)) / 4.5 - 1.0)  # 0..9 -> [-1, 1]
    tiles = []
    for r in rows:
        side = max(r.shape)
        planes = [r[r.shape[0] // 2], r[:, r.shape[1] // 2], r[:, :, r.shape[2] // 2]]
        planes = [torch.nn.functional.pad(p.T.flip(0), (0, side - p.shape[0], 0, side - p.shape[1]), value=-1)
                  for p in planes]
        tiles.extend(planes)
    return image_grid(torch.stack(tiles)[:, None].clamp(-1, 1), nrow=3)


def sample_to_folder(checkpoint: str | Path, out_dir: str | Path, num: int, *, label_map: str | Path | None = None,
                     sampler: str | None = None, steps: int | None = None, seed: int = 0, guidance_scale: float = 1.0,
                     ldm: LatentDiffusion | None = None, progress=None) -> dict:
    """Sample ``num`` heads and write them to ``out_dir``; returns the manifest (seconds, files)."""
    from meddiff.data.heads import unpad_volume
    from meddiff.data.io import write_nifti
    from meddiff.files import write_png, write_text

    if num < 1:
        raise MeddiffError(f"--n {num}: the number of samples must be at least 1")
    ldm = ldm or load_ldm(checkpoint)
    info = ldm.info
    if not info.get("label_conditioning"):
        if label_map is not None:
            raise MeddiffError(f"--label-map: {checkpoint} is not label-conditioned")
    grid, ras_shape = tuple(info["head_grid"]), tuple(info["ras_shape"])
    if label_map is not None:
        given = read_label_map(label_map, ras_shape, grid, info["spacing"], info["num_classes"])
        cond = condition_from_labels(given.labels, info["num_classes"], ldm.ae.factor).expand(num, -1, -1, -1, -1)
        affine, names, shown = given.affine, [str(label_map)] * num, unpad_volume(given.labels, ras_shape, grid)
    else:
        defaults, subjects = ldm.default_conditions()
        cond = defaults[torch.arange(num) % len(defaults)]
        affine, names, shown = np.asarray(info["affine"]), [f"{subjects[i % len(subjects)]} (training subject's label "
                                                           "map)" for i in range(num)], None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, started = [], time.perf_counter()
    heads = []
    for i in range(num):
        head = sample_heads(ldm, cond[i:i + 1], sampler=sampler, steps=steps, seed=seed + i,
                            guidance_scale=guidance_scale)[0, 0].numpy()
        ras = unpad_volume(head, ras_shape, grid)
        heads.append(ras)
        files.append(write_nifti(out_dir / f"sample_{i:04d}.nii.gz", to_file_intensity(from_ras(ras, affine)), affine))
        files.append(write_png(out_dir / f"sample_{i:04d}.png", three_planes(ras, shown)))
        if progress is not None:
            progress(i + 1, num)
    seconds = time.perf_counter() - started
    from meddiff.training.images import image_grid

    stack = torch.from_numpy(np.stack([three_planes(h) for h in heads]).astype(np.float32) / 127.5 - 1.0)[:, None]
    files.append(write_png(out_dir / "grid.png", image_grid(stack, nrow=1)))
    manifest = {"checkpoint": str(ldm.path), "num": num, "seed": seed, "sampler": sampler, "steps": steps,
                "guidance_scale": guidance_scale, "label_map": None if label_map is None else str(label_map),
                "conditions": names, "seconds": round(seconds, 2), "seconds_per_volume": round(seconds / num, 2),
                "intensity": "model range mapped to [0, ~1] (air 0); per-volume scale, no physical units",
                "files": [f.name for f in files]}
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
