"""The one pixel-reading path of the project: ``nasscam prepare`` and the inference workflow read every image here, as
RGB uint8, so that the image a viewer shows is the image the network sees.

Which reader reads what:

- **OpenSlide** (the ``openslide-python`` / ``openslide-bin`` wheels) reads every file it recognises as a vendor's
  whole-slide format (Aperio ``.svs`` -- JPEG, JPEG 2000 YCbCr ``33003`` and RGB ``33005`` tiles --, Hamamatsu,
  Leica, Philips, Ventana ...), level 0, through :class:`OpenSlideRegionReader`: ``.svs`` and ``.tif`` files it
  takes as a vendor's, and the :data:`OPENSLIDE_SUFFIXES` (``.ndpi``, ``.vms``, ``.vmu``, ``.mrxs``, ``.scn``,
  ``.bif``, ``.svslide``). Its resolution is OpenSlide's ``openslide.mpp-x`` (a value outside
  :data:`PLAUSIBLE_MPP` counts as unknown, as for tifffile).
- **tifffile** (``imagecodecs`` codecs) reads every other TIFF -- plain tiled or stripped TIFFs, MoNuSAC ``.tif``
  copies, ``.svs`` files OpenSlide does not take as Aperio (e.g. written with a second ``ImageDescription`` tag) --
  segment by segment, through :class:`TiffRegionReader`; also a TIFF-based vendor file OpenSlide recognises but
  cannot open (e.g. tiles in a compression it lacks; an NDPI level is decoded restart interval by restart interval,
  with tifffile's NDPI support), and OME-TIFF (``.ome.tif``: the first series, level 0 of its pyramid). A slide that
  is not a TIFF (MIRAX, VMS ...) and that OpenSlide refuses or does not recognise is reported with its reason.
  OpenSlide's generic-TIFF driver is not used: it reads only tiled files, through libtiff's 8-bit RGBA path, while
  tifffile reads strips, 16-bit, planar and grey samples exactly. The resolution comes from the Aperio description,
  OME-XML ``PhysicalSizeX`` or the TIFF resolution tags (:func:`tiff_mpp`).
- **PIL** reads PNG, JPEG, BMP (decoded whole), through :class:`ArrayRegionReader`.

What stays hand-written, because no reader does it: transparent pixels are composited onto **white** (OpenSlide
returns them as ``(0, 0, 0, 0)``, tifffile and PIL return the raw samples), so a transparent slide margin reads as
glass; and where tifffile hands back a JPEG 2000 ``33003`` codestream's Y, Cb, Cr samples unconverted (a codestream
without chroma subsampling) or an uncompressed YCbCr TIFF, they are converted to RGB with OpenSlide's arithmetic
(:func:`ycbcr_to_rgb`). Every reader's ``read_region`` also returns the mask of fully transparent pixels, which
inference keeps out of the class map. MONAI's ``WSIReader`` is not used: its OpenSlide backend is this same library,
and its tifffile backend returns 33003 tiles as Y, Cb, Cr and drops alpha like a bare tifffile read.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from typing import Any, Union

import numpy as np

from ..errors import DataError

__all__ = [
    "read_rgb",
    "open_image",
    "ArrayRegionReader",
    "TiffRegionReader",
    "OpenSlideRegionReader",
    "RegionReader",
    "composite_on_white",
    "ycbcr_to_rgb",
    "pixels_to_uint8",
    "openslide_format",
    "tiff_mpp",
    "read_mpp",
    "TIFF_SUFFIXES",
    "OPENSLIDE_SUFFIXES",
]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".svs", ".tif", ".tiff")
#: whole-slide formats OpenSlide reads besides TIFF / SVS: Hamamatsu (``.ndpi``, ``.vms``, ``.vmu``), 3DHISTECH
#: MIRAX (``.mrxs``, with its data folder beside it), Leica (``.scn``), Ventana (``.bif``), Sakura (``.svslide``)
OPENSLIDE_SUFFIXES = (".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide")
#: the TIFF-based ones among them, read with tifffile when OpenSlide cannot open them
_TIFF_LIKE = (".ndpi", ".scn", ".bif")

#: TIFF compression of Aperio JPEG 2000 tiles whose codestream holds Y, Cb, Cr (33005 holds R, G, B).
APERIO_JP2K_YCBCR = 33003


# ------------------------------------------------------------------------------------------------- pixels
def pixels_to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit pixels from 8-bit, 16-bit (high byte) or boolean ones; other types raise ``ValueError``."""
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    return arr


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Composite colour samples over a white background.

    Args:
        rgb: ``(..., 3)`` uint8 colour samples.
        alpha: ``(...)`` uint8 opacity, 0 transparent, 255 opaque.
        premultiplied: the colour samples are premultiplied by alpha (TIFF "associated" alpha).

    Returns:
        ``(..., 3)`` uint8: ``c * a + 255 * (1 - a)`` (``c + 255 * (1 - a)`` when premultiplied), rounded; a
        transparent pixel is ``(255, 255, 255)`` and an opaque one is unchanged.
    """
    see_through = alpha < 255
    out = np.array(rgb[..., :3], dtype=np.uint8, order="C")
    if not see_through.any():  # the usual case: an opaque image or region, nothing to blend
        return out
    c = out[see_through].astype(np.int32)
    a = alpha[see_through].astype(np.int32)[:, None]
    if premultiplied:
        blended = c + (255 - a)
    else:
        blended = (c * a + 255 * (255 - a) + 127) // 255
    out[see_through] = np.clip(blended, 0, 255).astype(np.uint8)
    return out


def _c_round(x: np.ndarray) -> np.ndarray:
    """C's ``round`` (halves away from zero), as OpenSlide's tables are built."""
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int32)


_LEVELS = np.arange(256, dtype=np.float64) - 128.0
_R_CR = _c_round(1.402 * _LEVELS)
_G_CB = _c_round(65536.0 * (0.5 - 0.34414 * _LEVELS))  # fixed point, with the rounding half folded in
_G_CR = _c_round(65536.0 * -0.71414 * _LEVELS)
_B_CB = _c_round(1.772 * _LEVELS)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Full-range (JFIF, ITU-R BT.601) Y, Cb, Cr -> R, G, B, with OpenSlide's integer arithmetic for Aperio 33003
    tiles (``R = Y + 1.402 (Cr - 128)``, ``G = Y - 0.34414 (Cb - 128) - 0.71414 (Cr - 128)``,
    ``B = Y + 1.772 (Cb - 128)``, rounded, clipped to [0, 255]).

    Args:
        ycbcr: ``(..., 3)`` uint8.

    Returns:
        ``(..., 3)`` uint8 RGB.
    """
    y = ycbcr[..., 0].astype(np.int32)
    cb, cr = ycbcr[..., 1], ycbcr[..., 2]
    r = y + _R_CR[cr]
    g = y + ((_G_CB[cb] + _G_CR[cr]) >> 16)
    b = y + _B_CB[cb]
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _samples_to_rgb(arr: np.ndarray, alpha: str | None = None) -> np.ndarray:
    """``(H, W, samples)`` decoded samples -> RGB uint8: grey replicated, 16 bit -> 8 bit, alpha composited on white.

    Args:
        arr: 1 (grey), 2 (grey + alpha), 3 (RGB) or more (RGB + extra samples) samples per pixel.
        alpha: ``None`` (extra samples are not opacity and are dropped), ``"straight"`` or ``"premultiplied"``.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = pixels_to_uint8(arr)
    n = arr.shape[-1]
    if n in (1, 2):
        colour, extra = np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1] if n == 2 else None
    elif n >= 3:
        colour, extra = arr[..., :3], arr[..., 3] if n >= 4 else None
    else:
        raise ValueError(f"expected grey or RGB samples, got an array of shape {arr.shape}")
    if alpha is not None and extra is not None:
        return composite_on_white(colour, extra, premultiplied=alpha == "premultiplied")
    return np.ascontiguousarray(colour)


# ------------------------------------------------------------------------------------------- resolution
#: length units of OME ``PhysicalSizeXUnit`` in microns
_OME_UNITS = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
              "pm": 1e-6, "Å": 1e-4}
#: microns per pixel outside this range are not a microscope's (e.g. a 72 dpi default of an image editor)
PLAUSIBLE_MPP = (0.01, 100.0)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not np.isfinite(mpp) or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return float(mpp)


def tiff_mpp(tif: Any, page: Any) -> float | None:
    """Microns per pixel (along x) of a TIFF's level 0, from, in this order: an Aperio ``ImageDescription``
    (``MPP = 0.2520``), OME-XML (``PhysicalSizeX`` in ``PhysicalSizeXUnit``, microns by default), the TIFF
    ``XResolution`` with ``ResolutionUnit`` centimetre or inch. A value outside :data:`PLAUSIBLE_MPP` (e.g. the
    72 dpi an image editor writes) counts as unknown.

    Args:
        tif: the ``tifffile.TiffFile``.
        page: its level-0 page.

    Returns:
        microns per pixel, or ``None`` when the file does not say.
    """
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        try:
            return _plausible(float(m.group(1)))
        except ValueError:
            pass
    if getattr(tif, "is_ome", False):
        try:
            ome = tif.ome_metadata or ""
        except Exception:  # noqa: BLE001 - unreadable OME-XML: fall back to the TIFF tags
            ome = ""
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome)
        if pixels:
            size = re.search(r'\bPhysicalSizeX="([^"]+)"', pixels.group(0))
            unit = re.search(r'\bPhysicalSizeXUnit="([^"]+)"', pixels.group(0))
            factor = _OME_UNITS.get(unit.group(1) if unit else "µm")
            if size and factor is not None:
                try:
                    return _plausible(float(size.group(1)) * factor)
                except ValueError:
                    pass
    try:
        from tifffile import RESUNIT

        tag = page.tags.get("XResolution")
        unit = int(page.resolutionunit)
        if tag is not None and unit in (int(RESUNIT.CENTIMETER), int(RESUNIT.INCH)):
            num, den = tag.value
            per_unit = float(num) / float(den) if den else 0.0
            if per_unit > 0:
                return _plausible((1e4 if unit == int(RESUNIT.CENTIMETER) else 25400.0) / per_unit)
    except Exception:  # noqa: BLE001 - a malformed tag is no resolution
        return None
    return None


# ---------------------------------------------------------------------------------------------- readers
class ArrayRegionReader:
    """Rectangles of an RGB uint8 ``(H, W, 3)`` array held in memory.

    Args:
        image: the image.
        path: the file it came from (for messages).
        mpp: microns per pixel, if known.
        backend: the library that decoded the image (reported in logs).
        transparent: ``(H, W)`` bool, the pixels the file marks fully transparent (alpha 0: nothing scanned there;
            they hold white in ``image``), or ``None`` when there are none.

    Raises:
        ValueError: ``image`` is not an RGB uint8 ``(H, W, 3)`` array, or ``transparent`` has another shape.
    """

    tiled = False

    def __init__(
        self,
        image: np.ndarray,
        path: str = "<array>",
        mpp: float | None = None,
        backend: str = "array",
        transparent: np.ndarray | None = None,
    ) -> None:
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{path}: expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        if transparent is not None and tuple(transparent.shape) != tuple(image.shape[:2]):
            raise ValueError(f"{path}: transparency mask of shape {transparent.shape}, image of shape {image.shape[:2]}")
        self.image = image
        self.path = path
        self.mpp = mpp
        self.backend = backend
        self.transparent = transparent
        self.shape: tuple[int, int] = (int(image.shape[0]), int(image.shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the image) as a contiguous RGB uint8 array."""
        return np.ascontiguousarray(self.image[y0:y1, x0:x1])

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(read(...), transparent)``: the pixels and a bool mask of the fully transparent ones (``None``: none)."""
        clear = None if self.transparent is None else self.transparent[y0:y1, x0:x1]
        return self.read(y0, y1, x0, x1), (clear if clear is not None and clear.any() else None)

    def close(self) -> None:
        self.image = np.zeros((0, 0, 3), np.uint8)

    def __enter__(self) -> ArrayRegionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _j2k_chroma_subsampled(codestream: bytes) -> bool | None:
    """Whether a JPEG 2000 codestream's 2nd or 3rd component is subsampled (from its SIZ marker); ``None`` when the
    bytes are not a J2K codestream with at least 3 components."""
    if len(codestream) < 4 + 38 + 9 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    (n_comps,) = struct.unpack(">H", codestream[4 + 36 : 4 + 38])
    if n_comps < 3:
        return None
    comps = codestream[4 + 38 : 4 + 38 + 3 * 3]  # Ssiz, XRsiz, YRsiz per component
    return any(comps[3 * c + 1] != 1 or comps[3 * c + 2] != 1 for c in (1, 2))


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
        if data is not None and (self._ycbcr_page or (self._jp2k_ycbcr and _j2k_chroma_subsampled(raw) is False)):
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
                rgb = _samples_to_rgb(out, self._alpha)
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
            self.mpp: float | None = _plausible(float(self._slide.properties[openslide.PROPERTY_NAME_MPP_X]))
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


RegionReader = Union[ArrayRegionReader, TiffRegionReader, OpenSlideRegionReader]


def _read_pil(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and the mask of fully transparent pixels (``None``: none) of a PNG / JPEG / BMP ... file."""
    from PIL import Image

    with Image.open(path) as im:
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La")
        if has_alpha or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
            im = im.convert("RGBa" if im.mode in ("RGBa", "La") else "RGBA")
            arr = np.asarray(im)
            clear = arr[..., 3] == 0
            rgb = composite_on_white(arr[..., :3], arr[..., 3], premultiplied=im.mode == "RGBa")
            return rgb, (clear if clear.any() else None)
        if im.mode.startswith("I;16"):
            return _samples_to_rgb(np.asarray(im).astype(np.uint16)), None
        arr = np.asarray(im if im.mode in ("RGB", "L", "1") else im.convert("RGB"))
    return _samples_to_rgb(arr), None


def _is_tiff(path: str) -> bool:
    """Whether the file starts with a TIFF / BigTIFF header."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _unrecognised(path: str) -> DataError:
    """The error for a file with a whole-slide suffix that OpenSlide does not take for a slide (or cannot be loaded
    for): a MIRAX ``.mrxs`` without its data folder is named as such rather than as an unreadable image."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError) as e:
        return DataError(path, f"reading this whole-slide format needs OpenSlide (pip install openslide-python "
                               f"openslide-bin): {type(e).__name__}: {e}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".mrxs":
        folder = os.path.splitext(path)[0]
        return DataError(path, f"MIRAX slide without its data folder: expected {os.path.join(folder, 'Slidedat.ini')} "
                               f"(copy the .mrxs file together with the folder of the same name)")
    return DataError(path, f"OpenSlide does not recognise it as a {suffix} whole-slide file")


def _tiff_reader(path: str, swap: bool) -> TiffRegionReader | OpenSlideRegionReader:
    """OpenSlide for a vendor whole-slide file, tifffile for any other TIFF or when OpenSlide cannot open a TIFF-based
    one (a MIRAX, VMS ... slide OpenSlide refuses is not a TIFF: its error alone is raised)."""
    vendor = openslide_format(path)
    refused: DataError | None = None
    if vendor is not None:
        try:
            return OpenSlideRegionReader(path, swap_rb=swap)
        except DataError as e:
            if not _is_tiff(path):
                raise
            refused = e
            logger.info("%s: OpenSlide (%s) cannot open it (%s); reading it with tifffile", path, vendor, e.problem)
    try:
        return TiffRegionReader(path, swap_rb=swap)
    except DataError as e:
        if refused is None:
            raise
        raise DataError(path, f"{refused.problem}; tifffile: {e.problem}") from None


def open_image(
    path: str | os.PathLike, swap_rb: bool = False, tiled: bool | str = "auto", max_whole_pixels: int = 4096 * 4096
) -> RegionReader:
    """Open an image for reading as RGB uint8 (the reader is chosen as the module docstring says).

    Args:
        path: a PNG / JPEG / BMP / TIFF / SVS file (or any format PIL or OpenSlide reads).
        swap_rb: the file stores B, G, R (some MoNuSAC ``.tif`` copies); applies to ``.tif`` / ``.tiff`` files only.
        tiled: ``"auto"``: TIFF / SVS files larger than ``max_whole_pixels`` stay on disk and are read region by
            region, anything else is decoded whole into an :class:`ArrayRegionReader`; ``True``: every TIFF / SVS
            region by region; ``False``: always decoded whole.
        max_whole_pixels: size above which a TIFF is read region by region in ``"auto"`` mode.

    Returns:
        a reader with ``shape`` ``(H, W)``, ``mpp`` (microns per pixel or ``None``), ``backend``, ``tiled``,
        ``read(y0, y1, x0, x1)`` (RGB uint8), ``read_region(y0, y1, x0, x1)`` (RGB and the bool mask of fully
        transparent pixels, or ``None``) and ``close()``; the whole image is decoded by the same reader either way.

    Raises:
        DataError: naming the file, when it is missing, empty or cannot be read, or has a whole-slide suffix
            OpenSlide does not recognise (a ``.mrxs`` without its data folder is named as such).
    """
    path = os.fspath(path)
    low = path.lower()
    swap = bool(swap_rb) and low.endswith((".tif", ".tiff"))
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise DataError(path, "unreadable image (0 bytes)")
    if low.endswith(OPENSLIDE_SUFFIXES) and not low.endswith(_TIFF_LIKE) and openslide_format(path) is None:
        raise _unrecognised(path)
    if low.endswith(TIFF_SUFFIXES + _TIFF_LIKE) or (
        not low.endswith((".png", ".jpg", ".jpeg", ".bmp")) and openslide_format(path)
    ):
        forced = tiled is True or (isinstance(tiled, str) and tiled.strip().lower() == "true")
        reader = _tiff_reader(path, swap)
        big = reader.shape[0] * reader.shape[1] > int(max_whole_pixels)
        if forced or (tiled == "auto" and big):
            return reader
        if isinstance(reader, TiffRegionReader):
            reader.cache_bytes = 0  # each segment is decoded once: nothing to keep
        try:
            whole, clear = reader.read_region(0, reader.shape[0], 0, reader.shape[1])
        finally:
            reader.close()
        return ArrayRegionReader(whole, path, reader.mpp, backend=reader.backend, transparent=clear)
    try:
        image, clear = _read_pil(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one message naming the file
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from None
    if swap:
        image = np.ascontiguousarray(image[..., ::-1])
    return ArrayRegionReader(image, path, backend="PIL", transparent=clear)


def read_mpp(path: str | os.PathLike) -> float | None:
    """Microns per pixel recorded in an image file (the ``mpp`` of :func:`open_image`'s reader), without decoding
    its pixels; ``None`` when the file does not say (PNG, JPEG, a TIFF without a resolution) or cannot be opened."""
    path = os.fspath(path)
    low = path.lower()
    if not os.path.isfile(path):
        return None
    try:
        if low.endswith(TIFF_SUFFIXES + _TIFF_LIKE) or openslide_format(path):
            reader = _tiff_reader(path, False)
            try:
                return reader.mpp
            finally:
                reader.close()
    except DataError:
        return None
    return None


def read_rgb(path: str | os.PathLike, swap_rb: bool = False) -> np.ndarray:
    """Read a whole image as RGB uint8 ``(H, W, 3)`` -- the pixels :func:`open_image` gives the inference workflow.

    Aperio ``.svs`` (and other whole-slide formats) are read at level 0 by OpenSlide, other TIFFs by ``tifffile``,
    other formats by PIL (see the module docstring). Transparent pixels become white, Y Cb Cr samples are converted
    to RGB, grey is replicated, 16-bit data are reduced to 8 bits.

    Args:
        path: the image file.
        swap_rb: exchange the R and B channels of a ``.tif`` / ``.tiff`` (copies written in BGR order); other files
            are never swapped.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        DataError: the file is missing, empty, truncated, or not an image this module reads.
    """
    reader = open_image(path, swap_rb=swap_rb, tiled=False)
    try:
        return reader.read(0, reader.shape[0], 0, reader.shape[1])
    finally:
        reader.close()
