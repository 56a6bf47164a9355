"""Level 0 of a vendor's whole-slide file read with OpenSlide (the ``openslide-python`` / ``openslide-bin`` wheels):
Aperio ``.svs`` (JPEG, JPEG 2000 YCbCr ``33003`` and RGB ``33005`` tiles), Hamamatsu, Leica, Philips, Ventana ...;
transparent pixels (outside the scanned area, missing tiles) composited onto white."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DataError
from .pixels import composite_on_white
from .tiff_format import plausible_mpp

__all__ = ["OpenSlideRegionReader", "openslide_format"]


def openslide_format(path: str | os.PathLike) -> str | None:
    """The vendor format OpenSlide recognises in ``path`` (``"aperio"``, ``"hamamatsu"`` ...), or ``None``: not a
    vendor's whole-slide file (a plain TIFF, which OpenSlide calls ``"generic-tiff"``), or OpenSlide not installed."""
    try:
        import openslide
    except (ImportError, OSError):  # the wheel or its shared library is missing: tifffile reads everything
        return None
    try:
        vendor = openslide.OpenSlide.detect_format(os.fspath(path))
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader that tries it
        return None
    return None if vendor in (None, "generic-tiff") else str(vendor)


class OpenSlideRegionReader:
    """Rectangles of level 0 of a whole-slide file read with OpenSlide; transparent pixels (outside the scanned
    area, missing tiles) are composited onto white.

    Args:
        path: a file OpenSlide recognises (see :func:`openslide_format`).
        swap_rb: the file stores B, G, R.

    Raises:
        DataError: OpenSlide cannot open the file.
    """

    tiled = True
    backend = "openslide"

    def __init__(self, path: str | os.PathLike, swap_rb: bool = False) -> None:
        import openslide

        self.path = os.fspath(path)
        self.swap_rb = swap_rb
        try:
            self._slide = openslide.OpenSlide(self.path)
        except Exception as e:  # noqa: BLE001
            raise DataError(self.path, f"unreadable image (OpenSlide: {type(e).__name__}: {e})") from None
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
        width, height = self._slide.dimensions
        self.shape: tuple[int, int] = (int(height), int(width))
        try:  # outside PLAUSIBLE_MPP (e.g. a 72 dpi default in a file's TIFF resolution tags) counts as unknown
            self.mpp: float | None = plausible_mpp(float(self._slide.properties[openslide.PROPERTY_NAME_MPP_X]))
        except (KeyError, ValueError):
            self.mpp = None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the image) as a contiguous RGB uint8 array (OpenSlide handles are
        thread-safe).

        Raises:
            DataError: OpenSlide cannot decode the region.
        """
        return self.read_region(y0, y1, x0, x1)[0]

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(read(...), transparent)``: the pixels and a bool mask of those with alpha 0 (outside the scanned area,
        missing tiles; ``None``: no such pixel).

        Raises:
            DataError: OpenSlide cannot decode the region.
        """
        try:
            region = self._slide.read_region((int(x0), int(y0)), 0, (int(x1 - x0), int(y1 - y0)))
            rgba = np.asarray(region)  # straight (un-premultiplied) RGBA
        except Exception as e:  # noqa: BLE001
            raise DataError(self.path, f"cannot decode region y {y0}:{y1}, x {x0}:{x1} ({type(e).__name__}: {e})") from None
        rgb = composite_on_white(rgba[..., :3], rgba[..., 3])
        clear = rgba[..., 3] == 0
        if self.swap_rb:
            rgb = rgb[..., ::-1]
        return np.ascontiguousarray(rgb), (clear if clear.any() else None)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> OpenSlideRegionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
