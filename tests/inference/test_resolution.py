"""Inference at the training resolution: images whose resolution differs from the one the network was trained at
are segmented at the training one (outputs in the image's own pixels); an image of unknown resolution is named in a
warning, once; the training run records its resolution in RUN/network.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_nasscam.data.prepare import _resolution
from monai_nasscam.data.slide import open_image, read_mpp
from monai_nasscam.data.synth import write_svs
from monai_nasscam.errors import InputError
from monai_nasscam.inference import InstanceSeparator, NucleiPredictor
from monai_nasscam.inference.resolution import (
    DEFAULT_TRAIN_MPP,
    RescaledNetwork,
    plan_resolution,
    scaled_separator,
    train_resolution,
)

ROI = 128  # the network's window (training pixels); a 64 x 64 image at 2x is exactly one window
K = 11  # the stand-in network keeps dark blobs that an 11 x 11 square fits into (radius >= ~7.1 px)
# 64 x 64 px image: (centre (row, col), radius in image pixels)
BIG, MID, SMALL = ((16, 16), 12), ((44, 44), 6), ((16, 48), 3)


class _SizeSelective(torch.nn.Module):
    """A stand-in network sensitive to scale, like one trained on nuclei of a given size in pixels: Epithelial where
    the morphological opening (11 x 11 square) of the dark pixels is, i.e. only blobs of radius over ~7.1 of its
    input pixels; records the shapes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        dark = (x.mean(dim=1, keepdim=True) < 0.5).float()
        p = K // 2
        eroded = 1.0 - F.max_pool2d(F.pad(1.0 - dark, (p, p, p, p), value=1.0), K, stride=1)
        opened = F.max_pool2d(F.pad(eroded, (p, p, p, p), value=0.0), K, stride=1)
        c1 = opened * 20.0 - 10.0
        return torch.cat([c1, torch.full_like(c1, -10.0), torch.full_like(c1, -10.0), torch.full_like(c1, -10.0)], 1)


def _image() -> np.ndarray:
    image = np.full((64, 64, 3), 255, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for (cy, cx), r in (BIG, MID, SMALL):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 40
    return image


def _predict(src: Path, out: Path, network: torch.nn.Module | None = None, **kwargs) -> dict:
    inferer = SlidingWindowInferer(roi_size=(ROI, ROI), sw_batch_size=2, overlap=0.5, cval=1.0)
    return NucleiPredictor(network or _SizeSelective(), inferer, src, out, stain="none", optimize="none",
                           progress=False, tune_malloc=False, num_threads=1, parallel=1,
                           instance_method="connected_components", **kwargs).run()


def _nuclei(out: Path, name: str) -> list[dict]:
    return json.loads((out / name / f"{name}_nuclei.geojson").read_text())["features"]


def _centroid(feature: dict) -> tuple[float, float]:
    m = feature["properties"]["measurements"]
    return float(m["Centroid X px"]), float(m["Centroid Y px"])


def test_plan_resolution_known_answers():
    p = plan_resolution(0.5, "file", 0.25, (256, 256))  # 20x image, 40x network: windows of 128 px, resized x2
    assert p.rescaled and p.window == (128, 128) and p.scale == 2.0 and "rescaled x2" in p.note
    p = plan_resolution(0.125, "setting", 0.25, (256, 256))  # 80x: windows of 512 px, shrunk x0.5
    assert p.rescaled and p.window == (512, 512) and p.scale == 0.5
    assert not plan_resolution(0.2521, "file", 0.25, (256, 256)).rescaled  # within the 10 % tolerance
    assert not plan_resolution(0.27, "file", 0.25, (256, 256)).rescaled  # 8 %: the same
    p = plan_resolution(0.46, "file", 0.25, (256, 256))  # 256 / 1.84 = 139 -> 144, a multiple of 16
    assert p.window == (144, 144) and abs(p.scale - 256 / 144) < 1e-9
    p = plan_resolution(None, "file", 0.25, (256, 256))
    assert p.source == "unknown" and not p.rescaled and "unknown" in p.note


def test_rescaled_network_resizes_windows_to_the_training_size_and_logits_back():
    seen = []

    def net(x):
        seen.append(tuple(x.shape))
        return x[:, :1].repeat(1, 4, 1, 1)

    wrapped = RescaledNetwork(net, (128, 128))
    y = wrapped(torch.rand(3, 3, 64, 64))
    assert seen == [(3, 3, 128, 128)] and tuple(y.shape) == (3, 4, 64, 64)
    const = wrapped(torch.full((1, 3, 64, 64), 0.3))  # a constant stays itself through both resizes
    assert torch.allclose(const, torch.full_like(const, 0.3), atol=1e-6)


def test_scaled_separator_divides_distances_and_areas():
    sep = InstanceSeparator("watershed", h=1.0, min_distance=4, sigma=2.0, min_size=200)
    half = scaled_separator(sep, 2.0)  # a 20x image for a 40x network: nuclei are half as large in its pixels
    assert (half.h, half.min_distance, half.sigma, half.min_size) == (0.5, 2, 1.0, 50)
    assert scaled_separator(sep, 1.0) is sep
    assert scaled_separator(InstanceSeparator("connected_components", min_size=100), 2.0).min_size == 25


def test_20x_slide_is_segmented_at_the_training_resolution(tmp_path, caplog):
    """A 20x (0.5 um/px) SVS and a 40x-trained (0.25 um/px) size-selective network: the middle disc (radius 6 px,
    12 at 40x) is found only when the image is rescaled, at its own centre in the image's pixels; the smallest is
    never found, the largest always."""
    src = tmp_path / "in"
    src.mkdir()
    write_svs(str(src / "slide20x.svs"), _image(), mpp=0.5, tile=64)
    assert read_mpp(src / "slide20x.svs") == 0.5

    net = _SizeSelective()
    with caplog.at_level(logging.INFO, logger="monai_nasscam.inference"):
        summary = _predict(src, tmp_path / "out", network=net, train_mpp=0.25)
    nuclei = _nuclei(tmp_path / "out", "slide20x")
    assert len(nuclei) == 2
    centres = sorted(_centroid(f) for f in nuclei)  # (x, y), pixel (r, c) covers [c, c + 1) x [r, r + 1)
    for (x, y), ((cy, cx), _) in zip(centres, (BIG, MID)):
        assert abs(x - (cx + 0.5)) < 1.0 and abs(y - (cy + 0.5)) < 1.0
    # the area in um^2 is that of the image's own pixels (0.5 um)
    mid = min(nuclei, key=lambda f: f["properties"]["measurements"]["Area px"])["properties"]["measurements"]
    assert mid["Area µm^2"] == pytest.approx(mid["Area px"] * 0.25, rel=1e-3)
    class_map = np.asarray(Image.open(tmp_path / "out" / "slide20x" / "slide20x_classmap.png"))
    assert class_map.shape == (64, 64)  # the outputs are on the image's pixel grid
    mid_area = int((class_map[32:, 32:] > 0).sum())
    assert 0.7 * np.pi * 36 < mid_area < 1.1 * np.pi * 36 and mid_area == mid["Area px"]
    assert net.shapes and {s[1:] for s in net.shapes} == {(3, ROI, ROI)}  # it saw training-size windows
    res = summary["settings"]["resolution"]
    assert res["train_mpp"] == 0.25 and res["rescaled"] == ["slide20x"] and res["unknown"] == []
    image = res["images"]["slide20x"]
    assert image["rescaled"] and image["window"] == [ROI // 2, ROI // 2] and image["scale"] == 2.0
    assert any("rescaled x2" in r.getMessage() and "slide20x.svs" in r.getMessage() for r in caplog.records)

    # the same network told it was trained at 20x: no rescaling, the middle disc is too small for it
    summary = _predict(src, tmp_path / "same", train_mpp=0.5)
    assert len(_nuclei(tmp_path / "same", "slide20x")) == 1
    assert summary["settings"]["resolution"]["rescaled"] == []


def test_unknown_resolution_is_said_once_per_image_and_mpp_setting_rescales(tmp_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_image()).save(src / "tile.png")  # a PNG records no resolution
    with caplog.at_level(logging.WARNING, logger="monai_nasscam.inference"):
        summary = _predict(src, tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "resolution" in r.getMessage()]
    assert len(warnings) == 1 and "tile.png" in warnings[0] and "unknown" in warnings[0]
    res = summary["settings"]["resolution"]
    assert res["unknown"] == ["tile"] and res["train_mpp"] == DEFAULT_TRAIN_MPP
    assert res["images"]["tile"]["source"] == "unknown"
    assert len(_nuclei(tmp_path / "out", "tile")) == 1  # segmented as if at 0.25 um/px
    row = (tmp_path / "out" / "counts.csv").read_text()
    assert "resolution unknown" in row

    summary = _predict(src, tmp_path / "given", mpp=0.5)  # --mpp 0.5: a 20x image
    assert summary["settings"]["resolution"]["images"]["tile"]["source"] == "setting"
    assert len(_nuclei(tmp_path / "given", "tile")) == 2
    with pytest.raises(InputError, match="mpp"):
        _predict(src, tmp_path / "bad", mpp=-1)


def test_tiff_resolution_tags_and_implausible_dpi(tmp_path):
    image = _image()
    tifffile.imwrite(tmp_path / "cm.tif", image, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "none.tif", image, photometric="rgb")
    assert read_mpp(tmp_path / "cm.tif") == pytest.approx(0.5)
    assert read_mpp(tmp_path / "dpi.tif") is None  # 352.8 um/px: an image editor's default, not a microscope's
    assert read_mpp(tmp_path / "none.tif") is None
    reader = open_image(tmp_path / "cm.tif", tiled=True)
    try:
        assert reader.mpp == pytest.approx(0.5)
    finally:
        reader.close()


def test_training_records_its_resolution_and_inference_reads_it(tmp_path):
    from monai_nasscam.engines import record_run_inputs

    prep = tmp_path / "prep"
    prep.mkdir()
    run = tmp_path / "run"
    # no manifest: the documented default, recorded as assumed
    assert record_run_inputs(prep, run, attention="unet", rank=0)
    record = json.loads((run / "network.json").read_text())
    assert record["mpp"] == DEFAULT_TRAIN_MPP and record["mpp_source"].startswith("assumed")
    assert train_resolution(run) == (DEFAULT_TRAIN_MPP, "network.json: " + record["mpp_source"])
    # the prepared dataset's median resolution (nasscam prepare's manifest)
    records = [{"mpp": 0.2425}, {"mpp": 0.2521}, {"mpp": 0.2527}, {"mpp": None}]
    (prep / "manifest.json").write_text(json.dumps({"resolution": _resolution(records)}))
    assert _resolution(records) == {"mpp": 0.2521, "min": 0.2425, "max": 0.2527, "known": 3, "unknown": 1}
    record_run_inputs(prep, run, attention="unet", rank=0)
    record = json.loads((run / "network.json").read_text())
    assert record["mpp"] == 0.2521 and record["mpp_source"].startswith("dataset: median of 3")
    # the train_mpp setting wins, and inference's own train_mpp over the record
    record_run_inputs(prep, run, attention="unet", rank=0, train_mpp=0.5)
    assert json.loads((run / "network.json").read_text())["mpp"] == 0.5
    assert train_resolution(run)[0] == 0.5 and train_resolution(run, 0.25) == (0.25, "train_mpp setting")
    with pytest.raises(Exception, match="train_mpp"):
        record_run_inputs(prep, run, attention="unet", rank=0, train_mpp="x")


def test_rescaled_slide_block_by_block_equals_whole_image(tmp_path):
    """The block-wise path of a slide (forced tiling, small blocks) gives the class map of the one-piece inference
    when the windows are rescaled: the blocks follow the image-pixel window grid."""
    image = np.concatenate([np.concatenate([_image()] * 3, axis=1)] * 2, axis=0)  # 128 x 192
    src = tmp_path / "in"
    src.mkdir()
    write_svs(str(src / "big20x.svs"), image, mpp=0.5, tile=64)
    maps = []
    for name, settings in (("whole", {"tiled": False}), ("blocks", {"tiled": True, "block_size": 64})):
        summary = _predict(src, tmp_path / name, train_mpp=0.25, **settings)
        assert summary["settings"]["resolution"]["rescaled"] == ["big20x"]
        maps.append(np.asarray(Image.open(tmp_path / name / "big20x" / "big20x_classmap.png")))
    np.testing.assert_array_equal(maps[0], maps[1])
    assert maps[0].any() and summary["total_nuclei"] == 12  # the big and the middle disc of each of the 6 copies
