"""The merged class table of the brain parcellation: DLMUSE (MUSE ROI) ids -> 10 classes (background included).

MUSE ROI ids and names: the MUSE label table of a public nipype amyloid-PET pipeline that works on MUSE labels
("Amyloid PET Processing for Preclinical Alzheimer's Disease Consortium": its ``ROIs`` dict, 4 3rd ventricle,
11 4th ventricle, 23/30 accumbens, 31/32 amygdala, 35 brain stem, 36/37 caudate, 38/39 cerebellum exterior, 40/41
cerebellum WM, 47/48 hippocampus, 49/50 inferior lateral ventricles, 51/52 lateral ventricles, 55-60 pallidum,
putamen, thalamus, 61/62 ventral DC, 71-73 vermal lobules, 75/76 basal forebrain, 81-88 lobar WM, 89/90 fornix,
91-94 internal capsule, 95 corpus callosum, 100-207 cortical ROIs), and a public MUSE -> FreeSurfer remapping
(46 CSF, 63/64 vessels, 69 optic chiasm, 42/43 cerebral exterior); both found with the code search, none copied.
Id 1 is not in that table: in the IXI DLMUSE
files it is a dark rim (mean T1 about 0.45 of the WM's) around and between the gyri, 16 000 voxels a head: deduced
from the data to be sulcal / extra-cerebral CSF, so it joins the CSF class. The grouping follows the tissue classes
of that table (ventricles, deep GM, hippocampus + amygdala, cerebellar GM / WM, brainstem, cerebral WM, cortex).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from meddiff.errors import MeddiffError

# MUSE cortical GM ROIs (right = even, left = odd ids); 110/111, 126/127, 130/131, 158/159, 188/189 are not used
_CORTEX = tuple(i for i in range(100, 208) if i not in (110, 111, 126, 127, 130, 131, 158, 159, 188, 189))


@dataclass(frozen=True)
class SegClass:
    """One merged class: its id in the output label map, name and the DLMUSE ids it merges."""

    id: int
    name: str
    dlmuse_ids: tuple[int, ...]


CLASSES: tuple[SegClass, ...] = (
    SegClass(0, "background", (0,)),
    SegClass(1, "cortical grey matter", _CORTEX + (42, 43)),  # 42/43: cerebral exterior
    SegClass(2, "cerebral white matter", (81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 69)),  # 69: optic chiasm
    SegClass(3, "lateral ventricles", (49, 50, 51, 52)),  # incl. the inferior lateral ventricles
    SegClass(4, "deep grey matter", (23, 30, 36, 37, 55, 56, 57, 58, 59, 60, 61, 62, 75, 76)),  # accumbens, caudate,
    # pallidum, putamen, thalamus, ventral DC, basal forebrain
    SegClass(5, "hippocampus and amygdala", (31, 32, 47, 48)),
    SegClass(6, "cerebellar grey matter", (38, 39, 71, 72, 73)),  # cerebellum exterior, vermal lobules
    SegClass(7, "cerebellar white matter", (40, 41)),
    SegClass(8, "brainstem", (35,)),
    SegClass(9, "CSF (3rd/4th ventricles, sulcal)", (1, 4, 11, 46, 63, 64)),  # 63/64: vessels
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES = tuple(c.name for c in CLASSES)


def _lookup(classes=CLASSES) -> np.ndarray:
    table = np.full(256, -1, dtype=np.int64)
    for c in classes:
        for i in c.dlmuse_ids:
            if table[i] != -1:
                raise MeddiffError(f"class table: DLMUSE id {i} is in two classes")
            table[i] = c.id
    return table


_TABLE = _lookup()


def merge_labels(dlmuse, source: str = "label map") -> np.ndarray:
    """DLMUSE ids (any shape, integer-valued) -> merged class ids (int64, same shape). Ids outside the table raise
    ``MeddiffError`` naming ``source`` and the ids."""
    a = np.asarray(dlmuse)
    if a.size and not np.all(np.isfinite(a)):
        raise MeddiffError(f"{source}: label map contains NaN or infinite values")
    ids = np.rint(a).astype(np.int64)
    values = np.unique(ids)
    bad = [int(v) for v in values if v < 0 or v >= _TABLE.size or _TABLE[v] < 0]
    if bad:
        raise MeddiffError(f"{source}: unknown DLMUSE label id(s) {bad[:10]}{' ...' if len(bad) > 10 else ''}; "
                           f"known ids are listed in meddiff.tasks.segment.labels.CLASSES (a MUSE/DLMUSE parcellation "
                           "is expected)")
    return _TABLE[ids]


def labels_json(classes=CLASSES) -> str:
    """The ``labels.json`` stored beside a segmentation checkpoint: {"classes": [{"id", "name", "dlmuse_ids"}]}."""
    return json.dumps({"classes": [{"id": c.id, "name": c.name, "dlmuse_ids": list(c.dlmuse_ids)} for c in classes]},
                      indent=1)


def read_labels(path) -> list[dict]:
    """The class list of a ``labels.json`` (ids 0..C-1 in order), checked."""
    from pathlib import Path

    path = Path(path)
    try:
        classes = json.loads(path.read_text())["classes"]
        ids = [int(c["id"]) for c in classes]
        [str(c["name"]) for c in classes]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MeddiffError(f"{path}: not a labels.json with {{\"classes\": [{{\"id\", \"name\", \"dlmuse_ids\"}}]}} "
                           f"({type(error).__name__}: {error})") from None
    if ids != list(range(len(ids))):
        raise MeddiffError(f"{path}: class ids must be 0..{len(ids) - 1} in order, got {ids}")
    return classes
