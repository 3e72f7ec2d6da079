"""The diffusion prior of the MRI solvers: re-exported from the generic ``meddiff.tasks.prior`` (shared with the CT and
restoration solvers)."""

from meddiff.tasks.prior import Prior, default_prior, load_prior, untrained_prior

__all__ = ["Prior", "default_prior", "load_prior", "untrained_prior"]
