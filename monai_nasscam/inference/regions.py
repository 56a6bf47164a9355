"""Region readers: read any rectangle of an image as RGB uint8 without decoding (or holding) the rest.

:class:`TiffRegionReader` decodes only the TIFF segments (tiles or strips) of level 0 that a rectangle touches,
with ``tifffile`` (JPEG / JPEG 2000 / deflate / LZW ... through ``imagecodecs``), and keeps a small cache of
decoded segments so that overlapping reads do not decode a tile twice. It is what makes whole-slide
inference fit in a few GB. :class:`ArrayRegionReader` serves rectangles of an image already in memory (PNG,
JPEG, small TIFF). :func:`open_region_reader` picks one.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from monai_nasscam.data.errors import DataError
from monai_nasscam.data.slide import pixels_to_uint8, read_rgb

__all__ = ["ArrayRegionReader", "TiffRegionReader", "open_region_reader", "TIFF_SUFFIXES", "IMAGE_SUFFIXES"]

TIFF_SUFFIXES = (".svs", ".tif", ".tiff")
#: file types the inference workflow picks up from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES


def _segment_to_rgb(arr: np.ndarray) -> np.ndarray:
    """A decoded ``(rows, cols, samples)`` segment -> RGB uint8 (grey replicated, alpha dropped, 16 bit -> 8 bit)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = pixels_to_uint8(arr)
    if arr.shape[-1] in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    return arr[..., :3]


class ArrayRegionReader:
    """Rectangles of an RGB uint8 ``(H, W, 3)`` array held in memory.

    Args:
        image: the image.
        path: the file it came from (for messages).
        mpp: microns per pixel, if known.
    """

    tiled = False

    def __init__(self, image: np.ndarray, path: str = "<array>", mpp: float | None = None) -> None:
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{path}: expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        self.image = image
        self.path = path
        self.mpp = mpp
        self.shape: tuple[int, int] = (int(image.shape[0]), int(image.shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the image) as a contiguous RGB uint8 array."""
        return np.ascontiguousarray(self.image[y0:y1, x0:x1])

    def close(self) -> None:
        self.image = np.zeros((0, 0, 3), np.uint8)

    def __enter__(self) -> ArrayRegionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TiffRegionReader:
    """Rectangles of level 0 of a TIFF / SVS file, decoding only the segments they touch.

    Args:
        path: the ``.svs`` / ``.tif`` file.
        swap_rb: the file stores B, G, R (some MoNuSAC ``.tif`` copies).
        cache_bytes: size of the cache of decoded segments.

    Raises:
        DataError: the file cannot be opened or its level 0 is not an image this reader handles.
    """

    tiled = True

    def __init__(self, path: str | os.PathLike, swap_rb: bool = False, cache_bytes: int = 256 * 2**20) -> None:
        import tifffile

        self.path = os.fspath(path)
        self.swap_rb = swap_rb
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()  # the file handle and the cache are shared by the prefetching threads
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as e:  # noqa: BLE001 - any parser failure is "unreadable"
            raise DataError(self.path, f"unreadable image ({type(e).__name__}: {e})") from None
        try:
            self._init_page()
        except DataError:
            self._tif.close()
            raise
        except Exception as e:  # noqa: BLE001
            self._tif.close()
            raise DataError(self.path, f"unreadable image ({type(e).__name__}: {e})") from None

    def _init_page(self) -> None:
        series = self._tif.series[0]
        page = series.levels[0].pages[0] if hasattr(series, "levels") else series.pages[0]
        page = page.aspage() if hasattr(page, "aspage") else page
        if page.imagedepth != 1:
            raise DataError(self.path, f"volumetric TIFF (depth {page.imagedepth}) is not supported")
        self.page = page
        self.shape = (int(page.imagelength), int(page.imagewidth))
        self.mpp = self._mpp(page)
        self._decode = page.decode
        # position and size of every segment (decode(None, i) returns the geometry without reading data)
        n = len(page.dataoffsets)
        self._seg_pos = np.zeros((n, 3), dtype=np.int64)  # separate-sample plane, row, col
        self._seg_shape = np.zeros((n, 2), dtype=np.int64)
        for i in range(n):
            _, index, shape = self._decode(None, i)
            self._seg_pos[i] = (index[0], index[2], index[3])
            self._seg_shape[i] = (shape[1], shape[2])
        self.samples = int(page.samplesperpixel)
        self.separate = self._seg_pos[:, 0].max() > 0 if n else False

    @staticmethod
    def _mpp(page: Any) -> float | None:
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
        if m:
            try:
                return float(m.group(1))
            except ValueError:
                return None
        return None

    def _segment(self, i: int) -> np.ndarray | None:
        offset, count = self.page.dataoffsets[i], self.page.databytecounts[i]
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
            if count == 0 or offset == 0:
                return None
            fh = self._tif.filehandle
            fh.seek(offset)
            raw = fh.read(count)
        seg, _, _ = self._decode(raw, i, jpegtables=self.page.jpegtables)  # outside the lock: decoders run in parallel
        data = None if seg is None else seg[0]  # (rows, cols, samples)
        if data is not None:
            with self._lock:
                if i not in self._cache:
                    self._cache[i] = data
                    self._cached += data.nbytes
                while self._cached > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= old.nbytes
        return data

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the image) as a contiguous RGB uint8 array.

        Raises:
            DataError: a segment cannot be decoded (truncated or corrupt file).
        """
        h, w = y1 - y0, x1 - x0
        out = np.zeros((h, w, max(self.samples, 1)), dtype=self.page.dtype)
        pos, shp = self._seg_pos, self._seg_shape
        hit = np.nonzero(
            (pos[:, 1] < y1) & (pos[:, 1] + shp[:, 0] > y0) & (pos[:, 2] < x1) & (pos[:, 2] + shp[:, 1] > x0)
        )[0]
        try:
            for i in hit:
                seg = self._segment(int(i))
                if seg is None:
                    continue
                plane, sy, sx = (int(v) for v in pos[i])
                ay0, ay1 = max(y0, sy), min(y1, sy + seg.shape[0])
                ax0, ax1 = max(x0, sx), min(x1, sx + seg.shape[1])
                if ay1 <= ay0 or ax1 <= ax0:
                    continue
                block = seg[ay0 - sy : ay1 - sy, ax0 - sx : ax1 - sx]
                if self.separate:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, plane] = block[..., 0]
                else:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = block
            rgb = _segment_to_rgb(out)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - decoder errors name the file
            raise DataError(self.path, f"cannot decode region y {y0}:{y1}, x {x0}:{x1} ({type(e).__name__}: {e})") from None
        if self.swap_rb:
            rgb = rgb[..., ::-1]
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        self._cache.clear()
        self._cached = 0
        self._tif.close()

    def __enter__(self) -> TiffRegionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_region_reader(
    path: str | os.PathLike, tiled: bool | str = "auto", max_whole_pixels: int = 4096 * 4096, swap_rb: bool = False
) -> ArrayRegionReader | TiffRegionReader:
    """Open an image for region reading.

    Args:
        path: PNG / JPEG / BMP / TIFF / SVS file.
        tiled: ``"auto"``: TIFF / SVS files larger than ``max_whole_pixels`` are read segment by segment, anything
            else is decoded whole; ``True``: every TIFF / SVS segment by segment; ``False``: always decode whole.
        max_whole_pixels: size above which a TIFF is read segment by segment in ``"auto"`` mode.
        swap_rb: the file stores B, G, R (applies to ``.tif`` / ``.tiff``, never ``.svs``).

    Raises:
        DataError: naming the file, when it cannot be read.
    """
    path = os.fspath(path)
    low = path.lower()
    swap = bool(swap_rb) and not low.endswith(".svs")
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise DataError(path, "unreadable image (0 bytes)")
    if low.endswith(TIFF_SUFFIXES):
        reader = TiffRegionReader(path, swap_rb=swap)
        big = reader.shape[0] * reader.shape[1] > int(max_whole_pixels)
        if tiled is True or (tiled == "auto" and big):
            return reader
        mpp = reader.mpp
        reader.close()
        return ArrayRegionReader(read_rgb(path, swap_rb=swap), path, mpp)
    return ArrayRegionReader(read_rgb(path), path)
