"""Inference outputs as a list of writers (monai_nasscam.inference.outputs, ``outputs`` in inference.yaml): a new
format is one OutputWriter class and one list entry; the bundle's list and the overrides that reach it; a failing
writer leaves no partial file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from PIL import Image
from tests.data.test_pixel_decoding import _DarkIsNucleus  # stand-in network: class 1 (Epithelial) wherever the pixel is dark

from monai_nasscam.inference import InferenceError, NucleiPredictor
from monai_nasscam.inference.outputs import (
    ClassMapNiftiWriter,
    ClassMapPNGWriter,
    NucleiCSVWriter,
    NucleiGeoJSONWriter,
    OutputWriter,
    OverlayWriter,
    write_csv,
)
from tests.utils import CONFIGS

CONFIG = CONFIGS / "inference.yaml"
# two dark squares on white, each over the watershed's 200-pixel min_size (one nucleus each): rows 8..23 x cols 10..25
# (256 px, centre (x, y) = (18, 16)) and rows 36..51 x cols 30..45 (centre (38, 44))
SQUARES = [((8, 24), (10, 26)), ((36, 52), (30, 46))]


class CentroidsCSVWriter(OutputWriter):
    """The example of docs/inference.md: NAME_centroids.csv, one row per nucleus."""

    streams_nuclei = True

    def begin(self, image):
        self.rows = []

    def add_nucleus(self, nucleus):
        x, y = nucleus.centroid
        self.rows.append({"class_id": nucleus.class_id, "x": round(x, 1), "y": round(y, 1)})

    def write(self, image):
        write_csv(image.base + "_centroids.csv", ["class_id", "x", "y"], self.rows)


class _Fails(OutputWriter):
    def write(self, image):
        raise OSError("disk full")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    image = np.full((64, 64, 3), 255, np.uint8)
    for (r0, r1), (c0, c1) in SQUARES:
        image[r0:r1, c0:c1] = 20
    Image.fromarray(image).save(src / "tile.png")
    return src


def _predict(src: Path, out: Path, **kwargs) -> dict:
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    return NucleiPredictor(_DarkIsNucleus(), inferer, src, out, stain="none", optimize="none", progress=False,
                           tune_malloc=False, num_threads=1, parallel=1, **kwargs).run()


def test_a_new_writer_is_one_class_and_one_list_entry(images, tmp_path):
    out = tmp_path / "out"
    summary = _predict(images, out, outputs=[ClassMapPNGWriter(), CentroidsCSVWriter()])
    assert summary["nuclei"]["Epithelial"] == 2 and summary["total_nuclei"] == 2
    # only the listed per-image files (and the run's tables)
    assert sorted(p.name for p in (out / "tile").iterdir()) == [  # and the completion marker, written last
        "tile_centroids.csv", "tile_classmap.png", "tile_complete.json"]
    class_map = np.asarray(Image.open(out / "tile" / "tile_classmap.png"))
    expected = np.zeros((64, 64), np.uint8)
    for (r0, r1), (c0, c1) in SQUARES:
        expected[r0:r1, c0:c1] = 1
    np.testing.assert_array_equal(class_map, expected)
    rows = list(csv.DictReader(open(out / "tile" / "tile_centroids.csv")))
    # top to bottom; the centre of each square in pixel-edge coordinates, ((c0 + c1) / 2, (r0 + r1) / 2), to within
    # the outline's vertex mean
    assert [r["class_id"] for r in rows] == ["1", "1"]
    centres = [(float(r["x"]), float(r["y"])) for r in rows]
    np.testing.assert_allclose(centres, [(18.0, 16.0), (38.0, 44.0)], atol=0.5)


def test_default_writers_are_the_five_files_and_a_failing_writer_leaves_no_partial_file(images, tmp_path):
    out = tmp_path / "default"
    _predict(images, out)
    assert sorted(p.name for p in (out / "tile").iterdir()) == [
        "tile_classmap.png", "tile_complete.json", "tile_nuclei.csv", "tile_nuclei.geojson", "tile_overlay.png"
    ]  # no saver: no NIfTI
    assert len(json.loads((out / "tile" / "tile_nuclei.geojson").read_text())["features"]) == 2

    broken = tmp_path / "broken"
    with pytest.raises(InferenceError, match="disk full"):
        _predict(images, broken, outputs=[_Fails(), NucleiGeoJSONWriter(), NucleiCSVWriter()])
    assert not (broken / "tile").exists()  # the GeoJSON and CSV streamed so far (temporary files) and the folder removed
    row = next(csv.DictReader(open(broken / "counts.csv")))
    assert row["status"] == "error" and "disk full" in row["message"]


def test_outputs_must_be_writers(images, tmp_path):
    with pytest.raises(ValueError, match="OutputWriter"):
        _predict(images, tmp_path / "o", outputs=["png"])


def _bundle_outputs(tmp_path: Path, *extra: Path, **overrides) -> list:
    parser = ConfigParser()
    parser.read_config([str(CONFIG), *map(str, extra)])
    parser.update({"input_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), **overrides})
    parser.parse()
    return parser.get_parsed_content("outputs")


def test_the_bundle_list_and_the_overrides_that_reach_it(tmp_path):
    outputs = _bundle_outputs(tmp_path)
    assert [type(w) for w in outputs] == [NucleiGeoJSONWriter, NucleiCSVWriter, ClassMapPNGWriter, ClassMapNiftiWriter,
                                          OverlayWriter]
    assert outputs[0].object_type == "detection" and outputs[3].saver is not None
    outputs = _bundle_outputs(tmp_path, save_nifti="false", object_type="annotation")
    assert [type(w) for w in outputs] == [NucleiGeoJSONWriter, NucleiCSVWriter, ClassMapPNGWriter, OverlayWriter]
    assert outputs[0].object_type == "annotation"
    # one more format from an override file, as docs/inference.md shows (MONAI's `+` merge appends to the list)
    extra = tmp_path / "centroids.yaml"
    extra.write_text(f"+outputs:\n- _target_: {__name__}.CentroidsCSVWriter\n")
    outputs = _bundle_outputs(tmp_path, extra)
    assert [type(w).__name__ for w in outputs][-2:] == ["OverlayWriter", "CentroidsCSVWriter"] and len(outputs) == 6
