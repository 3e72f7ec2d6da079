"""Whole-head 3D synthesis by latent diffusion (issue 27): a KL autoencoder (``autoencoder``), label maps given by
users (``labelmap``), the bundle and label-conditioned sampling (``pipeline``), ``meddiff sample`` outputs
(``output``) and label fidelity (``evaluate``)."""

from meddiff.tasks.synthesis3d.pipeline import LatentDiffusion, is_ldm, load_ldm, sample_heads, write_bundle

__all__ = ["LatentDiffusion", "is_ldm", "load_ldm", "sample_heads", "write_bundle"]
