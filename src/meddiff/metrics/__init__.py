"""meddiff.metrics: image and distribution metrics."""
