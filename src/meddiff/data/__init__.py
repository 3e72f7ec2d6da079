"""meddiff.data: readers/writers for medical images, invertible transforms and training datasets.

`read_image(path) -> (array, ImageMeta)` picks the reader from the path; `build_dataset(config, split)`
builds a dataset from a YAML-style config; items are dicts keyed by IMAGE_KEY, LABEL_KEY, ...
"""

from meddiff.data.assets import asset_path, list_assets
from meddiff.data.datasets import (
    COND_KEY,
    DATASET_KINDS,
    IMAGE_KEY,
    KSPACE_KEY,
    LABEL_KEY,
    MASK_KEY,
    SEG_KEY,
    SUBJECT_KEY,
    TARGET_KEY,
    FolderDataset,
    MedMNISTDataset,
    build_dataset,
    register_dataset,
)
from meddiff.data.io import (
    detect_format,
    read_cfl,
    read_dicom,
    read_dicom_series,
    read_hdf5,
    read_image,
    read_medmnist,
    read_nifti,
    read_npz,
    write_cfl,
    write_image,
    write_nifti,
    write_png,
)
from meddiff.data.meta import ImageMeta
from meddiff.data.volumes import (
    CSVDataset,
    KspaceDataset,
    SliceDataset,
    VolumeDataset,
    discover_subjects,
    paired_dataset,
)
from meddiff.data.ct_slices import CTSliceDataset  # registers the ct_slices kind
from meddiff.data.heads import HeadDataset, LatentDataset  # registers the heads and latents kinds (issue 27)
from meddiff.data.superres import SRPairs, area_downsample, bicubic_upsample, sr_condition, sr_slice_dataset
from meddiff.data.inspect import inspect_path, preview
from meddiff.data.transforms import (
    WINDOW_PRESETS,
    AugmentConfig,
    NormConfig,
    apply_window,
    build_augment,
    denormalize,
    extract_slices,
    fit_to_multiple,
    magnitude_scale,
    normalize,
    resample_to_spacing,
    resize,
    stack_contrasts,
    to_canonical,
)

__all__ = [name for name in dir() if not name.startswith("_")]
