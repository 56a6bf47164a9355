"""The overlay picture of an inferred image: the image with each class tinted in its colour and outlined, above a
legend with the title and the nucleus counts per class, laid out for the image's width (rendered by matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_COLORS, CLASS_NAMES
from monai_nasscam.fileio import atomic_path

__all__ = ["LEGEND_FONT_RANGE", "write_overlay"]


def _blend(image: np.ndarray, class_map: np.ndarray, alpha: float) -> np.ndarray:
    """The image with each class's pixels tinted by its colour and outlined in it (uint8, touched pixels only)."""
    from scipy import ndimage

    out = np.array(image, dtype=np.uint8, copy=True)
    colours = np.zeros((len(CLASS_NAMES) + 1, 3), np.float32)
    for cid, rgb in CLASS_COLORS.items():
        colours[cid] = rgb
    fg = class_map > 0
    # solid outlines: foreground pixels with another value in their 3 x 3 neighbourhood
    edge = fg & (ndimage.grey_erosion(class_map, size=3) != ndimage.grey_dilation(class_map, size=3))
    ids = class_map[fg]
    out[fg] = np.clip((1 - alpha) * out[fg].astype(np.float32) + alpha * colours[ids] + 0.5, 0, 255).astype(np.uint8)
    out[edge] = colours[class_map[edge]].astype(np.uint8)
    return out


#: font size range of the overlay's title and legend, in points at 100 dpi (1 pt = 1.39 px): readable on a 64-px
#: image, not shouting on a 4096-px one
LEGEND_FONT_RANGE = (8.0, 36.0)


def _wrap_to_width(text: str, fits: Any) -> list[str]:
    """``text`` cut into lines for which ``fits(line)`` holds: at spaces where possible, inside a word (a long file
    name) where a word alone does not fit."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while word and not fits(word):
                cut = max(1, max((k for k in range(1, len(word) + 1) if fits(word[:k])), default=1))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _legend_strip(
    width: int, counts: Mapping[int, int], label: str, boxes: list[tuple[str, tuple[float, float, float, float]]] | None = None
) -> np.ndarray:
    """A white strip with the title and the class colours, names and counts, laid out for an image ``width`` pixels
    wide (rendered by matplotlib).

    The font size follows the width (``width / 55`` points within :data:`LEGEND_FONT_RANGE`); the title is wrapped
    to the strip (inside long words too), the four entries take as many rows as the width needs (4, 2 or 1 per
    row), and the strip is wider than ``width`` when even one entry per row does not fit (a very narrow image).

    Args:
        width: the image's width in pixels.
        counts: nuclei per class id (1-4); a missing class counts 0.
        label: the title.
        boxes: when given, receives ``(text, (x0, y0, x1, y1))`` of every text drawn, in strip pixels (rows from
            the top), as matplotlib measures it.

    Returns:
        ``(h, w, 3)`` uint8 RGB, ``w >= width``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Rectangle

    dpi = 100.0
    lo, hi = LEGEND_FONT_RANGE
    size = float(np.clip(width / 55.0, lo, hi))
    font = FontProperties(size=size)
    px = size * dpi / 72.0  # the font size in pixels
    measure = FigureCanvasAgg(Figure(dpi=dpi)).get_renderer()

    def text_width(s: str) -> float:
        return measure.get_text_width_height_descent(s, font, ismath=False)[0]

    margin, swatch, gap, col_gap = round(0.8 * px), round(0.9 * px), round(0.4 * px), round(1.5 * px)
    line_h, row_h = round(1.3 * px), round(1.6 * px)
    entries = [f"{name}: {int(counts.get(c, 0))}" for c, name in enumerate(CLASS_NAMES, start=1)]
    entry_w = max(swatch + gap + text_width(e) for e in entries)
    strip_w = int(max(width, math.ceil(entry_w + 2 * margin)))
    ncol = next(n for n in (4, 2, 1) if n == 1 or n * entry_w + (n - 1) * col_gap <= strip_w - 2 * margin)
    nrow = -(-len(entries) // ncol)
    lines = _wrap_to_width(label, lambda s: text_width(s) <= strip_w - 2 * margin) if label else []
    strip_h = int(2 * margin + len(lines) * line_h + (gap if lines else 0) + nrow * row_h)

    fig = Figure(figsize=(strip_w / dpi, strip_h / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)

    def place(x: float, y: float, s: str, ha: str) -> None:  # (x, y): pixels from the top left, text's centre row
        fig.text(x / strip_w, 1 - y / strip_h, s, fontproperties=font, ha=ha, va="center", color="black")

    y = margin
    for line in lines:
        place(strip_w / 2, y + line_h / 2, line, "center")
        y += line_h
    y += gap if lines else 0
    grid_w = ncol * entry_w + (ncol - 1) * col_gap
    x0 = (strip_w - grid_w) / 2
    for i, (cid, entry) in enumerate(zip(range(1, len(entries) + 1), entries)):
        r, c = divmod(i, ncol)
        ex, ey = x0 + c * (entry_w + col_gap), y + r * row_h + row_h / 2
        fig.add_artist(Rectangle((ex / strip_w, 1 - (ey + swatch / 2) / strip_h), swatch / strip_w, swatch / strip_h,
                                 transform=fig.transFigure, facecolor=np.asarray(CLASS_COLORS[cid]) / 255.0,
                                 edgecolor="black", linewidth=max(0.5, px / 20)))
        place(ex + swatch + gap, ey, entry, "left")
    canvas.draw()
    if boxes is not None:
        renderer = canvas.get_renderer()
        for t in fig.texts:
            bb = t.get_window_extent(renderer)
            boxes.append((t.get_text(), (bb.x0, strip_h - bb.y1, bb.x1, strip_h - bb.y0)))
    strip = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return strip


def write_overlay(
    path: str,
    image: np.ndarray,
    class_map: np.ndarray,
    counts: Mapping[int, int],
    title: str = "",
    alpha: float = 0.45,
    note: str = "",
) -> None:
    """A PNG of the image with the classes in colour (tinted, with outlines) above its title and a legend with the
    counts (see :func:`_legend_strip`: laid out for the image's width, never clipped).

    ``image`` and ``class_map`` have the same ``(h, w)`` (a slide's overview and its class map subsampled alike).
    The image is written at its own resolution (no resampling); only the legend is drawn by matplotlib. When the
    legend needs more width than the image (an image narrower than about 200 px), the picture takes the legend's
    width and the image is centred on white above it.

    Args:
        path: the PNG written (atomically).
        image: ``(h, w, 3)`` uint8 RGB.
        class_map: ``(h, w)`` uint8, 0 background, 1-4 the classes.
        counts: nuclei per class id.
        title: the image's name, first line(s) of the legend.
        alpha: opacity of the class colours.
        note: shown after the title in brackets (e.g. ``subsampled 1:4``).
    """
    from PIL import Image

    blended = _blend(image, class_map, alpha)
    h, w = blended.shape[:2]
    label = title + (f" ({note})" if note else "")
    strip = _legend_strip(w, counts, (label + " -- nuclei per class") if label else "nuclei per class")
    width = max(w, strip.shape[1])
    canvas = np.full((h + strip.shape[0], width, 3), 255, np.uint8)
    canvas[:h, (width - w) // 2 : (width - w) // 2 + w] = blended
    canvas[h:, (width - strip.shape[1]) // 2 : (width - strip.shape[1]) // 2 + strip.shape[1]] = strip
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", compress_level=3)
