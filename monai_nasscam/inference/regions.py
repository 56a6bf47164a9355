"""Region readers for inference: read any rectangle of an image as RGB uint8 without decoding (or holding) the rest.

The readers live in :mod:`monai_nasscam.data.slide`, the one pixel-reading path that ``nasscam prepare`` uses too,
so training and inference see the same pixels: :class:`OpenSlideRegionReader` (Aperio ``.svs`` and other
whole-slide formats OpenSlide recognises: NDPI, MRXS, SCN, BIF ...), :class:`TiffRegionReader` (every other TIFF, with ``tifffile``: only the
segments a rectangle touches are decoded, with a small cache, which is what makes whole-slide inference fit in a few
GB) and :class:`ArrayRegionReader` (an image decoded whole: PNG, JPEG, small TIFF). :func:`open_region_reader` picks
one.
"""

from __future__ import annotations

import os

from monai_nasscam.data.slide import (
    OPENSLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    ArrayRegionReader,
    OpenSlideRegionReader,
    RegionReader,
    TiffRegionReader,
    open_image,
)

__all__ = [
    "ArrayRegionReader",
    "TiffRegionReader",
    "OpenSlideRegionReader",
    "open_region_reader",
    "TIFF_SUFFIXES",
    "OPENSLIDE_SUFFIXES",
    "IMAGE_SUFFIXES",
]

#: file types the inference workflow picks up from a folder (OME-TIFF ``.ome.tif`` / ``.ome.tiff`` among the TIFFs).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES + OPENSLIDE_SUFFIXES


def open_region_reader(
    path: str | os.PathLike, tiled: bool | str = "auto", max_whole_pixels: int = 4096 * 4096, swap_rb: bool = False
) -> RegionReader:
    """Open an image for region reading (:func:`monai_nasscam.data.slide.open_image`).

    Args:
        path: PNG / JPEG / BMP / TIFF / SVS / OME-TIFF file, or a whole-slide file OpenSlide reads (``.ndpi``,
            ``.mrxs`` ...).
        tiled: ``"auto"``: TIFF / SVS files larger than ``max_whole_pixels`` are read region by region, anything
            else is decoded whole; ``True``: every TIFF / SVS region by region; ``False``: always decode whole.
        max_whole_pixels: size above which a TIFF is read region by region in ``"auto"`` mode.
        swap_rb: the file stores B, G, R (applies to ``.tif`` / ``.tiff``, never ``.svs``).

    Raises:
        DataError: naming the file, when it cannot be read.
    """
    return open_image(path, swap_rb=swap_rb, tiled=tiled, max_whole_pixels=max_whole_pixels)
