"""meddiff.report."""
