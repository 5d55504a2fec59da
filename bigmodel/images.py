"""Image grids and line charts as PNG (numpy + Pillow; no torch), shared by training and the runtime CLI."""

from __future__ import annotations

import io
import os

import numpy as np

from bigmodel.errors import InputError, missing_package
from bigmodel.fileio import atomic_write_bytes


def grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 (rows*(H+pad)+pad, ..., C) picture."""
    if images.ndim != 4:
        raise InputError(f"grid expects images of shape (N, C, H, W); got shape {images.shape}")
    n, c, h, w = images.shape
    rows = -(-n // ncol)
    out = np.zeros((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    pixels = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = pixels[i]
    return out


def save_png(path: str | os.PathLike, picture: np.ndarray, upscale: int = 1) -> None:
    """Write an (H, W, C) uint8 picture as PNG, atomically; `upscale` enlarges small digits."""
    try:
        from PIL import Image
    except ImportError as e:
        raise missing_package("pillow", "runtime", "writing PNG images") from e
    mode = "L" if picture.shape[2] == 1 else "RGB"
    img = Image.fromarray(picture[..., 0] if mode == "L" else picture, mode=mode)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(path: str | os.PathLike, images: np.ndarray, ncol: int = 8) -> None:
    """Save (N, C, H, W) images in [0, 1] as a PNG grid; digits smaller than 32 px are enlarged."""
    side = images.shape[-1]
    save_png(path, grid(images, ncol), upscale=max(1, 64 // max(side, 1)) if side < 32 else 1)


PANEL = (320, 240)  # one chart panel, pixels
MARGIN = (52, 14, 12, 34)  # left, right, top, bottom of a panel's plot area
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def line_chart(panels: dict[str, dict[str, list[tuple[float, float]]]], xlabel: str = "epoch") -> bytes:
    """PNG bytes of one panel per title, each with one line per series of (x, y) points; Pillow only.

    Non-finite points are left out. A few milliseconds per chart, so training can draw it every epoch.

    >>> png = line_chart({"loss": {"train": [(1, 0.9), (2, 0.5)], "val": [(1, 1.0), (2, 0.6)]}})
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:
        raise missing_package("pillow", "runtime", "drawing charts") from e
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or without FreeType: the bitmap font
        font = ImageFont.load_default()
    w, h = PANEL
    img = Image.new("RGB", (w * max(1, len(panels)), h), "white")
    draw = ImageDraw.Draw(img)
    for i, (title, series) in enumerate(panels.items()):
        _panel(draw, font, i * w, title, series, xlabel, legend=i == 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _panel(draw, font, x0: int, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str,
           legend: bool) -> None:
    left, right, top, bottom = x0 + MARGIN[0], x0 + PANEL[0] - MARGIN[1], MARGIN[2] + 14, PANEL[1] - MARGIN[3]
    points = {k: [(float(x), float(y)) for x, y in v if np.isfinite(x) and np.isfinite(y)] for k, v in series.items()}
    xs = [p[0] for v in points.values() for p in v] or [0.0, 1.0]
    ys = [p[1] for v in points.values() for p in v] or [0.0, 1.0]
    (xa, xb), (ya, yb) = _span(min(xs), max(xs)), _span(min(ys), max(ys))

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - xa) / (xb - xa) * (right - left), bottom - (y - ya) / (yb - ya) * (bottom - top)

    draw.text(((left + right) / 2, 2), title, fill="black", font=font, anchor="ma")
    for y in _ticks(ya, yb):  # grid lines with their values
        draw.line([at(xa, y), at(xb, y)], fill=(225, 225, 225))
        draw.text((left - 4, at(xa, y)[1]), f"{y:.4g}", fill="black", font=font, anchor="rm")
    for x in [x for x in _ticks(xa, xb, whole=all(float(x).is_integer() for x in xs)) if min(xs) <= x <= max(xs)]:
        draw.text((at(x, ya)[0], bottom + 4), f"{x:g}", fill="black", font=font, anchor="ma")
    draw.text(((left + right) / 2, PANEL[1] - 2), xlabel, fill="black", font=font, anchor="md")
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for k, (name, pts) in enumerate(points.items()):
        colour = COLOURS[k % len(COLOURS)]
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        if legend and xy:
            draw.line([(right - 60, top + 8 + 14 * k), (right - 44, top + 8 + 14 * k)], fill=colour, width=2)
            draw.text((right - 40, top + 8 + 14 * k), name, fill="black", font=font, anchor="lm")


def _span(lo: float, hi: float) -> tuple[float, float]:
    """An axis range around [lo, hi], never empty; 5% padding."""
    pad = (hi - lo) * 0.05 if hi > lo else max(abs(lo) * 0.05, 0.5)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 5, whole: bool = False) -> list[float]:
    """At most `count` round values (1, 2 or 5 times a power of ten) inside [lo, hi]; whole numbers if `whole`."""
    step = 10.0 ** np.floor(np.log10((hi - lo) / count))
    step = next(step * m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= count)
    step = max(step, 1.0) if whole else step
    first = np.ceil(lo / step) * step
    return [float(v) + 0.0 for v in np.arange(first, hi + step * 1e-9, step)]  # + 0.0: no "-0"
