"""The answer log of a study: append-only JSON lines, each written whole and fsynced before the server replies.

One answer is one ``os.write`` of one line to a file opened with O_APPEND, followed by ``os.fsync``: once the
rater's browser hears "saved", the answer survives a closed tab, a killed server or a power cut. A line torn
by a crash during its own write is skipped (and counted) when the log is read. Every answer is kept; when a rater
answers one image again, the last answer counts (`final_answers`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from meddiff.errors import MeddiffError

LABELS = ("real", "synthetic")
CONFIDENCES = (1, 2, 3, 4, 5)
MAX_NAME = 64
MAX_COMMENT = 2000
_LOCK = threading.Lock()


def clean_rater(name: object) -> str:
    """A rater name: 1-64 printable characters, surrounding spaces dropped (it never reaches a path)."""
    if not isinstance(name, str) or not name.strip():
        raise MeddiffError("rater: give a name (1-64 characters)")
    name = " ".join(name.split())
    if len(name) > MAX_NAME or not name.isprintable():
        raise MeddiffError(f"rater: at most {MAX_NAME} printable characters")
    return name


def validate_answer(payload: object, ids) -> dict:
    """The JSON a page posts -> the record to log; MeddiffError naming the bad field otherwise."""
    if not isinstance(payload, dict):
        raise MeddiffError("answer: expected a JSON object")
    unknown = set(payload) - {"rater", "id", "label", "confidence", "comment", "position", "seconds"}
    if unknown:
        raise MeddiffError(f"answer: unknown field(s) {', '.join(sorted(unknown))}")
    image_id = payload.get("id")
    if not isinstance(image_id, str) or image_id not in ids:
        raise MeddiffError("answer: unknown image id")
    label = payload.get("label")
    if label not in LABELS:
        raise MeddiffError(f"answer: label must be one of {', '.join(LABELS)}")
    confidence = payload.get("confidence")
    if isinstance(confidence, bool) or confidence not in CONFIDENCES:
        raise MeddiffError("answer: confidence must be an integer 1-5")
    comment = payload.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise MeddiffError(f"answer: comment must be text of at most {MAX_COMMENT} characters")
    record = {"rater": clean_rater(payload.get("rater")), "id": image_id, "label": label,
              "confidence": int(confidence), "comment": comment.strip()}
    seconds = payload.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < 1e6:
        record["seconds"] = round(float(seconds), 2)
    return record


def append_answer(path: str | Path, record: dict) -> None:
    """Append one record as one JSON line and fsync it (and, for a new file, its folder)."""
    line = (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
    path = Path(path)
    with _LOCK:
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)


def read_answers(path: str | Path) -> tuple[list[dict], int]:
    """Every logged answer in order, and the number of unreadable (torn) lines skipped."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, torn = [], 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or not {"rater", "id", "label", "confidence"} <= set(record):
                raise ValueError
        except ValueError:
            torn += 1
            continue
        records.append(record)
    return records, torn


def final_answers(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(rater, id) -> the last answer of that rater for that image (the earlier ones stay in the log)."""
    final: dict[tuple[str, str], dict] = {}
    for record in records:
        final[(record["rater"], record["id"])] = record
    return final


def check_log(path: str | Path) -> None:
    """Refuse to serve onto a log that is not ours (e.g. a stray file of another format)."""
    records, torn = read_answers(path)
    if torn and not records:
        raise MeddiffError(f"{path}: no readable answers in it; move it aside to start a fresh log")
