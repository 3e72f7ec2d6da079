"""meddiff.tasks."""
