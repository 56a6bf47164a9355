"""Nuclei as instances at inference: the evaluation's instance separation (watershed by default, connected components
as an option), the per-nucleus measurements in the GeoJSON (QuPath 0.5 / 0.6 properties) and in NAME_nuclei.csv,
the quantised class probabilities, and block-wise / band-wise output equal to whole-image output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_nasscam.data.classes import CLASS_COLORS
from monai_nasscam.data.slide import ArrayRegionReader
from monai_nasscam.data.synth import write_svs
from monai_nasscam.errors import InputError
from monai_nasscam.inference import InstanceSeparator, NucleiPredictor, iter_nuclei, predict_class_map
from monai_nasscam.inference.instances import WATERSHED_DEFAULTS, WATERSHED_MIN_SIZE
from monai_nasscam.inference.outputs import NUCLEI_CSV_FIELDS, NucleiCSVWriter, NucleiGeoJSONWriter
from tests.utils import CONFIGS

CONFIG = CONFIGS / "inference.yaml"
R = 10  # disc radius: 317 pixels, over the watershed's 200-pixel min_size
# two discs of one class touching along one pixel edge: centres (x, y) = (20, 32) and (41, 32) in pixel indices;
# (32, 30) is the right edge of A and (32, 31) the left edge of B. A is grey 0.2, B grey 0.4.
DISCS = [((32, 20), 0.2), ((32, 41), 0.4)]


class _GreyIsProbability(torch.nn.Module):
    """A stand-in network with known probabilities: sigmoid of channel 0 (Epithelial) is ``1 - grey`` (the pixel's
    channel mean), channel 1 (Lymphocyte) 0.2 and channel 2 (Neutrophil) 0.4 on the dark (nucleus) pixels, channel 3
    (Macrophage) ~0; white (background) is ~0 everywhere. So a nucleus of grey 0.2 has class probability 0.8."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        dark = grey < 0.9
        p1 = (1.0 - grey).clamp(1e-6, 1 - 1e-6)
        logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
        c1 = torch.where(dark, logit(p1), torch.full_like(grey, -20.0))
        c2 = torch.where(dark, logit(torch.full_like(grey, 0.2)), torch.full_like(grey, -20.0))
        c3 = torch.where(dark, logit(torch.full_like(grey, 0.4)), torch.full_like(grey, -20.0))
        return torch.cat([c1, c2, c3, torch.full_like(grey, -20.0)], dim=1)


def _disc(shape, centre, radius=R) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _discs_image(shape=(64, 64), discs=DISCS) -> np.ndarray:
    image = np.full((*shape, 3), 255, np.uint8)
    for centre, grey in discs:
        image[_disc(shape, centre)] = round(grey * 255)
    return image


def _predict(src: Path, out: Path, **kwargs) -> dict:
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    return NucleiPredictor(_GreyIsProbability(), inferer, src, out, stain="none", optimize="none", progress=False,
                           tune_malloc=False, num_threads=1, parallel=1, **kwargs).run()


@pytest.fixture
def touching(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_discs_image()).save(src / "pair.png")
    return src


def _outputs(out: Path, name: str) -> tuple[list[dict], list[dict]]:
    features = json.loads((out / name / f"{name}_nuclei.geojson").read_text())["features"]
    with open(out / name / f"{name}_nuclei.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return features, rows


def test_two_touching_discs_give_two_nuclei_with_centroid_and_probability(touching, tmp_path):
    out = tmp_path / "out"
    summary = _predict(touching, out)  # default: the watershed, as evaluation
    assert summary["nuclei"]["Epithelial"] == 2 and summary["total_nuclei"] == 2
    assert "watershed" in summary["settings"]["instance_separation"]
    assert sorted(p.name for p in (out / "pair").iterdir()) == [
        "pair_classmap.png", "pair_complete.json", "pair_nuclei.csv", "pair_nuclei.geojson", "pair_overlay.png"
    ]  # pair_complete.json: the completion marker, written last (resume)
    features, rows = _outputs(out, "pair")
    assert len(features) == len(rows) == 2
    # QuPath 0.5 / 0.6: objectType, classification {name, color [r, g, b]}, measurements a flat map name -> number
    for feat in features:
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon" and "id" not in feat
        props = feat["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "Epithelial", "color": list(CLASS_COLORS[1])}
        assert isinstance(props["measurements"], dict)
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in props["measurements"].values())
        assert "Area µm^2" not in props["measurements"]  # a PNG has no resolution
    # left to right (same top row): disc A (grey 0.2 -> p 0.8), disc B (grey 0.4 -> p 0.6); centroids are the disc
    # centres in pixel-edge coordinates (index + 0.5), to within the one contact pixel the split may give either disc
    area = int(_disc((64, 64), (32, 20)).sum())
    for feat, row, ((cy, cx), grey) in zip(features, rows, DISCS):
        m = feat["properties"]["measurements"]
        assert m["Centroid X px"] == pytest.approx(cx + 0.5, abs=0.1)
        assert m["Centroid Y px"] == pytest.approx(cy + 0.5, abs=0.1)
        assert abs(m["Area px"] - area) <= 1
        assert m["Class probability"] == pytest.approx(1 - grey, abs=0.002)  # quantised to 1/255
        assert m["Probability Epithelial"] == m["Class probability"]
        assert m["Probability Lymphocyte"] == pytest.approx(0.2, abs=0.002)
        assert m["Probability Neutrophil"] == pytest.approx(0.4, abs=0.002)
        assert m["Probability Macrophage"] == pytest.approx(0.0, abs=0.002)
        assert float(row["x"]) == m["Centroid X px"] and float(row["y"]) == m["Centroid Y px"]
        assert row["class_id"] == "1" and row["class_name"] == "Epithelial" and row["area_um2"] == ""
        assert int(row["area_px"]) == m["Area px"] and float(row["probability"]) == m["Class probability"]
        assert float(row["prob_neutrophil"]) == m["Probability Neutrophil"]
    assert [r["id"] for r in rows] == ["1", "2"] and list(rows[0]) == NUCLEI_CSV_FIELDS


def test_connected_components_keeps_touching_discs_as_one(touching, tmp_path):
    out = tmp_path / "cc"
    summary = _predict(touching, out, instance_method="connected_components")
    assert summary["total_nuclei"] == 1 and "connected components" in summary["settings"]["instance_separation"]
    features, rows = _outputs(out, "pair")
    assert len(features) == len(rows) == 1
    m = features[0]["properties"]["measurements"]
    assert m["Area px"] == 2 * int(_disc((64, 64), (32, 20)).sum())
    assert m["Centroid X px"] == pytest.approx((20 + 41) / 2 + 0.5) and m["Centroid Y px"] == pytest.approx(32.5)
    assert m["Class probability"] == pytest.approx(0.7, abs=0.002)  # half the pixels 0.8, half 0.6


def test_small_nuclei_are_erased_everywhere_and_settings_are_checked(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # a disc and a small one (r 5: 81 px) apart: the watershed's min_size drops the small one from every output
    image = _discs_image(discs=[((20, 20), 0.2)])
    image[_disc((64, 64), (48, 48), 5)] = 51
    Image.fromarray(image).save(src / "a.png")
    out = tmp_path / "out"
    assert _predict(src, out)["total_nuclei"] == 1
    class_map = np.asarray(Image.open(out / "a" / "a_classmap.png"))
    assert (class_map > 0).sum() == int(_disc((64, 64), (20, 20)).sum()) and not class_map[40:, 40:].any()
    assert _predict(src, tmp_path / "all", watershed={"min_size": 0})["total_nuclei"] == 2
    assert _predict(src, tmp_path / "cc", instance_method="connected_components")["total_nuclei"] == 2
    with pytest.raises(InputError, match="instance_method"):
        _predict(src, tmp_path / "x", instance_method="stardist")
    with pytest.raises(InputError, match="watershed: unknown key"):
        _predict(src, tmp_path / "x", watershed={"hh": 1})
    with pytest.raises(InputError, match="watershed: .*h must be > 0"):
        _predict(src, tmp_path / "x", watershed={"h": 0})


def test_block_wise_slide_equals_whole_image_nuclei_and_measurements(tmp_path):
    """Discs (touching pairs among them) cut by the 32-pixel block borders and by the nuclei's 16-row bands: the
    block-wise path (memory maps) writes the same GeoJSON and CSV as the whole image, with µm² from the slide's mpp."""
    shape = (150, 170)
    rng = np.random.default_rng(3)
    discs = [((32, 20), 0.2), ((32, 41), 0.4), ((64, 80), 0.3), ((85, 80), 0.25), ((110, 130), 0.35),
             ((120, 30), 0.2), ((70, 150), 0.3)]
    image = _discs_image(shape, discs)
    image[_disc(shape, (100, 100), 4)] = 60  # a speck under min_size across a block corner
    image = np.clip(image.astype(int) + rng.integers(-3, 4, image.shape) * (image < 200), 0, 255).astype(np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    write_svs(str(src / "s.svs"), image, mpp=0.25, tile=32)
    results = {}
    for mode, kwargs in (("whole", {}), ("tiled", {"tiled": True, "max_whole_pixels": 1, "block_size": 32})):
        out = tmp_path / mode
        _predict(src, out, **kwargs)
        results[mode] = ((out / "s" / "s_nuclei.geojson").read_text(), (out / "s" / "s_nuclei.csv").read_text(),
                         np.asarray(Image.open(out / "s" / "s_classmap.png")))
        assert not list((out / "s").glob(".*"))  # the memory maps (class map, probabilities) are removed
    assert results["tiled"][0] == results["whole"][0] and results["tiled"][1] == results["whole"][1]
    np.testing.assert_array_equal(results["tiled"][2], results["whole"][2])
    features = json.loads(results["whole"][0])["features"]
    assert len(features) == len(discs)  # the touching pairs split, the speck dropped
    for feat in features:
        m = feat["properties"]["measurements"]
        assert m["Area µm^2"] == pytest.approx(m["Area px"] * 0.25**2, abs=1e-4)


def test_probabilities_are_quantised_and_block_wise_equal():
    image = _discs_image((100, 90), [((30, 30), 0.2), ((60, 60), 0.4)])
    net = _GreyIsProbability()
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    whole_map, info = predict_class_map(ArrayRegionReader(image), net, inferer, probabilities=True)
    probs = info["probabilities"]
    assert probs.shape == (4, 100, 90) and probs.dtype == np.uint8
    grey = image.mean(axis=-1) / 255.0
    dark = grey < 0.9
    np.testing.assert_allclose(probs[0][dark] / 255.0, 1 - grey[dark], atol=0.5 / 255 + 1e-6)
    assert (probs[:, ~dark] == 0).all()
    out = np.zeros((4, 100, 90), np.uint8)
    tiled_map, info = predict_class_map(ArrayRegionReader(image), net, inferer, probabilities=out, block_size=32)
    assert info["probabilities"] is out and info["blocks"] == 12
    np.testing.assert_array_equal(out, probs)
    np.testing.assert_array_equal(tiled_map, whole_map)
    with pytest.raises(ValueError, match="probabilities must be"):
        predict_class_map(ArrayRegionReader(image), net, inferer, probabilities=np.zeros((4, 10, 10), np.uint8))


def test_band_wise_nuclei_equal_whole_image_and_partly_dropped_components_are_found_once():
    """A component crossing band borders whose upper part the watershed splits off and drops (under min_size): its
    kept part is yielded once, whatever the bands, and the class map loses exactly the dropped part."""
    shape = (70, 60)
    class_map = np.zeros(shape, np.uint8)
    class_map[_disc(shape, (30, 30), 10)] = 2  # rows 20..40
    class_map[_disc(shape, (15, 30), 5)] = 2  # rows 10..20: touches the disc, split off, 81 px < min_size 100
    class_map[_disc(shape, (55, 12), 6)] = 3
    separator = InstanceSeparator("watershed", min_size=100)
    probabilities = np.stack([np.full(shape, 10 * c, np.uint8) for c in range(1, 5)])
    runs = {}
    for band in (7, 19, 20, 2048):
        erased = class_map.copy()
        nuclei = list(iter_nuclei(erased, band_rows=band, margin=2, separator=separator, probabilities=probabilities,
                                  mpp=0.5))
        runs[band] = ([(n.index, n.class_id, n.area, n.bbox, n.center, n.probabilities, [r.tolist() for r in n.rings])
                       for n in nuclei], erased)
    for band in (7, 19, 20):
        assert runs[band][0] == runs[2048][0]
        np.testing.assert_array_equal(runs[band][1], runs[2048][1])
    nuclei, erased = runs[2048]
    assert [n[1] for n in nuclei] == [2, 3]  # the disc (top row 20) then the class-3 disc; the small one dropped
    assert abs(nuclei[0][2] - int(_disc(shape, (30, 30), 10).sum())) <= 1  # the shared pixel (20, 30) may go either way
    assert nuclei[0][5] == pytest.approx((10 / 255, 20 / 255, 30 / 255, 40 / 255))
    assert (erased > 0).sum() == sum(n[2] for n in nuclei)
    assert not erased[10:19].any()  # the split-off part is gone from the class map


def test_bundle_uses_the_evaluation_defaults_and_lists_the_csv(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"input_dir": str(tmp_path), "output_dir": str(tmp_path / "out")})
    parser.parse()
    assert parser.get_parsed_content("instance_method") == "watershed"
    assert parser.get_parsed_content("watershed") == {**WATERSHED_DEFAULTS, "min_size": WATERSHED_MIN_SIZE}
    assert parser.get("predictor")["instance_method"] == "@instance_method"
    assert parser.get("predictor")["watershed"] == "@watershed"
    outputs = parser.get_parsed_content("outputs")
    assert [type(w) for w in outputs][:2] == [NucleiGeoJSONWriter, NucleiCSVWriter]
    evaluate = ConfigParser.load_config_file(str(CONFIG.parent / "evaluate.yaml"))
    assert evaluate["instance_method"] == "watershed"
    assert evaluate["watershed"] == parser.get_parsed_content("watershed")  # the same numbers in both workflows


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident size read from /proc (Linux)")
def test_released_rows_of_a_memory_map_leave_memory_and_keep_their_content(tmp_path):
    from monai_nasscam.inference.tiling import release_rows

    shape = (4, 2048, 2048)  # 16 MiB
    probs = np.memmap(tmp_path / "p.u8", dtype=np.uint8, mode="w+", shape=shape)
    probs[:] = (np.arange(2048, dtype=np.uint8)[:, None] + np.arange(4, dtype=np.uint8)[:, None, None])
    before = _resident_bytes()
    release_rows(probs, 0, 2048)
    assert before - _resident_bytes() > 12 * 2**20  # the mapped pages left the process
    expected = (np.arange(2048, dtype=np.uint8)[:, None] + np.arange(4, dtype=np.uint8)[:, None, None])
    np.testing.assert_array_equal(probs[:, :, :3], np.broadcast_to(expected, shape)[:, :, :3])  # read back intact
    np.testing.assert_array_equal(np.asarray(probs[2, 1000]), np.full(2048, 1002 % 256, np.uint8))
    release_rows(np.zeros((3, 3), np.uint8), 0, 3)  # an ordinary array: nothing happens
