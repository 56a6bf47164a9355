"""Background never reaches the network (``skip_empty``): a window with no stained pixel in itself or in the band one
stride wide around it is not run and its pixels are background; every pixel within one stride of a stained pixel
keeps exactly the class and probabilities of running every window, in one piece and block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer

from monai_nasscam.data.slide import ArrayRegionReader, open_image
from monai_nasscam.data.tiff_reader import TiffRegionReader
from monai_nasscam.inference import predict_class_map
from monai_nasscam.inference.tiling import tissue_mask, tissue_windows

ROI, STRIDE = 32, 16


def _slide() -> np.ndarray:
    """Glass (250) with a stained patch, a speck near the right and a pale (unstained) smear far from both."""
    image = np.full((300, 420, 3), 250, np.uint8)
    image[40:70, 60:90] = (120, 60, 140)
    image[200:210, 300:305] = (100, 50, 120)
    image[120:180, 150:260] = (235, 200, 225)  # pale: above the stained threshold in red and blue
    return image


class _Net:
    """A fixed convolution whose logits are positive on glass too (so skipped windows are visible in the class map);
    counts the windows it computes."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 5, padding=2)
        self.windows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.conv(x) + 0.3


def _inferer() -> SlidingWindowInferer:
    return SlidingWindowInferer(roi_size=(ROI, ROI), sw_batch_size=4, overlap=0.5, cval=1.0)


def _not_run(image: np.ndarray) -> np.ndarray:
    """Pixels covered by a window that is not run, by the definition, window by window (image padded white at the
    end of each axis to the window grid, as the inference pads it)."""
    h, w = image.shape[:2]
    ph, pw = (ROI + -(-(n - ROI) // STRIDE) * STRIDE for n in (h, w))
    stained = tissue_mask(image)
    out = np.zeros((ph, pw), bool)
    for y in range(0, ph - ROI + 1, STRIDE):
        for x in range(0, pw - ROI + 1, STRIDE):
            if not stained[max(y - STRIDE, 0) : y + ROI + STRIDE, max(x - STRIDE, 0) : x + ROI + STRIDE].any():
                out[y : y + ROI, x : x + ROI] = True
    return out[:h, :w]


def test_tissue_windows_known_answer() -> None:
    # an 8 x 8 region, windows of 4 at stride 2 (3 x 3 of them), a band of 2: the array is 12 x 12
    tissue = np.zeros((12, 12), bool)
    tissue[1, 1] = True  # in the band above-left: only window (0, 0)'s band [0, 8) x [0, 8) holds it
    tissue[11, 6] = True  # in the band below: rows [4, 12) of the last row of windows, every column's band
    np.testing.assert_array_equal(
        tissue_windows(tissue, (4, 4), (2, 2)), [[True, False, False], [False, False, False], [True, True, True]]
    )
    with pytest.raises(ValueError, match="no whole grid"):
        tissue_windows(np.zeros((13, 12), bool), (4, 4), (2, 2))


def test_tissue_windows_match_the_definition_off_the_power_of_two_grid() -> None:
    rng = np.random.default_rng(3)
    roi, stride = (48, 40), (36, 30)  # cells of gcd(48, 36) = 12 and gcd(40, 30) = 10 px
    size = (48 + 4 * 36, 40 + 5 * 30)
    tissue = np.zeros((size[0] + 2 * stride[0], size[1] + 2 * stride[1]), bool)
    tissue[rng.integers(0, tissue.shape[0], 6), rng.integers(0, tissue.shape[1], 6)] = True
    got = tissue_windows(tissue, roi, stride)
    want = np.array([[tissue[y : y + roi[0] + 2 * stride[0], x : x + roi[1] + 2 * stride[1]].any()
                      for x in range(0, size[1] - roi[1] + 1, stride[1])]
                     for y in range(0, size[0] - roi[0] + 1, stride[0])])
    assert want.any() and not want.all()
    np.testing.assert_array_equal(got, want)


def test_glass_windows_are_not_run_and_pixels_near_tissue_are_unchanged(tmp_path: Path) -> None:
    image = _slide()
    every, skip = _Net(), _Net()
    skip.conv.load_state_dict(every.conv.state_dict())
    full, full_info = predict_class_map(ArrayRegionReader(image), every, _inferer(), skip_empty=False, probabilities=True)
    cut, info = predict_class_map(ArrayRegionReader(image), skip, _inferer(), probabilities=True)

    assert full_info["windows"] == info["windows"] == 18 * 26 and full_info["skipped_windows"] == 0
    run = info["windows"] - info["skipped_windows"]
    assert 0 < run < info["windows"] // 4
    assert run <= skip.windows <= run + 1  # (+1: the first batch was all glass; one window told the channel count)
    assert every.windows == info["windows"]

    not_run = _not_run(image)
    assert not_run.any() and (full[not_run] > 0).all()  # the network sees nuclei on glass: skipping changes those
    np.testing.assert_array_equal(cut[~not_run], full[~not_run])
    np.testing.assert_array_equal(cut[not_run], 0)
    np.testing.assert_array_equal(info["probabilities"][:, ~not_run], full_info["probabilities"][:, ~not_run])
    np.testing.assert_array_equal(info["probabilities"][:, not_run], 0)
    # within one stride (Chebyshev) of a stained pixel, nothing changed; the pale smear far from stain is background
    from scipy.ndimage import binary_dilation

    near = binary_dilation(tissue_mask(image), np.ones((2 * STRIDE + 1, 2 * STRIDE + 1), bool))
    assert not (near & not_run).any()
    assert (cut[150, 200] == 0) and (full[150, 200] > 0)

    # block by block (tiled TIFF, blocks of 64 px, read ahead in threads): the same windows run, the same maps
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(32, 32))
    with open_image(path, tiled=True) as reader:
        assert isinstance(reader, TiffRegionReader)
        blocks, block_info = predict_class_map(reader, skip, _inferer(), block_size=64, prefetch=2, probabilities=True)
    assert block_info["skipped_blocks"] > 0
    np.testing.assert_array_equal(blocks, cut)
    np.testing.assert_array_equal(block_info["probabilities"], info["probabilities"])


def test_tissue_everywhere_runs_every_window() -> None:
    image = np.random.default_rng(1).integers(60, 180, (150, 170, 3), dtype=np.uint8)
    a, b = _Net(), _Net()
    full, _ = predict_class_map(ArrayRegionReader(image), a, _inferer(), skip_empty=False)
    same, info = predict_class_map(ArrayRegionReader(image), b, _inferer())
    assert info["skipped_windows"] == 0 and a.windows == b.windows == info["windows"]
    np.testing.assert_array_equal(same, full)
