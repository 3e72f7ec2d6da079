"""Self-contained HTML pages: sections of text, tables and PNG figures embedded as base64."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meddiff.files import write_text


def to_uint8(image: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a float image (H, W) or (H, W, 3) to uint8 over [vmin, vmax] (default: its own range)."""
    image = np.asarray(image, dtype=np.float64)
    lo = float(np.nanmin(image)) if vmin is None else vmin
    hi = float(np.nanmax(image)) if vmax is None else vmax
    return (np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def labelled_row(panels: list[np.ndarray], labels: list[str], pad: int = 4) -> Image.Image:
    """Side-by-side uint8 panels (H, W) or (H, W, 3) of equal height with a caption line above each."""
    images = [Image.fromarray(p).convert("RGB") for p in panels]
    height = max(im.height for im in images)
    width = sum(im.width for im in images) + pad * (len(images) + 1)
    canvas = Image.new("RGB", (width, height + 16 + pad), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for im, label in zip(images, labels):
        canvas.paste(im, (x, 16))
        draw.text((x, 2), label, fill="black")
        x += im.width + pad
    return canvas


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def table_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_report(path: Path, title: str, sections: list[dict]) -> Path:
    """Write an HTML page; each section is {"title", "text", optional "table" (rows), "figure" (PNG path, or a
    list of them) and "details" ((summary, preformatted text): a collapsed block, e.g. a config file)}."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%;image-rendering:pixelated}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2><p>{html.escape(section.get('text', ''))}</p>")
        if section.get("table"):
            parts.append(table_html(section["table"]))
        figures = section.get("figure") or []
        for figure in figures if isinstance(figures, (list, tuple)) else [figures]:
            parts.append(f"<p><img src='{_png_data_uri(figure)}'></p>")
        if section.get("details"):
            summary, text = section["details"]
            parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))
