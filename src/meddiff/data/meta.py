"""Metadata returned next to every array a reader loads (spacing, affine, orientation, modality, units)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ImageMeta:
    """What a reader knows about an array; spacing is in mm per array axis (spatial axes only).

    ``affine`` maps array indices of the spatial axes to RAS world mm (nibabel convention);
    ``orientation`` is its axis code string (e.g. "RAS", "LPS"); ``channel_axis`` is the axis that
    holds colour/coil/contrast channels, or None.
    """

    path: str = ""
    format: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    orientation: str | None = None
    modality: str | None = None
    units: str | None = None
    channel_axis: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "ImageMeta":
        """A copy with some fields changed (the affine is copied, never shared)."""
        new = dataclasses.replace(self, **changes)
        if new.affine is not None:
            new.affine = np.array(new.affine, dtype=np.float64, copy=True)
        new.extra = dict(new.extra)
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (affine as nested lists, numpy scalars as Python numbers)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
