"""Nuclei from a class map: connected components per class, split into nuclei by an instance separator, their
counts, areas, centroids, class probabilities and outlines (their QuPath GeoJSON features:
:mod:`monai_nasscam.inference.geojson`).

The pixels of one class form connected components (4-connectivity, as the evaluation's panoptic quality). Each
component is handed, on its own (its box grown by one pixel, inside the image), to an
:class:`~monai_nasscam.inference.instances.InstanceSeparator` -- by default the marker-controlled watershed that
evaluation uses, which splits touching nuclei of one class; ``connected_components`` keeps each component as one
nucleus (the paper's protocol). Because a component is split on its own, the nuclei do not depend on how the image is
cut: components are found band by band, so a slide's class map (a memory map) is never labelled in one piece; a band
keeps the components whose top row lies in it and reads further down until none of them reaches its lower edge, so
every component is found exactly once and whole, and band-wise output equals whole-image output.

Nuclei that the separator drops (under its ``min_size``) or under ``min_area`` are erased from the class map, so
that the class map, the overlay and the GeoJSON agree. (The erasures of a component are applied once no later band
can read it, so a partly erased component is never found a second time.)

Each nucleus is measured: pixel area (and µm² when the resolution is known), centroid (the mean of its pixel
centres), and, given the quantised class probabilities of :func:`~monai_nasscam.inference.tiling.predict_class_map`,
the mean probability of every class over its pixels.

Outlines come from ``skimage.measure.find_contours`` at level 0.5 on the nucleus's padded mask (holes become
interior rings) and are given in full-image pixel coordinates with pixel ``(row, col)`` covering
``[col, col + 1) x [row, row + 1)`` -- QuPath's convention -- so a contour vertex ``(r, c)`` becomes
``(x, y) = (c + 0.5, r + 0.5)`` and a pixel's centre is ``(col + 0.5, row + 0.5)``.
A nucleus is normally one 4-connected piece and its outline one polygon. The watershed can leave a nucleus in
several pieces (its flooding crosses the small holes it fills, which are then taken out again, so a pale centre
can cut a nucleus in two; pieces touching only at a corner are apart under 4-connectivity): such a nucleus keeps
its pixels, its measurements and its single row in the tables, and its outline is a ``MultiPolygon``, one polygon
per piece (largest first), each with its own holes -- the nucleus stays the instance that evaluation scores.
A ``tolerance`` simplifies the outlines with Shapely, keeping every polygon valid;
:class:`~monai_nasscam.inference.outputs.NucleiGeoJSONWriter` checks every geometry again as written (after
rounding) and repairs or drops one that is not valid, with a count in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_NAMES

__all__ = ["Nucleus", "iter_nuclei", "count_components", "polygon_rings"]


@dataclass
class Nucleus:
    """One nucleus.

    Attributes:
        class_id: class id, 1..C.
        area: pixels.
        bbox: ``(row0, col0, row1, col1)`` in full-image pixels, end exclusive.
        polygons: the outline, one polygon per 4-connected piece (largest first; one for almost every nucleus), each
            a list of closed ``(n, 2)`` float64 ``(x, y)`` rings in full-image coordinates: the exterior
            (counter-clockwise) then its holes (clockwise); ``[]``: not computed.
        center: ``(x, y)``, mean of the pixel centres ``(col + 0.5, row + 0.5)`` (the polygon's coordinates);
            ``None``: unknown (:attr:`centroid` then approximates it).
        probabilities: mean probability of each class (channel ``c`` is class ``c + 1``) over the nucleus's pixels,
            in [0, 1]; ``None``: not known.
        mpp: microns per pixel of the image, when known.
        index: 1-based position in the image's nuclei (top to bottom, then left to right); 0: not numbered.
    """

    class_id: int
    area: int
    bbox: tuple[int, int, int, int]
    polygons: list[list[np.ndarray]] = field(default_factory=list)
    center: tuple[float, float] | None = None
    probabilities: tuple[float, ...] | None = None
    mpp: float | None = None
    index: int = 0

    @property
    def rings(self) -> list[np.ndarray]:
        """Every outline ring, polygon after polygon (each exterior followed by its holes)."""
        return [ring for polygon in self.polygons for ring in polygon]

    @property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)``: :attr:`center`, else the exterior ring's vertex mean (else the bounding box's centre)."""
        if self.center is not None:
            return self.center
        if not self.rings:
            r0, c0, r1, c1 = self.bbox
            return (c0 + c1) / 2.0, (r0 + r1) / 2.0
        ring = self.rings[0]
        return float(ring[:, 0].mean()), float(ring[:, 1].mean())

    @property
    def probability(self) -> float | None:
        """Mean probability of the nucleus's own class over its pixels (``None`` when not known)."""
        if self.probabilities is None:
            return None
        return self.probabilities[self.class_id - 1]

    @property
    def area_um2(self) -> float | None:
        """Area in µm² (``area * mpp ** 2``), ``None`` when the resolution is unknown."""
        return None if not self.mpp else self.area * float(self.mpp) ** 2


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _outline(mask: np.ndarray, row0: int, col0: int, tolerance: float) -> list[list[np.ndarray]]:
    """Outline polygons of one nucleus's mask placed at ``(row0, col0)`` in the full image.

    The exact rings are ``find_contours``' at level 0.5 on the mask padded by one pixel (so every contour is
    closed); marching squares with the background fully connected makes them simple and disjoint, and grouped into
    polygons (:func:`_polygons`) they form a valid ``Polygon`` or ``MultiPolygon``. With ``tolerance > 0`` the
    outline is simplified by Shapely (GEOS' topology-preserving Douglas-Peucker, ``shapely.simplify(...,
    preserve_topology=True)``), which keeps every hole, keeps every ring at 4 positions or more and makes no ring
    cross or touch itself or another; its vertices are a subset of the exact ones, so they stay on the half-pixel
    grid. Should the simplified outline still not be valid (``shapely.is_valid``: GEOS implements the validity rules
    of JTS, which QuPath uses) or lose a ring, the exact one is kept, so no nucleus is lost from the GeoJSON and no
    invalid polygon is written (QuPath 0.6 rejects the whole file for one).

    Args:
        mask: ``(h, w)`` bool, one nucleus cropped to its box.
        row0: full-image row of the mask's top row.
        col0: full-image column of the mask's left column.
        tolerance: simplification in pixels; 0: the exact rings.

    Returns:
        the polygons (see :attr:`Nucleus.polygons`); ``[]`` for an empty mask.
    """
    from skimage.measure import find_contours

    contours = [c for c in find_contours(np.pad(mask.astype(np.uint8), 1), 0.5) if len(c) >= 4]
    polygons = _polygons(contours, row0, col0)
    if tolerance <= 0 or not polygons:
        return polygons
    import shapely

    simple = shapely.simplify(_shape(polygons), tolerance, preserve_topology=True)
    parts = list(shapely.get_parts(simple))
    if not (shapely.is_valid(simple) and all(isinstance(p, shapely.Polygon) for p in parts)
            and [len(p.interiors) + 1 for p in parts] == [len(p) for p in polygons]):
        return polygons
    return [polygon_rings(p) for p in parts]


def polygon_rings(polygon: Any) -> list[np.ndarray]:
    """A Shapely polygon's rings as ``(x, y)`` arrays, the exterior counter-clockwise, the holes clockwise."""
    import shapely

    rings = [shapely.get_coordinates(polygon.exterior), *(shapely.get_coordinates(h) for h in polygon.interiors)]
    return [_oriented(r, k == 0) for k, r in enumerate(rings)]


def _shape(polygons: list[list[np.ndarray]]) -> Any:
    """The Shapely ``Polygon`` (one polygon) or ``MultiPolygon`` of outline polygons."""
    import shapely

    shapes = [shapely.Polygon(p[0], p[1:]) for p in polygons]
    return shapes[0] if len(shapes) == 1 else shapely.MultiPolygon(shapes)


def _oriented(ring: np.ndarray, exterior: bool) -> np.ndarray:
    """``ring`` counter-clockwise in ``(x, y)`` when ``exterior``, else clockwise (RFC 7946)."""
    return ring if (_signed_area(ring) > 0) == exterior else ring[::-1]


def _polygons(contours: list[np.ndarray], row0: int, col0: int) -> list[list[np.ndarray]]:
    """Closed ``find_contours`` contours (``(row, col)`` in the padded mask) as outline polygons in full-image
    ``(x, y)`` coordinates: ``find_contours`` leaves the foreground on one side of every contour, so the outer
    boundary of each piece turns one way and each hole's the other; every hole goes to the smallest exterior that
    contains it (a piece may lie in another's hole). Pieces largest first, holes largest first; exteriors
    counter-clockwise, holes clockwise."""
    rings = [np.stack([c[:, 1] + col0 - 1 + 0.5, c[:, 0] + row0 - 1 + 0.5], axis=1) for c in contours]
    areas = [_signed_area(r) for r in rings]
    order = sorted(range(len(rings)), key=lambda i: -abs(areas[i]))
    exteriors = [i for i in order if areas[i] > 0]
    holes = [i for i in order if areas[i] < 0]
    polygons = [[_oriented(rings[i], True)] for i in exteriors]
    if len(polygons) == 1:
        polygons[0] += [_oriented(rings[i], False) for i in holes]
    elif holes:
        import shapely

        shells = [shapely.Polygon(rings[i]) for i in exteriors]
        for i in holes:
            x, y = rings[i][0]
            inside = [k for k, shell in enumerate(shells) if shapely.contains_xy(shell, x, y)]
            polygons[min(inside, key=lambda k: shells[k].area)].append(_oriented(rings[i], False))
    return polygons


def _measure(
    mask: np.ndarray, cid: int, r0: int, c0: int, probabilities: np.ndarray | None, mpp: float | None,
    outlines: bool, tolerance: float,
) -> Nucleus:
    """A :class:`Nucleus` of a boolean ``mask`` whose top-left pixel is at ``(r0, c0)`` (cropped to its box)."""
    from monai_nasscam.inference.tiling import PROBABILITY_SCALE

    rows, cols = np.nonzero(mask)
    area = int(rows.size)
    bbox = (r0, c0, r0 + mask.shape[0], c0 + mask.shape[1])
    center = (float(cols.mean()) + c0 + 0.5, float(rows.mean()) + r0 + 0.5)
    probs = None
    if probabilities is not None:
        crop = np.asarray(probabilities[:, bbox[0] : bbox[2], bbox[1] : bbox[3]])
        probs = tuple(float(v) / PROBABILITY_SCALE for v in crop[:, mask].mean(axis=1, dtype=np.float64))
    polygons = _outline(mask, r0, c0, tolerance) if outlines else []
    return Nucleus(cid, area, bbox, polygons, center=center, probabilities=probs, mpp=mpp)


def _shrink(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``mask`` cropped to its foreground's box, and the box's top-left offset."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(rows[0]), int(cols[0])


def iter_nuclei(
    class_map: np.ndarray,
    num_classes: int = len(CLASS_NAMES),
    band_rows: int = 2048,
    margin: int = 256,
    outlines: bool = True,
    tolerance: float = 0.0,
    min_area: int = 0,
    separator: Callable[[np.ndarray], np.ndarray] | None = None,
    probabilities: np.ndarray | None = None,
    mpp: float | None = None,
) -> Iterator[Nucleus]:
    """Every nucleus of ``class_map`` (``(H, W)`` uint8, 0 background), top to bottom, band by band.

    Nuclei come in the order of their bounding box's top row, then left column, then class (whatever
    ``band_rows``), numbered 1, 2, ... in :attr:`Nucleus.index`.

    Args:
        class_map: the class map (a memory map is fine; it is read band by band). Nuclei dropped by the separator or
            ``min_area`` are set to 0 in it (so it must be writable); it is final once the iterator is exhausted.
        num_classes: class ids ``1..num_classes``.
        band_rows: rows per band.
        margin: rows read below a band to complete its components (grown automatically for tall ones).
        outlines: compute outline rings (else only class, area, bounding box, centroid, probabilities).
        tolerance: simplification of the outlines in pixels (Shapely's topology-preserving Douglas-Peucker;
            0: the exact contour); a nucleus whose simplified outline would not be a valid polygon keeps its exact
            contour.
        min_area: nuclei with fewer pixels are not yielded and are erased from ``class_map``.
        separator: splits one connected component into nuclei: called with a ``(1, h, w)`` boolean mask (the
            component in its box grown by one pixel inside the image), returns ``(1, h, w)`` int ids (0: dropped),
            e.g. an :class:`~monai_nasscam.inference.instances.InstanceSeparator`; ``None``: each component is one
            nucleus.
        probabilities: ``(num_classes, H, W)`` uint8 quantised class probabilities (``q / 255``, as
            :func:`~monai_nasscam.inference.tiling.predict_class_map` keeps them; a memory map is fine) for
            :attr:`Nucleus.probabilities`; ``None``: not measured.
        mpp: microns per pixel, for :attr:`Nucleus.area_um2`.

    Raises:
        ValueError: ``probabilities`` of another shape than ``(num_classes, H, W)``.
    """
    from scipy import ndimage

    from monai_nasscam.inference.instances import InstanceSeparator
    from monai_nasscam.inference.tiling import release_rows

    height, width = class_map.shape
    if probabilities is not None and tuple(probabilities.shape) != (num_classes, height, width):
        raise ValueError(
            f"probabilities must have shape ({num_classes}, {height}, {width}) like the class map, got "
            f"{tuple(probabilities.shape)}."
        )
    whole_only = separator is None or (
        isinstance(separator, InstanceSeparator) and separator.method == "connected_components"
    )
    drop_below = max(int(min_area), int(getattr(separator, "min_size", 0) or 0))
    structure = ndimage.generate_binary_structure(2, 1)
    pending: list[tuple[int, int, int, int, int, np.ndarray]] = []  # (stop row of the component, r0, c0, r1, c1, mask)
    index = 0

    def erase(upto: int) -> None:
        """Apply the erasures of the components that end above row ``upto`` (no later window reads them)."""
        keep = []
        for item in pending:
            stop, r0, c0, r1, c1, mask = item
            if stop <= upto:
                region = class_map[r0:r1, c0:c1]
                region[mask] = 0
            else:
                keep.append(item)
        pending[:] = keep

    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        top = max(0, y0 - 1)  # one row above: a component reaching it belongs to an earlier band
        erase(top)
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
        band: list[Nucleus] = []
        for cid, k, sl, labels in found:
            r0, c0 = sl[0].start + top, sl[1].start
            r1, c1 = sl[0].stop + top, sl[1].stop
            mask = labels[sl] == k
            area = int(mask.sum())
            if area < drop_below or whole_only:
                if area < drop_below:  # the whole component goes: no later band can see a part of it
                    region = class_map[r0:r1, c0:c1]
                    region[mask] = 0
                    continue
                band.append(_measure(mask, cid, r0, c0, probabilities, mpp, outlines, tolerance))
                continue
            # the component in its box grown by one pixel inside the image (as the evaluation's watershed)
            g0, h0 = max(r0 - 1, 0), max(c0 - 1, 0)
            g1, h1 = min(r1 + 1, height), min(c1 + 1, width)
            own = labels[g0 - top : g1 - top, h0:h1] == k
            parts = np.asarray(separator(own[None]))[0]  # type: ignore[misc]
            parts = np.where(own, parts, 0)
            dropped = own & (parts == 0)
            for part in np.unique(parts[parts > 0]):
                sub, dr, dc = _shrink(parts == part)
                if int(sub.sum()) < int(min_area):
                    dropped[dr : dr + sub.shape[0], dc : dc + sub.shape[1]] |= sub
                    continue
                band.append(_measure(sub, cid, g0 + dr, h0 + dc, probabilities, mpp, outlines, tolerance))
            if dropped.any():
                pending.append((r1, g0, h0, g1, h1, dropped))
        band.sort(key=lambda n: (n.bbox[0], n.bbox[1], n.class_id, n.centroid[1], n.centroid[0]))
        for nucleus in band:
            index += 1
            nucleus.index = index
            yield nucleus
        if probabilities is not None:  # a slide's memory maps: the rows above the next window leave memory
            release_rows(probabilities, max(0, y0 - 1), y1 - 1)
        release_rows(class_map, max(0, y0 - 1), y1 - 1)
    erase(height)


def count_components(class_map: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> dict[int, int]:
    """Connected components (4-connectivity) per class id of an in-memory class map (a reference for tests)."""
    from skimage.measure import label

    return {c: int(label(class_map == c, connectivity=1).max()) for c in range(1, num_classes + 1)}
