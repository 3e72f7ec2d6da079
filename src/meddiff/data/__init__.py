"""meddiff.data."""
