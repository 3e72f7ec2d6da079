"""Pairwise registration behind ``meddiff register``: any moving grid onto the fixed grid, one interpolation.

Steps: the fixed volume is reoriented to RAS (a permutation of axes, no interpolation); the moving one is placed by
the two NIfTI affines (world alignment), then aligned affinely (``affine``; the similarity over the top 150 mm of
the fixed head, as FSL's robustfov, so that the pose of the neck does not drive it); ``classical`` (demons) or
``voxelmorph`` add a deformable field ``u`` on the fixed grid. The moving image (and its labels, nearest neighbour)
is sampled once at ``M @ [p + u(p), 1]`` and everything is put back on the fixed grid's own axis order, written
with its affine. The field written with ``--field-out`` is the world displacement (mm, RAS world axes, (X, Y, Z,
3)): the world position sampled in the moving image minus the fixed voxel's world position. Folding (Jacobian of
p + u(p) <= 0) is measured on the deformable part and reported, never hidden.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.tasks.register.affine import (AffineSettings, apply_matrix, head_top_mask, register_affine,
                                           scale_intensity, world_matrix)
from meddiff.tasks.register.fields import folding_percent, identity_grid, sample

METHODS = ("affine", "classical", "voxelmorph")


@dataclass
class Registration:
    """Result on the fixed grid (its own axis order): warped image, warped labels (or None), world displacement
    (*S, N) mm, the deformable DDF on the RAS fixed grid (N, *S_ras) voxels, the affine matrix (fixed RAS voxel ->
    moving voxel), folding %, seconds."""

    warped: np.ndarray
    labels: np.ndarray | None
    displacement: np.ndarray
    ddf: np.ndarray
    matrix: np.ndarray
    folding_percent: float
    seconds: float
    written: list[Path] = field(default_factory=list)


def _orientation(affine: np.ndarray):
    import nibabel as nib

    return nib.orientations.io_orientation(affine)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3D array and its affine reoriented to RAS axis order (axes permuted / flipped, no interpolation)."""
    import nibabel as nib

    ornt = _orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)


def from_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo ``to_ras`` on the first three axes of ``array`` (trailing axes kept); ``affine``: the original one."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), _orientation(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, back))


def _check_pair(moving: np.ndarray, fixed: np.ndarray, labels: np.ndarray | None, moving_affine, labels_affine):
    if moving.ndim != fixed.ndim:
        raise MeddiffError(f"--moving is {moving.ndim}D (shape {moving.shape}) but --fixed is {fixed.ndim}D (shape "
                           f"{fixed.shape}); register images of the same dimensionality")
    if fixed.ndim != 3:
        raise MeddiffError(f"--fixed: expected 3D volumes, got {fixed.ndim}D (shape {fixed.shape}); for 2D arrays use "
                           "meddiff.tasks.register.affine / classical / fields directly")
    for name, a in (("--moving", moving), ("--fixed", fixed)):
        if not np.all(np.isfinite(a)):
            raise MeddiffError(f"{name}: the volume contains NaN or infinite values")
        if a.size == 0 or float(a.max()) <= float(a.min()):
            raise MeddiffError(f"{name}: the volume is empty or constant; nothing to register")
    if labels is not None:
        same_affine = labels_affine is None or np.allclose(np.asarray(labels_affine), np.asarray(moving_affine),
                                                           atol=1e-3)
        if labels.shape != moving.shape or not same_affine:
            raise MeddiffError(f"--labels: on another grid (shape {labels.shape}) than --moving (shape {moving.shape})"
                               f"{'' if same_affine else ' or with another affine'}; give the moving image's label "
                               "map on its own grid (resample it with nearest neighbour)")


def register_arrays(moving: np.ndarray, moving_affine: np.ndarray, fixed: np.ndarray, fixed_affine: np.ndarray,
                    method: str = "affine", *, labels: np.ndarray | None = None, labels_affine=None,
                    loaded=None, checkpoint=None, affine_settings: AffineSettings | None = None,
                    demons_settings=None) -> Registration:
    """Register ``moving`` (X, Y, Z, its affine) to ``fixed`` (its affine) with ``method`` (``METHODS``); ``labels``
    (on the moving grid) are warped with nearest neighbour. ``loaded``: a ``LoadedRegistration`` (voxelmorph; else
    ``checkpoint`` or the shipped default is loaded)."""
    if method not in METHODS:
        raise MeddiffError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    _check_pair(moving, fixed, labels, moving_affine, labels_affine)
    world_matrix(moving_affine, fixed_affine)  # refuses non-invertible affines before any work
    if method == "voxelmorph" and loaded is None:
        from meddiff.tasks.register.learned import load_voxelmorph

        loaded = load_voxelmorph(checkpoint)
    start = time.perf_counter()
    fixed_ras, fixed_ras_affine = to_ras(fixed, np.asarray(fixed_affine, dtype=np.float64))
    init = world_matrix(moving_affine, fixed_ras_affine)
    affine_settings = affine_settings or AffineSettings()
    mask = None if affine_settings.head_extent_mm is None else head_top_mask(fixed_ras, fixed_ras_affine,
                                                                              affine_settings.head_extent_mm)
    matrix = register_affine(moving, fixed_ras, init, affine_settings, mask=mask)
    shape = fixed_ras.shape
    ddf = np.zeros((3,) + shape, dtype=np.float32)
    if method != "affine":
        aligned = apply_matrix(scale_intensity(moving), matrix, shape)
        if method == "classical":
            from meddiff.tasks.register.classical import demons

            ddf = demons(aligned, scale_intensity(fixed_ras), demons_settings)
        else:
            from meddiff.tasks.register.learned import predict_ddf

            _check_spacing(loaded, fixed_ras_affine)
            ddf = predict_ddf(loaded.net, aligned, fixed_ras)
    # one interpolation: q = M @ [p + u(p), 1] in moving voxels
    pts = identity_grid(shape, dtype=torch.float64) + torch.from_numpy(ddf).double()
    m = torch.from_numpy(matrix)
    q = (torch.einsum("ij,j...->i...", m[:3, :3], pts) + m[:3, 3].reshape(3, 1, 1, 1))[None].float()
    warped = sample(torch.from_numpy(moving)[None, None], q)[0, 0].numpy()
    warped_labels = None
    if labels is not None:
        lab = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None, None]
        warped_labels = sample(lab, q, mode="nearest")[0, 0].numpy()
        warped_labels = np.rint(warped_labels).astype(np.asarray(labels).dtype)
    folding = folding_percent(ddf)
    seconds = time.perf_counter() - start
    world_q = np.einsum("ij,j...->i...", np.asarray(moving_affine, dtype=np.float64)[:3, :3], q[0].double().numpy())
    world_q += np.asarray(moving_affine, dtype=np.float64)[:3, 3].reshape(3, 1, 1, 1)
    grid = identity_grid(shape, dtype=torch.float64).numpy()
    world_p = np.einsum("ij,j...->i...", fixed_ras_affine[:3, :3], grid) + fixed_ras_affine[:3, 3].reshape(3, 1, 1, 1)
    displacement = np.moveaxis(world_q - world_p, 0, -1).astype(np.float32)  # [X,Y,Z,3] mm
    fa = np.asarray(fixed_affine, dtype=np.float64)
    return Registration(from_ras(warped, fa), None if warped_labels is None else from_ras(warped_labels, fa),
                        from_ras(displacement, fa), ddf, matrix, folding, seconds)


def _check_spacing(loaded, affine: np.ndarray) -> None:
    trained = loaded.meta.get("spacing_mm")
    if trained is None:
        return
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    if np.any(np.abs(spacing / np.asarray(trained, dtype=np.float64) - 1) > 0.25):
        raise MeddiffError(f"--fixed: voxel spacing {tuple(np.round(spacing, 2))} mm, but the voxelmorph checkpoint "
                           f"was trained at {tuple(trained)} mm; resample the fixed volume to that spacing")


def _read_volume(path, option: str):
    from meddiff.data.io import read_nifti_input

    array, meta = read_nifti_input(path, option)
    return np.asarray(array), meta


def register_file(moving: str | Path, fixed: str | Path, out: str | Path, method: str = "affine", *,
                  checkpoint=None, field_out=None, labels=None, labels_out=None, loaded=None) -> Registration:
    """``meddiff register``: read the NIfTI pair, register, write the warped image (and field, labels) on the fixed
    grid with the fixed affine (atomic writes)."""
    from meddiff.data.io import NIFTI_SUFFIXES, suffix_of, write_nifti

    if method not in METHODS:
        raise MeddiffError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if (labels is None) != (labels_out is None):
        raise MeddiffError("--labels and --labels-out go together: give both or neither")
    for path, option in ((out, "--out"), (field_out, "--field-out"), (labels_out, "--labels-out")):
        if path is not None and suffix_of(Path(path)) not in NIFTI_SUFFIXES:
            raise MeddiffError(f"{option} {path}: the output must be a NIfTI file (.nii.gz or .nii)")
    mov, mov_meta = _read_volume(moving, "--moving")
    fix, fix_meta = _read_volume(fixed, "--fixed")
    lab, lab_affine = None, None
    if labels is not None:
        lab, lab_meta = _read_volume(labels, "--labels")
        lab_affine = lab_meta.affine
        if not np.all(np.isfinite(lab)) or not np.allclose(lab, np.rint(lab)):
            raise MeddiffError(f"--labels {labels}: not a label map (non-integer values); give integer labels")
        lab = np.rint(lab).astype(np.int32)
    result = register_arrays(mov, mov_meta.affine, fix, fix_meta.affine, method, labels=lab, labels_affine=lab_affine,
                             loaded=loaded, checkpoint=checkpoint)
    result.written.append(write_nifti(out, result.warped.astype(np.float32), fix_meta.affine))
    if field_out is not None:
        result.written.append(write_nifti(field_out, result.displacement, fix_meta.affine))
    if labels_out is not None:
        small = result.labels.min() >= 0 and result.labels.max() <= 255
        result.written.append(write_nifti(labels_out, result.labels.astype(np.uint8 if small else np.int32),
                                          fix_meta.affine))
    return result
