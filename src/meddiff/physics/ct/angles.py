"""View-angle sets (radians): V views evenly over an arc starting at 0, endpoint excluded, so 180 degrees gives
the parallel-beam full set (every direction once) and an arc < 180 degrees a limited-angle set."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice

SPARSE_VIEWS = (18, 30, 60, 90)  # sparse-view sets over 180 degrees
LIMITED_ARCS = (90, 120)  # limited-angle arcs (degrees)
FULL_VIEWS = 180  # the "full" set: one view per degree over 180 degrees
ANGLE_SETS = ("full", *(f"sparse-{v}" for v in SPARSE_VIEWS), *(f"limited-{a}" for a in LIMITED_ARCS))


def view_angles(views: int, arc_degrees: float = 180.0) -> Tensor:
    """``views`` angles arc * k / views, k = 0..views-1, in radians (float64)."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise MeddiffError(f"views={views!r} must be a positive integer")
    if not (math.isfinite(arc_degrees) and 0 < arc_degrees <= 360):
        raise MeddiffError(f"arc={arc_degrees!r} must be in (0, 360] degrees")
    return torch.arange(views, dtype=torch.float64) * (math.radians(arc_degrees) / views)


def angle_set(name: str) -> Tensor:
    """A named set: "full" (180 views / 180 degrees), "sparse-V" (V views / 180 degrees), "limited-A" (one view per
    degree over A degrees)."""
    check_choice("angle set", name, ANGLE_SETS)
    if name == "full":
        return view_angles(FULL_VIEWS)
    kind, value = name.split("-")
    return view_angles(int(value)) if kind == "sparse" else view_angles(int(value), float(value))
