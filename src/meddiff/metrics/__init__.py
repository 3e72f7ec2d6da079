"""meddiff.metrics: image metrics (PSNR, SSIM, MS-SSIM, NMSE), distribution metrics on named offline features
(FID, KID, precision/recall), memorisation (near-copies of training images) and downstream utility (TSTR)."""

from meddiff.metrics.features import FEATURE_EXTRACTORS, get_feature_extractor
from meddiff.metrics.generative import fid, kid, precision_recall
from meddiff.metrics.image import ms_ssim, nmse, psnr, ssim
from meddiff.metrics.memorisation import memorisation, nearest_neighbours
from meddiff.metrics.utility import class_auroc, train_synthetic_test_real

__all__ = ["FEATURE_EXTRACTORS", "class_auroc", "fid", "get_feature_extractor", "kid", "memorisation", "ms_ssim",
           "nearest_neighbours", "nmse", "precision_recall", "psnr", "ssim", "train_synthetic_test_real"]
