"""Nuclei from a class map: connected components per class, their counts, areas and outlines, and GeoJSON.

A nucleus is a connected component (4-connectivity, as the evaluation's panoptic quality) of the pixels of one
class in the class map. Components are found band by band, so a slide's class map (a memory map) is never
labelled in one piece: a band keeps the components whose top row lies in it and reads further down until none of
them reaches its lower edge, so every component is found exactly once and whole.

Outlines come from ``skimage.measure.find_contours`` at level 0.5 on the component's padded mask (holes become
interior rings) and are given in full-image pixel coordinates with pixel ``(row, col)`` covering
``[col, col + 1) x [row, row + 1)`` -- QuPath's convention -- so a contour vertex ``(r, c)`` becomes
``(x, y) = (c + 0.5, r + 0.5)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_COLORS, CLASS_NAMES

__all__ = ["Nucleus", "iter_nuclei", "count_components", "nucleus_feature", "GeoJSONWriter"]



@dataclass
class Nucleus:
    """One connected component: class id, pixel area, bounding box ``(row0, col0, row1, col1)`` (end exclusive)
    and outline rings as ``(x, y)`` arrays in full-image coordinates (exterior first, then holes)."""

    class_id: int
    area: int
    bbox: tuple[int, int, int, int]
    rings: list[np.ndarray] = field(default_factory=list)

    @property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)`` of the exterior ring's vertex mean (an approximation for display)."""
        if not self.rings:
            r0, c0, r1, c1 = self.bbox
            return (c0 + c1) / 2.0, (r0 + r1) / 2.0
        ring = self.rings[0]
        return float(ring[:, 0].mean()), float(ring[:, 1].mean())


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _rings(mask: np.ndarray, row0: int, col0: int, tolerance: float) -> list[np.ndarray]:
    """Outline rings of one component's mask ``(h, w)`` placed at ``(row0, col0)``: exterior (counter-clockwise in
    ``(x, y)``) then holes (clockwise), closed."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    contours = find_contours(padded, 0.5)
    rings = []
    for c in contours:
        if len(c) < 3:
            continue
        if tolerance > 0:
            c = approximate_polygon(c, tolerance)
        xy = np.stack([c[:, 1] + col0 - 1 + 0.5, c[:, 0] + row0 - 1 + 0.5], axis=1)
        if not np.allclose(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        if len(xy) < 4:
            continue
        rings.append(xy)
    if not rings:
        return []
    areas = [abs(_signed_area(r)) for r in rings]
    order = np.argsort(areas)[::-1]
    out = []
    for k, i in enumerate(order):
        ring = rings[i]
        ccw = _signed_area(ring) > 0
        if (k == 0) != ccw:  # exterior counter-clockwise, holes clockwise (RFC 7946)
            ring = ring[::-1]
        out.append(ring)
    return out


def iter_nuclei(
    class_map: np.ndarray,
    num_classes: int = len(CLASS_NAMES),
    band_rows: int = 2048,
    margin: int = 256,
    outlines: bool = True,
    tolerance: float = 0.0,
    min_area: int = 0,
) -> Iterator[Nucleus]:
    """Every nucleus of ``class_map`` (``(H, W)`` uint8, 0 background), top to bottom, band by band.

    Args:
        class_map: the class map (a memory map is fine; it is read band by band). With ``min_area``, the removed
            components are set to 0 in it (so it must be writable).
        num_classes: class ids ``1..num_classes``.
        band_rows: rows per band.
        margin: rows read below a band to complete its components (grown automatically for tall ones).
        outlines: compute outline rings (else only class, area, bounding box).
        tolerance: Douglas-Peucker simplification of the outlines, in pixels (0: the exact contour).
        min_area: components with fewer pixels are not yielded and are erased from ``class_map``.
    """
    from scipy import ndimage

    height, width = class_map.shape
    structure = ndimage.generate_binary_structure(2, 1)
    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        top = max(0, y0 - 1)  # one row above: a component reaching it belongs to an earlier band
        m = margin
        while True:
            bottom = min(height, y1 + m)
            window = np.asarray(class_map[top:bottom])
            found = []
            complete = True
            for cid in range(1, num_classes + 1):
                labels, n = ndimage.label(window == cid, structure=structure)
                if n == 0:
                    continue
                for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                    if sl is None:
                        continue
                    r0 = sl[0].start + top
                    if not y0 <= r0 < y1:
                        continue
                    if sl[0].stop + top == bottom and bottom < height:
                        complete = False
                        break
                    found.append((cid, k, sl, labels))
                if not complete:
                    break
            if complete:
                break
            m *= 2
        for cid, k, sl, labels in found:
            mask = labels[sl] == k
            area = int(mask.sum())
            r0, c0 = sl[0].start + top, sl[1].start
            bbox = (r0, c0, sl[0].stop + top, sl[1].stop)
            if area < min_area:
                region = class_map[bbox[0] : bbox[2], bbox[1] : bbox[3]]
                region[mask] = 0
                continue
            rings = _rings(mask, r0, c0, tolerance) if outlines else []
            yield Nucleus(cid, area, bbox, rings)


def count_components(class_map: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> dict[int, int]:
    """Connected components (4-connectivity) per class id of an in-memory class map (a reference for tests)."""
    from skimage.measure import label

    return {c: int(label(class_map == c, connectivity=1).max()) for c in range(1, num_classes + 1)}


def nucleus_feature(
    nucleus: Nucleus,
    names: Mapping[int, str] | Sequence[str] = CLASS_NAMES,
    colors: Mapping[int, Sequence[int]] = CLASS_COLORS,
    object_type: str = "detection",
) -> dict[str, Any]:
    """A GeoJSON ``Feature`` (Polygon) that QuPath (0.4+) imports as a classified detection or annotation.

    No ``id`` is written: QuPath reads feature ids as UUIDs and gives every imported object a new one.
    """
    name = names[nucleus.class_id] if isinstance(names, Mapping) else names[nucleus.class_id - 1]
    props: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": name, "color": [int(v) for v in colors[nucleus.class_id]]},
        "isLocked": False,
        "measurements": {"Area px": nucleus.area},
    }
    feature: dict[str, Any] = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [np.round(r, 2).tolist() for r in nucleus.rings]},
        "properties": props,
    }
    return feature


class GeoJSONWriter:
    """Stream a ``FeatureCollection`` to a file, one feature at a time (a slide may hold 10^5 nuclei).

    Written to ``path + '.tmp'`` and renamed on :meth:`close`, so a crash never leaves a truncated file.
    """

    def __init__(self, path: str | os.PathLike, object_type: str = "detection") -> None:
        if object_type not in ("detection", "annotation"):
            raise ValueError(f"object_type must be 'detection' or 'annotation', got {object_type!r}.")
        self.path = os.fspath(path)
        self.object_type = object_type
        self._tmp = self.path + ".tmp"
        self._f = open(self._tmp, "w")
        self._f.write('{"type": "FeatureCollection", "features": [\n')
        self.count = 0

    def add(self, nucleus: Nucleus) -> None:
        if not nucleus.rings:
            return
        if self.count:
            self._f.write(",\n")
        self._f.write(json.dumps(nucleus_feature(nucleus, object_type=self.object_type), separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.write("\n]}\n")
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
