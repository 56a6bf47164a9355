"""ImageScope XML reading and rasterisation on hand-written MoNuSAC fixtures carrying every known oddity."""

import numpy as np
import pytest
from skimage.draw import polygon as sk_polygon

from monai_nasscam.data import (
    DataError,
    labels_dict,
    normalize_layer_name,
    parse_remap,
    rasterize_regions,
    read_imagescope_xml,
)
from tests.utils import imagescope_xml

H, W = 40, 60

# (layer attribute name, layer Name, [polygons as [(x, y), ...]]) in file order
ODD_LAYERS = [
    ("Epithelial", "", [
        [(10.5, 5.25), (30.75, 6.0), (28.0, 20.5), (12.2, 18.9)],  # float vertices
        [(-5.0, 25.0), (8.0, 22.0), (9.5, 39.5), (-3.0, 45.0)],  # leaves the image (left/bottom)
    ]),
    ("Description", "", [[(1.0, 1.0), (3.0, 1.0), (3.0, 3.0)]]),  # unknown layer -> skipped
    (" lymphocyte ", "", [
        [(20.0, 10.0), (40.0, 12.0), (35.0, 30.0), (22.0, 28.0)],  # overlaps the first epithelial nucleus
        [(50.0, 2.0), (58.0, 12.0), (50.0, 12.0), (58.0, 2.0)],  # self-intersecting (bow tie)
        [(44.0, 30.0), (52.0, 30.0), (48.0, 37.0)],  # only 3 vertices
    ]),
    ("Macrophages", "", [  # plural variant
        [(45.0, 15.0), (70.0, 16.0), (72.0, 35.0), (46.0, 33.0)],  # leaves the image (right)
        [(5.0, 5.0), (9.0, 5.0), (9.0, 5.0), (5.0, 5.0)],  # 2 distinct vertices -> skipped
        [(100.0, 100.0), (110.0, 100.0), (105.0, 110.0)],  # entirely outside
    ]),
    ("", "Neutrophil", [[(30.0, 25.0), (38.0, 24.0), (37.0, 33.0), (29.0, 34.0)]]),  # class only in the layer Name
    ("Ambiguous", "", [[(14.0, 28.0), (24.0, 28.0), (24.0, 36.0), (14.0, 36.0)]]),
]


def write_odd_xml(path, layers=ODD_LAYERS):
    """An ImageScope file in the MoNuSAC layout (RegionAttributeHeaders, Plots, empty layer names...)."""
    path.write_text(imagescope_xml([(attr, name, [(0, 0, poly) for poly in polys]) for attr, name, polys in layers]))
    return path


def expected_masks(layers=ODD_LAYERS, shape=(H, W)):
    """Reference: skimage.draw.polygon per kept polygon, in XML order, last wins."""
    cls = np.zeros(shape, np.uint8)
    inst = np.zeros(shape, np.int32)
    amb = np.zeros(shape, np.uint8)
    ids = {"Epithelial": 1, "Lymphocyte": 2, "Neutrophil": 3, "Macrophage": 4}
    k = 0
    for attr, name, polys in layers:
        label = normalize_layer_name(attr) or normalize_layer_name(name)
        if label is None:
            continue
        for poly in polys:
            v = np.asarray(poly, float)
            if len(np.unique(v, axis=0)) < 3:
                continue
            rr, cc = sk_polygon(v[:, 1], v[:, 0], shape=shape)
            if label == "Ambiguous":
                amb[rr, cc] = 1
                continue
            k += 1
            cls[rr, cc] = ids[label]
            inst[rr, cc] = k
    return cls, inst, amb


def test_layer_name_normalisation():
    assert normalize_layer_name("Macrophages") == "Macrophage"
    assert normalize_layer_name(" lymphocyte ") == "Lymphocyte"
    assert normalize_layer_name("Epithelial cells") == "Epithelial"
    assert normalize_layer_name("Neutrophils") == "Neutrophil"
    assert normalize_layer_name("Ambiguous") == "Ambiguous"
    assert normalize_layer_name("Description") is None
    assert normalize_layer_name("") is None


def test_parse_odd_xml(tmp_path):
    ann = read_imagescope_xml(write_odd_xml(tmp_path / "a_001.xml"))
    labels = [r.label for r in ann.regions]
    assert labels == ["Epithelial"] * 2 + ["Lymphocyte"] * 3 + ["Macrophage"] * 2 + ["Neutrophil", "Ambiguous"]
    assert ann.regions[0].vertices.dtype == np.float64
    np.testing.assert_array_equal(ann.regions[0].vertices[0], [10.5, 5.25])
    assert ann.microns_per_pixel == pytest.approx(0.2521)
    text = " | ".join(ann.warnings)
    assert "Description" in text and "not a known class" in text
    assert "fewer than 3 distinct" in text


def test_rasterisation_matches_skimage_pixel_for_pixel(tmp_path):
    ann = read_imagescope_xml(write_odd_xml(tmp_path / "a.xml"))
    masks = rasterize_regions(ann.regions, (H, W))
    cls, inst, amb = expected_masks()
    np.testing.assert_array_equal(masks.class_map, cls)
    np.testing.assert_array_equal(masks.instance_map, inst)
    np.testing.assert_array_equal(masks.ambiguous, amb)
    assert masks.class_map.dtype == np.uint8 and masks.instance_map.dtype == np.int32
    # last wins: the lymphocyte drawn after the epithelial nucleus owns the overlap
    assert masks.class_map[15, 25] == 2
    # instance ids are unique and follow XML order; the ambiguous region is not an instance
    assert list(masks.instance_classes) == [0, 1, 1, 2, 2, 2, 4, 4, 3]
    assert any("entirely outside" in w for w in masks.warnings)
    assert any("clipped" in w for w in masks.warnings)
    # the polygon leaving the image is clipped, not dropped
    assert (masks.instance_map == 2).sum() > 0 and (masks.instance_map == 6).sum() > 0


def test_remap_hovernet(tmp_path):
    ann = read_imagescope_xml(write_odd_xml(tmp_path / "a.xml"))
    ref = rasterize_regions(ann.regions, (H, W)).class_map
    swapped = rasterize_regions(ann.regions, (H, W), remap="hovernet").class_map
    expect = ref.copy()
    expect[ref == 3], expect[ref == 4] = 4, 3
    np.testing.assert_array_equal(swapped, expect)
    assert parse_remap(["3:4", "4:3"]) == parse_remap("hovernet") == {1: 1, 2: 2, 3: 4, 4: 3}
    assert labels_dict("hovernet") == {"0": "background", "1": "Epithelial", "2": "Lymphocyte", "3": "Macrophage", "4": "Neutrophil"}
    with pytest.raises(ValueError, match="permutation"):
        parse_remap(["3:4"])
    with pytest.raises(ValueError, match="cannot parse"):
        parse_remap("three-to-four")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "empty annotation file"),
        ('<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25"></Annotations>\n', "empty annotation file"),
        ('<?xml version="1.0"?>\n<Annotations><Annotation><Regions><Region>', "malformed XML"),
        ('<?xml version="1.0"?>\n<html><body/></html>\n', "not an ImageScope annotation file"),
        (
            '<Annotations><Annotation><Attributes><Attribute Name="Epithelial"/></Attributes><Regions><Region Id="7">'
            '<Vertices><Vertex X="1" Y="oops"/><Vertex X="5" Y="1"/><Vertex X="5" Y="5"/></Vertices>'
            "</Region></Regions></Annotation></Annotations>",
            "region 7",
        ),
        (
            '<Annotations><Annotation><Attributes><Attribute Name="Description"/></Attributes><Regions><Region Id="1">'
            '<Vertices><Vertex X="1" Y="1"/><Vertex X="5" Y="1"/><Vertex X="5" Y="5"/></Vertices>'
            "</Region></Regions></Annotation></Annotations>",
            "no region of a known class",
        ),
    ],
)
def test_bad_xml_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad file.xml"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_imagescope_xml(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert err.value.path == str(path)
