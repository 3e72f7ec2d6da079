"""meddiff: diffusion models for medical imaging (DDPM, score SDEs, fast samplers) on real medical data."""

__version__ = "0.1.0"
