"""meddiff.nets."""
