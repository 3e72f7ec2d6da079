"""Atomic writes: the one helper every writer in meddiff goes through, the one PNG writer, and the one reader of
YAML settings files (configs) with errors that name the file.

Everything meddiff writes goes to a temporary name in the same folder first and is renamed onto the
final name only when complete, so an interrupted or failed write never leaves a half-written file
or folder behind (and never leaves the temporary either).

>>> import tempfile, numpy as np
>>> folder = Path(tempfile.mkdtemp())
>>> with atomic_path(folder / "a.txt") as tmp:
...     _ = tmp.write_text("done")
>>> (folder / "a.txt").read_text()
'done'
>>> write_png(folder / "b.png", np.zeros((4, 4), np.uint8)).name
'b.png'
>>> sorted(p.name for p in folder.iterdir())
['a.txt', 'b.png']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from meddiff.errors import MeddiffError

PathLike = str | os.PathLike


def _suffix(path: Path) -> str:
    """Lower-case suffix with ``.nii.gz`` kept whole (writers such as nibabel pick the format from it)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success, remove it on error.

    Files (default): the temporary is an empty file with the same suffix as ``path`` (so writers that
    pick the format from the suffix work); write to it by name. ``directory=True``: the temporary is an
    empty folder; fill it, and on success it replaces ``path`` whole (an existing folder of that name is
    moved aside first and deleted only after the swap, so readers see the old or the new one, never a mix).
    The parent folder is created when missing. Permissions are those a plain ``open``/``mkdir`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + (_suffix(path) or ".tmp"),
                                    dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
            _replace_directory(tmp, path)
        else:
            if tmp.exists():  # mkstemp makes 0600 files
                os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_directory(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``path``; an existing ``path`` is swapped out, then deleted."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    if not path.is_dir() or path.is_symlink():
        raise MeddiffError(f"{path}: exists and is not a folder; remove it or choose another output name")
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, old / path.name)  # a rename within one folder tree: atomic on POSIX
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / path.name, path)  # put the old one back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def csv_text(rows: list[dict]) -> str:
    """Dict rows as CSV text (header = the first row's keys; empty for no rows), e.g. a shipped model's log.csv."""
    import csv
    import io

    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def write_npy(path: PathLike, array, argument: str = "path") -> Path:
    """Write ``array`` as .npy atomically (no pickles); ``argument`` names the option in the error when the path does
    not end in .npy. Returns the path."""
    import numpy as np

    from meddiff.errors import MeddiffError

    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise MeddiffError(f"{argument} {str(path)!r} must end in .npy")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
    return path


def write_png(path: PathLike, array, *, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write an image as PNG atomically; returns the path.

    ``array``: 2D (H, W), colour (H, W, 3|4) or (3|4, H, W), or a PIL image. uint8/uint16 are written
    unchanged (colour uint16 is reduced to 8 bits); other dtypes are mapped linearly from [vmin, vmax]
    (default: the array's own min and max) to 0..255.
    """
    from PIL import Image

    path = Path(path)
    if _suffix(path) != ".png":
        raise MeddiffError(f"{path}: a PNG output needs the extension .png")
    if isinstance(array, Image.Image):
        image = array
    else:
        arr = np.asarray(array)
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
            raise MeddiffError(f"{path}: PNG needs a 2D (H, W) or colour (3, H, W) array, got shape {arr.shape}")
        if arr.dtype not in (np.uint8, np.uint16):
            arr = arr.astype(np.float64)
            if not np.all(np.isfinite(arr)):
                raise MeddiffError(f"{path}: image to write contains NaN or Inf values")
            lo = float(arr.min()) if vmin is None else float(vmin)
            hi = float(arr.max()) if vmax is None else float(vmax)
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr = np.clip((arr - lo) * scale, 0, 255).round().astype(np.uint8)
        if arr.dtype == np.uint16 and arr.ndim == 3:
            arr = (arr // 257).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def read_yaml_mapping(path: PathLike, what: str = "config") -> dict:
    """The mapping a YAML file holds; a missing file, invalid YAML or anything but a mapping raises ``MeddiffError``
    naming the file (``what`` says which kind of file, e.g. "distillation config")."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"{what} file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise MeddiffError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise MeddiffError(f"{path} must hold a mapping (key: value lines) of {what} settings")
    return data
