"""Regions -> class map, instance map and ambiguous mask (scikit-image rasterisation, last region wins).

Region kinds (see :mod:`monai_nasscam.data.imagescope`):

- polygon and rectangle: :func:`skimage.draw.polygon` of the vertices (a pixel belongs to the region when its
  centre lies inside);
- ellipse: :func:`skimage.draw.ellipse` of the axis-aligned ellipse inscribed in the two stored corners
  ``(x0, y0)``, ``(x1, y1)``: centre ``((y0 + y1) / 2, (x0 + x1) / 2)``, radii ``((y1 - y0) / 2, (x1 - x0) / 2)``
  (row, column), the same pixel-centre convention;
- negative (``NegativeROA="1"``): a hole. Its pixels are removed from every positive region *of its own layer*,
  wherever the hole lies in the file: in the class map and the instance map they are background, unless a region
  of another layer covers them (that region keeps them). The nucleus it lies in keeps its one instance id (a ring
  is still one nucleus, even if the hole cuts it in two). A hole in the ``Ambiguous`` layer removes ambiguous
  pixels. A hole is never a nucleus and gets no instance id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from skimage.draw import ellipse as draw_ellipse
from skimage.draw import polygon as draw_polygon

from .classes import AMBIGUOUS, CLASS_IDS, parse_remap
from .imagescope import Region

__all__ = ["Masks", "rasterize_regions", "region_pixels"]


@dataclass
class Masks:
    """Rasterised annotation of one image.

    Args:
        class_map: ``(H, W)`` uint8, 0 background, 1-4 nucleus class (after remap).
        instance_map: ``(H, W)`` int32, 0 background, ``k`` for the k-th positive nucleus region in XML order.
        instance_classes: class id (after remap) of each instance id; index 0 is background.
        ambiguous: ``(H, W)`` uint8 mask of the ``Ambiguous`` layer, or ``None`` if the file has none.
        warnings: notes on regions that fall (partly) outside the image, cover no pixel, or are holes that
            remove nothing.
        unusable: number of regions that contribute no pixel (entirely outside the image, smaller than a pixel,
            wholly removed by a hole of their layer, or a hole that removes nothing).
        transparent_note: what :func:`clear_transparent` removed ("" when nothing).
    """

    class_map: np.ndarray
    instance_map: np.ndarray
    instance_classes: np.ndarray
    ambiguous: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    unusable: int = 0
    transparent_note: str = ""


def clear_transparent(masks: Masks, transparent: np.ndarray | None) -> tuple[int, int, int]:
    """Set the annotation on fully transparent pixels to background, in place, and note it in
    ``masks.transparent_note``.

    A pixel with alpha 0 holds nothing scanned (it reads as white glass), so a nucleus drawn there is no target:
    its pixels become 0 in ``masks.class_map`` and ``masks.instance_map``; a nucleus lying entirely there
    disappears from the instance map. The ``Ambiguous`` mask is left as it is (it only excludes pixels).

    Args:
        masks: the rasterised annotation of one image (``class_map`` uint8 ``(H, W)``, ``instance_map`` int32
            ``(H, W)``); modified in place.
        transparent: ``(H, W)`` bool mask of the fully transparent pixels, or ``None`` (none).

    Returns:
        ``(pixels, nuclei, dropped)``: annotated pixels set to background, nuclei touching them, and nuclei
        removed entirely.
    """
    if transparent is None:
        return 0, 0, 0
    hit = transparent & ((masks.class_map > 0) | (masks.instance_map > 0))
    pixels = int(hit.sum())
    if not pixels:
        return 0, 0, 0
    touched = np.unique(masks.instance_map[hit])
    touched = touched[touched > 0]
    masks.class_map[hit] = 0
    masks.instance_map[hit] = 0
    dropped = int(np.count_nonzero(~np.isin(touched, masks.instance_map)))
    nuclei = int(touched.size)
    masks.transparent_note = (
        f"{pixels} annotated pixels ({nuclei} {'nucleus' if nuclei == 1 else 'nuclei'}) lie on transparent "
        "pixels; set to background"
        + (f" ({dropped} {'nucleus' if dropped == 1 else 'nuclei'} removed entirely)" if dropped else "")
    )
    return pixels, nuclei, dropped


def region_pixels(region: Region, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels of one region inside an image of ``shape`` ``(H, W)``.

    Args:
        region: a polygon, rectangle (vertices as ``(x, y)``) or ellipse (two opposite corners).
        shape: ``(H, W)``.

    Returns:
        ``(rr, cc)`` int arrays (possibly empty).
    """
    h, w = int(shape[0]), int(shape[1])
    v = region.vertices
    if region.kind == "ellipse":
        (x0, y0), (x1, y1) = v.min(axis=0), v.max(axis=0)
        return draw_ellipse((y0 + y1) / 2.0, (x0 + x1) / 2.0, (y1 - y0) / 2.0, (x1 - x0) / 2.0, shape=(h, w))
    return draw_polygon(v[:, 1], v[:, 0], shape=(h, w))


def rasterize_regions(
    regions: Sequence[Region], shape: Sequence[int], remap: Mapping[int, int] | str | None = None
) -> Masks:
    """Fill each region in the given order (see the module docstring); a later region overwrites.

    Pixel ``(row, col)`` belongs to a region when its centre lies inside it, which keeps the true area
    (OpenCV's ``fillPoly`` inflates small nuclei). Regions are clipped to the image. Negative regions (holes)
    are subtracted from the positive regions of their layer.

    Args:
        regions: regions in XML order (``Region.vertices`` as ``(x, y)``).
        shape: ``(H, W)`` of the image.
        remap: optional class-order remap (see :func:`monai_nasscam.data.classes.parse_remap`).

    Returns:
        the :class:`Masks`.
    """
    h, w = int(shape[0]), int(shape[1])
    mapping = parse_remap(remap)
    class_map = np.zeros((h, w), dtype=np.uint8)
    instance_map = np.zeros((h, w), dtype=np.int32)
    ambiguous = None
    classes = [0]
    outside: list[Region] = []
    clipped: list[Region] = []
    empty: list[Region] = []
    erased: list[Region] = []
    idle_holes: list[Region] = []

    holes: dict[int, np.ndarray] = {}  # layer -> union of its negative regions
    hole_regions = []
    for region in regions:
        if region.negative:
            rr, cc = region_pixels(region, (h, w))
            mask = holes.setdefault(region.layer, np.zeros((h, w), dtype=bool))
            mask[rr, cc] = True
            hole_regions.append((region, rr, cc))
    layer_pixels: dict[int, np.ndarray] = {}  # layer -> pixels of its positive regions (layers with holes only)

    for region in regions:
        if region.negative:
            continue
        v = region.vertices
        rr, cc = region_pixels(region, (h, w))
        xmin, ymin = v.min(axis=0)
        xmax, ymax = v.max(axis=0)
        if xmax < 0 or ymax < 0 or xmin > w - 1 or ymin > h - 1:
            outside.append(region)
        elif xmin < 0 or ymin < 0 or xmax > w - 1 or ymax > h - 1:
            clipped.append(region)
        if len(rr) == 0 and not (xmax < 0 or ymax < 0 or xmin > w - 1 or ymin > h - 1):
            empty.append(region)
        hole = holes.get(region.layer)
        if hole is not None and len(rr):
            covered = layer_pixels.setdefault(region.layer, np.zeros((h, w), dtype=bool))
            covered[rr, cc] = True
            keep = ~hole[rr, cc]
            if not keep.all():
                rr, cc = rr[keep], cc[keep]
                if len(rr) == 0:
                    erased.append(region)
        if region.label == AMBIGUOUS:
            if ambiguous is None:
                ambiguous = np.zeros((h, w), dtype=np.uint8)
            ambiguous[rr, cc] = 1
            continue
        cid = mapping[CLASS_IDS[region.label]]
        classes.append(cid)
        class_map[rr, cc] = cid
        instance_map[rr, cc] = len(classes) - 1
    for region, rr, cc in hole_regions:
        covered = layer_pixels.get(region.layer)
        if covered is None or len(rr) == 0 or not covered[rr, cc].any():
            idle_holes.append(region)
    warnings = []
    for found, what in (
        (outside, f"entirely outside the {w}x{h} image"),
        (clipped, f"clipped at the border of the {w}x{h} image"),
        (empty, "too small to cover a pixel centre (no pixel)"),
        (erased, "wholly inside a negative region (hole) of their layer (no pixel)"),
    ):
        if found:
            warnings.append(f"{len(found)} region(s) {what}{_which(found)}")
    if idle_holes:
        warnings.append(f"{len(idle_holes)} negative region(s) (holes) overlapping no region of their layer{_which(idle_holes)}")
    return Masks(
        class_map,
        instance_map,
        np.asarray(classes, dtype=np.uint8),
        ambiguous,
        warnings,
        unusable=len(outside) + len(empty) + len(erased) + len(idle_holes),
    )


def _which(regions: Sequence[Region], limit: int = 8) -> str:
    """`` (layer 1 region 5, ...)``: where the listed regions are in the XML file (the first ``limit``)."""
    names = [f"layer {r.layer} region {r.region_id}" if r.region_id else f"layer {r.layer}" for r in regions[:limit]]
    more = f", {len(regions) - limit} more" if len(regions) > limit else ""
    return f" ({', '.join(names)}{more})"
