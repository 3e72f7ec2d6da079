"""Image-to-image translation between MR contrasts (issue 24): T1 -> T2 / FLAIR.

Modules: ``data`` (RAS grids, 2 mm down-sampling, brain mask, normalisation and its inverse, the paired slice
dataset), ``methods`` (histogram matching, Palette, SDEdit, the supervised UNet), ``evaluation`` (PSNR/SSIM in the
brain mask, lesion contrast-to-noise ratio), ``pipeline`` (``translate_volume`` / ``translate_file`` behind
``meddiff translate``, the checkpoint's translation card).
"""
