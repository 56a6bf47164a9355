"""Whole-slide formats besides SVS / TIFF (OME-TIFF read tile by tile with its PhysicalSizeX, a vendor format read
through OpenSlide, the OpenSlide suffixes picked up from a folder) and resuming an interrupted inference run (complete
images skipped, an image with a missing output redone, ``overwrite`` redoing all)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_nasscam.data.openslide_reader import OpenSlideRegionReader, openslide_format
from monai_nasscam.data.slide import open_image, read_mpp
from monai_nasscam.data.tiff_reader import TiffRegionReader
from monai_nasscam.inference import NucleiPredictor
from monai_nasscam.inference.outputs import ClassMapPNGWriter, NucleiCSVWriter
from monai_nasscam.inference.reading import find_images
from monai_nasscam.inference.writing import COMPLETE_SUFFIX


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------ formats
def test_ome_tiff_is_read_tile_by_tile_with_its_physical_size(tmp_path):
    image = _rgb(200, 300)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 500.0, "PhysicalSizeYUnit": "nm"})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
    assert find_images(tmp_path) == [str(path)]
    reader = open_image(path, tiled=True)
    try:
        assert isinstance(reader, TiffRegionReader) and reader.mpp == pytest.approx(0.5)  # 500 nm
        region = reader.read(10, 150, 20, 250)
        assert np.array_equal(region, image[10:150, 20:250])
        total = len(reader.page.dataoffsets)
        reader._cache.clear()
        reader.read(0, 64, 0, 64)  # one tile's rectangle decodes that tile only
        assert len(reader._cache) == 1 < total
    finally:
        reader.close()
    # the default unit is microns
    tifffile.imwrite(tmp_path / "um.ome.tif", image, tile=(64, 64), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.2527})
    assert read_mpp(tmp_path / "um.ome.tif") == pytest.approx(0.2527)


def _write_aperio(path: Path, image: np.ndarray, mpp: float) -> None:
    """A TIFF that OpenSlide recognises as Aperio (a single ImageDescription starting "Aperio"), uncompressed."""
    h, w = image.shape[:2]
    desc = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (64x64) RAW|AppMag = 20|MPP = {mpp:.4f}"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(64, 64), photometric="rgb", description=desc, metadata=None)


def test_a_vendor_format_is_read_through_openslide(tmp_path):
    image = _rgb(150, 190, seed=1)
    path = tmp_path / "vendor.svs"
    _write_aperio(path, image, 0.5)
    assert openslide_format(path) == "aperio"
    reader = open_image(path, tiled=True)
    try:
        assert isinstance(reader, OpenSlideRegionReader) and reader.backend == "openslide"
        assert reader.vendor == "aperio" and reader.mpp == pytest.approx(0.5) and reader.shape == (150, 190)
        assert np.array_equal(reader.read(5, 120, 30, 180), image[5:120, 30:180])
    finally:
        reader.close()
    whole = open_image(path, tiled=False)  # decoded whole by the same reader
    assert whole.backend == "openslide" and np.array_equal(whole.image, image) and whole.mpp == pytest.approx(0.5)


def test_openslide_suffixes_are_picked_up_from_a_folder(tmp_path):
    for name in ("a.ndpi", "b.mrxs", "c.scn", "d.bif", "e.svs", "f.ome.tiff", "notes.txt", "g.dat"):
        (tmp_path / name).write_bytes(b"x")
    found = [Path(p).name for p in find_images(tmp_path)]
    assert found == ["a.ndpi", "b.mrxs", "c.scn", "d.bif", "e.svs", "f.ome.tiff"]


# ------------------------------------------------------------------------------------------------------- resume
class _DarkIsEpithelial(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = (0.5 - x.mean(dim=1, keepdim=True)) * 40.0
        return torch.cat([c1, -10.0 + 0 * c1, -10.0 + 0 * c1, -10.0 + 0 * c1], dim=1)


def _images(root: Path) -> None:
    root.mkdir()
    for i, name in enumerate(("a", "b")):
        image = np.full((48, 48, 3), 255, np.uint8)
        image[10 + 4 * i : 30, 10:30 + 4 * i] = 30
        Image.fromarray(image).save(root / f"{name}.png")


def _run(src: Path, out: Path, **kwargs) -> dict:
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.5, cval=1.0)
    return NucleiPredictor(_DarkIsEpithelial(), inferer, src, out, stain="none", optimize="none", progress=False,
                           tune_malloc=False, num_threads=1, parallel=1, mpp=0.25, **kwargs).run()


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.parent != out}


def test_rerun_skips_complete_images_redoes_incomplete_ones_and_overwrite_redoes_all(tmp_path, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src)
    first = _run(src, out)
    assert first["succeeded"] == 2 and first["settings"]["resume"]["skipped_complete"] == []
    marker = json.loads((out / "a" / f"a{COMPLETE_SUFFIX}").read_text())
    assert {"a_classmap.png", "a_overlay.png", "a_nuclei.geojson", "a_nuclei.csv"} <= set(marker["files"])
    before = _mtimes(out)
    counts = (out / "counts.csv").read_text()

    with caplog.at_level(logging.INFO, logger="monai_nasscam.inference"):
        second = _run(src, out)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if "skipped" in r.getMessage()
            and r.getMessage().startswith("[")] == ["skipped (complete)"] * 2
    assert _mtimes(out) == before  # nothing rewritten
    assert second["settings"]["resume"]["skipped_complete"] == ["a.png", "b.png"]
    assert second["succeeded"] == 2 and second["total_nuclei"] == first["total_nuclei"]
    assert (out / "counts.csv").read_text() == counts  # the tables still list every image

    (out / "a" / "a_overlay.png").unlink()  # one output missing: that image is redone, the other skipped
    third = _run(src, out)
    after = _mtimes(out)
    assert third["settings"]["resume"]["skipped_complete"] == ["b.png"]
    assert (out / "a" / "a_overlay.png").is_file()
    assert all(after[k] != before[k] for k in before if k.startswith("a/"))
    assert all(after[k] == before[k] for k in before if k.startswith("b/"))

    fourth = _run(src, out, overwrite=True)  # --overwrite true: every image redone
    assert fourth["settings"]["resume"] == {"overwrite": True, "skipped_complete": []}
    final = _mtimes(out)
    assert all(final[k] != after[k] for k in after)

    # other settings make the outputs stale: redone
    fifth = _run(src, out, threshold=0.6)
    assert fifth["settings"]["resume"]["skipped_complete"] == []


class _Interrupt(ClassMapPNGWriter):
    """Writes the class map, then, with ``stop``, stops the run (Ctrl-C) at image ``b``."""

    def __init__(self, stop: bool) -> None:
        self.stop = stop

    def write(self, image) -> None:
        super().write(image)
        if self.stop and image.name == "b":
            raise KeyboardInterrupt


def test_an_interrupted_batch_resumes_where_it_stopped(tmp_path, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src)
    with pytest.raises(KeyboardInterrupt):
        _run(src, out, outputs=[_Interrupt(stop=True), NucleiCSVWriter()])
    assert (out / "a" / f"a{COMPLETE_SUFFIX}").is_file()  # finished before the interruption
    assert not (out / "b" / f"b{COMPLETE_SUFFIX}").exists()  # its class map was written, its CSV was not
    partial = json.loads((out / "summary.json").read_text())  # the tables of the images before: not complete
    assert partial["complete"] is False and partial["images"] == 1 and partial["images_found"] == 2
    a_files = _mtimes(out / "a")
    with caplog.at_level(logging.INFO, logger="monai_nasscam.inference"):
        summary = _run(src, out, outputs=[_Interrupt(stop=False), NucleiCSVWriter()])
    assert summary["settings"]["resume"]["skipped_complete"] == ["a.png"] and summary["succeeded"] == 2
    assert summary["complete"] is True and summary["images_found"] == 2
    assert _mtimes(out / "a") == a_files and (out / "b" / "b_nuclei.csv").is_file()
    assert any(r.getMessage().endswith("a.png: skipped (complete)") for r in caplog.records)


class _InterruptFirst(ClassMapPNGWriter):
    """Stops the run (Ctrl-C) at image ``b`` before anything of it is written."""

    def write(self, image) -> None:
        if image.name == "b":
            raise KeyboardInterrupt
        super().write(image)


def test_an_image_interrupted_before_its_first_file_leaves_no_folder(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src)
    with pytest.raises(KeyboardInterrupt):
        _run(src, out, outputs=[_InterruptFirst()])
    assert (out / "a").is_dir() and not (out / "b").exists()
