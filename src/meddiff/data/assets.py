"""Small demo/test data shipped inside the package (src/meddiff/assets/<name>/, each with a README.md
giving provenance and licence)."""

from __future__ import annotations

from pathlib import Path

from meddiff.errors import MeddiffError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def list_assets() -> list[str]:
    """Names of the shipped assets (their sub-folders)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def asset_path(name: str) -> Path:
    """Path of a shipped asset: a folder name ("pneumoniamnist") or a file in one
    ("pneumoniamnist/pneumoniamnist_small.npz")."""
    path = ASSETS_DIR / name
    if not path.exists():
        raise MeddiffError(f"no shipped asset {name!r} in {ASSETS_DIR}; available: {', '.join(list_assets()) or 'none'}")
    return path


ASSET_SCHEME = "asset:"


def resolve_path(value):
    """``"asset:NAME[/FILE]"`` -> the shipped asset's path (so configs work from any folder); other values as given."""
    if isinstance(value, str) and value.startswith(ASSET_SCHEME):
        return asset_path(value[len(ASSET_SCHEME):])
    return value
