"""Pixel decoding (monai_nasscam.data.slide): the image a viewer shows is the image the network sees, in ``prepare``
and at inference alike.

- Aperio JPEG 2000 tiles, compression 33003 (a Y Cb Cr codestream), are converted to RGB; 33005 (R G B) is not.
  ``tests/assets/jp2k_33003`` is a small field example (an ``.svs`` that OpenSlide does not take as Aperio, because it
  has a second ``ImageDescription`` tag, so tifffile reads it) with its true RGB; the tests also build clean Aperio
  files, which OpenSlide reads.
- Transparent (alpha 0) pixels read as white, so a transparent slide margin is glass: skipped at inference, no nuclei.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_nasscam.data import read_rgb
from monai_nasscam.data.prepare import prepare_dataset
from monai_nasscam.data.openslide_reader import OpenSlideRegionReader, openslide_format
from monai_nasscam.data.pixels import composite_on_white, ycbcr_to_rgb
from monai_nasscam.data.slide import open_image
from monai_nasscam.data.tiff_format import j2k_chroma_subsampled
from monai_nasscam.data.tiff_reader import TiffRegionReader
from monai_nasscam.data.synth import synth_tile
from monai_nasscam.inference import NucleiPredictor, predict_class_map
from tests.utils import ASSETS

DATA = ASSETS / "jp2k_33003"
FIELD_SVS = DATA / "TCGA-ZZ-0000-01Z-00-DX1" / "TCGA-ZZ-0000-01Z-00-DX1_1.svs"
APERIO = "Aperio Image Library v11.2.1 \r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t}) J2K/YUV16 Q=70|AppMag = 40|MPP = 0.2521"
XML = (
    '<Annotations MicronsPerPixel="0.252100"><Annotation Id="1"><Attributes><Attribute Name="Lymphocyte"/>'
    '</Attributes><Regions><Region Id="1" Type="0"><Vertices><Vertex X="10" Y="10"/><Vertex X="20" Y="10"/>'
    '<Vertex X="20" Y="20"/><Vertex X="10" Y="20"/></Vertices></Region></Regions></Annotation></Annotations>'
)


def _true_rgb() -> np.ndarray:
    return np.asarray(Image.open(DATA / "true_rgb.png").convert("RGB")).astype(int)


def _rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """JFIF full-range forward transform (what an Aperio scanner stores in a 33003 codestream)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.round(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def _write_jp2k_svs(path: Path, samples: np.ndarray, compression: int, tile: int = 64, aperio: bool = True,
                    mct: bool = False) -> None:
    """A tiled TIFF whose tiles are lossless J2K codestreams of ``samples`` (Y Cb Cr for 33003, R G B for 33005).
    ``aperio=False`` adds tifffile's own second ``ImageDescription`` (OpenSlide then no longer sees an Aperio file)."""
    h, w = samples.shape[:2]
    tiles = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = samples[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            tiles.append(imagecodecs.jpeg2k_encode(block, codecformat="J2K", mct=mct, reversible=True))
    extra = {"metadata": None} if aperio else {}
    tifffile.imwrite(path, iter(tiles), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), compression=compression,
                     photometric="rgb", description=APERIO.format(w=w, h=h, t=tile), **extra)


def _clean_aperio_copy(src: Path, dst: Path) -> None:
    """The same 33003 tiles, with the one ``ImageDescription`` an Aperio file has (OpenSlide reads it as Aperio)."""
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        tiles = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            tif.filehandle.seek(offset)
            tiles.append(tif.filehandle.read(count))
        shape, tile, desc = page.shape, page.tile, page.description
    tifffile.imwrite(dst, iter(tiles), shape=shape, dtype=np.uint8, tile=tile, compression=33003, photometric="rgb",
                     description=desc, metadata=None)


class _DarkIsNucleus(torch.nn.Module):
    """A stand-in network: class 1 (Epithelial) wherever the pixel is dark, background elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = self.scale * (0.45 - x.mean(dim=1, keepdim=True))
        return torch.cat([dark, torch.full_like(dark, -10.0).expand(-1, 3, -1, -1)], dim=1)


# ------------------------------------------------------------------------------------------- JPEG 2000 33003
def test_field_33003_svs_reads_true_rgb_not_ycbcr():
    true = _true_rgb()
    raw = tifffile.imread(FIELD_SVS).astype(int)  # what the decoder hands back: Y, Cb, Cr
    assert np.abs(raw - true).mean() > 20  # read as R, G, B that is the 31-grey-level error of the field report
    assert openslide_format(FIELD_SVS) is None  # two ImageDescription tags: not Aperio to OpenSlide -> tifffile
    image = read_rgb(FIELD_SVS)
    err = np.abs(image.astype(int) - true)
    assert err.mean() <= 3 and np.percentile(err, 95) <= 3  # lossy (Q=70) tiles: mean 1.1, a few pixels up to 8
    with open_image(FIELD_SVS, tiled=True) as reader:
        assert isinstance(reader, TiffRegionReader) and reader.mpp == pytest.approx(0.2521)
        np.testing.assert_array_equal(reader.read(30, 100, 50, 128), image[30:100, 50:128])


def test_clean_aperio_33003_is_read_by_openslide_identically(tmp_path):
    clean = tmp_path / "clean.svs"
    _clean_aperio_copy(FIELD_SVS, clean)
    assert openslide_format(clean) == "aperio"
    with open_image(clean, tiled=True) as reader:
        assert isinstance(reader, OpenSlideRegionReader) and reader.mpp == pytest.approx(0.2521)
        by_openslide = reader.read(0, 128, 0, 128)
    # OpenSlide's conversion and the tifffile path's are the same arithmetic: identical pixels
    np.testing.assert_array_equal(by_openslide, read_rgb(FIELD_SVS))
    np.testing.assert_array_equal(read_rgb(clean), by_openslide)


@pytest.mark.parametrize("aperio", [True, False], ids=["openslide", "tifffile"])
def test_built_33003_and_33005_decode_to_rgb(tmp_path, aperio):
    rgb = synth_tile(np.random.default_rng(4), 150, 170).image
    ycc = tmp_path / "ycc.svs"
    _write_jp2k_svs(ycc, _rgb_to_ycbcr(rgb), 33003, aperio=aperio)
    assert (openslide_format(ycc) == "aperio") is aperio
    image = read_rgb(ycc)
    assert np.abs(image.astype(int) - rgb).max() <= 3  # lossless codestream: only the colour transform's rounding
    with open_image(ycc, tiled=True) as reader:
        np.testing.assert_array_equal(reader.read(20, 140, 33, 170), image[20:140, 33:170])
    rct = tmp_path / "rgb.svs"  # 33005: the codestream holds R, G, B (reversible colour transform): no conversion
    _write_jp2k_svs(rct, rgb, 33005, aperio=aperio, mct=True)
    np.testing.assert_array_equal(read_rgb(rct), rgb)


def test_ycbcr_conversion_and_codestream_subsampling():
    grey = np.array([[[0, 128, 128], [255, 128, 128], [100, 128, 128]]], np.uint8)
    np.testing.assert_array_equal(ycbcr_to_rgb(grey), [[[0, 0, 0], [255, 255, 255], [100, 100, 100]]])
    colours = np.random.default_rng(0).integers(0, 256, (500, 3)).astype(np.uint8)
    assert np.abs(ycbcr_to_rgb(_rgb_to_ycbcr(colours)).astype(int) - colours).max() <= 2
    stream = bytearray(imagecodecs.jpeg2k_encode(np.zeros((16, 16, 3), np.uint8), codecformat="J2K", mct=False))
    assert j2k_chroma_subsampled(bytes(stream)) is False
    stream[4 + 38 + 4] = 2  # XRsiz of the 2nd component: Cb at half width (Aperio "YUV 4:2:2")
    assert j2k_chroma_subsampled(bytes(stream)) is True
    assert j2k_chroma_subsampled(b"not a codestream") is None


def test_prepare_and_inference_see_the_true_rgb_of_a_33003_svs(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(DATA, raw, ignore=shutil.ignore_patterns("true_rgb.png"))
    prep = tmp_path / "prep"
    prepare_dataset(raw, prep, workers=0, progress=False, stain="none")
    prepared = np.asarray(Image.open(prep / "images" / "TCGA-ZZ-0000-01Z-00-DX1_1.png")).astype(int)
    true = _true_rgb()
    assert np.abs(prepared - true).mean() <= 3
    # inference: the pixels the workflow feeds the network (its block reader's overview, 1:1), whole and block-wise
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=(64, 64), sw_batch_size=4, overlap=0.5)
    net = _DarkIsNucleus().eval()
    for tiled, block in ((False, None), (True, 64)):
        with open_image(FIELD_SVS, tiled=tiled) as reader:
            _, info = predict_class_map(reader, net, inferer, block_size=block, overview_step=1, skip_empty=False)
        np.testing.assert_array_equal(info["overview"], prepared)


# ------------------------------------------------------------------------------------------------ alpha
def test_alpha_is_composited_onto_white(tmp_path):
    colour = np.array([[[200, 40, 90]] * 3], np.uint8)
    alpha = np.array([[0, 128, 255]], np.uint8)
    expected = [[[255, 255, 255], [227, 147, 172], [200, 40, 90]]]  # c * a + 255 * (1 - a), rounded
    np.testing.assert_array_equal(composite_on_white(colour, alpha), expected)
    rgba = np.concatenate([colour, alpha[..., None]], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "straight.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    premultiplied = np.concatenate([(colour.astype(int) * alpha[..., None] / 255).round().astype(np.uint8),
                                    alpha[..., None]], -1)
    tifffile.imwrite(tmp_path / "assoc.tif", premultiplied, photometric="rgb", extrasamples=["assocalpha"])
    for name in ("a.png", "straight.tif", "assoc.tif"):
        assert np.abs(read_rgb(tmp_path / name).astype(int) - expected).max() <= 1, name
    # grey + alpha, palette, min-is-white: what a viewer shows
    grey_alpha = np.stack([np.full((2, 3), 60, np.uint8), np.array([[0, 255, 255]] * 2, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "la.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.tif")[0], [[255] * 3, [60] * 3, [60] * 3])
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = [65535, 0, 32768]
    tifffile.imwrite(tmp_path / "pal.tif", np.array([[0, 1]], np.uint8), photometric="palette", colormap=cmap)
    np.testing.assert_array_equal(read_rgb(tmp_path / "pal.tif")[0], [[0, 0, 0], [255, 0, 128]])
    tifffile.imwrite(tmp_path / "white.tif", np.array([[0, 255]], np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(read_rgb(tmp_path / "white.tif")[0], [[255] * 3, [0] * 3])


def _rgba_half_transparent(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """H&E on the left half, transparent (alpha 0, colour 0 as scanners write it) on the right half."""
    rgb = synth_tile(np.random.default_rng(seed), h, w).image
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], -1)
    rgba[:, w // 2 :] = 0
    return rgb, rgba


def test_prepare_reads_a_transparent_half_as_white(tmp_path):
    rgb, rgba = _rgba_half_transparent(96, 96, 6)
    folder = tmp_path / "raw" / "TCGA-ZZ-0000-01Z-00-DX1"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "TCGA-ZZ-0000-01Z-00-DX1_1.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    (folder / "TCGA-ZZ-0000-01Z-00-DX1_1.xml").write_text(XML)
    prepare_dataset(tmp_path / "raw", tmp_path / "prep", workers=0, progress=False, stain="none")
    prepared = np.asarray(Image.open(tmp_path / "prep" / "images" / "TCGA-ZZ-0000-01Z-00-DX1_1.png"))
    assert (prepared[:, 48:] == 255).all()
    np.testing.assert_array_equal(prepared[:, :48], rgb[:, :48])


def _square(rid: int, x0: int, y0: int, x1: int, y1: int) -> str:
    return (f'<Region Id="{rid}" Type="0"><Vertices><Vertex X="{x0}" Y="{y0}"/><Vertex X="{x1}" Y="{y0}"/>'
            f'<Vertex X="{x1}" Y="{y1}"/><Vertex X="{x0}" Y="{y1}"/></Vertices></Region>')


def test_prepare_clears_annotation_on_transparent_pixels(tmp_path, caplog):
    """Nuclei drawn on the transparent half are no target: background in the class and instance maps, one warning."""
    from monai_nasscam.data import rasterize_regions, read_imagescope_xml

    _, rgba = _rgba_half_transparent(96, 96, 8)  # columns 48: transparent
    xml = ('<Annotations><Annotation Id="1"><Attributes><Attribute Name="Lymphocyte"/></Attributes><Regions>'
           + _square(1, 60, 10, 70, 20)  # entirely on glass: dropped
           + _square(2, 40, 40, 56, 50)  # straddles the edge: keeps its opaque part
           + _square(3, 10, 60, 20, 70)  # entirely on tissue: untouched
           + "</Regions></Annotation></Annotations>")
    name = "TCGA-ZZ-0000-01Z-00-DX1_1"
    folder = tmp_path / "raw" / "TCGA-ZZ-0000-01Z-00-DX1"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / f"{name}.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    (folder / f"{name}.xml").write_text(xml)
    full = rasterize_regions(read_imagescope_xml(folder / f"{name}.xml").regions, (96, 96))  # without the alpha
    on_glass = int((full.class_map[:, 48:] > 0).sum())
    assert on_glass > 0 and (full.instance_map[:, :48] == 2).any() and (full.instance_map[:, 48:] == 2).any()

    with caplog.at_level("WARNING", logger="monai_nasscam.data.prepare"):
        manifest = prepare_dataset(tmp_path / "raw", tmp_path / "prep", workers=0, progress=False, stain="none")
    labels = np.asarray(Image.open(tmp_path / "prep" / "labels" / f"{name}.png"))
    instances = tifffile.imread(tmp_path / "prep" / "instances" / f"{name}.tif")
    assert not labels[:, 48:].any() and not instances[:, 48:].any()
    np.testing.assert_array_equal(labels[:, :48], full.class_map[:, :48])  # the opaque half is unchanged
    np.testing.assert_array_equal(instances[:, :48], full.instance_map[:, :48])
    assert set(np.unique(instances)) == {0, 2, 3}  # nucleus 1 is gone
    assert manifest["counts"]["total"]["nuclei"]["Lymphocyte"] == 2
    warned = [r.getMessage() for r in caplog.records if "transparent" in r.getMessage()]
    assert warned == [f"{name}: {on_glass} annotated pixels (2 nuclei) lie on transparent pixels; set to background"
                      " (1 nucleus removed entirely)"]


@pytest.mark.parametrize("tiled", [True, False], ids=["block-wise", "whole"])
def test_transparent_half_of_a_slide_is_glass_at_inference(tmp_path, tiled):
    """A 512 x 512 tiled RGBA slide (associated alpha), right half transparent: skipped as glass, no nuclei."""
    from monai.inferers import SlidingWindowInferer

    rgb, rgba = _rgba_half_transparent(512, 512, 7)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "slide_rgba.tif", rgba, photometric="rgb", tile=(256, 256), extrasamples=["assocalpha"],
                     compression="zlib")
    image = read_rgb(src / "slide_rgba.tif")
    assert (image[:, 256:] == 255).all()
    np.testing.assert_array_equal(image[:, :256], rgb[:, :256])

    out = tmp_path / "out"
    inferer = SlidingWindowInferer(roi_size=(64, 64), sw_batch_size=8, overlap=0.5, cval=1.0)  # stride 32: 256 blocks
    settings = {"tiled": True, "block_size": 256} if tiled else {"tiled": False}
    NucleiPredictor(_DarkIsNucleus(), inferer, src, out, stain="none", optimize="none", progress=False,
                    tune_malloc=False, num_threads=1, **settings).run()
    class_map = np.asarray(Image.open(out / "slide_rgba" / "slide_rgba_classmap.png"))
    assert class_map[:, :256].any()  # the stand-in network finds the dark nuclei of the tissue half
    assert not class_map[:, 256:].any()  # and nothing in the transparent half
    features = json.loads((out / "slide_rgba" / "slide_rgba_nuclei.geojson").read_text())["features"]
    assert features and all(max(x for x, _ in f["geometry"]["coordinates"][0]) <= 256 for f in features)
    # glass windows are not run: at least every window from x = 288 on (its band, one stride of 32 around it, all
    # transparent), 6 columns of the 15 rows of windows (whole image) or of the 2 x 8 rows of the right blocks
    with open_image(src / "slide_rgba.tif", tiled=tiled) as reader:
        _, info = predict_class_map(reader, _DarkIsNucleus(), inferer, block_size=256 if tiled else None)
    assert info["windows"] == (4 * 8 * 8 if tiled else 15 * 15)
    assert info["skipped_windows"] >= (6 * 2 * 8 if tiled else 6 * 15)


class _EverythingIsNucleus(torch.nn.Module):
    """A stand-in network that calls every pixel Lymphocyte, glass included."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([-5.0, 5.0, -5.0, -5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.view(1, 4, 1, 1).expand(x.shape[0], 4, *x.shape[2:]) + 0 * x[:, :1]


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_transparent_pixels_never_get_a_class(tmp_path, suffix):
    """Even a network that sees nuclei on glass gives none where the file is transparent (one piece and blocks)."""
    from monai.inferers import SlidingWindowInferer

    _, rgba = _rgba_half_transparent(128, 160, 10)
    path = tmp_path / f"half{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, rgba, photometric="rgb", tile=(32, 32), extrasamples=["unassalpha"])
    else:
        Image.fromarray(rgba, "RGBA").save(path)
    inferer = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=8, overlap=0.5)
    net = _EverythingIsNucleus().eval()
    for tiled, block in ((False, None), (suffix == ".tif", 48)):
        with open_image(path, tiled=tiled) as reader:
            class_map, info = predict_class_map(reader, net, inferer, block_size=block, skip_empty=False)
        assert (class_map[:, :80] == 2).all() and not class_map[:, 80:].any(), (tiled, block)


def test_plain_files_openslide_cannot_read_still_read(tmp_path):
    rgb = synth_tile(np.random.default_rng(8), 40, 50).image
    Image.fromarray(rgb).save(tmp_path / "t.png")
    tifffile.imwrite(tmp_path / "strips.tif", rgb, photometric="rgb", rowsperstrip=7)
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, photometric="rgb", tile=(16, 16), compression="zlib")
    tifffile.imwrite(tmp_path / "grey16.tif", (rgb[..., 0].astype(np.uint16) << 8) | 0x7F, photometric="minisblack")
    for name in ("t.png", "strips.tif", "tiled.tif"):
        assert openslide_format(tmp_path / name) is None
        np.testing.assert_array_equal(read_rgb(tmp_path / name), rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey16.tif"), np.repeat(rgb[..., :1], 3, -1))
    with open_image(tmp_path / "tiled.tif", tiled=True) as reader:
        assert reader.backend == "tifffile"
        np.testing.assert_array_equal(reader.read(5, 33, 9, 41), rgb[5:33, 9:41])


def test_a_slide_openslide_recognises_but_cannot_open_is_read_by_tifffile(tmp_path, caplog):
    rgb = synth_tile(np.random.default_rng(9), 100, 120).image
    path = tmp_path / "png_tiles.svs"  # Aperio description, tiles in a compression OpenSlide lacks (PNG, 34933)
    tifffile.imwrite(path, rgb, tile=(64, 64), compression="png", photometric="rgb", metadata=None,
                     description=APERIO.format(w=120, h=100, t=64))
    assert openslide_format(path) == "aperio"
    with caplog.at_level("INFO", logger="monai_nasscam.data.slide"):
        with open_image(path, tiled=True) as reader:
            assert reader.backend == "tifffile"
            np.testing.assert_array_equal(reader.read(0, 100, 0, 120), rgb)
    assert "OpenSlide (aperio) cannot open it" in caplog.text and "reading it with tifffile" in caplog.text
