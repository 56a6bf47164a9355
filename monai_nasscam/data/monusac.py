"""The MoNuSAC 2020 release layout: find annotated sub-images, pair each ``.xml`` with its image, load one case.

A release is a folder of patient folders (TCGA slide ids; the test release's folder name has spaces);
each annotated sub-image is ``<stem>.svs`` + ``<stem>.tif`` + ``<stem>.xml`` with stems such as
``..._1``, ``..._001`` or ``...-1`` (matched as whole stems). The ``.svs`` is preferred; ``.tif`` is the
fallback.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .imagescope import Annotations, read_imagescope_xml
from .raster import Masks, clear_transparent, rasterize_regions
from .slide import open_image

__all__ = ["MoNuSACCase", "scan_monusac", "load_case", "IMAGE_SUFFIXES"]

#: image suffixes in order of preference
IMAGE_SUFFIXES = (".svs", ".tif", ".tiff")


@dataclass
class MoNuSACCase:
    """One annotated sub-image.

    Args:
        name: unique, file-system-safe name (the stem; prefixed with the patient when stems repeat).
        patient: the patient (folder) id, used by the patient-level split.
        xml: path of the annotation file.
        image: path of the chosen image (``.svs`` if present, else ``.tif``).
    """

    name: str
    patient: str
    xml: str
    image: str


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "case"


def scan_monusac(root: str | os.PathLike) -> tuple[list[MoNuSACCase], list[DataError]]:
    """Find every annotated sub-image under ``root`` (searched recursively).

    Args:
        root: a MoNuSAC release folder (or any folder above it).

    Returns:
        the cases sorted by (patient, name), and one :class:`DataError` per unpaired file
        (an ``.xml`` without image, or an image without ``.xml``).

    Raises:
        DataError: ``root`` does not exist, is not a folder, or holds no ``.xml`` file at all.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(root, "data folder does not exist")
    if not os.path.isdir(root):
        raise DataError(root, "is not a folder")
    found: list[tuple[str, str, str, dict[str, str]]] = []  # (folder, patient, stem, {suffix: path})
    problems: list[DataError] = []
    for folder, dirs, files in os.walk(root):
        if "datalist.json" in files and "manifest.json" in files:  # a prepared dataset inside the release
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        groups: dict[str, dict[str, str]] = defaultdict(dict)
        for fname in sorted(files):
            if fname.startswith("."):
                continue
            stem, suffix = os.path.splitext(fname)
            suffix = suffix.lower()
            if suffix == ".xml" or suffix in IMAGE_SUFFIXES:
                groups[stem][suffix] = os.path.join(folder, fname)
        at_root = os.path.abspath(folder) == os.path.abspath(root)
        for stem, by_suffix in sorted(groups.items()):
            patient = re.sub(r"[-_]\d+$", "", stem) if at_root else os.path.basename(folder)
            if ".xml" not in by_suffix:
                image = next(by_suffix[s] for s in IMAGE_SUFFIXES if s in by_suffix)
                problems.append(DataError(image, f"image without annotation file (no {stem}.xml next to it)"))
                continue
            if not any(s in by_suffix for s in IMAGE_SUFFIXES):
                problems.append(DataError(by_suffix[".xml"], f"annotation file without image (no {stem}.svs or {stem}.tif)"))
                continue
            found.append((folder, patient, stem, by_suffix))
    if not found and not problems:
        raise DataError(root, "no MoNuSAC annotation files (.xml) found in the data folder")
    stem_counts = Counter(stem for _, _, stem, _ in found)
    cases = []
    for _, patient, stem, by_suffix in found:
        name = stem if stem_counts[stem] == 1 else f"{patient}__{stem}"
        image = next(by_suffix[s] for s in IMAGE_SUFFIXES if s in by_suffix)
        cases.append(MoNuSACCase(name=_safe(name), patient=patient, xml=by_suffix[".xml"], image=image))
    cases.sort(key=lambda c: (c.patient, c.name))
    return cases, problems


def load_case(
    case: MoNuSACCase, remap: Mapping[int, int] | str | None = None, tif_bgr: bool = False
) -> tuple[np.ndarray, Masks, Annotations]:
    """Read the image and rasterise the annotation of one case. Annotation on fully transparent (alpha 0) pixels,
    where nothing was scanned, is set to background (:func:`~monai_nasscam.data.raster.clear_transparent`; the
    returned ``masks.transparent_note`` says what was removed, "" when nothing).

    Args:
        case: from :func:`scan_monusac`.
        remap: optional class-order remap.
        tif_bgr: the ``.tif`` copies store B, G, R (only used when the image is a ``.tif``).

    Returns:
        ``(image (H, W, 3) uint8 RGB, masks, parsed annotations)``.

    Raises:
        DataError: naming the XML or the image file.
    """
    annotations = read_imagescope_xml(case.xml)
    swap = tif_bgr and not case.image.lower().endswith(".svs")
    reader = open_image(case.image, swap_rb=swap, tiled=False)
    try:
        image, transparent = reader.read_region(0, reader.shape[0], 0, reader.shape[1])
    finally:
        reader.close()
    masks = rasterize_regions(annotations.regions, image.shape[:2], remap=remap)
    clear_transparent(masks, transparent)  # nothing was scanned there: no target (masks.transparent_note says so)
    return image, masks, annotations
