"""A nucleus as a QuPath GeoJSON ``Feature``: its outline as a ``Polygon`` (a ``MultiPolygon`` for a nucleus in pieces)
on QuPath's 0.01-pixel grid, its class name and colour, and its measurements; and the check, after rounding, that a
geometry is a valid polygon (Shapely / GEOS: the validity rules of JTS, which QuPath uses), with its repair.
:class:`~monai_nasscam.inference.outputs.NucleiGeoJSONWriter` streams these features to ``NAME_nuclei.geojson``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_COLORS, CLASS_NAMES
from monai_nasscam.inference.nuclei import Nucleus, polygon_rings

__all__ = [
    "OBJECT_TYPES",
    "COORDINATE_DECIMALS",
    "nucleus_measurements",
    "nucleus_geometry",
    "nucleus_feature",
    "valid_geometry",
]

#: QuPath object types of the features: ``detection`` (light, for many objects) or ``annotation``
OBJECT_TYPES = ("detection", "annotation")
#: decimals of the GeoJSON coordinates: QuPath 0.6 reads them on a 0.01-pixel grid (its precision model)
COORDINATE_DECIMALS = 2


def nucleus_measurements(
    nucleus: Nucleus, names: Mapping[int, str] | Sequence[str] = CLASS_NAMES, decimals: int = 4
) -> dict[str, float]:
    """The QuPath measurements of a nucleus (a flat map of name -> number): ``Centroid X px``, ``Centroid Y px``
    (full-image pixel coordinates, as the polygon), ``Area px``, ``Area µm^2`` (when the resolution is known),
    ``Class probability`` (mean of the class's sigmoid over the nucleus) and ``Probability <class>`` for every class
    (when the probabilities are known)."""
    x, y = nucleus.centroid
    out: dict[str, float] = {"Centroid X px": round(float(x), 2), "Centroid Y px": round(float(y), 2),
                             "Area px": int(nucleus.area)}
    if nucleus.area_um2 is not None:
        out["Area µm^2"] = round(float(nucleus.area_um2), decimals)
    if nucleus.probabilities is not None:
        out["Class probability"] = round(float(nucleus.probability), decimals)  # type: ignore[arg-type]
        for c, p in enumerate(nucleus.probabilities, start=1):
            out[f"Probability {_class_name(names, c)}"] = round(float(p), decimals)
    return out


def _class_name(names: Mapping[int, str] | Sequence[str], class_id: int) -> str:
    return names[class_id] if isinstance(names, Mapping) else names[class_id - 1]


def nucleus_geometry(polygons: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    """The GeoJSON geometry of outline polygons (:attr:`Nucleus.polygons`): a ``Polygon`` for one, a
    ``MultiPolygon`` for a nucleus in several pieces; coordinates rounded to :data:`COORDINATE_DECIMALS`."""
    coordinates = [[np.round(r, COORDINATE_DECIMALS).tolist() for r in polygon] for polygon in polygons]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def nucleus_feature(
    nucleus: Nucleus,
    names: Mapping[int, str] | Sequence[str] = CLASS_NAMES,
    colors: Mapping[int, Sequence[int]] = CLASS_COLORS,
    object_type: str = "detection",
) -> dict[str, Any]:
    """A GeoJSON ``Feature`` (``object_type``: one of :data:`OBJECT_TYPES`) that QuPath (0.4 to 0.6) imports as a classified detection or annotation: the outline
    (:func:`nucleus_geometry`: a ``Polygon``, or a ``MultiPolygon`` for a nucleus in several pieces) and
    ``properties`` holding ``objectType``, ``classification`` (``name`` and ``color`` as ``[r, g, b]``) and
    ``measurements`` as a flat map of name -> number (:func:`nucleus_measurements`).

    No ``id`` is written: QuPath reads feature ids as UUIDs and gives every imported object a new one.
    """
    props: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": _class_name(names, nucleus.class_id),
                           "color": [int(v) for v in colors[nucleus.class_id]]},
        "isLocked": False,
        "measurements": nucleus_measurements(nucleus, names),
    }
    return {"type": "Feature", "geometry": nucleus_geometry(nucleus.polygons), "properties": props}


def valid_geometry(geometry: dict[str, Any]) -> dict[str, Any] | None:
    """``geometry`` (GeoJSON, as written) if it is a valid polygonal geometry (``shapely.is_valid``: the rules of
    JTS, which QuPath uses), else its repair by ``shapely.make_valid`` (polygonal parts only, rounded like it and
    valid after rounding), else ``None``."""
    import shapely
    from shapely.geometry import shape

    geom = shape(geometry)
    if shapely.is_valid(geom) and not geom.is_empty:
        return geometry
    parts, polygons = [shapely.make_valid(geom)], []
    while parts:
        part = parts.pop()
        if isinstance(part, shapely.Polygon):
            if part.area > 0:
                polygons.append(part)
        elif isinstance(part, (shapely.MultiPolygon, shapely.GeometryCollection)):
            parts.extend(shapely.get_parts(part))
    if not polygons:
        return None
    polygons.sort(key=lambda g: -g.area)
    repaired = nucleus_geometry([polygon_rings(g) for g in polygons])
    return repaired if shapely.is_valid(shape(repaired)) else None
