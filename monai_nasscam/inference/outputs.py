"""Files written per image and per run by the inference workflow: class map PNG and NIfTI, colour overlay, nuclei
GeoJSON, tables.

The per-image files are written by a list of output writers (``outputs`` in ``bundle/configs/inference.yaml``), each
a small class with the interface of :class:`OutputWriter`: :meth:`~OutputWriter.write` gets the
:class:`InferredImage` (the class map, nucleus counts, overview image, file name base...) once the image is inferred
and its nuclei counted; a writer that needs the nuclei themselves sets ``streams_nuclei`` and receives them one by one
in :meth:`~OutputWriter.add_nucleus` (a slide may hold 10^5 of them, never held in memory together). A new output
format is one such class and one entry in that list::

    class CentroidsCSVWriter(OutputWriter):  # NAME_centroids.csv: one row per nucleus, its class and centre
        streams_nuclei = True

        def begin(self, image):
            self.rows = []

        def add_nucleus(self, nucleus):
            self.rows.append({"class_id": nucleus.class_id, "x": nucleus.centroid[0], "y": nucleus.centroid[1]})

        def write(self, image):
            write_csv(image.base + "_centroids.csv", ["class_id", "x", "y"], self.rows)
"""

from __future__ import annotations

import csv
import io
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_COLORS, CLASS_NAMES
from monai_nasscam.errors import InputError
from monai_nasscam.fileio import AtomicTextFile, atomic_path, atomic_write_text
from monai_nasscam.inference.nuclei import GeoJSONWriter, Nucleus

__all__ = [
    "InferredImage",
    "OutputWriter",
    "NucleiGeoJSONWriter",
    "NucleiCSVWriter",
    "NUCLEI_CSV_FIELDS",
    "ClassMapPNGWriter",
    "ClassMapNiftiWriter",
    "OverlayWriter",
    "default_outputs",
    "write_class_map_png",
    "save_class_map_nifti",
    "write_overlay",
    "write_csv",
    "write_counts_csv",
    "write_summary",
]


def write_class_map_png(path: str, class_map: np.ndarray) -> None:
    """The class map as an 8-bit grey PNG (values 0-4), written atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(class_map, dtype=np.uint8)).save(tmp, format="PNG", compress_level=1)


def save_class_map_nifti(
    saver: Any, class_map: np.ndarray, source: str, mpp: float | None = None, stream: bool = False
) -> str | None:
    """Save the class map with a MONAI ``SaveImage`` (NIfTI by default); returns the file written.

    The array is stored in MONAI's default reading order for 2-D images, ``(x, y)`` = ``(column, row)``, so
    viewers and ``LoadImage`` show it as the PNG; the pixel spacing is the slide's microns per pixel, in mm,
    when known (1 otherwise). The saver needs ``squeeze_end_dims=False`` (MONAI 1.6 cannot write a squeezed
    single-channel 2-D image without resampling); the file's shape is then ``(W, H, 1, 1)``.

    With ``stream`` (slides), the same file -- path from the saver's folder layout, same shape, dtype and affine --
    is written by ``nibabel`` straight from ``class_map`` (e.g. a memory map): ``SaveImage`` holds several
    full-size copies of the image while writing, about 5 bytes per pixel, 2 GB for a 20000 x 20000 slide.
    """
    import torch
    from monai.data import MetaTensor

    spacing = (mpp / 1000.0) if mpp else 1.0
    affine = torch.diag(torch.tensor([spacing, spacing, 1.0, 1.0], dtype=torch.float64))
    layout = getattr(saver, "folder_layout", None)
    if stream and layout is not None:
        import nibabel as nib

        path = str(layout.filename(subject=source))
        data = np.asarray(class_map).T[..., None, None]  # (x, y, 1, 1): Fortran order of the (row, col) map, no copy
        image = nib.Nifti1Image(data, affine.numpy())
        image.set_data_dtype(np.uint8)
        image.header.set_slope_inter(1.0, 0.0)
        with atomic_path(path) as tmp:
            nib.save(image, tmp)
        return path
    data = torch.from_numpy(np.ascontiguousarray(np.asarray(class_map, dtype=np.uint8).T))[None]
    saver(MetaTensor(data, affine=affine, meta={"filename_or_obj": source}))
    return str(layout.filename(subject=source)) if layout is not None else None


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


COUNT_FIELDS = ["image", "name", "status", "height", "width", *CLASS_NAMES, "total", "seconds", "message"]


def write_csv(path: str, fieldnames: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV with a header, written atomically; keys not in ``fieldnames`` are left out."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_counts_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per input image: nuclei per class (``status`` ``ok`` or ``error`` with the ``message``)."""
    write_csv(path, COUNT_FIELDS, rows)


def write_summary(
    csv_path: str,
    json_path: str,
    rows: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    images_found: int | None = None,
    complete: bool = True,
) -> dict:
    """Totals per class over the images that succeeded (CSV, one row per class) and ``summary.json``.

    Args:
        csv_path: the per-class table (``counts_summary.csv``).
        json_path: ``summary.json``.
        rows: one row per image processed so far (``counts.csv``).
        settings: the run's settings, recorded under ``settings``.
        images_found: the images the run found (``None``: ``len(rows)``).
        complete: ``False`` while the run is still going (the tables are rewritten after every image), so that the
            files of an interrupted run say so.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    table = []
    for cid, name in enumerate(CLASS_NAMES, start=1):
        values = [int(r.get(name, 0)) for r in ok]
        table.append({
            "class_id": cid,
            "class": name,
            "nuclei": int(sum(values)),
            "images_with_class": int(sum(v > 0 for v in values)),
            "mean_per_image": round(float(np.mean(values)), 3) if values else 0.0,
        })
    write_csv(csv_path, list(table[0]), table)
    summary = {
        "complete": bool(complete),
        "images_found": len(rows) if images_found is None else int(images_found),
        "images": len(rows),
        "succeeded": len(ok),
        "failed": [{"image": r["image"], "message": r.get("message", "")} for r in rows if r.get("status") != "ok"],
        "nuclei": {t["class"]: t["nuclei"] for t in table},
        "total_nuclei": int(sum(t["nuclei"] for t in table)),
        "settings": dict(settings),
    }
    atomic_write_text(json_path, json.dumps(summary, indent=2, default=str))
    return summary


# ------------------------------------------------------------------------------------------ per-image writers
@dataclass
class InferredImage:
    """One inferred image, as the output writers see it.

    Attributes:
        source: the input file.
        base: the path prefix of its outputs, ``OUT/[sub/]NAME/NAME`` (the folder exists); a writer appends its
            suffix, e.g. ``base + "_classmap.png"``.
        name: ``[sub/]NAME``, the image's name in the tables and the overlay's title.
        class_map: ``(H, W)`` uint8 class map, 0 background, 1..4 the classes of ``CLASS_NAMES`` (a memory map for a
            slide inferred block by block); final when :meth:`OutputWriter.write` is called (nuclei under
            ``min_area`` already removed).
        overview: ``(h, w, 3)`` uint8 RGB image for display: the image itself, or for a large one a subsampled
            overview of ``class_map[::overview_step, ::overview_step]``'s size.
        overview_step: subsampling of ``overview`` (1: full resolution).
        mpp: microns per pixel of the source, when known.
        streamed: the image was inferred block by block (a slide): write from ``class_map`` without copies.
        counts: nuclei per class id (filled after the nuclei pass).
        areas: nucleus pixels per class id (filled after the nuclei pass).
    """

    source: str
    base: str
    name: str
    class_map: np.ndarray
    overview: np.ndarray
    overview_step: int = 1
    mpp: float | None = None
    streamed: bool = False
    counts: dict[int, int] = field(default_factory=dict)
    areas: dict[int, int] = field(default_factory=dict)


class OutputWriter(ABC):
    """One per-image output of the inference workflow (see the module docstring).

    For each image, :meth:`begin` is called before its nuclei are found, :meth:`add_nucleus` with every nucleus
    (only where ``streams_nuclei`` is true), then :meth:`write` once the class map is final and the counts known.
    If anything fails for that image, :meth:`abort` is called on every writer (also those that already wrote), and
    must leave no partial file. Write files atomically (a temporary file renamed into place).
    """

    #: whether :meth:`add_nucleus` receives the nuclei (with their outlines, which cost time to compute)
    streams_nuclei: bool = False

    def begin(self, image: InferredImage) -> None:
        """Start ``image`` (``class_map`` known, ``counts`` not yet)."""

    def add_nucleus(self, nucleus: Nucleus) -> None:
        """One nucleus of the current image, top to bottom (only when ``streams_nuclei``)."""

    @abstractmethod
    def write(self, image: InferredImage) -> None:
        """Write the image's file(s)."""

    def abort(self) -> None:
        """Drop what :meth:`begin` / :meth:`add_nucleus` started for the current image."""


class NucleiGeoJSONWriter(OutputWriter):
    """``NAME_nuclei.geojson``: one QuPath-importable feature per nucleus (a Polygon, a MultiPolygon for a nucleus in
    pieces), every geometry checked as written, streamed to disk (:class:`~monai_nasscam.inference.nuclei.GeoJSONWriter`,
    renamed into place when complete).

    Args:
        object_type: QuPath object type of the polygons, ``detection`` (light, the default) or ``annotation``.

    Raises:
        InputError: another ``object_type``.
    """

    streams_nuclei = True

    def __init__(self, object_type: str = "detection") -> None:
        if object_type not in ("detection", "annotation"):
            raise InputError(f"object_type must be 'detection' or 'annotation', got {object_type!r}.")
        self.object_type = object_type
        self._writer: GeoJSONWriter | None = None

    def begin(self, image: InferredImage) -> None:
        self._writer = GeoJSONWriter(image.base + "_nuclei.geojson", object_type=self.object_type)

    def add_nucleus(self, nucleus: Nucleus) -> None:
        self._writer.add(nucleus)  # type: ignore[union-attr]

    def write(self, image: InferredImage) -> None:
        self._writer.close()  # type: ignore[union-attr]
        self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


#: the columns of ``NAME_nuclei.csv``
NUCLEI_CSV_FIELDS = ["id", "class_id", "class_name", "x", "y", "area_px", "area_um2", "probability",
                     *(f"prob_{name.lower()}" for name in CLASS_NAMES)]


class NucleiCSVWriter(OutputWriter):
    """``NAME_nuclei.csv``: one row per nucleus, in the GeoJSON's order, streamed to disk (renamed into place when
    complete): ``id`` (1, 2, ... top to bottom, then left to right), ``class_id``, ``class_name``, ``x``, ``y`` (the
    centroid in full-image pixel coordinates, as the polygons: pixel ``(row, col)`` covers
    ``[col, col + 1) x [row, row + 1)``), ``area_px``, ``area_um2`` (empty when the image's resolution is unknown),
    ``probability`` (mean of the class's sigmoid over the nucleus) and ``prob_<class>`` for every class (empty when
    not measured). Probabilities are stored quantised to 1/255 (within 0.002 of the network's).

    Args:
        decimals: decimals of the probabilities and the area in µm².
    """

    streams_nuclei = True

    def __init__(self, decimals: int = 4) -> None:
        self.decimals = int(decimals)
        self._file: AtomicTextFile | None = None
        self._writer: Any = None

    def begin(self, image: InferredImage) -> None:
        self._file = AtomicTextFile(image.base + "_nuclei.csv")
        self._writer = csv.DictWriter(self._file.file, fieldnames=NUCLEI_CSV_FIELDS)
        self._writer.writeheader()

    def add_nucleus(self, nucleus: Nucleus) -> None:
        d = self.decimals
        x, y = nucleus.centroid
        row: dict[str, Any] = {
            "id": nucleus.index, "class_id": nucleus.class_id, "class_name": CLASS_NAMES[nucleus.class_id - 1],
            "x": round(float(x), 2), "y": round(float(y), 2), "area_px": nucleus.area,
            "area_um2": "" if nucleus.area_um2 is None else round(nucleus.area_um2, d),
            "probability": "" if nucleus.probability is None else round(nucleus.probability, d),
        }
        for c, name in enumerate(CLASS_NAMES):
            row[f"prob_{name.lower()}"] = "" if nucleus.probabilities is None else round(nucleus.probabilities[c], d)
        self._writer.writerow(row)

    def write(self, image: InferredImage) -> None:
        self._file.commit()  # type: ignore[union-attr]
        self._file = self._writer = None

    def abort(self) -> None:
        if self._file is not None:
            self._file.discard()
        self._file = self._writer = None


class ClassMapPNGWriter(OutputWriter):
    """``NAME_classmap.png``: the class map as an 8-bit grey PNG (values 0-4, see :func:`write_class_map_png`)."""

    def write(self, image: InferredImage) -> None:
        write_class_map_png(image.base + "_classmap.png", image.class_map)


class ClassMapNiftiWriter(OutputWriter):
    """``NAME_classmap.nii.gz`` (or the saver's format): the class map through a MONAI ``SaveImage``, pixel spacing
    from the slide's microns per pixel (see :func:`save_class_map_nifti`).

    Args:
        saver: a MONAI ``SaveImage`` with ``squeeze_end_dims=False`` and the inference's output folder;
            ``None`` (e.g. a disabled ``saver`` in the bundle) writes nothing.
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def write(self, image: InferredImage) -> None:
        if self.saver is not None:
            save_class_map_nifti(self.saver, image.class_map, image.source, image.mpp, stream=image.streamed)


class OverlayWriter(OutputWriter):
    """``NAME_overlay.png``: the image with the classes in colour and a legend with the counts
    (see :func:`write_overlay`); a large image is shown subsampled (the predictor's ``overlay_max_size``).

    Args:
        alpha: opacity of the class colours over the image.
    """

    def __init__(self, alpha: float = 0.45) -> None:
        self.alpha = float(alpha)

    def write(self, image: InferredImage) -> None:
        step = image.overview_step
        small_map = np.asarray(image.class_map[::step, ::step]) if step > 1 else np.asarray(image.class_map)
        overview = image.overview[: small_map.shape[0], : small_map.shape[1]]
        note = f"subsampled 1:{step}" if step > 1 else ""
        write_overlay(image.base + "_overlay.png", overview, small_map, image.counts, title=image.name,
                      alpha=self.alpha, note=note)


def default_outputs(saver: Any = None, object_type: str = "detection") -> list[OutputWriter]:
    """The files ``inference.yaml`` writes per image: the nuclei GeoJSON, the nuclei CSV, the class map PNG, the class
    map NIfTI (when ``saver`` is given) and the overlay."""
    outputs: list[OutputWriter] = [NucleiGeoJSONWriter(object_type), NucleiCSVWriter(), ClassMapPNGWriter()]
    if saver is not None:
        outputs.append(ClassMapNiftiWriter(saver))
    outputs.append(OverlayWriter())
    return outputs
