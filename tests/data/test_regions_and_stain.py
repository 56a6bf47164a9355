"""Inputs from the field: ImageScope region kinds (rectangle, ellipse, negative region) and the one stain normaliser.

The inputs are rebuilt here: the XML of reported cases (an ellipse stored as two corners, a rectangle, a
``NegativeROA="1"`` hole) on a synthetic H&E tile, and a near-white glass tile with one tiny nucleus.
"""

import json
import logging
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import ellipse as sk_ellipse
from skimage.draw import polygon as sk_polygon

from monai_nasscam.cli import main as cli_main
from monai_nasscam.data import MacenkoNormalizer, ReinhardNormalizer, prepare_dataset, rasterize_regions, read_imagescope_xml
from monai_nasscam.data.stain import StainEstimationError
from monai_nasscam.inference.stain import SlideStainNormalizer
from tests.utils import imagescope_xml

N = 96
SQUARE = [(10, 10), (20, 10), (20, 20), (10, 20)]
ELLIPSE = [(50, 50), (66, 62)]  # two corners: centre (row 56, col 58), radii (6, 8)
RECTANGLE = [(30, 70), (44, 70), (44, 80), (30, 80)]
OUTER = [(20, 20), (60, 20), (60, 60), (20, 60)]
HOLE = [(35, 35), (45, 35), (45, 45), (35, 45)]

# (layer name, [(Type, NegativeROA, vertices), ...]) in file order
ELLIPSE_CASE = [("Lymphocyte", [(0, 0, SQUARE), (2, 0, ELLIPSE), (1, 0, RECTANGLE)])]
NEGATIVE_CASE = [("Epithelial", [(0, 0, OUTER), (0, 1, HOLE)])]


def region_xml(layers) -> str:
    """ImageScope XML in the MoNuSAC layout with region ``Type`` and ``NegativeROA`` set."""
    return imagescope_xml([(name, "", regions) for name, regions in layers])


def he_tile(seed: int, h: int = N, w: int = N) -> np.ndarray:
    """A tissue-rich synthetic H&E tile (Beer-Lambert mix of two stains with noise), uint8 RGB."""
    rng = np.random.default_rng(seed)
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    conc = np.stack([rng.gamma(2.0, 0.35, (h, w)), rng.gamma(3.0, 0.25, (h, w))], -1)
    return np.clip(235 * np.exp(-conc @ he.T) + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)


def glass_tile() -> np.ndarray:
    """Glass (RGB 245) with one 5 x 5 nucleus of one colour: 25 stained pixels."""
    img = np.full((N, N, 3), 245, np.uint8)
    img[40:45, 40:45] = (110, 60, 150)
    return img


def write_case(root, patient: str, image: np.ndarray, xml: str) -> tuple:
    folder = root / patient
    folder.mkdir(parents=True)
    tif, xml_path = folder / f"{patient}_1.tif", folder / f"{patient}_1.xml"
    tifffile.imwrite(tif, image, photometric="rgb")
    xml_path.write_text(xml)
    return tif, xml_path


def pixels(rr_cc, shape=(N, N)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rr_cc] = True
    return mask


def poly(vertices, shape=(N, N)) -> np.ndarray:
    v = np.asarray(vertices, float)
    return pixels(sk_polygon(v[:, 1], v[:, 0], shape=shape), shape)


# ------------------------------------------------------------------------------------------------ region kinds
def test_ellipse_and_rectangle_regions(tmp_path):
    path = tmp_path / "a_1.xml"
    path.write_text(region_xml(ELLIPSE_CASE))
    ann = read_imagescope_xml(path)
    assert [r.kind for r in ann.regions] == ["polygon", "ellipse", "rectangle"]
    assert not ann.warnings and ann.skipped == 0
    masks = rasterize_regions(ann.regions, (N, N))
    assert list(masks.instance_classes) == [0, 2, 2, 2]  # 3 Lymphocyte nuclei
    assert set(np.unique(masks.instance_map)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(masks.instance_map == 2, pixels(sk_ellipse(56, 58, 6, 8, shape=(N, N))))
    np.testing.assert_array_equal(masks.instance_map == 1, poly(SQUARE))
    np.testing.assert_array_equal(masks.instance_map == 3, poly(RECTANGLE))
    assert not masks.warnings and masks.unusable == 0
    # a rectangle stored as two opposite corners is the same rectangle
    path.write_text(region_xml([("Lymphocyte", [(1, 0, [RECTANGLE[0], RECTANGLE[2]])])]))
    two = read_imagescope_xml(path)
    np.testing.assert_array_equal(rasterize_regions(two.regions, (N, N)).class_map > 0, poly(RECTANGLE))


def test_negative_region_is_a_hole(tmp_path):
    path = tmp_path / "a_1.xml"
    path.write_text(region_xml(NEGATIVE_CASE))
    ann = read_imagescope_xml(path)
    assert [r.negative for r in ann.regions] == [False, True]
    masks = rasterize_regions(ann.regions, (N, N))
    assert list(masks.instance_classes) == [0, 1]  # one nucleus, the hole is none
    ring = poly(OUTER) & ~poly(HOLE)
    np.testing.assert_array_equal(masks.instance_map == 1, ring)
    np.testing.assert_array_equal(masks.class_map == 1, ring)
    assert (masks.class_map[35:46, 35:46] == 0).all() and (masks.instance_map[35:46, 35:46] == 0).all()
    assert not masks.warnings


def test_hole_semantics_layers_order_and_ambiguous(tmp_path):
    path = tmp_path / "a_1.xml"
    lymph = [(38, 38), (42, 38), (42, 42), (38, 42)]
    far = [(80, 80), (86, 80), (86, 86), (80, 86)]
    inside = [(37, 37), (40, 37), (40, 40), (37, 40)]
    layers = [
        ("Epithelial", [(0, 1, HOLE), (0, 0, OUTER), (0, 0, inside), (0, 1, far)]),  # hole first: order does not matter
        ("Lymphocyte", [(0, 0, lymph)]),  # another layer: not cut by the epithelial hole
        ("Ambiguous", [(0, 0, OUTER), (0, 1, HOLE)]),
    ]
    path.write_text(region_xml(layers))
    masks = rasterize_regions(read_imagescope_xml(path).regions, (N, N))
    assert list(masks.instance_classes) == [0, 1, 1, 2]
    np.testing.assert_array_equal(masks.instance_map == 1, poly(OUTER) & ~poly(HOLE))
    assert not (masks.instance_map == 2).any()  # wholly inside the hole
    np.testing.assert_array_equal(masks.class_map == 2, poly(lymph))
    np.testing.assert_array_equal(masks.ambiguous.astype(bool), poly(OUTER) & ~poly(HOLE))
    text = " | ".join(masks.warnings)
    assert masks.unusable == 2
    assert "1 region(s) wholly inside a negative region" in text and "layer 1 region 3" in text
    assert "1 negative region(s) (holes) overlapping no region of their layer (layer 1 region 4)" in text


def test_regions_that_are_not_areas_are_skipped_by_kind(tmp_path):
    path = tmp_path / "a_1.xml"
    layers = [("Lymphocyte", [
        (0, 0, SQUARE),
        (3, 0, [(1, 1), (9, 9)]),  # arrow
        (4, 0, [(1, 1), (9, 1)]),  # ruler
        (7, 0, SQUARE),  # unknown type
        (2, 0, [(5, 5), (15, 5)]),  # ellipse of zero height
        (2, 0, [(5, 5)]),  # ellipse with one corner
        (0, 0, [(1, 1), (5, 5), (1, 1)]),  # polygon with 2 distinct vertices
    ])]
    path.write_text(region_xml(layers))
    ann = read_imagescope_xml(path)
    assert len(ann.regions) == 1 and ann.skipped == 6
    text = " | ".join(ann.warnings)
    for words in ("region 2: arrow region (not an area)", "region 3: ruler region", "region 4: Type=7 region",
                  "region 5: ellipse of zero width or height", "region 6: ellipse with 1 vertex/vertices",
                  "region 7: polygon with 3 vertices, fewer than 3 distinct"):
        assert words in text
    assert not any("ellipse" in w and "fewer than 3" in w for w in ann.warnings)  # no longer blamed on vertices


def test_prepare_rasterises_kinds_and_reports_skipped_regions_on_the_console(tmp_path, caplog):
    raw = tmp_path / "raw"
    image = he_tile(0)
    write_case(raw, "TCGA-AA-0001-01Z-00-DX1", image, region_xml(ELLIPSE_CASE))
    write_case(raw, "TCGA-BB-0002-01Z-00-DX1", image, region_xml(NEGATIVE_CASE))
    odd = ELLIPSE_CASE[0][1] + [(3, 0, [(1, 1), (9, 9)]), (0, 0, [(200, 200), (210, 200), (210, 210)])]
    _, odd_xml = write_case(raw, "TCGA-CC-0003-01Z-00-DX1", image, region_xml([("Lymphocyte", odd)]))
    caplog.set_level(logging.WARNING)
    rc = cli_main(["prepare", "--data-dir", str(raw), "--out-dir", str(tmp_path / "P"), "--stain", "none", "--workers", "0"])
    assert rc == 0
    prep = tmp_path / "P"
    manifest = json.loads((prep / "manifest.json").read_text())
    assert manifest["counts"]["total"]["nuclei"] == {"Epithelial": 1, "Lymphocyte": 6, "Neutrophil": 0, "Macrophage": 0}
    assert manifest["skipped_regions"] == {"TCGA-CC-0003-01Z-00-DX1_1": 2}
    inst = tifffile.imread(prep / "instances" / "TCGA-AA-0001-01Z-00-DX1_1.tif")
    np.testing.assert_array_equal(inst == 2, pixels(sk_ellipse(56, 58, 6, 8, shape=(N, N))))
    label = np.asarray(Image.open(prep / "labels" / "TCGA-BB-0002-01Z-00-DX1_1.png"))
    np.testing.assert_array_equal(label == 1, poly(OUTER) & ~poly(HOLE))
    assert (label[35:46, 35:46] == 0).all()
    # the console (WARNING, shown without -v): one line per file with its count, naming the kinds
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "region(s) skipped" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(f"{odd_xml}: 2 of 5 region(s) skipped or unusable")
    assert "arrow region (not an area)" in lines[0] and "entirely outside" in lines[0]


# --------------------------------------------------------------------------------------------------- stain
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_prepare_keeps_near_white_tile_and_inference_agrees(tmp_path, caplog):
    raw = tmp_path / "raw"
    normal, glass = he_tile(1), glass_tile()
    write_case(raw, "TCGA-AA-0001-01Z-00-DX1", normal, region_xml(ELLIPSE_CASE))
    glass_tif, _ = write_case(raw, "TCGA-BB-0002-01Z-00-DX1", glass, region_xml([("Lymphocyte", [(0, 0, HOLE)])]))
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        manifest = prepare_dataset(raw, tmp_path / "P", workers=0, progress=False, stain="macenko")
    out_glass = np.asarray(Image.open(tmp_path / "P" / "images" / "TCGA-BB-0002-01Z-00-DX1_1.png"))
    assert abs(out_glass.astype(float).mean() - glass.astype(float).mean()) <= 20
    np.testing.assert_array_equal(out_glass, glass)  # left unchanged
    notes = [n for n in manifest["notes"] if n["name"] == "TCGA-BB-0002-01Z-00-DX1_1"]
    assert len(notes) == 1 and "image left unchanged (only 25 stained pixel(s)" in notes[0]["note"]
    console = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "left unchanged" in r.getMessage()]
    assert len(console) == 1 and console[0].startswith(str(glass_tif))
    # the normal tile is normalised, and inference's normaliser gives the very same pixels for both tiles
    reference = manifest["settings"]["stain"]
    out_normal = np.asarray(Image.open(tmp_path / "P" / "images" / "TCGA-AA-0001-01Z-00-DX1_1.png"))
    assert np.abs(out_normal.astype(int) - normal.astype(int)).mean() > 1
    for image, prepared in ((normal, out_normal), (glass, out_glass)):
        slide = SlideStainNormalizer(reference).fit_source(image)
        np.testing.assert_array_equal(slide.apply(image), prepared)
    assert SlideStainNormalizer(reference).fit_source(glass).note == notes[0]["note"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_stain_percentiles_over_tissue_and_degenerate_cases():
    norm = MacenkoNormalizer().fit([he_tile(2)])
    # tissue surrounded by glass is normalised as the same tissue alone (percentiles over tissue pixels only)
    tissue = he_tile(3, 24, 24)
    framed = np.full((N, N, 3), 245, np.uint8)
    framed[30:54, 40:64] = tissue
    alone, note = norm.apply(tissue)
    assert note is None
    out, note = norm.apply(framed)
    assert note is None
    np.testing.assert_array_equal(out[30:54, 40:64], alone)
    assert abs(out.astype(float).mean() - framed.astype(float).mean()) <= 20
    # one stain colour over many pixels: H and E cannot be told apart -> unchanged, with the reason
    flat = np.full((N, N, 3), 245, np.uint8)
    flat[20:60, 20:60] = (110, 60, 150)
    same, note = norm.apply(flat)
    np.testing.assert_array_equal(same, flat)
    assert "one stain colour" in note
    # too little tissue, for Macenko and Reinhard alike; a glass reference cannot be fitted
    for method in (norm, ReinhardNormalizer().fit([he_tile(2)])):
        same, note = method.apply(glass_tile())
        np.testing.assert_array_equal(same, glass_tile())
        assert "fewer than 100" in note
    with pytest.raises(StainEstimationError, match="no stained pixel"):
        MacenkoNormalizer().fit([np.full((N, N, 3), 250, np.uint8)])
