"""Error types for user mistakes; the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from typing import Iterable


class MeddiffError(ValueError):
    """A user mistake (bad argument, file or config) whose message names the culprit and the fix."""


def check_choice(argument: str, value: object, allowed: Iterable[object]) -> None:
    """Raise MeddiffError naming ``argument`` and the allowed values unless ``value`` is one of them."""
    allowed = list(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise MeddiffError(f"{argument}={value!r} is not supported; choose one of: {choices}")
