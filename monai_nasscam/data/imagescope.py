"""Aperio ImageScope XML: parse MoNuSAC annotation files into polygons, and write them (for the synthetic set).

The format (one ``Annotation`` layer per class)::

    <Annotations MicronsPerPixel="0.252100">
      <Annotation Id="1" Name="" ...>
        <Attributes><Attribute Name="Epithelial" Id="0" Value=""/></Attributes>
        <Regions>
          <RegionAttributeHeaders>...</RegionAttributeHeaders>
          <Region Id="1" ...><Attributes/><Vertices><Vertex X="12.5" Y="30.25" Z="0"/>...</Vertices></Region>
        </Regions>
      </Annotation>
    </Annotations>

The class name is the layer's ``Attributes/Attribute@Name`` (the layer's own ``Name`` is usually empty).

Region kinds (``Region@Type``) and how they are read:

=========  ===========  ==================================================================================
``Type``   kind         read as
=========  ===========  ==================================================================================
0 / none   polygon      the vertices, in order (a freehand or polygon outline)
1          rectangle    its corners (ImageScope writes 4; 2 opposite corners are expanded to 4)
2          ellipse      the two opposite corners of its axis-aligned bounding box; rasterised as the ellipse
                        inscribed in them (see :func:`monai_nasscam.data.raster.rasterize_regions`)
3, 4, ...  arrow, ruler not an area: skipped, with a warning naming the kind
=========  ===========  ==================================================================================

``NegativeROA="1"`` marks a negative region (a hole / exclusion): it is kept with ``negative=True`` and
removes its pixels from every region of its own layer when rasterised; it is never a nucleus.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .classes import AMBIGUOUS, CLASS_COLORS, CLASS_IDS, normalize_layer_name
from ..errors import DataError

__all__ = ["Region", "Annotations", "REGION_KINDS", "read_imagescope_xml", "write_imagescope_xml"]

#: ImageScope ``Region@Type`` -> kind; only polygon, rectangle and ellipse are areas
REGION_KINDS = {0: "polygon", 1: "rectangle", 2: "ellipse", 3: "arrow", 4: "ruler"}
_AREA_KINDS = ("polygon", "rectangle", "ellipse")


@dataclass
class Region:
    """One annotated region (polygon, rectangle or ellipse; positive or negative).

    Args:
        label: canonical class name (see :data:`monai_nasscam.data.classes.CLASS_NAMES`) or ``"Ambiguous"``.
        vertices: ``(N, 2)`` float array of ``(x, y)`` pixel coordinates (x = column, y = row). A polygon's
            outline (N >= 3), a rectangle's 4 corners, or an ellipse's 2 opposite bounding-box corners.
        layer: 1-based index of the ``Annotation`` layer it came from.
        region_id: the ``Region@Id`` attribute.
        kind: ``"polygon"`` (default), ``"rectangle"`` or ``"ellipse"``.
        negative: ``NegativeROA="1"``: a hole in (exclusion from) the regions of its layer, not a nucleus.
    """

    label: str
    vertices: np.ndarray
    layer: int = 0
    region_id: str = ""
    kind: str = "polygon"
    negative: bool = False


@dataclass
class Annotations:
    """All usable regions of one XML file, in file order, and what was skipped.

    Args:
        path: the XML file.
        regions: nucleus, ambiguous and negative (hole) regions in XML order (rasterisation order).
        warnings: human-readable notes on skipped layers and regions (each names the layer, region and why).
        microns_per_pixel: the ``MicronsPerPixel`` attribute when present.
        skipped: number of regions not returned (unknown layer, not an area, too few vertices).
    """

    path: str
    regions: list[Region] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    microns_per_pixel: float | None = None
    skipped: int = 0


def _layer_label(annotation: ET.Element) -> tuple[str | None, str]:
    """Class of one ``Annotation`` layer and the raw name it was derived from."""
    raw = [a.get("Name", "") for a in annotation.findall("./Attributes/Attribute")]
    for name in raw:
        label = normalize_layer_name(name)
        if label is not None:
            return label, name
    own = annotation.get("Name", "")
    label = normalize_layer_name(own)
    if label is not None:
        return label, own
    shown = ", ".join(repr(n) for n in raw if n) or repr(own)
    return None, shown


def read_imagescope_xml(path: str | os.PathLike) -> Annotations:
    """Parse one MoNuSAC / Aperio ImageScope annotation file.

    ``RegionAttributeHeaders`` are ignored; layer names are normalised (``Macrophages`` -> ``Macrophage``);
    the ``Ambiguous`` layer is kept (label ``"Ambiguous"``). Polygons, rectangles (``Type="1"``) and ellipses
    (``Type="2"``, two corner vertices) are kept with their ``kind``; ``NegativeROA="1"`` regions are kept as
    holes (``negative=True``). Skipped, each with a note in ``warnings`` and counted in ``skipped``: the
    regions of unknown layers (e.g. ``Description``), regions that are not areas (arrows, rulers, unknown
    ``Type``), polygons and rectangles with fewer than 3 distinct vertices, ellipses whose two corners do not
    span a width and a height.

    Args:
        path: the ``.xml`` file.

    Returns:
        the :class:`Annotations` (regions in XML order).

    Raises:
        DataError: the file is empty, is not well-formed XML, is not an ImageScope file, holds a vertex
            that is not a number, or holds no usable (positive) region.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise DataError(path, "empty annotation file (0 bytes)")
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(path, f"malformed XML ({e})") from None
    except OSError as e:
        raise DataError(path, f"cannot read annotation file ({e.strerror or e})") from None
    root = tree.getroot()
    if root.tag != "Annotations":
        raise DataError(path, f"not an ImageScope annotation file (root element <{root.tag}>, expected <Annotations>)")
    mpp = root.get("MicronsPerPixel")
    result = Annotations(path=path)
    try:
        result.microns_per_pixel = float(mpp) if mpp else None
    except ValueError:
        result.microns_per_pixel = None
    n_regions_total = 0
    for layer_idx, annotation in enumerate(root.findall("Annotation"), start=1):
        regions = annotation.findall("./Regions/Region")
        n_regions_total += len(regions)
        label, raw_name = _layer_label(annotation)
        if label is None:
            if regions:
                result.warnings.append(
                    f"layer {layer_idx} ({raw_name}) is not a known class: {len(regions)} region(s) skipped"
                )
                result.skipped += len(regions)
            continue
        for region in regions:
            rid = region.get("Id", "?")
            where = f"layer {layer_idx} ({label}) region {rid}"
            kind = _region_kind(region.get("Type"))
            negative = region.get("NegativeROA", "0").strip() == "1"
            if kind not in _AREA_KINDS:
                result.warnings.append(f"{where}: {kind} region (not an area); skipped")
                result.skipped += 1
                continue
            vertex_elems = region.findall("./Vertices/Vertex")
            try:
                verts = np.array(
                    [(float(v.get("X")), float(v.get("Y"))) for v in vertex_elems], dtype=np.float64
                ).reshape(-1, 2)
            except (TypeError, ValueError):
                raise DataError(path, f"layer {layer_idx} region {rid}: a vertex X/Y is missing or not a number") from None
            if not np.all(np.isfinite(verts)):
                raise DataError(path, f"layer {layer_idx} region {rid}: a vertex X/Y is not finite")
            verts, problem = _shape_vertices(kind, verts)
            if problem:
                result.warnings.append(f"{where}: {problem}; skipped")
                result.skipped += 1
                continue
            result.regions.append(
                Region(label=label, vertices=verts, layer=layer_idx, region_id=rid, kind=kind, negative=negative)
            )
    if n_regions_total == 0:
        raise DataError(path, "empty annotation file (no annotated regions)")
    if not any(not r.negative for r in result.regions):
        raise DataError(path, "no region of a known class (" + "; ".join(result.warnings or ["only negative regions"]) + ")")
    return result


def _region_kind(type_attr: str | None) -> str:
    """The kind of a ``Region@Type`` value (missing: polygon; unknown number: ``"Type=N"``)."""
    text = (type_attr or "0").strip()
    try:
        return REGION_KINDS.get(int(float(text)), f"Type={text}")
    except ValueError:
        return f"Type={text!r}"


def _shape_vertices(kind: str, verts: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Check (and complete) the vertices of an area region; returns ``(vertices, problem or None)``."""
    distinct = len(np.unique(verts, axis=0))
    if kind == "ellipse":
        if len(verts) < 2:
            return verts, f"ellipse with {len(verts)} vertex/vertices (needs its 2 bounding-box corners)"
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        if np.any(hi - lo <= 0):
            return verts, f"ellipse of zero width or height (corners {verts[0].tolist()}, {verts[-1].tolist()})"
        return np.array([lo, hi], dtype=np.float64), None
    if kind == "rectangle" and distinct == 2:  # two opposite corners -> four
        (x0, y0), (x1, y1) = verts.min(axis=0), verts.max(axis=0)
        if x1 > x0 and y1 > y0:
            return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64), None
    if distinct < 3:
        return verts, f"{kind} with {len(verts)} vertices, fewer than 3 distinct"
    return verts, None


_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Annotations MicronsPerPixel="{mpp:.6f}">\n'
)
_LAYER_OPEN = (
    '<Annotation Id="{lid}" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" Incremental="0" '
    'Type="4" LineColor="{color}" Visible="1" Selected="{selected}" MarkupImagePath="" MacroName="">\n'
    "\t<Attributes>\n"
    '\t\t<Attribute Name="{name}" Id="0" Value=""/>\n'
    "\t</Attributes>\n"
    "\t<Regions>\n"
    "\t\t<RegionAttributeHeaders>\n"
    '\t\t\t<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n'
    '\t\t\t<AttributeHeader Id="9997" Name="Length" ColumnWidth="-1"/>\n'
    '\t\t\t<AttributeHeader Id="9996" Name="Area" ColumnWidth="-1"/>\n'
    '\t\t\t<AttributeHeader Id="9998" Name="Text" ColumnWidth="-1"/>\n'
    '\t\t\t<AttributeHeader Id="1" Name="Description" ColumnWidth="-1"/>\n'
    "\t\t</RegionAttributeHeaders>\n"
)
_REGION_OPEN = (
    '\t\t<Region Id="{rid}" Type="0" Zoom="1" Selected="0" ImageLocation="" ImageFocus="-1" '
    'Length="{length:.1f}" Area="{area:.1f}" LengthMicrons="{length_um:.1f}" AreaMicrons="{area_um:.1f}" '
    'Text="" NegativeROA="0" InputRegionId="0" Analyze="1" DisplayId="{rid}">\n'
    "\t\t\t<Attributes/>\n"
    "\t\t\t<Vertices>\n"
)
_REGION_CLOSE = "\t\t\t</Vertices>\n\t\t</Region>\n"
_LAYER_CLOSE = "\t</Regions>\n\t<Plots/>\n</Annotation>\n"
# ImageScope's LineColor is a Windows COLORREF (0x00BBGGRR) of the class colour
_COLORS = {name: sum(c << 8 * k for k, c in enumerate(CLASS_COLORS[i])) for name, i in CLASS_IDS.items()} | {AMBIGUOUS: 0}


def write_imagescope_xml(
    path: str | os.PathLike, layers: Sequence[tuple[str, Sequence[np.ndarray]]], microns_per_pixel: float = 0.2521
) -> None:
    """Write polygons as an ImageScope XML file in the MoNuSAC layout.

    Vertices are written with ``repr`` so that :func:`read_imagescope_xml` returns exactly the same floats.

    Args:
        path: output ``.xml`` path.
        layers: ``(class name, [vertices (N, 2) as (x, y)])`` per layer, in file order.
        microns_per_pixel: value of the root ``MicronsPerPixel`` attribute.
    """
    parts = [_HEADER.format(mpp=microns_per_pixel)]
    rid = 0
    for lid, (name, polygons) in enumerate(layers, start=1):
        parts.append(_LAYER_OPEN.format(lid=lid, name=name, color=_COLORS.get(name, 0), selected=int(lid == 1)))
        for verts in polygons:
            rid += 1
            v = np.asarray(verts, dtype=np.float64)
            x, y = v[:, 0], v[:, 1]
            area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
            length = float(np.sum(np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0]))))
            parts.append(
                _REGION_OPEN.format(
                    rid=rid,
                    length=length,
                    area=area,
                    length_um=length * microns_per_pixel,
                    area_um=area * microns_per_pixel**2,
                )
            )
            parts.extend(f'\t\t\t\t<Vertex X="{float(a)!r}" Y="{float(b)!r}" Z="0"/>\n' for a, b in v)
            parts.append(_REGION_CLOSE)
        parts.append(_LAYER_CLOSE)
    parts.append("</Annotations>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts))
