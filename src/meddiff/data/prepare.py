"""`meddiff data prepare`: turn a volume dataset into a cached 2D slice dataset (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meddiff.errors import MeddiffError


def load_config(path: str | Path) -> dict[str, Any]:
    """A YAML file with the slice-dataset options at top level or under ``dataset:``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MeddiffError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(cfg, dict):
        raise MeddiffError(f"{path}: the config must be a mapping")
    cfg = cfg.get("dataset", cfg)
    if not isinstance(cfg, dict):
        raise MeddiffError(f"{path}: 'dataset' must be a mapping")
    return dict(cfg)


def prepare_slices(config: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """Cut every subject of a volume folder into cached 2D slices (``cache_dir`` required); subjects already
    cached are skipped, so an interrupted run resumes. Returns a summary dict."""
    from meddiff.data.volumes import SliceDataset

    cfg = dict(config)
    kind = cfg.pop("kind", "slices")
    if kind not in ("slices", "paired"):
        raise MeddiffError(f"prepare: dataset kind {kind!r} cannot be prepared; use kind: slices")
    if not cfg.get("cache_dir"):
        raise MeddiffError("prepare: set cache_dir (where the slices are written)")
    if "path" not in cfg:
        raise MeddiffError("prepare: set path (the folder of NIfTI volumes)")
    for k in ("split", "augment", "progress"):
        cfg.pop(k, None)
    import inspect

    allowed = set(inspect.signature(SliceDataset).parameters) - {"self", "split", "progress"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise MeddiffError(f"prepare: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    ds = SliceDataset(split="all", progress=progress, **cfg)
    return {"cache": str(ds.cache), "subjects": len(ds.subjects), "slices": len(ds), "image_shape": list(ds.image_shape)}
