"""The whole-head cache of latent diffusion: the IXI DLMUSE subjects read once, normalised and padded as
``meddiff.data.heads`` describes, with their merged parcellations (``meddiff.tasks.segment``), into one .npz that the
``heads`` and ``latents`` dataset kinds read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from meddiff.data.heads import HEAD_GRID, normalize_head, pad_volume


def build_head_cache(root: str | Path, subjects: Sequence[str], out: str | Path, grid: Sequence[int] = HEAD_GRID,
                     log=print) -> Path:
    """Read, normalise and pad the subjects' T1 and merged labels into ``out`` (.npz: images (N, *grid) float16,
    labels (N, *grid) uint8, subjects, affines (N, 4, 4) of the source files, shape (3,) RAS shape)."""
    from meddiff.data.io import read_nifti
    from meddiff.files import atomic_path
    from meddiff.tasks.segment.data import load_labelled, subject_files

    images, labels, affines, shape = [], [], [], None
    for n, subject in enumerate(subjects):
        s = load_labelled(root, subject)
        shape = s.image.shape
        images.append(pad_volume(normalize_head(s.image), grid, -1.0, subject).astype(np.float16))
        labels.append(pad_volume(s.labels.astype(np.uint8), grid, 0, subject))
        affines.append(np.asarray(read_nifti(subject_files(root, subject)["t1"])[1].affine, dtype=np.float64))
        if log and (n + 1) % 20 == 0:
            log(f"cached {n + 1}/{len(subjects)} heads")
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=np.stack(images), labels=np.stack(labels), subjects=np.asarray(list(subjects)),
                 affines=np.stack(affines), shape=np.asarray(shape))
    return Path(out)
