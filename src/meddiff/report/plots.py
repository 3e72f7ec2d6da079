"""Line plots drawn with PIL (no matplotlib): axes, 1-2-5 ticks, optional log-scale y, legend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MARGIN = {"left": 62, "right": 14, "top": 26, "bottom": 40}  # pixels around the plot area


@dataclass
class Series:
    """One curve: x and y values (same length), legend label, RGB colour and line width in pixels."""

    x: Sequence[float]
    y: Sequence[float]
    label: str = ""
    color: tuple[int, int, int] = (31, 119, 180)
    width: int = 2


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Ticks at multiples of 1, 2 or 5 x 10^k inside [lo, hi], about ``target`` of them."""
    if not hi > lo:
        return [lo]
    base = math.floor(math.log10((hi - lo) / target))
    best: list[float] = []
    for step in sorted(m * 10.0**k for k in (base - 1, base, base + 1) for m in (1, 2, 5)):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        ticks = [round(k * step, 12) for k in range(first, last + 1)]
        if not best or abs(len(ticks) - target) <= abs(len(best) - target):  # ties: the coarser step
            best = ticks
    return best


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over [lo, hi] (lo > 0): decades (every n-th when many); 1-2-5 ticks within a decade."""
    a, b = math.log10(lo), math.log10(hi)
    decades = list(range(math.ceil(a - 1e-9), math.floor(b + 1e-9) + 1))
    if len(decades) >= 3:
        every = math.ceil(len(decades) / 7)
        return [10.0**d for d in decades if d % every == 0]
    ticks = [m * 10.0**d for d in range(math.floor(a), math.ceil(b) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return ticks if len(ticks) >= 3 else nice_ticks(lo, hi, 5)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` samples (odd), symmetric and narrower near the ends, so it never lags."""
    values = np.asarray(values, dtype=np.float64)
    index = np.arange(len(values))
    half = np.minimum(np.minimum(index, len(values) - 1 - index), max(int(window), 1) // 2)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    lo, hi = index - half, index + half + 1
    return (cumulative[hi] - cumulative[lo]) / (hi - lo)


def _formatter(ticks: Sequence[float]):
    """Tick labels of one axis: 6 significant digits, or thousands as "20k" when the axis reaches 10^4."""
    kilo = bool(ticks) and max(abs(t) for t in ticks) >= 1e4 and all(t % 1000 == 0 for t in ticks)
    return (lambda v: f"{v / 1000:g}k" if v else "0") if kilo else (lambda v: f"{v:.6g}")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str) -> None:
    """Draw text aligned at xy: anchor "ma" (middle, top), "md" (middle, bottom) or "rm" (right, middle);
    computed from the text box, so Pillow's bitmap fallback font (no anchor support) works too."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - (right + left) / 2 if anchor[0] == "m" else xy[0] - right
    y = {"a": xy[1] - top, "d": xy[1] - bottom, "m": xy[1] - (top + bottom) / 2}[anchor[1]]
    draw.text((x, y), text, fill=(0, 0, 0), font=font)


def line_plot(series: Sequence[Series], *, size: tuple[int, int] = (640, 320), log_y: bool = False,
              title: str = "", xlabel: str = "", ylabel: str = "",
              x_range: tuple[float, float] | None = None) -> Image.Image:
    """RGB image (width, height) = ``size`` of the curves on shared axes (x over ``x_range``, default the data's);
    non-finite points (and y <= 0 on a log axis) are dropped. Raises ValueError when no point is left."""
    width, height = size
    cleaned = []
    for s in series:
        x, y = np.asarray(s.x, dtype=np.float64), np.asarray(s.y, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        cleaned.append((s, x[keep], y[keep]))
    xs = np.concatenate([x for _, x, _ in cleaned])
    ys = np.concatenate([y for _, _, y in cleaned])
    if xs.size == 0:
        raise ValueError("line_plot: no finite points to draw")
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if x_range is None else (float(x_range[0]), float(x_range[1]))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = float(ys.min()), float(ys.max())
    if log_y:
        y_lo, y_hi = (y_lo / 1.5, y_hi * 1.5) if y_hi <= y_lo * 1.0001 else (y_lo / 1.05, y_hi * 1.05)
        to_unit = lambda v: (np.log10(v) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))  # noqa: E731
        y_ticks = log_ticks(y_lo, y_hi)
    else:
        pad = 0.05 * (y_hi - y_lo) if y_hi > y_lo else max(abs(y_hi), 1.0) * 0.5
        y_lo, y_hi = y_lo - pad, y_hi + pad
        to_unit = lambda v: (np.asarray(v) - y_lo) / (y_hi - y_lo)  # noqa: E731
        y_ticks = nice_ticks(y_lo, y_hi)
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = width - MARGIN["right"], height - MARGIN["bottom"]

    def px(x, y):
        u = (np.asarray(x) - x_lo) / (x_hi - x_lo)
        return left + u * (right - left), bottom - to_unit(y) * (bottom - top)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    grey, black = (225, 225, 225), (0, 0, 0)
    x_ticks = nice_ticks(x_lo, x_hi)
    x_label, y_label = _formatter(x_ticks), _formatter(y_ticks)
    for tick in x_ticks:
        u = left + (tick - x_lo) / (x_hi - x_lo) * (right - left)
        draw.line([(u, top), (u, bottom)], fill=grey)
        draw.line([(u, bottom), (u, bottom + 4)], fill=black)
        _text(draw, (u, bottom + 6), x_label(tick), small, "ma")
    for tick in y_ticks:
        v = bottom - float(to_unit(tick)) * (bottom - top)
        draw.line([(left, v), (right, v)], fill=grey)
        draw.line([(left - 4, v), (left, v)], fill=black)
        _text(draw, (left - 6, v), y_label(tick), small, "rm")
    draw.rectangle([left, top, right, bottom], outline=black)
    for s, x, y in cleaned:
        if x.size:
            u, v = px(x, y)
            points = list(zip(u.tolist(), v.tolist()))
            if len(points) > 1:
                draw.line(points, fill=s.color, width=s.width, joint="curve")
            else:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=s.color)
    if title:
        _text(draw, ((left + right) / 2, 4), title, font, "ma")
    if xlabel:
        _text(draw, ((left + right) / 2, height - 4), xlabel, font, "md")
    if ylabel:
        box = draw.textbbox((0, 0), ylabel, font=font)
        label = Image.new("RGB", (box[2] + 2, box[3] + 2), "white")
        ImageDraw.Draw(label).text((1, 1), ylabel, fill=black, font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (2, int((top + bottom) / 2 - label.height / 2)))
    labelled = [s for s in series if s.label]
    for i, s in enumerate(labelled):  # legend, top right inside the axes
        y = top + 6 + 16 * i
        draw.line([(right - 130, y + 6), (right - 110, y + 6)], fill=s.color, width=max(s.width, 2))
        draw.text((right - 104, y), s.label, fill=black, font=small)
    return image
