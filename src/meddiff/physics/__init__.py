"""meddiff.physics."""
