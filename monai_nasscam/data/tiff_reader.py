"""Level 0 of a TIFF read with ``tifffile``, rectangle by rectangle: only the segments (tiles or strips) a rectangle
touches are decoded, with a small cache, which is what makes whole-slide inference fit in a few GB. Plain TIFFs,
MoNuSAC ``.tif`` copies, ``.svs`` files OpenSlide does not take as Aperio, OME-TIFF (the first series) and TIFF-based
vendor files OpenSlide cannot open (an NDPI level restart interval by restart interval)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import DataError
from .pixels import pixels_to_uint8, samples_to_rgb, ycbcr_to_rgb
from .tiff_format import APERIO_JP2K_YCBCR, j2k_chroma_subsampled, tiff_mpp

__all__ = ["TiffRegionReader"]


class TiffRegionReader:
    """Rectangles of level 0 of a TIFF / SVS file read with ``tifffile``, decoding only the segments they touch.

    Decoded segments are kept in a small cache so that overlapping reads do not decode a tile twice; the file handle
    and the cache are shared safely by threads. Pixels: grey is replicated to RGB; 16-bit samples keep their high
    byte; a ``MINISWHITE`` image is inverted; a palette image is looked up in its colour map; an alpha sample
    (``ExtraSamples`` associated, unassociated, or unspecified as libtiff reads it: associated) is composited onto
    white; Y, Cb, Cr samples that the codec leaves unconverted (JPEG 2000 compression 33003 without chroma
    subsampling, uncompressed / deflate / LZW YCbCr) are converted by :func:`ycbcr_to_rgb`.

    Args:
        path: the ``.svs`` / ``.tif`` file.
        swap_rb: the file stores B, G, R (some MoNuSAC ``.tif`` copies).
        cache_bytes: size of the cache of decoded segments.

    Raises:
        DataError: the file cannot be opened or its level 0 is not an image this reader handles.
    """

    tiled = True
    backend = "tifffile"

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
        from tifffile import COMPRESSION, EXTRASAMPLE, PHOTOMETRIC

        series = self._tif.series[0]
        page = series.levels[0].pages[0] if hasattr(series, "levels") else series.pages[0]
        page = page.aspage() if hasattr(page, "aspage") else page
        if page.imagedepth != 1:
            raise DataError(self.path, f"volumetric TIFF (depth {page.imagedepth}) is not supported")
        self.page = page
        self.shape = (int(page.imagelength), int(page.imagewidth))
        self.mpp = self._mpp(page)
        self._decode = page.decode
        self._jpegheader = getattr(page, "jpegheader", None)
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

        photometric = int(page.photometric)
        if photometric not in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE, PHOTOMETRIC.RGB, PHOTOMETRIC.PALETTE,
                               PHOTOMETRIC.YCBCR):
            name = PHOTOMETRIC(photometric).name if photometric in PHOTOMETRIC._value2member_map_ else photometric
            raise DataError(self.path, f"photometric interpretation {name} is not supported (convert the image to RGB)")
        self._invert = photometric == PHOTOMETRIC.MINISWHITE
        self._colormap = None
        if photometric == PHOTOMETRIC.PALETTE:
            if page.colormap is None:
                raise DataError(self.path, "palette image without a colour map")
            self._colormap = pixels_to_uint8(np.asarray(page.colormap).T.astype(np.uint16))  # (entries, 3)
        colour = 3 if photometric in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR) else 1
        self._alpha: str | None = None
        if self.samples > colour and self._colormap is None:
            kind = int(page.extrasamples[0]) if page.extrasamples else int(EXTRASAMPLE.UNSPECIFIED)
            # libtiff (and so OpenSlide and most viewers) reads an unspecified extra sample as associated alpha
            self._alpha = "straight" if kind == EXTRASAMPLE.UNASSALPHA else "premultiplied"
        compression = int(page.compression)
        # Y, Cb, Cr returned by the decoder as they are: TIFF YCbCr without JPEG (JPEG decoders convert), or an
        # Aperio 33003 codestream (imagecodecs converts only a codestream with subsampled chroma, decided per tile)
        self._ycbcr_page = photometric == PHOTOMETRIC.YCBCR and compression not in (
            COMPRESSION.JPEG, COMPRESSION.OJPEG
        ) and compression != APERIO_JP2K_YCBCR
        self._jp2k_ycbcr = compression == APERIO_JP2K_YCBCR
        self._dtype = np.dtype(np.uint8) if (self._ycbcr_page or self._jp2k_ycbcr) else np.dtype(page.dtype)

    def _mpp(self, page: Any) -> float | None:
        """Microns per pixel of level 0 (:func:`tiff_mpp`)."""
        return tiff_mpp(self._tif, page)

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
        # outside the lock: decoders run in parallel; an NDPI level's segments are its restart intervals, decoded
        # after the JPEG header tifffile keeps for them (``jpegheader``)
        seg, _, _ = self._decode(raw, i, jpegtables=self.page.jpegtables, jpegheader=self._jpegheader)
        data = None if seg is None else seg[0]  # (rows, cols, samples)
        if data is not None and (self._ycbcr_page or (self._jp2k_ycbcr and j2k_chroma_subsampled(raw) is False)):
            data = np.concatenate([ycbcr_to_rgb(pixels_to_uint8(data[..., :3])), pixels_to_uint8(data[..., 3:])], -1)
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
        return self.read_region(y0, y1, x0, x1)[0]

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(read(...), transparent)``: the pixels and a bool mask of those with alpha 0 or in a segment the file
        does not store (``None``: no such pixel).

        Raises:
            DataError: a segment cannot be decoded (truncated or corrupt file).
        """
        h, w = y1 - y0, x1 - x0
        out = np.zeros((h, w, max(self.samples, 1)), dtype=self._dtype)
        missing: list[tuple[int, int, int, int]] = []
        pos, shp = self._seg_pos, self._seg_shape
        hit = np.nonzero(
            (pos[:, 1] < y1) & (pos[:, 1] + shp[:, 0] > y0) & (pos[:, 2] < x1) & (pos[:, 2] + shp[:, 1] > x0)
        )[0]
        try:
            for i in hit:
                plane, sy, sx = (int(v) for v in pos[i])
                seg = self._segment(int(i))
                sh, sw = (int(v) for v in shp[i]) if seg is None else seg.shape[:2]
                ay0, ay1 = max(y0, sy), min(y1, sy + sh)
                ax0, ax1 = max(x0, sx), min(x1, sx + sw)
                if ay1 <= ay0 or ax1 <= ax0:
                    continue
                if seg is None:  # a segment the file does not store (sparse): nothing was scanned there, as glass
                    missing.append((ay0 - y0, ay1 - y0, ax0 - x0, ax1 - x0))
                    continue
                block = seg[ay0 - sy : ay1 - sy, ax0 - sx : ax1 - sx]
                if self.separate:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, plane] = block[..., 0]
                else:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = block
            clear = None
            if self._colormap is not None:
                rgb = self._colormap[out[..., 0].astype(np.intp)]
            else:
                if self._alpha is not None:
                    clear = out[..., 1 if self.samples == 2 else 3] == 0
                if self._invert:
                    out = ~out if out.dtype == bool else np.iinfo(out.dtype).max - out
                rgb = samples_to_rgb(out, self._alpha)
            if missing:
                clear = np.zeros((h, w), dtype=bool) if clear is None else clear
            for my0, my1, mx0, mx1 in missing:
                rgb[my0:my1, mx0:mx1] = 255
                clear[my0:my1, mx0:mx1] = True  # type: ignore[index]
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - decoder errors name the file
            raise DataError(self.path, f"cannot decode region y {y0}:{y1}, x {x0}:{x1} ({type(e).__name__}: {e})") from None
        if self.swap_rb:
            rgb = rgb[..., ::-1]
        return np.ascontiguousarray(rgb), (clear if clear is not None and clear.any() else None)

    def close(self) -> None:
        self._cache.clear()
        self._cached = 0
        self._tif.close()

    def __enter__(self) -> TiffRegionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
