"""Command-line interface: parses arguments, calls a task, prints. No logic lives here."""
