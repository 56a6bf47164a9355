"""The nuclei GeoJSON against the rules of QuPath's own GeoJSON import (QuPath 0.5.1 and 0.6.0 source).

QuPath's ``File > Import objects from file`` and drag-and-drop both end in ``PathIO.readObjects`` ->
``PathIO.readObjectsFromGeoJSON`` -> ``GsonTools.parseObjectsFromGeoJSON`` -> ``QuPathTypeAdapters`` (one
``PathObjectTypeAdapter.parseObject`` per feature) and ``ROITypeAdapters`` (geometry). :func:`qupath_problems`
restates, in plain Python, every rule a file must meet for each feature to become a classified detection that keeps
its measurements; each rule names the QuPath class / method it comes from. Several violations do not lose one
object but make QuPath reject the whole file (an exception escapes the reader), which is noted per rule.

The rules were also confirmed by running QuPath's own reader (``PathIO.readObjects`` of 0.5.1 and 0.6.0, compiled
from source) on the files the workflow writes and on the violations below; that needs Java and QuPath's jars, which
the test environment does not have, so the rules are encoded here.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_nasscam.data.classes import CLASS_COLORS, CLASS_NAMES
from monai_nasscam.inference import NucleiPredictor
from monai_nasscam.inference.outputs import InferredImage, NucleiGeoJSONWriter
from monai_nasscam.inference.nuclei import _outline, _polygons, iter_nuclei

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# --------------------------------------------------------------------------------------------------------------
# the checker


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _orient(a, b, c) -> int:
    v = float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    return (v > 0) - (v < 0)


def _on_segment(a, b, c) -> bool:
    return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])


def _meet(p1, q1, p2, q2) -> bool:
    o1, o2, o3, o4 = _orient(p1, q1, p2), _orient(p1, q1, q2), _orient(p2, q2, p1), _orient(p2, q2, q1)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return True
    return ((o1 == 0 and _on_segment(p1, q1, p2)) or (o2 == 0 and _on_segment(p1, q1, q2))
            or (o3 == 0 and _on_segment(p2, q2, p1)) or (o4 == 0 and _on_segment(p2, q2, q1)))


def _inside(point, ring: np.ndarray) -> bool:
    """Even-odd ray casting (the point is not on the ring: segments that meet are reported before)."""
    x, y = point
    inside = False
    for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def polygon_problems(rings: list[np.ndarray]) -> list[str]:
    """Why closed rings (exterior first) are not one valid polygon (JTS ``IsValidOp`` terms), plain loops."""
    problems = []
    segs = [(k, i, r[i], r[i + 1]) for k, r in enumerate(rings) for i in range(len(r) - 1)]
    for k, r in enumerate(rings):
        if _signed_area(r) == 0:
            problems.append(f"ring {k} has no area")
        n = len(r) - 1
        for i in range(n):  # a spike: a segment folding back onto the previous one
            d0, d1 = r[i + 1] - r[i], r[(i + 1) % n + 1] - r[(i + 1) % n]
            if d0[0] * d1[1] - d0[1] * d1[0] == 0 and float(np.dot(d0, d1)) < 0:
                problems.append(f"ring {k} folds back at vertex {i + 1}")
    for a in range(len(segs)):
        for b in range(a + 1, len(segs)):
            ka, ia, p1, q1 = segs[a]
            kb, ib, p2, q2 = segs[b]
            n = len(rings[ka]) - 1
            if ka == kb and (abs(ia - ib) == 1 or abs(ia - ib) == n - 1):
                continue  # consecutive segments share their joining vertex
            if _meet(p1, q1, p2, q2):
                problems.append(f"segment {ia} of ring {ka} meets segment {ib} of ring {kb}")
    if not problems:
        for k, hole in enumerate(rings[1:], start=1):
            if not _inside(hole[0], rings[0]):
                problems.append(f"hole {k} lies outside the exterior ring")
    return problems


def multipolygon_problems(polygons: list[list[np.ndarray]]) -> list[str]:
    """Why polygons (each: closed rings, exterior first) are not one valid MultiPolygon (JTS ``IsValidOp``): each
    must be a valid polygon (the plain checks above), and their interiors must not overlap (they may touch at
    points): that part is left to Shapely, whose GEOS implements JTS's rules."""
    import shapely

    problems = [f"polygon {k}: {p}" for k, rings in enumerate(polygons) for p in polygon_problems(rings)]
    if problems:
        return problems
    shape = shapely.MultiPolygon([shapely.Polygon(rings[0], rings[1:]) for rings in polygons])
    return [] if shapely.is_valid(shape) else [f"polygons overlap: {shapely.is_valid_reason(shape)}"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def feature_problems(feat: Any, object_type: str = "detection") -> list[str]:
    """Rule ids (with details) that one feature breaks; ``[]``: QuPath imports it as a classified ``object_type``
    with all its measurements."""
    out: list[str] = []
    if not isinstance(feat, dict):
        return ["feature: not a JSON object"]
    # RFC 7946 section 3.2 (QuPath itself parses every element of "features" as a feature).
    if feat.get("type") != "Feature":
        out.append("feature-type: type is not 'Feature'")
    # QuPathTypeAdapters.PathObjectTypeAdapter.parseObject: "id" is read with getAsString (a JSON object or array
    # fails the whole import); a string that is not a UUID is ignored, a UUID becomes the object's ID -- so the same
    # file imported twice would hold two objects with one ID. We write none: QuPath gives each object a new UUID.
    if "id" in feat:
        out.append("id: present (QuPath keeps a UUID id as the object ID; none should be written)")
    # ROITypeAdapters.parseGeometry: a geometry needs "type" and "coordinates" (else IllegalArgumentException, the
    # whole import fails); GeometryTools.geometryToROI turns one Polygon into one PolygonROI (a GeometryROI with
    # holes) and a MultiPolygon into one GeometryROI. A nucleus is one Polygon, or a MultiPolygon when in pieces.
    geom = feat.get("geometry")
    if (not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon")
            or not isinstance(geom.get("coordinates"), list)):
        out.append("geometry: not a GeoJSON Polygon or MultiPolygon with coordinates")
    else:
        multi = geom["type"] == "MultiPolygon"
        polygons = geom["coordinates"] if multi else [geom["coordinates"]]
        arrays = [_ring_arrays(p, out) if isinstance(p, list) else None for p in polygons]
        if not polygons:
            out.append("ring-size: the geometry has no polygon")
        elif all(a is not None for a in arrays):
            # ROITypeAdapters.parseGeometry (0.6) reduces every geometry with JTS GeometryPrecisionReducer, which
            # throws on an invalid polygon ("Reduction failed, possible invalid input"): one self-crossing nucleus
            # fails the whole import. (0.5 imports it, split into a MultiPolygon.)
            out += [f"valid: {p}" for p in (multipolygon_problems(arrays) if multi else polygon_problems(arrays[0]))]
    return out + _property_problems(feat, object_type)


def _ring_arrays(coordinates: list, out: list[str]) -> list[np.ndarray] | None:
    """One polygon's rings as arrays; the rule ids of the broken ones go to ``out`` (``None``: a ring is broken)."""
    rings = []
    for k, ring in enumerate(coordinates):
        # ROITypeAdapters.parseCoordinate: each position is an array whose elements 0 and 1 are read as doubles.
        if not isinstance(ring, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_number(v) and math.isfinite(v) for v in p) for p in ring
        ):
            out.append(f"position: ring {k} has a position that is not [x, y] of finite numbers")
            continue
        arr = np.asarray(ring, dtype=np.float64)
        # ROITypeAdapters.parsePolygon -> JTS GeometryFactory.createLinearRing: an open ring throws
        # ("Points of LinearRing do not form a closed linestring"): the whole import fails.
        if len(arr) == 0 or not np.array_equal(arr[0], arr[-1]):
            out.append(f"ring-closed: ring {k} is not closed")
            continue
        # RFC 7946 section 3.1.6 (JTS accepts 3 positions but the object then has no area).
        if len(arr) < 4:
            out.append(f"ring-size: ring {k} has {len(arr)} positions (< 4)")
            continue
        # GeometryTools.getDefaultFactory (0.6: PrecisionModel of 0.01 px, used by ROITypeAdapters.parseGeometry):
        # coordinates off the 0.01 grid are moved on import; on it they import unchanged.
        if not np.allclose(arr, np.round(arr, 2), rtol=0, atol=1e-9):
            out.append(f"precision: ring {k} has coordinates off QuPath 0.6's 0.01-pixel grid")
        rings.append(arr)
    if not coordinates:
        out.append("ring-size: the polygon has no ring")
        return None
    return rings if len(rings) == len(coordinates) else None


def _property_problems(feat: dict, object_type: str) -> list[str]:
    """The rule ids (with details) that a feature's properties break."""
    out: list[str] = []
    props = feat.get("properties")
    if not isinstance(props, dict):
        return out + ["properties: missing"]
    # QuPathTypeAdapters.PathObjectTypeAdapter.parseObject: "objectType" selects the object; missing or unknown
    # values make an annotation.
    if props.get("objectType") != object_type:
        out.append(f"objectType: {props.get('objectType')!r}, not {object_type!r}")
    # GsonTools.PathClassTypeAdapter.read: an object is read only with both "name" (or "names") and "color"
    # (a name alone throws JsonParseException: the whole import fails); PathClassProxy.color is an int[] (a bare
    # number throws) turned into RGB by GsonTools.arrayToRgb (length 0, 1, 3 or 4, else IllegalArgumentException).
    cls = props.get("classification")
    if not isinstance(cls, dict) or "name" not in cls or "color" not in cls:
        out.append("classification: not an object with both 'name' and 'color'")
    else:
        name, color = cls["name"], cls["color"]
        # PathClass.fromString splits a name on ':' into a derived class ("A: B" is B under A); PathClass rejects
        # blank names and names with line breaks (IllegalArgumentException: the whole import fails).
        if not isinstance(name, str) or not name.strip() or any(c in name for c in ":\n\r"):
            out.append(f"class-name: {name!r} is blank, not a string or holds ':' or a line break")
        if not (isinstance(color, list) and len(color) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):
            out.append(f"class-color: {color!r} is not [r, g, b] of integers 0-255")
    # QuPathTypeAdapters.MeasurementListTypeAdapter.read: a map is read name -> value; numbers are kept, strings go
    # through Double.parseDouble (a non-numeric one fails the whole import), booleans, null and objects are dropped
    # with a warning. We ask for finite JSON numbers (QuPath itself writes NaN as the string "NaN").
    meas = props.get("measurements")
    if not isinstance(meas, dict):
        out.append("measurements: not a map of name -> number")
    else:
        for key, value in meas.items():
            if not (_number(value) and math.isfinite(value)):
                out.append(f"measurement-value: {key!r} = {value!r} is not a finite number")
            # GeneralTools.micrometerSymbol: QuPath's own area measurements use the micro sign U+00B5.
            if "\u03bc" in key:
                out.append(f"measurement-name: {key!r} uses the Greek mu, not QuPath's micro sign")
    # QuPathTypeAdapters.PathObjectTypeAdapter.parseObject reads "isLocked" with getAsBoolean.
    if "isLocked" in props and not isinstance(props["isLocked"], bool):
        out.append("isLocked: not a boolean")
    return out


def qupath_problems(path: str | Path, object_type: str = "detection") -> list[str]:
    """Every rule the GeoJSON file at ``path`` breaks (``[]``: it imports as classified ``object_type`` objects)."""
    path = Path(path)
    # PathIO.readObjects: a file is read as GeoJSON only with the extension .geojson or .json (optionally .gz),
    # PathIO.readObjectsFromGeoJSON reads it as UTF-8.
    out = [] if path.suffix.lower() in (".geojson", ".json") else [f"extension: {path.name} is not .geojson/.json"]
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return out + [f"json: not UTF-8 JSON ({e})"]
    # GsonTools.parseObjectsFromGeoJSON (addPathObjects) dispatches on "type": an object without it yields no object
    # at all; QuPathTypeAdapters.PathObjectCollectionTypeAdapter.read reads the "features" array.
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        return out + ["collection: not a FeatureCollection with a features array"]
    for i, feat in enumerate(doc["features"]):
        out += [f"feature {i}: {p}" for p in feature_problems(feat, object_type)]
    return out


# --------------------------------------------------------------------------------------------------------------
# files written by the inference workflow

R = 10
TWO = ((32, 20), (32, 41))  # two discs of one class touching along one pixel edge (row, col centres)
RING, HOLE = (32, 78), (37, 78)  # a nucleus with a hole: disc of radius 12, hole of radius 2 off its centre (the
# watershed keeps it whole; a centred hole would give it a ring of distance maxima and split it)


class _TwoClasses(torch.nn.Module):
    """Stand-in network: dark pixels (grey < 0.35) are Epithelial, mid-grey ones (0.35-0.9) Lymphocyte."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        c1 = torch.where(grey < 0.35, 4.0, -20.0)
        c2 = torch.where((grey >= 0.35) & (grey < 0.9), 3.0, -20.0)
        return torch.cat([c1, c2, torch.full_like(grey, -20.0), torch.full_like(grey, -20.0)], dim=1)


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _infer(image: np.ndarray, tmp_path: Path, **kwargs) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image).save(src / "img.png")
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    NucleiPredictor(_TwoClasses(), inferer, src, tmp_path / "out", stain="none", optimize="none", progress=False,
                    tune_malloc=False, num_threads=1, parallel=1, precision="fp32", **kwargs).run()
    return tmp_path / "out" / "img" / "img_nuclei.geojson"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The workflow's GeoJSON of two touching Epithelial discs and a Lymphocyte ring (a nucleus with a hole), at a
    known resolution (0.25 µm/px: areas in µm²)."""
    shape = (64, 100)
    image = np.full((*shape, 3), 255, np.uint8)
    for centre in TWO:
        image[_disc(shape, centre, R)] = 51  # grey 0.2
    image[_disc(shape, RING, 12) & ~_disc(shape, HOLE, 2)] = 153  # grey 0.6
    return _infer(image, tmp_path_factory.mktemp("written"), mpp=0.25)


def test_workflow_geojson_meets_every_qupath_rule(written):
    assert qupath_problems(written) == []
    features = json.loads(written.read_text(encoding="utf-8"))["features"]
    # two touching discs -> two detections; the ring -> one detection with one hole
    classes = [f["properties"]["classification"] for f in features]
    assert sorted(c["name"] for c in classes) == ["Epithelial", "Epithelial", "Lymphocyte"]
    for c in classes:
        assert c["color"] == list(CLASS_COLORS[CLASS_NAMES.index(c["name"]) + 1])
    holes = {f["properties"]["classification"]["name"]: len(f["geometry"]["coordinates"]) - 1 for f in features}
    assert holes == {"Epithelial": 0, "Lymphocyte": 1}
    for f in features:
        m = f["properties"]["measurements"]
        assert {"Centroid X px", "Centroid Y px", "Area px", "Area µm^2", "Class probability"} <= set(m)
        assert m["Area µm^2"] == pytest.approx(m["Area px"] * 0.25**2, abs=1e-4)
        assert f["properties"]["objectType"] == "detection"
    assert qupath_problems(written, object_type="annotation") != []  # the object type is checked, not assumed


def test_annotations_meet_the_rules_too(tmp_path):
    image = np.full((40, 40, 3), 255, np.uint8)
    image[_disc((40, 40), (20, 20), R)] = 51
    path = _infer(image, tmp_path, outputs=[NucleiGeoJSONWriter(object_type="annotation")])
    assert qupath_problems(path, object_type="annotation") == []


# A nucleus whose Douglas-Peucker outline at 2 px crosses itself: QuPath 0.6 rejected the whole file for it.
CROSSING = """
##...............
.#........####...
.#.....##..######
.##...##.#######.
..##############.
...##.#########..
......#######.##.
....########.....
...######........
...#.#####.......
...#######.......
...######........
..#######........
.....###.........
.....##..........
......#..........
"""


def _mask(text: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in text.strip().splitlines()])


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    from skimage.measure import find_contours

    return [c for c in find_contours(np.pad(mask.astype(np.uint8), 1), 0.5) if len(c) >= 4]


def test_simplified_outlines_stay_valid_and_no_nucleus_is_lost(tmp_path):
    from skimage.measure import approximate_polygon

    mask = _mask(CROSSING)
    contours = _contours(mask)
    raw = _polygons([approximate_polygon(c, 2.0) for c in contours], 0, 0)[0]  # plain Douglas-Peucker
    assert any("meets" in p for p in polygon_problems(raw))  # the checker sees the crossing
    [exact] = _outline(mask, 0, 0, 0.0)
    assert [len(r) for r in exact] == [97, 5] and polygon_problems(exact) == []
    [rings] = _outline(mask, 0, 0, 2.0)  # the writer's outline: simplified (not the exact one) and valid, hole kept
    # (GEOS 3.13+, Shapely 2.1+, also drops a ring's first vertex: the 1-pixel hole's diamond becomes a triangle)
    assert len(rings[0]) == 10 and len(rings[1]) in (4, 5) and polygon_problems(rings) == []
    # through the workflow: the crossing nucleus and one-pixel specks (whose simplified outline has < 4 positions)
    # all reach the GeoJSON, as many features as CSV rows, every rule met
    image = np.full((48, 48, 3), 255, np.uint8)
    image[4 : 4 + mask.shape[0], 4 : 4 + mask.shape[1]][mask] = 51
    for r, c in ((30, 30), (40, 10), (42, 40)):
        image[r, c] = 51
    path = _infer(image, tmp_path, polygon_tolerance=2.0, instance_method="connected_components")
    assert qupath_problems(path) == []
    with open(path.with_name("img_nuclei.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    features = json.loads(path.read_text())["features"]
    assert len(features) == len(rows) == 4
    sizes = sorted(len(f["geometry"]["coordinates"][0]) for f in features)
    assert sizes[-1] == 10 and set(sizes[:3]) <= {4, 5}  # the crossing nucleus simplified; a speck: 5 or fewer


def _blobs(seed: int, size: int = 48) -> np.ndarray:
    """A class map of irregular nuclei of two classes, some with holes (smoothed noise, thresholded)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.5) > 0.05
    inner = ndimage.binary_erosion(blobs, iterations=2)
    blobs &= ~(ndimage.binary_dilation(inner & (rng.random((size, size)) < 0.03)) & inner)  # holes
    cls = np.where(ndimage.gaussian_filter(rng.standard_normal((size, size)), 8.0) > 0, 1, 2)
    return np.where(blobs, cls, 0).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simplified_outlines_pass_the_checker_at_any_tolerance(seed):
    """Every simplified outline is a valid polygon by the checker, keeps every hole and the orientation (exterior
    counter-clockwise, holes clockwise) and uses only vertices of the exact outline (on the half-pixel grid)."""
    class_map = _blobs(seed)
    exact = list(iter_nuclei(class_map.copy(), num_classes=2))
    assert len(exact) >= 5 and any(len(n.rings) > 1 for n in exact)  # the case covers nuclei with holes
    simplified = 0
    for tol in (0.5, 1.0, 2.0, 4.0):
        nuclei = list(iter_nuclei(class_map.copy(), num_classes=2, tolerance=tol))
        assert [(n.class_id, n.area, n.bbox) for n in nuclei] == [(n.class_id, n.area, n.bbox) for n in exact]
        for n, e in zip(nuclei, exact):
            assert len(n.rings) == len(e.rings), (tol, n.index)
            assert all(len(r) >= 4 and np.array_equal(r[0], r[-1]) for r in n.rings)
            assert [_signed_area(r) > 0 for r in n.rings] == [True] + [False] * (len(n.rings) - 1)
            assert np.isin(np.concatenate(n.rings).view(complex), np.concatenate(e.rings).view(complex)).all()
            assert polygon_problems(n.rings) == [], (tol, n.index)
            simplified += sum(map(len, n.rings)) < sum(map(len, e.rings))
    assert simplified >= len(exact)  # the outlines were simplified, not kept exact


def test_a_nucleus_in_pieces_is_one_valid_multipolygon():
    """Pixels touching only at a corner are two pieces under 4-connectivity: two polygons of one MultiPolygon (the
    smaller used to be written as a hole outside the exterior, which QuPath 0.6 rejects), under any tolerance; a
    piece inside another's hole keeps that hole, and a hole of the inner piece goes to the inner piece."""
    import shapely

    corner = np.array([[1, 0], [0, 1]], bool)
    exact = _outline(corner, 3, 5, 0.0)
    assert [len(p) for p in exact] == [1, 1] and multipolygon_problems(exact) == []
    for tol in (0.5, 1.0, 3.0):  # simplified (GEOS may drop a diamond's first vertex), still two valid polygons
        simple = _outline(corner, 3, 5, tol)
        assert [len(p) for p in simple] == [1, 1] and multipolygon_problems(simple) == []
        assert all(len(p[0]) >= 4 for p in simple)
    # a ring (7 x 7, hole 5 x 5) around a 3 x 3 block with a one-pixel hole
    nested = np.zeros((9, 9), bool)
    nested[1:8, 1:8] = True
    nested[2:7, 2:7] = False
    nested[3:6, 3:6] = True
    nested[4, 4] = False
    polygons = _outline(nested, 0, 0, 0.0)
    assert [len(p) for p in polygons] == [2, 2] and multipolygon_problems(polygons) == []
    shape = shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in polygons])
    assert shapely.is_valid(shape) and shape.area == nested.sum() - (2 - 2) / 2  # each loop cuts 4 corners of 1/8


def _exact_area(polygons: list[list[np.ndarray]]) -> float:
    """The area of the exact outline of a nucleus of ``n`` pixels is ``n - (pieces - holes) / 2``: marching squares
    cuts 1/8 px off every convex pixel corner and adds 1/8 px at every concave one, and each boundary loop turns
    four more times one way than the other (outward for a piece, inward for a hole)."""
    return sum(len(p) - 2 for p in polygons) / 2  # to add to the pixel count: -(1 exterior - holes) / 2 per piece


def _perimeter(polygons: list[list[np.ndarray]]) -> float:
    return sum(float(np.linalg.norm(np.diff(r, axis=0), axis=1).sum()) for p in polygons for r in p)


def _random_instance_map(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Instances of every shape: blobs, specks and lone pixels, holes, pieces touching at corners, and instances in
    several disjoint pieces (the components of a noisy mask dealt out to a few instance ids), some nested."""
    from scipy import ndimage
    from skimage.measure import label

    smooth = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(0.5, 3.0))
    mask = (smooth > rng.uniform(-0.3, 0.3)) & (rng.random((size, size)) > rng.uniform(0.0, 0.2))
    components = label(mask, connectivity=1)
    ids = rng.integers(1, int(rng.integers(2, 7)), components.max() + 1)
    ids[0] = 0
    return ids[components]


@pytest.mark.parametrize("seed", range(2))
def test_outlines_of_random_instance_maps_are_valid_and_keep_the_area(seed):
    """Property test: for every instance of many random instance maps, at every tolerance, the outline is one valid
    Polygon or MultiPolygon (Shapely: GEOS implements QuPath's JTS rules), its vertices on the
    half-pixel grid, its area the pixel count less (pieces - holes) / 2 exactly, and within ``tolerance`` x perimeter
    of that once simplified."""
    import shapely
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    pieces = 0
    for _ in range(40):
        instances = _random_instance_map(rng)
        for k, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is None:
                continue
            mask = instances[box] == k
            exact = _outline(mask, box[0].start, box[1].start, 0.0)
            pieces += len(exact) > 1
            for tol in (0.0, 0.5, 1.0, 2.0):
                polygons = exact if tol == 0 else _outline(mask, box[0].start, box[1].start, tol)
                shape = shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in polygons])
                assert shapely.is_valid(shape), (seed, k, tol, shapely.is_valid_reason(shape))
                assert [len(p) for p in polygons] == [len(p) for p in exact]  # no piece and no hole lost
                for ring in (r for p in polygons for r in p):
                    assert np.array_equal(ring[0], ring[-1]) and np.all((ring * 2) == np.round(ring * 2))
                area = mask.sum() + _exact_area(exact)
                if tol == 0:
                    assert shape.area == area, (seed, k)
                else:
                    assert abs(shape.area - area) <= tol * _perimeter(exact) + 1e-9, (seed, k, tol)
    assert pieces >= 20  # the maps hold many nuclei in pieces


def test_the_writer_repairs_or_drops_an_invalid_outline_and_says_so(tmp_path, caplog):
    """The last line of defence: a geometry that is not valid as written is repaired (``make_valid``) or, when no
    polygon is left, dropped; the counts are logged and every written feature is valid."""
    import shapely
    from shapely.geometry import shape

    from monai_nasscam.inference.nuclei import Nucleus

    def nucleus(*polygons):
        return Nucleus(1, 16, (0, 0, 4, 4), [[np.asarray(r, float) for r in p] for p in polygons], center=(2.0, 2.0))

    square = [[0.5, 0.5], [4.5, 0.5], [4.5, 4.5], [0.5, 4.5], [0.5, 0.5]]
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    flat = [[0, 0], [4, 0], [8, 0], [0, 0]]
    path = tmp_path / "x_nuclei.geojson"
    image = InferredImage(source="x.png", base=str(tmp_path / "x"), name="x", class_map=np.zeros((12, 12), np.uint8),
                          overview=np.zeros((12, 12, 3), np.uint8))
    writer = NucleiGeoJSONWriter()
    writer.begin(image)
    for n in (nucleus([square]), nucleus([bow_tie]), nucleus([flat]), nucleus([square], [[[6, 6], [7, 6], [7, 7], [6, 7], [6, 6]]])):
        writer.add_nucleus(n)
    with caplog.at_level("WARNING", logger="monai_nasscam.inference"):
        writer.write(image)
    assert (writer.count, writer.repaired, writer.dropped) == (3, 1, 1)
    assert "1 repaired (shapely.make_valid), 1 dropped" in caplog.text and str(path) in caplog.text
    features = json.loads(path.read_text())["features"]
    assert [f["geometry"]["type"] for f in features] == ["Polygon", "MultiPolygon", "MultiPolygon"]
    assert all(shapely.is_valid(shape(f["geometry"])) for f in features) and qupath_problems(path) == []
    assert shape(features[1]["geometry"]).area == pytest.approx(50.0)  # the bow-tie's two triangles


FRAGMENTED_SEEDS = (0, 2, 3)  # noisy masks whose watershed leaves nuclei in pieces (asserted below)


def _fragmented_image() -> np.ndarray:
    """Nuclei with rough outlines and scattered one-pixel holes, as a thresholded network output has them: the
    watershed (which fills small holes to place its markers, then takes them out again) leaves some in pieces."""
    from scipy import ndimage

    tiles = []
    for seed in FRAGMENTED_SEEDS:
        rng = np.random.default_rng(seed)
        blobs = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 4) > 0.05
        tiles.append(blobs & (rng.random((128, 128)) >= 0.1))
    mask = np.concatenate(tiles, axis=1)
    image = np.full((*mask.shape, 3), 255, np.uint8)
    image[mask] = 51  # Epithelial for the stand-in network
    return image


def test_inference_writes_valid_outlines_for_nuclei_in_pieces(tmp_path):
    """The reported case, through the workflow with its default instance separation (the watershed): every written
    feature is a valid polygon (Shapely and the QuPath rules), the nuclei in pieces are MultiPolygons, and every
    outline's area matches the nucleus's pixel count ("Area px") exactly, and within the tolerance once simplified."""
    import shapely
    from shapely.geometry import shape

    image = _fragmented_image()
    runs = {}
    for tol in (0.0, 1.0):
        (tmp_path / f"tol{tol}").mkdir()
        path = _infer(image, tmp_path / f"tol{tol}", polygon_tolerance=tol)
        assert qupath_problems(path) == []
        runs[tol] = json.loads(path.read_text())["features"]
    exact, simplified = runs[0.0], runs[1.0]
    assert len(exact) == len(simplified) >= 10
    multi = [f for f in exact if f["geometry"]["type"] == "MultiPolygon"]
    assert len(multi) >= 3  # the image does produce nuclei in pieces
    for e, s in zip(exact, simplified):
        px = e["properties"]["measurements"]["Area px"]
        assert s["properties"]["measurements"]["Area px"] == px
        polygons = e["geometry"]["coordinates"] if e["geometry"]["type"] == "MultiPolygon" else [e["geometry"]["coordinates"]]
        polygons = [[np.asarray(r) for r in p] for p in polygons]
        g_exact, g_simple = shape(e["geometry"]), shape(s["geometry"])
        assert shapely.is_valid(g_exact) and shapely.is_valid(g_simple)
        assert g_exact.area == pytest.approx(px + _exact_area(polygons), abs=1e-9)
        assert abs(g_simple.area - g_exact.area) <= 1.0 * _perimeter(polygons) + 1e-9


# --------------------------------------------------------------------------------------------------------------
# each rule catches its violation


def _with(fn):
    def apply(feat):
        fn(feat)
        return feat

    return apply


def _set(d_path, value):
    def fn(feat):
        d = feat
        for k in d_path[:-1]:
            d = d[k]
        d[d_path[-1]] = value

    return fn


def _drop(d_path):
    def fn(feat):
        d = feat
        for k in d_path[:-1]:
            d = d[k]
        del d[d_path[-1]]

    return fn


SQUARE = [[0.5, 0.5], [4.5, 0.5], [4.5, 4.5], [0.5, 4.5], [0.5, 0.5]]
VIOLATIONS = {
    "feature-type": _drop(["type"]),
    "id": _set(["id"], "123e4567-e89b-12d3-a456-426614174000"),
    "geometry": _set(["geometry", "type"], "LineString"),
    "position": _set(["geometry", "coordinates"], [[[0.5, 0.5], [4.5, "x"], [4.5, 4.5], [0.5, 0.5]]]),
    "ring-closed": _set(["geometry", "coordinates"], [SQUARE[:-1]]),
    "ring-size": _set(["geometry", "coordinates"], [[[0.5, 0.5], [4.5, 0.5], [0.5, 0.5]]]),
    "precision": _set(["geometry", "coordinates"], [[[x + 0.001, y] for x, y in SQUARE]]),
    "valid": _set(["geometry", "coordinates"], [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]),  # a bow-tie
    "objectType": _drop(["properties", "objectType"]),
    "classification": _drop(["properties", "classification", "color"]),
    "class-name": _set(["properties", "classification", "name"], "Epithelial: tumour"),
    "class-color": _set(["properties", "classification", "color"], 0xE6194B),
    "measurements": _set(["properties", "measurements"], [{"name": "Area px", "value": 3}]),
    "measurement-value": _set(["properties", "measurements", "Area px"], "abc"),
    "measurement-name": _set(["properties", "measurements", "Area \u03bcm^2"], 1.0),
    "isLocked": _set(["properties", "isLocked"], "no"),
}


def _good_feature() -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {"objectType": "detection", "classification": {"name": "Epithelial", "color": [0, 255, 0]},
                           "isLocked": False, "measurements": {"Area px": 16, "Area µm^2": 1.0}}}


def test_the_good_feature_passes():
    assert feature_problems(_good_feature()) == []


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_each_rule_catches_its_violation(rule):
    problems = feature_problems(_with(VIOLATIONS[rule])(copy.deepcopy(_good_feature())))
    assert problems and all(p.startswith(rule + ":") for p in problems), problems


@pytest.mark.parametrize(
    "rings, expected",
    [
        ([[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[6, 6], [6, 7], [7, 7], [7, 6], [6, 6]]], "outside"),
        ([[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[0, 0], [1, 2], [2, 1], [0, 0]]], "meets"),  # hole on a corner
        ([[[0, 0], [4, 0], [4, 4], [2, 4], [2, 6], [2, 2], [0, 2], [0, 0]]], "folds back"),  # a spike
        ([[[0, 0], [4, 0], [8, 0], [0, 0]]], "no area"),
    ],
)
def test_polygon_checker_catches_invalid_polygons(rings, expected):
    assert any(expected in p for p in polygon_problems([np.asarray(r, float) for r in rings]))


def test_file_level_rules(tmp_path, written):
    doc = json.loads(written.read_text(encoding="utf-8"))
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps({"features": doc["features"]}))  # no "type": QuPath reads no object at all
    assert qupath_problems(bare) == ["collection: not a FeatureCollection with a features array"]
    txt = tmp_path / "nuclei.txt"
    txt.write_text(json.dumps(doc))
    assert qupath_problems(txt) == ["extension: nuclei.txt is not .geojson/.json"]
    latin = tmp_path / "latin.geojson"
    latin.write_bytes(json.dumps(doc, ensure_ascii=False).encode("latin-1"))  # "µ" not as UTF-8
    assert qupath_problems(latin)[0].startswith("json: not UTF-8")
