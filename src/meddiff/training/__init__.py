"""meddiff.training."""
