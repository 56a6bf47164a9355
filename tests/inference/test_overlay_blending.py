"""Pictures a pathologist can read: sliding windows blended without seams, overlays whose title and legend fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.data.slide import ArrayRegionReader
from monai_nasscam.inference import predict_class_map
from monai_nasscam.inference.overlay import LEGEND_FONT_RANGE, _legend_strip, write_overlay
from tests.utils import CONFIGS

CONFIG = CONFIGS / "inference.yaml"
ROI, OVERLAP = 32, 0.5
STRIDE = int(ROI * (1 - OVERLAP))


class _DriftingNetwork(torch.nn.Module):
    """A stand-in network with a border effect: class 1's logit is ``4 * (0.5 - grey) + 0.1`` plus a term that drifts
    across the window (``(col / roi - 0.5) + (row / roi - 0.5)``), as a real network's output drifts towards a
    window's borders where its context is cut. Classes 2-4 stay off (-10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        grey = x.mean(dim=1, keepdim=True)
        rows = (torch.arange(h, dtype=x.dtype) / h - 0.5).view(1, 1, h, 1)
        cols = (torch.arange(w, dtype=x.dtype) / w - 0.5).view(1, 1, 1, w)
        first = 4.0 * (0.5 - grey) + 0.1 + rows + cols
        return torch.cat([first, torch.full((n, 3, h, w), -10.0, dtype=x.dtype)], dim=1)


def _logits(mode: str, image: torch.Tensor) -> np.ndarray:
    inferer = SlidingWindowInferer(roi_size=(ROI, ROI), sw_batch_size=8, overlap=OVERLAP, mode=mode, cval=1.0)
    with torch.inference_mode():
        return inferer(image, _DriftingNetwork())[0, 0].numpy()


def _steps(logits: np.ndarray) -> tuple[float, float]:
    """Mean |step| between neighbouring columns across the interior window borders (cols k * stride, k >= 2, away
    from the image's edges), and the largest mean |step| between any two neighbouring columns of that span."""
    steps = np.abs(np.diff(logits, axis=1)).mean(axis=0)  # steps[c - 1] = mean |L[:, c] - L[:, c - 1]|
    span = range(2 * STRIDE, logits.shape[1] - 2 * STRIDE)
    border = [steps[c - 1] for c in span if c % STRIDE == 0]
    return float(np.mean(border)), float(max(steps[c - 1] for c in span))


def test_gaussian_blending_removes_the_window_seams() -> None:
    """A uniform grey image: any structure in the blended logits comes from the windows. With ``constant``
    blending the drift averages to a saw-tooth that jumps by ``(stride - 1) / roi`` = 0.47 at every window border
    and the class map is a grid along the window borders; with ``gaussian`` a pixel near a window's border takes
    its value from the window it is central in, the border step falls to 0.04 and the class map is uniform (what
    is left is a smooth wave between window centres, its largest step 0.09)."""
    image = torch.full((1, 3, 8 * STRIDE, 8 * STRIDE), 0.5)
    found = {}
    for mode in ("constant", "gaussian"):
        logits = _logits(mode, image) + 0.25  # offset: class 1 where the blended drift is above -0.35
        found[mode] = _steps(logits)
        positive = (logits > 0)[2 * STRIDE : -2 * STRIDE, 2 * STRIDE : -2 * STRIDE]
        if mode == "constant":
            assert 0.5 < positive.mean() < 0.99  # a grid: the corners of every window period are not class 1
        else:
            assert positive.all()
    (border_c, max_c), (border_g, max_g) = found["constant"], found["gaussian"]
    print(f"window-border step: constant {border_c:.4f}, gaussian {border_g:.4f}; "
          f"largest step: constant {max_c:.4f}, gaussian {max_g:.4f}")
    assert border_c == pytest.approx((STRIDE - 1) / ROI, abs=1e-3)  # the seam
    assert border_c == pytest.approx(max_c)  # ... is the largest step of the map
    assert border_g < 0.1 * border_c
    assert max_g < 0.25 * max_c


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_block_wise_equals_whole_image_with_either_blending(mode: str) -> None:
    """Block-wise inference (a slide's path) gives the whole image's class map and probabilities, bit for bit, with
    Gaussian blending too: every core pixel is blended from the same windows with the same weights."""
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(150, 60, size=(150, 190, 3)), 0, 255).astype(np.uint8)
    image[40:90, 50:120] = 60  # a dark patch (class 1), cut by block borders
    inferer = SlidingWindowInferer(roi_size=(ROI, ROI), sw_batch_size=8, overlap=OVERLAP, mode=mode, cval=1.0)
    net = _DriftingNetwork()
    whole, info = predict_class_map(ArrayRegionReader(image), net, inferer, skip_empty=False, probabilities=True)
    assert info["blocks"] == 1 and whole.any() and not whole.all()
    tiled, tinfo = predict_class_map(ArrayRegionReader(image), net, inferer, block_size=48, skip_empty=False,
                                     probabilities=True, prefetch=2)
    assert tinfo["blocks"] == 16
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_array_equal(tinfo["probabilities"], info["probabilities"])


def test_inference_bundle_blends_gaussian_by_default_and_constant_on_request() -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    assert str(getattr(inferer.mode, "value", inferer.mode)) == "gaussian" and inferer.sigma_scale == 0.125
    parser["sw_mode"] = "constant"
    parser.parse()
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    assert str(getattr(inferer.mode, "value", inferer.mode)) == "constant"


# ------------------------------------------------------------------------------------------------------ overlay
@pytest.mark.parametrize("width", [64, 300, 1000])
def test_overlay_title_and_legend_fit_at_any_width(width: int, tmp_path: Path) -> None:
    """The title (a long file name, wrapped inside the word where it must) and the four class names with their
    counts are drawn whole inside the legend strip, whose ink lies inside the picture with a margin; the image is
    kept pixel for pixel and centred when the strip is wider than it."""
    from PIL import Image

    title = "TCGA-V6-7335-01Z-00-DX2_001 -- nuclei per class"
    counts = {1: 30, 2: 1234, 3: 0, 4: 7}
    boxes: list = []
    strip = _legend_strip(width, counts, title, boxes)
    sh, sw = strip.shape[:2]
    assert sw >= width
    texts = [t for t, _ in boxes]
    for cid, name in enumerate(CLASS_NAMES, start=1):
        assert f"{name}: {counts[cid]}" in texts
    assert "".join(texts[: len(texts) - len(CLASS_NAMES)]).replace(" ", "") == title.replace(" ", "")  # whole title
    for text, (x0, y0, x1, y1) in boxes:  # matplotlib's extents of every drawn text, inside the strip
        assert 2 <= x0 and x1 <= sw - 2 and 0 <= y0 and y1 <= sh, (width, text, (x0, y0, x1, y1), (sw, sh))

    h = max(16, width // 2)
    image = np.full((h, width, 3), 200, np.uint8)
    class_map = np.zeros((h, width), np.uint8)
    class_map[h // 4 : h // 2, width // 4 : width // 2] = 2
    write_overlay(str(tmp_path / "o.png"), image, class_map, counts, title="TCGA-V6-7335-01Z-00-DX2_001")
    picture = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert picture.shape[1] == sw and picture.shape[0] > h
    left = (sw - width) // 2
    np.testing.assert_array_equal(picture[:h, left : left + width][class_map == 0], image[class_map == 0])
    assert (picture[:h, :left] == 255).all() and (picture[:h, left + width :] == 255).all()  # centred on white
    ink = np.argwhere((picture[h:] < 250).any(axis=-1))
    margin = 3
    assert ink[:, 1].min() >= margin and ink[:, 1].max() < sw - margin
    assert ink[:, 0].min() >= margin and ink[:, 0].max() < picture.shape[0] - h - margin


def test_overlay_font_size_stays_in_a_readable_range() -> None:
    """The legend's text height grows with the image but stays between LEGEND_FONT_RANGE (8-36 pt at 100 dpi)."""
    heights = {}
    for width in (64, 1000, 4096):
        boxes: list = []
        _legend_strip(width, {}, "x", boxes)
        heights[width] = max(y1 - y0 for t, (x0, y0, x1, y1) in boxes if t.startswith("Epithelial"))
    lo, hi = LEGEND_FONT_RANGE
    assert lo * 100 / 72 * 0.8 <= heights[64] < heights[1000] < heights[4096] <= hi * 100 / 72 * 1.5


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"sw_mode": "gauss"}, "sw_mode (blending"),
        ({"sigma_scale": -1}, "sw_sigma_scale"),
        ({"polygon_tolerance": "abc"}, "polygon_tolerance (outline simplification, pixels) must be a number >= 0"),
        ({"polygon_tolerance": -1.0}, "polygon_tolerance (outline simplification, pixels) must be a number >= 0"),
    ],
)
def test_bad_blending_settings_are_named(setting: dict, message: str, tmp_path: Path) -> None:
    from PIL import Image

    from monai_nasscam.inference import check_inference_inputs

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "a.png")
    torch.save({}, tmp_path / "model.pt")
    common = dict(attention="unet", stain="none", roi_size=(ROI, ROI))
    assert check_inference_inputs(tmp_path, tmp_path / "model.pt", sw_mode="constant", sigma_scale=0.125, **common)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_inference_inputs(tmp_path, tmp_path / "model.pt", **setting, **common)
