"""Rebuild the shipped demo assets from the shared data folder (../shared/data); run once by a developer:

    python src/meddiff/assets/build_assets.py /work/shared/data

Deterministic (fixed selections, no randomness). Each asset folder also holds a hand-written README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IXI_SUBJECTS = ("IXI012-HH-1211", "IXI092-HH-1436", "IXI211-HH-1568", "IXI363-HH-2050")
IXI_AXIAL_Z = (60, 70, 80)  # RAS axial indices through the cerebrum
BRATS_Z = (70, 80, 87, 95)  # axial slices through the tumour of TCGA-FG-6692 (largest area at z=87)


def pneumoniamnist(shared: Path) -> None:
    z = np.load(shared / "medmnist" / "pneumoniamnist.npz")
    out = {}
    for split, per_class in (("train", 300), ("val", 100)):
        labels = z[f"{split}_labels"][:, 0]
        idx = np.sort(np.concatenate([np.nonzero(labels == c)[0][:per_class] for c in (0, 1)]))
        out[f"{split}_images"] = z[f"{split}_images"][idx]
        out[f"{split}_labels"] = z[f"{split}_labels"][idx]
    dest = HERE / "pneumoniamnist"
    dest.mkdir(exist_ok=True)
    np.savez_compressed(dest / "pneumoniamnist_small.npz", **out)


def ixi_slices(shared: Path) -> None:
    import nibabel as nib
    from PIL import Image

    dest = HERE / "brain_mr_slices"
    (dest / "png").mkdir(parents=True, exist_ok=True)
    images, subjects, zs = [], [], []
    for sub in IXI_SUBJECTS:
        img = nib.as_closest_canonical(nib.load(shared / "ixi_t1_2mm_nichart" / f"{sub}_T1.nii.gz"))
        vol = img.get_fdata(dtype=np.float32)  # (90, 120, 120) RAS, 2 mm
        hi = float(np.percentile(vol, 99.5))
        for z in IXI_AXIAL_Z:
            sl = vol[:, :, z]
            images.append(sl)
            subjects.append(sub)
            zs.append(z)
            # PNG view: rows = anterior->posterior, cols = right->left (radiological display), 0..255.
            png = np.clip(np.rot90(sl) / hi * 255.0, 0, 255).round().astype(np.uint8)
            Image.fromarray(png).save(dest / "png" / f"{sub}_slice{z:03d}.png")
    np.savez_compressed(dest / "ixi_t1_axial.npz", images=np.stack(images).astype(np.float32),
                        subject=np.array(subjects), slice_index=np.array(zs), spacing_mm=np.array([2.0, 2.0]))


def brats_slices(shared: Path) -> None:
    import nibabel as nib

    dest = HERE / "brats_tcga_slices"
    dest.mkdir(exist_ok=True)
    names = ("t1", "t1ce", "t2", "flair")
    vols = [np.asanyarray(nib.load(shared / "brats_case_1" / f"TCGA-FG-6692_{n}.nii.gz").dataobj) for n in names]
    seg = np.asanyarray(nib.load(shared / "brats_case_1" / "TCGA-FG-6692_seg.nii.gz").dataobj)
    images = np.stack([np.stack([v[:, :, z] for v in vols]) for z in BRATS_Z]).astype(np.int16)
    np.savez_compressed(dest / "brats_tcga_slices.npz", images=images, seg=np.stack([seg[:, :, z] for z in BRATS_Z]),
                        channels=np.array(names), slice_index=np.array(BRATS_Z), subject=np.array(["TCGA-FG-6692"] * 4),
                        spacing_mm=np.array([1.0, 1.0]))


def brats_volume_2mm(shared: Path) -> None:
    """TCGA-FG-6692 cropped to the brain and averaged over 2x2x2 blocks (2 mm), BraTS 2020 naming."""
    import nibabel as nib

    dest = HERE / "brats_tcga_2mm" / "TCGA-FG-6692"
    dest.mkdir(parents=True, exist_ok=True)
    lo, hi = np.array([44, 44, 6]), np.array([196, 220, 142])  # brain bounding box (0-based, even sizes)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shrink = np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    for name in ("t1", "t1ce", "t2", "flair", "seg"):
        img = nib.load(shared / "brats_case_1" / f"TCGA-FG-6692_{name}.nii.gz")
        v = np.asanyarray(img.dataobj)[crop]
        blocks = v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2, v.shape[2] // 2, 2)
        if name == "seg":
            out = blocks.max(axis=(1, 3, 5)).astype(np.uint8)  # label present anywhere in the block
        else:
            out = np.round(blocks.astype(np.float32).mean(axis=(1, 3, 5))).astype(np.int16)
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
        new = nib.Nifti1Image(out, affine @ shrink)
        new.header.set_xyzt_units("mm")
        nib.save(new, dest / f"TCGA-FG-6692_{name}.nii.gz")


def kspace(shared: Path) -> None:
    import shutil

    dest = HERE / "kspace_brain_8ch"
    dest.mkdir(exist_ok=True)
    for name in ("kspace.npy", "rss_reference.npy", "mask_und2x2.npy"):
        shutil.copyfile(shared / "mri_kspace_brain_8ch" / name, dest / name)


CT_SLICE = 80  # sorted slice index in the chest CT series: the first test-block slice of benchmarks/ct_reconstruction.py


def ct_slice(shared: Path) -> None:
    """One chest CT slice of the benchmark's test block (never seen by ``ct_chest_prior``, trained on slices 0-59),
    averaged 4 x 4 to 128 x 128 (the prior's size), clamped below at -1000 HU, stored as int16 HU."""
    import json

    import torch

    from meddiff.data.io import read_dicom_series

    volume, meta = read_dicom_series(shared / "ct_chest_dicom" / "dicom")
    hu = torch.from_numpy(volume[CT_SLICE].astype(np.float32)).clamp_min(-1000.0)
    factor = hu.shape[-1] // 128
    hu = torch.nn.functional.avg_pool2d(hu[None, None], factor)[0, 0]
    dest = HERE / "ct_chest_slice"
    dest.mkdir(exist_ok=True)
    np.save(dest / "slice_hu.npy", np.round(hu.numpy()).astype(np.int16))
    (dest / "meta.json").write_text(json.dumps({"series_index": CT_SLICE, "pixel_mm": float(meta.spacing[-1]) * factor,
                                                "units": "HU"}, indent=1) + "\n")


IXI_TEST_SUBJECT = "IXI039-HH-1261"  # the first TEST subject of configs/splits/ixi_t1_2mm_dlmuse.json
IXI_TEST_CROP = (88, 120)  # the restoration benchmark's centre crop (4x and 2x divide it)


def ixi_test_slice(shared: Path) -> None:
    """The axial slice with the largest DLMUSE brain area of a TEST subject (never seen by the shipped brain models),
    centre-cropped to 88 x 120 at 2 mm, in scanner units (float32). The DLMUSE labels only pick the slice; they are not
    shipped (NiChart's licence is not CC)."""
    from meddiff.data.volumes import load_subject

    root = shared / "ixi_t1_2mm_dlmuse"
    files = {"t1": root / "t1" / f"{IXI_TEST_SUBJECT}_T1.nii.gz",
             "seg": root / "dlmuse_seg" / f"{IXI_TEST_SUBJECT}_T1_DLMUSE.nii.gz"}
    vol, seg, _ = load_subject(files, ["t1"], with_seg=True, normalize_cfg="none", canonical=True, spacing=None)
    z = int(np.argmax((seg[0] > 0).sum(axis=(0, 1))))
    top, left = ((s - c) // 2 for s, c in zip(vol.shape[1:3], IXI_TEST_CROP))
    crop = (slice(top, top + IXI_TEST_CROP[0]), slice(left, left + IXI_TEST_CROP[1]), z)
    dest = HERE / "ixi_t1_test_slice"
    dest.mkdir(exist_ok=True)
    np.save(dest / "slice_t1.npy", vol[0][crop].astype(np.float32))
    (dest / "meta.json").write_text(__import__("json").dumps({"subject": IXI_TEST_SUBJECT, "axial_index_ras": z,
                                                               "spacing_mm": [2.0, 2.0], "units": "scanner"},
                                                              indent=1) + "\n")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data")
    pneumoniamnist(root)
    ixi_slices(root)
    brats_slices(root)
    brats_volume_2mm(root)
    kspace(root)
    ct_slice(root)
    ixi_test_slice(root)
