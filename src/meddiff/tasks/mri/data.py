"""MRI data preparation: k-space and mask readers (with the input checks every method shares) and the random T1 crops
the brain prior is trained on (``make_prior_patches``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.data import io
from meddiff.data.transforms import to_canonical
from meddiff.errors import MeddiffError

def load_kspace(path: str | Path, *, slice_index: int | None = None) -> np.ndarray:
    """Centred k-space (C, H, W) or (H, W) complex64 from .npy, .h5 (fastMRI: dataset 'kspace' (slices, C, H, W);
    ``slice_index`` picks a slice, default the middle one) or BART .cfl/.hdr."""
    path = Path(path)
    if not path.exists() and not (io.suffix_of(path) in (".cfl", ".hdr") and path.with_suffix(".cfl").exists()):
        raise MeddiffError(f"--kspace {path}: no such file")
    fmt = io.detect_format(path)
    if fmt == "hdf5":
        arr, _ = io.read_image(path, key="kspace", allow_nan=True)
    elif fmt in ("npy", "cfl"):
        arr, _ = io.read_image(path, allow_nan=True)
    else:
        raise MeddiffError(f"--kspace {path}: k-space must be .npy, .h5 (fastMRI layout) or .cfl/.hdr, got {fmt}")
    arr = np.asarray(arr)
    if arr.ndim == 4:
        index = arr.shape[0] // 2 if slice_index is None else slice_index
        if not 0 <= index < arr.shape[0]:
            raise MeddiffError(f"--slice {index} is outside the {arr.shape[0]} slices of {path}")
        arr = arr[index]
    return arr


def load_mask(path: str | Path) -> np.ndarray:
    """Sampling mask from .npy: (H, W), or (W,) for a line pattern shared by all rows; 1 = measured."""
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"--mask {path}: no such file")
    arr, _ = io.read_image(path, allow_nan=True)
    return np.asarray(arr)


def check_inputs(kspace, mask) -> tuple[Tensor, Tensor]:
    """kspace (C, H, W) or (H, W) complex64 and mask (H, W) float32 0/1, with errors naming the argument."""
    k = torch.as_tensor(np.asarray(kspace)) if not isinstance(kspace, Tensor) else kspace
    if not k.is_complex():
        raise MeddiffError(f"kspace must be complex (complex64 centred k-space), got {k.dtype}; store k-space as a "
                           "complex array (e.g. np.complex64), not magnitudes or real/imaginary channels")
    if k.ndim not in (2, 3):
        raise MeddiffError(f"kspace must have shape (coils, H, W) or (H, W), got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise MeddiffError(f"kspace contains {int((~torch.isfinite(k)).sum())} NaN/infinite value(s); replace them "
                           "(e.g. by 0 and mark them unmeasured in the mask)")
    k = k.to(torch.complex64)
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
    h, w = k.shape[-2:]
    if m.is_complex() or m.dtype == torch.bool:
        m = m.real.float() if m.is_complex() else m.float()
    m = m.float()
    if not bool(torch.isfinite(m).all()):
        raise MeddiffError("mask contains NaN/infinite values; use 1 = measured, 0 = not measured")
    if m.ndim == 1 and m.shape[0] == w:
        m = m[None, :].expand(h, w)
    if m.ndim != 2 or tuple(m.shape) != (h, w):
        raise MeddiffError(f"mask has shape {tuple(m.shape)} but the k-space is (H, W) = {(h, w)}; give a mask of "
                           f"shape {(h, w)} or ({w},)")
    if not bool(((m == 0) | (m == 1)).all()):
        raise MeddiffError("mask must hold only 0 and 1 (1 = measured)")
    if not bool(m.any()):
        raise MeddiffError("mask is empty (no measured k-space sample); nothing to reconstruct")
    return k, m.contiguous()



# ----------------------------------------------------------------------------------------------- prior patches

IXI_T1_DIR = "../shared/data/ixi_t1_2mm_nichart"
PRIOR_PATCH = 64
PRIOR_ZOOM = (1.0, 2.0)      # patch pixel = 2 mm / zoom: covers the 2 mm training data and the ~1 mm test k-space
PRIOR_VAL_SUBJECTS = 2       # the last subjects (sorted) are held out as val
# T1-weighted volumes at about 1 mm (none is the k-space subject): (path, in-plane pixel in mm). Skull-stripped ones
# have their brain brighter relative to the 99.5th percentile than a head with scalp fat, hence the median rescaling.
ONE_MM_T1 = (
    ("../shared/data/brats_case_1/TCGA-FG-6692_t1.nii.gz", 1.0),
    ("../shared/data/brats_case_1/TCGA-FG-6692_t1ce.nii.gz", 1.0),
    ("../shared/data/voxelmorph_brain/test_scan.npz", 1.0),
    ("../shared/data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 1.0),
    ("../shared/data/pyradiomics_brain1/image.nii.gz", 0.78125),
)
ONE_MM_MEDIAN = (0.3, 0.5)   # foreground median / 99.5th percentile drawn per crop (the k-space slice's is 0.39)


def _axial_volume(path: Path) -> np.ndarray:
    """A T1 volume (x, y, z) in RAS, axial slices along z, scaled to [0, 1] by its 99.5th foreground percentile;
    a VoxelMorph-style .npz ('vol', no affine) is taken as it is stored."""
    if path.suffix == ".npz":
        vol = io.load_npz(path)["vol"].astype(np.float32)
    else:
        vol, meta = io.read_nifti(path)
        vol, _ = to_canonical(np.asarray(vol, dtype=np.float32)[None], meta)
        vol = np.asarray(vol)[0]
    vol = np.clip(vol, 0, None)
    return np.clip(vol / float(np.percentile(vol[vol > 0.1 * vol.max()], 99.5)), 0, 1)


def _random_crop(sl: np.ndarray, patch: int, zoom: float, rng: np.random.Generator) -> np.ndarray:
    """A (patch, patch) crop of the slice resampled by ``zoom`` (bicubic), randomly transposed and flipped."""
    side = min(int(round(patch / zoom)), *sl.shape)
    y0, x0 = rng.integers(0, sl.shape[0] - side + 1), rng.integers(0, sl.shape[1] - side + 1)
    crop = torch.from_numpy(np.ascontiguousarray(sl[y0:y0 + side, x0:x0 + side]))[None, None]
    crop = torch.nn.functional.interpolate(crop, size=(patch, patch), mode="bicubic", align_corners=False)[0, 0]
    crop = crop.clamp(0, 1).numpy()
    if rng.random() < 0.5:
        crop = crop.T
    return crop[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]


def make_prior_patches(out: str | Path = "runs/brain_mri_prior_patches.npz", source: str | Path = IXI_T1_DIR, *,
                       per_subject: int = 600, patch: int = PRIOR_PATCH, zoom: tuple[float, float] = PRIOR_ZOOM,
                       one_mm: tuple = (), per_one_mm: int = 1500, seed: int = 0) -> Path:
    """Random (patch x patch) crops of axial IXI T1 slices (RAS z >= 40, i.e. above the neck, with > 15 % foreground)
    at random zoom (pixel 2 mm / zoom), random flips and transposes, scaled by each volume's 99.5th foreground
    percentile to uint8 0..255, saved as a MedMNIST-style npz
    (train_images/val_images (N, patch, patch), labels 0), for the fully convolutional brain prior.
    ``one_mm``: extra (path, pixel mm) T1 volumes (e.g. ``ONE_MM_T1``), ``per_one_mm`` training crops each at a
    pixel of 0.8-1.25 mm, intensities rescaled so that the foreground median is in ``ONE_MM_MEDIAN``."""
    source = Path(source)
    files = sorted(source.glob("*_T1.nii*"))
    if not files:
        raise MeddiffError(f"{source}: no IXI *_T1.nii.gz volumes found (see ../shared/data/ixi_t1_2mm_nichart)")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for n, path in enumerate(files):
        vol = _axial_volume(path)
        zs = [z for z in range(40, vol.shape[2]) if (vol[:, :, z] > 0.1).mean() > 0.15]  # cerebrum, not neck
        split = "val" if n >= len(files) - PRIOR_VAL_SUBJECTS else "train"
        for _ in range(per_subject if split == "train" else per_subject // 4):
            crop = _random_crop(vol[:, :, zs[rng.integers(len(zs))]], patch, float(rng.uniform(*zoom)), rng)
            parts[split].append(np.rint(crop * 255).astype(np.uint8))
    for path, pixel in one_mm:
        path = Path(path)
        if not path.is_file():
            raise MeddiffError(f"{path}: 1 mm T1 volume for the prior not found (see ../shared/data/README.md)")
        vol = _axial_volume(path)
        median = float(np.median(vol[vol > 0.1]))
        zs = [z for z in range(vol.shape[2]) if (vol[:, :, z] > 0.1).mean() > 0.1]
        for _ in range(per_one_mm):
            for _attempt in range(10):  # skull-stripped volumes: mostly tissue, not background
                crop = _random_crop(vol[:, :, zs[rng.integers(len(zs))]], patch, pixel / float(rng.uniform(0.8, 1.25)),
                                    rng)
                if (crop > 0.1).mean() > 0.3:
                    break
            crop = np.clip(crop * float(rng.uniform(*ONE_MM_MEDIAN)) / median, 0, 1)
            parts["train"].append(np.rint(crop * 255).astype(np.uint8))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": v for s in parts for k, v in
              (("images", np.stack(parts[s])), ("labels", np.zeros((len(parts[s]), 1), np.int64)))}
    with io.atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out

