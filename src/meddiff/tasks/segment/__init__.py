"""Brain parcellation with diffusion models (issue 25).

Modules: ``labels`` (the merged class table: DLMUSE / MUSE ROI ids -> 10 classes, with its sources), ``data``
(aligned T1 / label slices with the shipped prior's preprocessing), ``features`` (decoder-block features of a diffusion
UNet at chosen noise levels, Baranchuk et al. 2022), ``methods`` (pixel-MLP ensemble on those features; the supervised
MONAI UNet baseline), ``evaluate`` (Dice, HD95, calibration error, uncertainty-error correlation), ``pipeline``
(checkpoints with the prior's fingerprint, whole-volume segmentation behind ``meddiff segment``), ``postprocess``
(connected-component clean-up of the label map, on by default), ``train`` (the
config-driven training shared by ``scripts/train_segmentation.py`` and ``benchmarks/segmentation.py``), ``ddep``
(DDeP: the prior's denoiser fine-tuned with a K-class head, Brempong et al. 2022), ``medsegdiff`` (a conditional
diffusion model over the one-hot label map, K samples -> majority vote and vote entropy; Wu et al. 2022).
The shipped ``brain_parcellation_ixi`` is the supervised UNet: the better method at 20 labelled subjects
(benchmarks/README.md, "Brain parcellation"); the diffusion features win at 1 and 5.
"""

from meddiff.tasks.segment.data import SlicePrep, Subject, label_slices, load_labelled, load_split, volume_slices
from meddiff.tasks.segment.evaluate import (dice_per_class, expected_calibration_error, hd95_per_class, score_volume,
                                            uncertainty_error_correlation)
from meddiff.tasks.segment.features import DiffusionFeatures, block_channels, decoder_blocks
from meddiff.tasks.segment.labels import CLASS_NAMES, CLASSES, NUM_CLASSES, labels_json, merge_labels, read_labels
from meddiff.tasks.segment.methods import (FeatureSegmenter, PixelEnsemble, UNetSegmenter, build_unet, collect_pixels,
                                           entropy, fit_pixel_ensemble, fit_unet)
from meddiff.tasks.segment.pipeline import (LoadedSegmenter, load_segmenter, prior_fingerprint, save_segmenter,
                                            segment_file, segment_volume)

__all__ = [
    "CLASSES", "CLASS_NAMES", "NUM_CLASSES", "DiffusionFeatures", "FeatureSegmenter", "LoadedSegmenter",
    "PixelEnsemble", "SlicePrep", "Subject", "UNetSegmenter", "block_channels", "build_unet", "collect_pixels",
    "decoder_blocks", "dice_per_class", "entropy", "expected_calibration_error", "fit_pixel_ensemble", "fit_unet",
    "hd95_per_class", "label_slices", "labels_json", "load_labelled", "load_segmenter", "load_split", "merge_labels",
    "prior_fingerprint", "read_labels", "save_segmenter", "score_volume", "segment_file", "segment_volume",
    "uncertainty_error_correlation", "volume_slices",
]
