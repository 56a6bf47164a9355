"""Polygons -> class map, instance map and ambiguous mask (scikit-image rasterisation, last polygon wins)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from skimage.draw import polygon as draw_polygon

from .classes import AMBIGUOUS, CLASS_IDS, parse_remap
from .imagescope import Region

__all__ = ["Masks", "rasterize_regions"]


@dataclass
class Masks:
    """Rasterised annotation of one image.

    Args:
        class_map: ``(H, W)`` uint8, 0 background, 1-4 nucleus class (after remap).
        instance_map: ``(H, W)`` int32, 0 background, ``k`` for the k-th nucleus region in XML order.
        instance_classes: class id (after remap) of each instance id; index 0 is background.
        ambiguous: ``(H, W)`` uint8 mask of the ``Ambiguous`` layer, or ``None`` if the file has none.
        warnings: notes on polygons that fall (partly) outside the image.
    """

    class_map: np.ndarray
    instance_map: np.ndarray
    instance_classes: np.ndarray
    ambiguous: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def rasterize_regions(
    regions: Sequence[Region], shape: Sequence[int], remap: Mapping[int, int] | str | None = None
) -> Masks:
    """Fill each polygon with :func:`skimage.draw.polygon` in the given order; a later polygon overwrites.

    Pixel ``(row, col)`` belongs to a polygon when its centre lies inside it, which keeps the true area
    (OpenCV's ``fillPoly`` inflates small nuclei). Polygons are clipped to the image.

    Args:
        regions: polygons in XML order (``Region.vertices`` as ``(x, y)``).
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
    outside = clipped = 0
    for region in regions:
        v = region.vertices
        rr, cc = draw_polygon(v[:, 1], v[:, 0], shape=(h, w))
        xmin, ymin = v.min(axis=0)
        xmax, ymax = v.max(axis=0)
        if xmax < 0 or ymax < 0 or xmin > w - 1 or ymin > h - 1:
            outside += 1
        elif xmin < 0 or ymin < 0 or xmax > w - 1 or ymax > h - 1:
            clipped += 1
        if region.label == AMBIGUOUS:
            if ambiguous is None:
                ambiguous = np.zeros((h, w), dtype=np.uint8)
            ambiguous[rr, cc] = 1
            continue
        cid = mapping[CLASS_IDS[region.label]]
        classes.append(cid)
        class_map[rr, cc] = cid
        instance_map[rr, cc] = len(classes) - 1
    warnings = []
    if outside:
        warnings.append(f"{outside} polygon(s) entirely outside the {w}x{h} image")
    if clipped:
        warnings.append(f"{clipped} polygon(s) clipped at the border of the {w}x{h} image")
    return Masks(class_map, instance_map, np.asarray(classes, dtype=np.uint8), ambiguous, warnings)
