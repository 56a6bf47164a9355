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
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .classes import AMBIGUOUS, normalize_layer_name
from .errors import DataError

__all__ = ["Region", "Annotations", "read_imagescope_xml", "write_imagescope_xml"]


@dataclass
class Region:
    """One annotated polygon.

    Args:
        label: canonical class name (see :data:`monai_nasscam.data.classes.CLASS_NAMES`) or ``"Ambiguous"``.
        vertices: ``(N, 2)`` float array of ``(x, y)`` pixel coordinates (x = column, y = row).
        layer: 1-based index of the ``Annotation`` layer it came from.
        region_id: the ``Region@Id`` attribute.
    """

    label: str
    vertices: np.ndarray
    layer: int = 0
    region_id: str = ""


@dataclass
class Annotations:
    """All usable regions of one XML file, in file order, and what was skipped.

    Args:
        path: the XML file.
        regions: nucleus and ambiguous regions in XML order (rasterisation order).
        warnings: human-readable notes on skipped layers and polygons.
        microns_per_pixel: the ``MicronsPerPixel`` attribute when present.
    """

    path: str
    regions: list[Region] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    microns_per_pixel: float | None = None


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
    the ``Ambiguous`` layer is kept (label ``"Ambiguous"``); unknown layers (e.g. ``Description``) and
    polygons with fewer than 3 distinct vertices are skipped and reported in ``warnings``.

    Args:
        path: the ``.xml`` file.

    Raises:
        DataError: the file is empty, is not well-formed XML, is not an ImageScope file, holds a vertex
            that is not a number, or holds no usable region.
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
            continue
        for region in regions:
            rid = region.get("Id", "?")
            vertex_elems = region.findall("./Vertices/Vertex")
            try:
                verts = np.array(
                    [(float(v.get("X")), float(v.get("Y"))) for v in vertex_elems], dtype=np.float64
                ).reshape(-1, 2)
            except (TypeError, ValueError):
                raise DataError(path, f"layer {layer_idx} region {rid}: a vertex X/Y is missing or not a number") from None
            if not np.all(np.isfinite(verts)):
                raise DataError(path, f"layer {layer_idx} region {rid}: a vertex X/Y is not finite")
            if len(np.unique(verts, axis=0)) < 3:
                result.warnings.append(
                    f"layer {layer_idx} ({label}) region {rid}: {len(verts)} vertices, fewer than 3 distinct; skipped"
                )
                continue
            result.regions.append(Region(label=label, vertices=verts, layer=layer_idx, region_id=rid))
    if n_regions_total == 0:
        raise DataError(path, "empty annotation file (no annotated regions)")
    if not result.regions:
        raise DataError(path, "no region of a known class (" + "; ".join(result.warnings) + ")")
    return result


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
_COLORS = {"Epithelial": 255, "Lymphocyte": 65280, "Neutrophil": 16711680, "Macrophage": 65535, AMBIGUOUS: 0}


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
