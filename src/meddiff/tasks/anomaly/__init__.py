"""Unsupervised anomaly detection: translate an image to its "healthy" counterpart and read the lesion off the
difference.

Methods (all through the core samplers and hooks; no sampler loop of their own):
- "wolleb": Wolleb et al., MICCAI 2022, "Diffusion models for medical anomaly detection": deterministic DDIM
  encoding to noise level L (``invert_ddim``), then DDIM decoding with classifier guidance towards "healthy"
  (``ClassifierGuidance``, scale s); anomaly map = sum over channels of |x - x_healthy| (the paper's default).
- "anoddpm" / "anoddpm-gaussian": Wyatt et al., CVPR-W 2022, "AnoDDPM": a model trained on healthy images
  only, with simplex (or Gaussian) noise; partial diffusion to t_lambda and ancestral reconstruction (Alg. 2).
- "autoencoder": reconstruction error of a plain convolutional autoencoder (Baur et al. 2021).
- "intensity": the trivial baseline of Meissen et al. 2021 ("Challenging current semi-supervised anomaly
  segmentation methods for brain MRI"): the per-volume z-scored FLAIR intensity inside the brain mask.
Anomaly map options (``residual_map``): the contrasts summed (e.g. FLAIR only), the absolute or the positive
residual (lesions brighter than healthy tissue, as tumour in FLAIR/T2), and for the stochastic AnoDDPM the mean
over K reconstructions with independent noise. Post-processing: brain mask, median filter, threshold (Otsu /
healthy-percentile / fixed), connected components, image-level score. BraTS models take 3 contrasts (t1ce, t2,
flair) at 48 x 48; chest X-ray models 1 x 28 x 28.

Modules, in import order: ``data`` (MR scaling, masks, training folders, reading inputs, evaluation subjects),
``postprocess`` (maps, filters, thresholds, components), ``methods`` (``Detector``, the heal functions, the default
and paper settings, ``load_detector``), ``outputs`` (files `meddiff detect` writes), ``detect`` (``detect_array``, ``run_detect``),
``evaluation`` (``evaluate``, ``run_evaluation``, ``markdown_table``) and ``report`` (the demo-report section).
"""

from meddiff.tasks.anomaly.data import (
    BRATS_FIELD_OF_VIEW_MM,
    CONTRASTS_BY_CHANNELS,
    MR_SCALE,
    Input,
    Placement,
    Subject,
    brain_masks,
    brats_case_subject,
    brats_npz_subjects,
    foreground_mask,
    in_plane_spacing,
    mirror_healthy_half,
    model_inputs,
    normalise_mr,
    pneumonia_subjects,
    prepare_training_data,
    read_case,
    read_inputs,
    to_model_size,
)
from meddiff.tasks.anomaly.postprocess import (
    RESIDUALS,
    THRESHOLDS,
    Result,
    auto_median,
    connected_components,
    filter_maps,
    image_score,
    intensity_map,
    median_filter,
    pick_threshold,
    residual_map,
    segment,
)
from meddiff.tasks.anomaly.methods import (
    CHEST_MODELS,
    DEFAULT_MODELS,
    DIFFUSION_METHODS,
    DISEASED,
    HEALTHY,
    METHODS,
    MR_DEFAULTS,
    PAPER_SETTINGS,
    SETTINGS,
    STOCHASTIC_METHODS,
    Detector,
    anoddpm_heal,
    check_input,
    contrast_indices,
    default_settings,
    is_brats_mr,
    load_detector,
    wolleb_heal,
)
from meddiff.tasks.anomaly.outputs import write_outputs, write_scores
from meddiff.tasks.anomaly.detect import detect_array, run_detect
from meddiff.tasks.anomaly.evaluation import EVAL_SETS, evaluate, markdown_table, run_evaluation
from meddiff.tasks.anomaly.report import report_section

__all__ = [
    "BRATS_FIELD_OF_VIEW_MM", "CHEST_MODELS", "CONTRASTS_BY_CHANNELS", "DEFAULT_MODELS", "DIFFUSION_METHODS",
    "DISEASED", "EVAL_SETS", "HEALTHY", "METHODS", "MR_DEFAULTS", "MR_SCALE", "PAPER_SETTINGS", "RESIDUALS",
    "SETTINGS", "STOCHASTIC_METHODS", "THRESHOLDS", "Detector", "Input", "Placement", "Result", "Subject",
    "anoddpm_heal", "auto_median", "brain_masks", "brats_case_subject", "brats_npz_subjects", "check_input",
    "connected_components", "contrast_indices", "default_settings", "detect_array", "evaluate", "filter_maps",
    "foreground_mask", "image_score", "in_plane_spacing", "intensity_map", "is_brats_mr", "load_detector",
    "markdown_table",
    "median_filter", "mirror_healthy_half", "model_inputs", "normalise_mr", "pick_threshold", "pneumonia_subjects",
    "prepare_training_data", "read_case", "read_inputs", "report_section", "residual_map", "run_detect",
    "run_evaluation", "segment", "to_model_size", "wolleb_heal", "write_outputs", "write_scores",
]
