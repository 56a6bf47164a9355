"""Hamamatsu NDPI and 3DHISTECH MIRAX slides, written by the tests (tests/data/vendor_slides.py): OpenSlide opens them
(vendor, levels, resolution from the file's own metadata, pixels within JPEG error), the project's readers read
them, their resolution reaches the inference's resolution plan, and the inference bundle runs on them end to end."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from PIL import Image
from tests.data.vendor_slides import he_like_image, jpeg_bytes, write_mirax, write_ndpi

from monai_nasscam.data.openslide_reader import OpenSlideRegionReader, openslide_format
from monai_nasscam.data.slide import ArrayRegionReader, open_image, read_mpp, read_rgb
from monai_nasscam.data.tiff_reader import TiffRegionReader
from monai_nasscam.errors import DataError
from monai_nasscam.inference import NucleiPredictor
from monai_nasscam.inference.reading import find_images
from tests.utils import REPO

CONFIG = REPO / "bundle" / "configs" / "inference.yaml"
#: JPEG (quality 95, no chroma subsampling) of the smooth fixture images: mean and largest error in grey levels
#: (the largest at the discs' hard edges)
JPEG_MEAN, JPEG_MAX = 1.5, 40
#: two JPEG decoders (OpenSlide's and Pillow's libjpeg-turbo) may differ by rounding
DECODER = 2

NDPI_SHAPE, NDPI_MPP = (128, 256), 0.5  # whole 64 x 8 restart intervals at levels 0 and 1
MRXS_SHAPE, MRXS_MPP, MRXS_TILE = (192, 256), 0.25, (64, 64)


def _decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _ndpi_reference(level: np.ndarray) -> np.ndarray:
    """The level as a JPEG decoder sees it (the fixture encodes each level as one JPEG)."""
    return _decode(jpeg_bytes(level, restart_blocks=8))


def _mrxs_reference(level: np.ndarray, tile: tuple[int, int] = MRXS_TILE) -> np.ndarray:
    """The level as a JPEG decoder sees it (the fixture encodes each stored image on its own)."""
    th, tw = tile
    out = np.empty_like(level)
    for y in range(0, level.shape[0], th):
        for x in range(0, level.shape[1], tw):
            out[y : y + th, x : x + tw] = _decode(jpeg_bytes(level[y : y + th, x : x + tw]))
    return out


def _close_to(read: np.ndarray, written: np.ndarray, decoded: np.ndarray) -> None:
    """``read`` is the JPEG decode of ``written`` (within decoder rounding) and within JPEG error of ``written``."""
    assert read.shape == written.shape and read.dtype == np.uint8
    assert int(np.abs(read.astype(int) - decoded).max()) <= DECODER
    error = np.abs(read.astype(int) - written.astype(int))
    assert error.mean() <= JPEG_MEAN and error.max() <= JPEG_MAX


@pytest.fixture
def ndpi(tmp_path) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / "slide.ndpi"
    return path, write_ndpi(path, he_like_image(*NDPI_SHAPE, seed=1), mpp=NDPI_MPP)


@pytest.fixture
def mrxs(tmp_path) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / "slide.mrxs"
    return path, write_mirax(path, he_like_image(*MRXS_SHAPE, seed=2), mpp=MRXS_MPP, tile=MRXS_TILE)


# ------------------------------------------------------------------------------------------- the fixtures
def test_ndpi_fixture_opens_in_openslide(ndpi):
    path, pyramid = ndpi
    assert openslide.OpenSlide.detect_format(str(path)) == "hamamatsu"  # the vendor
    with openslide.OpenSlide(str(path)) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "hamamatsu"
        # the two stored levels (OpenSlide adds JPEG-scaled ones below them)
        assert slide.level_dimensions[:2] == ((256, 128), (128, 64))
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(NDPI_MPP)  # from the resolution tags
        assert float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 20.0  # the source lens tag
        assert props["openslide.level[0].tile-width"] == "64" and props["openslide.level[0].tile-height"] == "8"
        for level in (0, 1):
            h, w = pyramid[level].shape[:2]
            rgba = np.asarray(slide.read_region((0, 0), level, (w, h)))
            assert (rgba[..., 3] == 255).all()
            _close_to(rgba[..., :3], pyramid[level], _ndpi_reference(pyramid[level]))


def test_mirax_fixture_opens_in_openslide(mrxs):
    path, pyramid = mrxs
    assert openslide.OpenSlide.detect_format(str(path)) == "mirax"
    with openslide.OpenSlide(str(path)) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "mirax"
        assert slide.level_dimensions == ((256, 192), (128, 96))
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MRXS_MPP)  # Slidedat.ini
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert props["mirax.GENERAL.IMAGENUMBER_X"] == "4"
        for level, (h, w) in ((0, MRXS_SHAPE), (1, (96, 128))):
            rgba = np.asarray(slide.read_region((0, 0), level, (w, h)))
            assert (rgba[..., 3] == 255).all()
            _close_to(rgba[..., :3], pyramid[level][:h, :w], _mrxs_reference(pyramid[level])[:h, :w])


def test_a_mirax_image_the_scanner_skipped_reads_as_glass(tmp_path):
    """A level-0 image missing from Index.dat (a camera position not scanned) is transparent in OpenSlide: the reader
    returns white there and marks it transparent, which inference keeps out of the class map."""
    path = tmp_path / "sparse.mrxs"
    pyramid = write_mirax(path, he_like_image(*MRXS_SHAPE, seed=9), tile=MRXS_TILE, missing=((1, 2),))
    with open_image(path, tiled=True) as reader:
        pixels, clear = reader.read_region(0, MRXS_SHAPE[0], 0, MRXS_SHAPE[1])
    hole = np.zeros(MRXS_SHAPE, bool)
    hole[64:128, 128:192] = True
    assert clear is not None and np.array_equal(clear, hole)
    assert (pixels[hole] == 255).all()
    _close_to(pixels[~hole], pyramid[0][~hole], _mrxs_reference(pyramid[0])[~hole])


# -------------------------------------------------------------------------------------- the project's readers
@pytest.mark.parametrize("fmt", ["ndpi", "mrxs"])
def test_project_readers_read_ndpi_and_mirax(fmt, request):
    path, pyramid = request.getfixturevalue(fmt)
    vendor, mpp = ("hamamatsu", NDPI_MPP) if fmt == "ndpi" else ("mirax", MRXS_MPP)
    reference = _ndpi_reference(pyramid[0]) if fmt == "ndpi" else _mrxs_reference(pyramid[0])
    assert openslide_format(path) == vendor and read_mpp(path) == pytest.approx(mpp)
    assert find_images(path.parent) == [str(path)]  # the MIRAX data folder holds no image
    reader = open_image(path, tiled=True)
    try:
        assert isinstance(reader, OpenSlideRegionReader) and reader.vendor == vendor
        assert reader.shape == pyramid[0].shape[:2] and reader.mpp == pytest.approx(mpp)
        y0, y1, x0, x1 = 5, 101, 37, 219  # across tile borders
        pixels, clear = reader.read_region(y0, y1, x0, x1)
        assert clear is None  # every pixel scanned
        _close_to(pixels, pyramid[0][y0:y1, x0:x1], reference[y0:y1, x0:x1])
    finally:
        reader.close()
    whole = open_image(path)  # small: decoded whole by the same reader
    assert isinstance(whole, ArrayRegionReader) and whole.backend == "openslide" and whole.mpp == pytest.approx(mpp)
    _close_to(whole.image, pyramid[0], reference)
    assert np.array_equal(read_rgb(path), whole.image)


def test_ndpi_is_read_by_tifffile_where_openslide_cannot(tmp_path, caplog):
    """The fallback reader: an NDPI OpenSlide recognises but refuses (here: no source lens tag) is read by tifffile,
    whose NDPI support decodes the restart intervals the McuStarts tag points to (before the fix the reader passed
    no JPEG header with them: "Not a JPEG file")."""
    path = tmp_path / "nolens.ndpi"
    pyramid = write_ndpi(path, he_like_image(*NDPI_SHAPE, seed=1), mpp=NDPI_MPP, lens=None)
    assert openslide_format(path) == "hamamatsu"
    with pytest.raises(openslide.OpenSlideError, match="65421"):
        openslide.OpenSlide(str(path))
    with caplog.at_level(logging.INFO, logger="monai_nasscam.data.slide"):
        reader = open_image(path, tiled=True)
    try:
        assert isinstance(reader, TiffRegionReader) and any("reading it with tifffile" in r.getMessage()
                                                            for r in caplog.records)
        assert reader.shape == NDPI_SHAPE and reader.mpp == pytest.approx(NDPI_MPP)  # TIFF resolution tags, cm
        reference = _ndpi_reference(pyramid[0])
        _close_to(reader.read(3, 77, 30, 200), pyramid[0][3:77, 30:200], reference[3:77, 30:200])
        assert len(reader._cache) < len(reader.page.dataoffsets)  # only the restart intervals the rectangle touches
    finally:
        reader.close()
    assert np.array_equal(read_rgb(path), open_image(path).image)


def test_resolution_outside_the_plausible_range_is_unknown_through_openslide(tmp_path):
    """72 dpi (an image editor's default) read by OpenSlide is 352.8 µm/px: not a microscope's, so unknown, as the
    tifffile reader already decides."""
    path = tmp_path / "dpi72.ndpi"
    write_ndpi(path, he_like_image(*NDPI_SHAPE), mpp=25400 / 72)
    with openslide.OpenSlide(str(path)) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(352.78, abs=0.01)
    assert read_mpp(path) is None
    with OpenSlideRegionReader(path) as reader:
        assert reader.mpp is None
    with TiffRegionReader(path) as reader:
        assert reader.mpp is None


def test_a_mirax_slide_without_its_data_is_named_as_such(mrxs):
    """A .mrxs copied without its folder is not "an unreadable image" (PIL's guess before the fix) but a MIRAX slide
    without its data; a folder missing a file gives OpenSlide's message alone (no tifffile attempt on a non-TIFF)."""
    path, _ = mrxs
    folder = path.with_suffix("")
    (folder / "Index.dat").rename(folder / "Index.dat.bak")
    with pytest.raises(DataError) as broken:
        open_image(path)
    assert str(broken.value) == f"{path}: unreadable image (OpenSlide: OpenSlideError: Couldn't open " \
                                f"{folder / 'Index.dat'}: No such file or directory)"
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match="MIRAX slide without its data folder: expected .*Slidedat.ini"):
        open_image(path)
    assert read_mpp(path) is None
    vms = path.with_name("other.vms")
    vms.write_bytes(b"not a slide")
    with pytest.raises(DataError, match=r"OpenSlide does not recognise it as a \.vms whole-slide file"):
        open_image(vms)


# ------------------------------------------------------------------------------------------------ resolution
class _DarkIsEpithelial(torch.nn.Module):
    """Stand-in network: Epithelial where the window is dark; records the window sizes it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.sizes: set[tuple[int, int]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.add(tuple(x.shape[-2:]))
        c1 = (0.5 - x.mean(dim=1, keepdim=True)) * 40.0
        return torch.cat([c1] + [torch.full_like(c1, -10.0)] * 3, dim=1)


def test_the_file_resolution_reaches_the_resolution_plan(tmp_path, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_ndpi(src / "x20.ndpi", he_like_image(*NDPI_SHAPE, seed=3), mpp=0.5)  # 20x: rescaled to 0.25
    write_mirax(src / "x40.mrxs", he_like_image(*MRXS_SHAPE, seed=4), mpp=0.25)  # the training resolution
    write_ndpi(src / "unknown.ndpi", he_like_image(*NDPI_SHAPE, seed=5), mpp=None)  # no resolution tags
    network = _DarkIsEpithelial()
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    with caplog.at_level(logging.WARNING):
        summary = NucleiPredictor(network, inferer, src, out, stain="none", optimize="none", progress=False,
                                  tune_malloc=False, num_threads=1, parallel=1, train_mpp=0.25,
                                  instance_method="connected_components").run()
    assert summary["succeeded"] == 3
    plans = summary["settings"]["resolution"]["images"]
    assert plans["x20"]["source"] == "file" and plans["x20"]["image_mpp"] == pytest.approx(0.5)
    assert plans["x20"]["rescaled"] and plans["x20"]["scale"] == 2.0 and plans["x20"]["window"] == [16, 16]
    assert plans["x40"]["source"] == "file" and plans["x40"]["image_mpp"] == pytest.approx(0.25)
    assert not plans["x40"]["rescaled"] and plans["x40"]["window"] == [32, 32]
    assert plans["unknown"]["source"] == "unknown" and plans["unknown"]["image_mpp"] is None
    assert summary["settings"]["resolution"]["unknown"] == ["unknown"]
    warnings = [r.getMessage() for r in caplog.records if "resolution unknown" in r.getMessage()]
    assert len(warnings) == 1 and "unknown.ndpi" in warnings[0]
    assert network.sizes == {(32, 32)}  # the 20x windows (16 px) reach the network resized to 32
    for name, shape in (("x20", NDPI_SHAPE), ("x40", MRXS_SHAPE), ("unknown", NDPI_SHAPE)):
        class_map = np.asarray(Image.open(out / name / f"{name}_classmap.png"))
        assert class_map.shape == shape and class_map.any()  # the dark discs are found in every slide


@pytest.mark.parametrize("fmt", ["ndpi", "mrxs"])
def test_block_wise_inference_of_a_slide_equals_the_whole_image(fmt, tmp_path):
    """Blocks read from the slide through OpenSlide (with their margins, by prefetching threads) give the class map
    of the slide decoded whole."""
    from monai_nasscam.inference import predict_class_map, prepare_network

    path = tmp_path / f"big.{fmt}"
    image = he_like_image(256, 384, seed=8, nuclei=40)
    if fmt == "ndpi":
        write_ndpi(path, image)
    else:
        write_mirax(path, image)
    forward = prepare_network(_DarkIsEpithelial(), "none")
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.5, cval=1.0)
    with open_image(path) as whole_reader:
        assert isinstance(whole_reader, ArrayRegionReader)
        whole, info = predict_class_map(whole_reader, forward, inferer)
    assert info["blocks"] == 1 and whole.any()
    with open_image(path, tiled=True) as reader:
        assert isinstance(reader, OpenSlideRegionReader)
        blocks, info = predict_class_map(reader, forward, inferer, block_size=96, prefetch=2)
    assert info["blocks"] == 12
    np.testing.assert_array_equal(blocks, whole)


# ------------------------------------------------------------------------------------------------ end to end
def test_bundle_inference_on_ndpi_and_mirax(tmp_path):
    from monai_nasscam.networks.run_folder import build_network

    features = [4, 8, 8, 8, 8]
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_network(attention="unet", features=features).state_dict(), run / "models" / "model.pt")
    src, out = tmp_path / "slides", tmp_path / "out"
    src.mkdir()
    write_ndpi(src / "a.ndpi", he_like_image(*NDPI_SHAPE, seed=6), mpp=0.5)
    write_mirax(src / "b.mrxs", he_like_image(*MRXS_SHAPE, seed=7), mpp=0.25)
    from monai.bundle import run as run_bundle

    # the bundle in this process (a fresh interpreter would spend most of the test importing torch and MONAI)
    run_bundle(
        config_file=str(CONFIG), meta_file=str(CONFIG.parent / "metadata.json"), input_dir=str(src),
        output_dir=str(out), ckpt_path=str(run / "models" / "model.pt"), attention="unet", features=features,
        roi_size=[64, 64], stain="none", optimize="eager", progress=False, num_workers=1, num_threads=1,
        tune_malloc=False,
    )
    with open(out / "counts.csv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a.ndpi", "b.mrxs"} and all(r["status"] == "ok" for r in rows.values())
    summary = json.loads((out / "summary.json").read_text())
    plans = summary["settings"]["resolution"]["images"]
    assert plans["a"]["image_mpp"] == pytest.approx(0.5) and plans["a"]["rescaled"]  # trained at 0.25 (assumed)
    assert plans["b"]["image_mpp"] == pytest.approx(0.25) and not plans["b"]["rescaled"]
    import nibabel as nib

    for name, image, shape, mpp in (("a", "a.ndpi", NDPI_SHAPE, 0.5), ("b", "b.mrxs", MRXS_SHAPE, 0.25)):
        folder = out / name
        class_map = np.asarray(Image.open(folder / f"{name}_classmap.png"))
        assert class_map.shape == shape and class_map.dtype == np.uint8 and class_map.max() <= 4
        assert (folder / f"{name}_overlay.png").is_file() and (folder / f"{name}_complete.json").is_file()
        # the NIfTI's voxel size is the slide's resolution, in mm
        assert nib.load(folder / f"{name}_classmap.nii.gz").header.get_zooms()[:2] == pytest.approx((mpp / 1000,) * 2)
        geo = json.loads((folder / f"{name}_nuclei.geojson").read_text())
        with open(folder / f"{name}_nuclei.csv") as f:
            table = list(csv.DictReader(f))
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(table) == int(rows[image]["total"])
        assert table  # the random stand-in network finds some blobs; their areas in µm² use the slide's own mpp
        for r in table:
            assert float(r["area_um2"]) == pytest.approx(int(r["area_px"]) * mpp**2, rel=1e-3, abs=1e-4)
