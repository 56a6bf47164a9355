"""Read MoNuSAC images (Aperio ``.svs`` level 0, ``.tif``, or any PIL format) as RGB uint8 ``(H, W, 3)``."""

from __future__ import annotations

import os

import numpy as np

from .errors import DataError

__all__ = ["read_rgb"]

_TIFF_SUFFIXES = (".svs", ".tif", ".tiff")


def pixels_to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit pixels from 8-bit, 16-bit (high byte) or boolean ones; other types raise ``ValueError``."""
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    return arr


def _to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[0] == 1:  # e.g. the (Z=1, H, W, 3) baseline of an SVS
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image, got an array of shape {arr.shape}")
    arr = arr[..., :3]  # RGBA (e.g. OpenSlide-style readers) -> RGB
    arr = pixels_to_uint8(arr)
    return np.ascontiguousarray(arr)


def read_rgb(path: str | os.PathLike, swap_rb: bool = False) -> np.ndarray:
    """Read an image as RGB uint8.

    ``.svs`` / ``.tif`` files are read with ``tifffile`` (level 0 of the first series, so a whole-slide
    pyramid gives its full resolution; JPEG tiles are decoded by ``imagecodecs``); other formats with PIL.
    An alpha channel is dropped, 16-bit data are reduced to 8 bits.

    Args:
        path: the image file.
        swap_rb: exchange the R and B channels (for ``.tif`` copies written in BGR order).

    Raises:
        DataError: the file is missing, empty, truncated, or not an RGB image.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise DataError(path, "unreadable image (0 bytes)")
        if path.lower().endswith(_TIFF_SUFFIXES):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                arr = tif.series[0].asarray(level=0)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA", "L") else im)
        arr = _to_rgb_uint8(np.asarray(arr))
    except DataError:
        raise
    except Exception as e:  # any decoder failure becomes one message naming the file
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from None
    if swap_rb:
        arr = np.ascontiguousarray(arr[..., ::-1])
    return arr
