"""The one pixel-reading path of the project: ``nasscam prepare`` and the inference workflow read every image here, as
RGB uint8, so that the image a viewer shows is the image the network sees. :func:`open_image` opens any image for
reading rectangle by rectangle (or decoded whole), :func:`read_rgb` reads a whole one, :func:`read_mpp` its
resolution.

Which reader reads what:

- **OpenSlide** (the ``openslide-python`` / ``openslide-bin`` wheels) reads every file it recognises as a vendor's
  whole-slide format (Aperio ``.svs`` -- JPEG, JPEG 2000 YCbCr ``33003`` and RGB ``33005`` tiles --, Hamamatsu,
  Leica, Philips, Ventana ...), level 0, through
  :class:`~monai_nasscam.data.openslide_reader.OpenSlideRegionReader`: ``.svs`` and ``.tif`` files it takes as a
  vendor's, and the :data:`OPENSLIDE_SUFFIXES` (``.ndpi``, ``.vms``, ``.vmu``, ``.mrxs``, ``.scn``, ``.bif``,
  ``.svslide``). Its resolution is OpenSlide's ``openslide.mpp-x`` (a value outside
  :data:`~monai_nasscam.data.tiff_format.PLAUSIBLE_MPP` counts as unknown, as for tifffile).
- **tifffile** (``imagecodecs`` codecs) reads every other TIFF -- plain tiled or stripped TIFFs, MoNuSAC ``.tif``
  copies, ``.svs`` files OpenSlide does not take as Aperio (e.g. written with a second ``ImageDescription`` tag) --
  segment by segment, through :class:`~monai_nasscam.data.tiff_reader.TiffRegionReader`; also a TIFF-based vendor
  file OpenSlide recognises but cannot open (e.g. tiles in a compression it lacks; an NDPI level is decoded restart
  interval by restart interval, with tifffile's NDPI support), and OME-TIFF (``.ome.tif``: the first series, level 0
  of its pyramid). A slide that is not a TIFF (MIRAX, VMS ...) and that OpenSlide refuses or does not recognise is
  reported with its reason. OpenSlide's generic-TIFF driver is not used: it reads only tiled files, through
  libtiff's 8-bit RGBA path, while tifffile reads strips, 16-bit, planar and grey samples exactly. The resolution
  comes from the Aperio description, OME-XML ``PhysicalSizeX`` or the TIFF resolution tags
  (:mod:`monai_nasscam.data.tiff_format`).
- **PIL** reads PNG, JPEG, BMP (decoded whole), through :class:`ArrayRegionReader`.

What stays hand-written, because no reader does it: transparent pixels are composited onto **white** (OpenSlide
returns them as ``(0, 0, 0, 0)``, tifffile and PIL return the raw samples), so a transparent slide margin reads as
glass; and where tifffile hands back a JPEG 2000 ``33003`` codestream's Y, Cb, Cr samples unconverted (a codestream
without chroma subsampling) or an uncompressed YCbCr TIFF, they are converted to RGB with OpenSlide's arithmetic
(:mod:`monai_nasscam.data.pixels`). Every reader's ``read_region`` also returns the mask of fully transparent
pixels, which inference keeps out of the class map. MONAI's ``WSIReader`` is not used: its OpenSlide backend is this
same library, and its tifffile backend returns 33003 tiles as Y, Cb, Cr and drops alpha like a bare tifffile read.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Union

import numpy as np

from ..errors import DataError
from .openslide_reader import OpenSlideRegionReader, openslide_format
from .pixels import composite_on_white, samples_to_rgb
from .tiff_format import is_tiff
from .tiff_reader import TiffRegionReader

__all__ = [
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "OPENSLIDE_SUFFIXES",
    "ArrayRegionReader",
    "RegionReader",
    "open_image",
    "read_mpp",
    "read_rgb",
]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".svs", ".tif", ".tiff")
#: whole-slide formats OpenSlide reads besides TIFF / SVS: Hamamatsu (``.ndpi``, ``.vms``, ``.vmu``), 3DHISTECH
#: MIRAX (``.mrxs``, with its data folder beside it), Leica (``.scn``), Ventana (``.bif``), Sakura (``.svslide``)
OPENSLIDE_SUFFIXES = (".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide")
#: the TIFF-based ones among them, read with tifffile when OpenSlide cannot open them
_TIFF_LIKE = (".ndpi", ".scn", ".bif")
#: every file type the reading path takes (OME-TIFF ``.ome.tif`` / ``.ome.tiff`` among the TIFFs): what the inference
#: workflow picks up from a folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES + OPENSLIDE_SUFFIXES


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
            return samples_to_rgb(np.asarray(im).astype(np.uint16)), None
        arr = np.asarray(im if im.mode in ("RGB", "L", "1") else im.convert("RGB"))
    return samples_to_rgb(arr), None


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
            if not is_tiff(path):
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
