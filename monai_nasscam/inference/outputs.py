"""The files written per image by the inference workflow: class map PNG and NIfTI, colour overlay
(:mod:`monai_nasscam.inference.overlay`), nuclei GeoJSON (:mod:`monai_nasscam.inference.geojson`) and CSV. (The run's
tables and completion markers: :mod:`monai_nasscam.inference.writing`.)

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
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.errors import InputError
from monai_nasscam.fileio import AtomicTextFile, atomic_path, atomic_write_text
from monai_nasscam.inference.geojson import OBJECT_TYPES, nucleus_feature, valid_geometry
from monai_nasscam.inference.nuclei import Nucleus
from monai_nasscam.inference.overlay import write_overlay

__all__ = [
    "InferredImage",
    "OutputWriter",
    "NucleiGeoJSONWriter",
    "NucleiCSVWriter",
    "NUCLEI_CSV_FIELDS",
    "ClassMapPNGWriter",
    "ClassMapNiftiWriter",
    "OverlayWriter",
    "write_class_map_png",
    "save_class_map_nifti",
    "write_csv",
]

logger = logging.getLogger("monai_nasscam.inference")


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


def write_csv(path: str, fieldnames: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV with a header, written atomically; keys not in ``fieldnames`` are left out."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


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
    """``NAME_nuclei.geojson``: a ``FeatureCollection`` with one QuPath-importable feature per nucleus
    (:func:`~monai_nasscam.inference.geojson.nucleus_feature`: a Polygon, a MultiPolygon for a nucleus in pieces),
    streamed to disk one feature at a time (a slide may hold 10^5 nuclei) into a temporary file renamed into place
    when complete (:class:`~monai_nasscam.fileio.AtomicTextFile`), so a crash never leaves a truncated file.

    Every geometry is checked as it is written (rounded to
    :data:`~monai_nasscam.inference.geojson.COORDINATE_DECIMALS`) with ``shapely.is_valid``: one that is not a valid
    polygon (QuPath 0.6 rejects a whole file for one) is repaired with ``shapely.make_valid``, or dropped when no
    valid polygon remains (:func:`~monai_nasscam.inference.geojson.valid_geometry`); :attr:`count`,
    :attr:`repaired` and :attr:`dropped` count the image's features, and :meth:`write` logs the repairs. (The
    outlines of :func:`~monai_nasscam.inference.nuclei.iter_nuclei` are valid by construction: this is the last line
    of defence.)

    Args:
        object_type: QuPath object type of the polygons, ``detection`` (light, the default) or ``annotation``.

    Raises:
        InputError: another ``object_type``.
    """

    streams_nuclei = True

    def __init__(self, object_type: str = "detection") -> None:
        if object_type not in OBJECT_TYPES:
            raise InputError(f"object_type must be 'detection' or 'annotation', got {object_type!r}.")
        self.object_type = object_type
        self._file: AtomicTextFile | None = None
        self.path = ""
        self.count = self.repaired = self.dropped = 0

    def begin(self, image: InferredImage) -> None:
        self.path = image.base + "_nuclei.geojson"
        self._file = AtomicTextFile(self.path)
        self._file.file.write('{"type": "FeatureCollection", "features": [\n')
        self.count = self.repaired = self.dropped = 0

    def add_nucleus(self, nucleus: Nucleus) -> None:
        """Write the feature of ``nucleus`` (nothing for a nucleus without an outline)."""
        if not nucleus.polygons:
            return
        feature = nucleus_feature(nucleus, object_type=self.object_type)
        geometry = valid_geometry(feature["geometry"])
        if geometry is None:
            self.dropped += 1
            return
        if geometry is not feature["geometry"]:
            self.repaired += 1
            feature["geometry"] = geometry
        self._file.file.write((",\n" if self.count else "") + json.dumps(feature, separators=(",", ":")))  # type: ignore[union-attr]
        self.count += 1

    def write(self, image: InferredImage) -> None:
        """Finish the file and rename it into place; log the repaired and dropped outlines, if any."""
        self._file.file.write("\n]}\n")  # type: ignore[union-attr]
        self._file.commit()  # type: ignore[union-attr]
        self._file = None
        if self.repaired or self.dropped:
            logger.warning("%s: %d outline(s) were not valid polygons: %d repaired (shapely.make_valid), %d dropped "
                           "(no valid polygon left); %d features written.", self.path, self.repaired + self.dropped,
                           self.repaired, self.dropped, self.count)

    def abort(self) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None


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
    """``NAME_overlay.png``: the image with the classes in colour and a legend with the counts (see
    :func:`~monai_nasscam.inference.overlay.write_overlay`); a large image is shown subsampled (the predictor's
    ``overlay_max_size``).

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
