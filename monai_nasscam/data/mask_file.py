"""Reading one mask file as it is stored: palette indices (not their luminance), full bit depth (16- and 32-bit values
kept), a constant alpha band dropped, and the EXIF orientation of a file.

PNG and JPEG masks are read with PIL, TIFF masks with tifffile (any integer depth, palette TIFFs, planar samples).
Other tools' readers are the source of the silent wrong labels this module avoids: ``PIL.Image.convert("L")`` turns
palette indices into luminance, 8-bit readers cut 16-bit values, an RGBA reader returns four channels.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError

__all__ = ["MASK_SUFFIXES", "LOSSY_SUFFIXES", "read_mask", "exif_orientation", "orient", "oriented_shape"]

#: file suffixes of images and masks in an image + mask folder (PNG, TIFF, JPEG)
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: lossy formats: fine for colour masks (nearest colour), never for class indices or instance ids
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag (274) of an image file: 1 (as stored, also when absent or unreadable) to 8."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            value = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by its reader, not here
        return 1
    return value if 1 <= value <= 8 else 1


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn ``array`` (``(H, W, ...)``, any dtype) from its stored orientation to the one a viewer shows for the EXIF
    ``orientation`` -- what ``PIL.ImageOps.exif_transpose`` does to an image, for any dtype and channel count."""
    turns = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: np.swapaxes(a, 0, 1),
             6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turns[int(orientation)](array))


def oriented_shape(shape: tuple[int, ...], orientation: int) -> tuple[int, int]:
    """``(H, W)`` of an array of ``shape`` after :func:`orient` (5-8 exchange the sides)."""
    h, w = int(shape[0]), int(shape[1])
    return (w, h) if int(orientation) >= 5 else (h, w)


def _check_alpha(path: str, alpha: np.ndarray) -> None:
    """A constant alpha band is dropped by the callers; a varying one is refused (which class a transparent pixel
    has would be a guess)."""
    if alpha.size and alpha.min() != alpha.max():
        raise DataError(path, f"the mask's alpha band varies ({int(alpha.min())}-{int(alpha.max())}): transparency "
                              "does not say a class; flatten the mask onto its background colour")


def _integers(path: str, values: np.ndarray) -> np.ndarray:
    """Index / instance values as int64; floats only when every value is a whole number."""
    if values.dtype.kind == "b":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise DataError(path, f"{values.dtype} mask with fractional or non-finite values: store whole numbers")
    elif values.dtype.kind not in "iu":
        raise DataError(path, f"mask of {values.dtype} samples: expected integers")
    return values.astype(np.int64)


def _single_band(path: str, samples: np.ndarray) -> np.ndarray:
    """The one band of an index / instance mask: an RGB mask is accepted only when its three channels are equal."""
    if samples.ndim == 2:
        return samples
    if samples.ndim == 3 and samples.shape[-1] == 1:
        return samples[..., 0]
    if samples.ndim == 3 and samples.shape[-1] == 3:
        if (samples[..., 0] == samples[..., 1]).all() and (samples[..., 0] == samples[..., 2]).all():
            return samples[..., 0]
        raise DataError(path, "a colour mask (its R, G, B differ), not class indices: read colour masks with --palette")
    raise DataError(path, f"mask of shape {samples.shape}: expected one band (or RGB, RGBA)")


def _colour_samples(path: str, samples: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 from grey or RGB 8-bit samples."""
    if samples.dtype != np.uint8:
        raise DataError(path, f"{samples.dtype} samples are not an 8-bit colour mask; read index masks with "
                              "--index-masks")
    if samples.ndim == 3 and samples.shape[-1] == 1:
        samples = samples[..., 0]
    if samples.ndim == 2:
        return np.repeat(samples[..., None], 3, axis=2)
    if samples.ndim == 3 and samples.shape[-1] == 3:
        return samples
    raise DataError(path, f"mask of shape {samples.shape}: expected RGB (or grey) colours")


#: a single-band mask read as a colour mask by a palette with colours that are not grey
SINGLE_CHANNEL = "a single-channel (grey) image, while --palette reads colour masks: read class-index masks with --index-masks"


def _read_pil(path: str, colour: bool, grey: bool = True) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):  # an alpha band (a palette's transparent entry is not one)
            arr = np.asarray(im)
            _check_alpha(path, arr[..., -1])
            if colour and mode == "PA":
                return np.asarray(im.convert("RGBA"))[..., :3]
            if colour and not grey and mode in ("LA", "La"):
                raise DataError(path, SINGLE_CHANNEL)
            base = arr[..., :-1]
            return base[..., 0] if base.shape[-1] == 1 else base
        if colour:
            if not grey and (mode in ("L", "1") or mode.startswith(("I", "F"))):
                raise DataError(path, SINGLE_CHANNEL)
            if mode.startswith(("I", "F")):
                raise DataError(path, f"{mode} samples are not an 8-bit colour mask; read index masks with "
                                      "--index-masks")
            return np.asarray(im.convert("RGB"))  # a palette file through its palette
        if mode in ("RGB", "L", "P", "1") or mode.startswith(("I", "F")):
            return np.asarray(im)  # P: the palette indices themselves
        raise DataError(path, f"mask in PIL mode {mode}: expected grey, palette, 16-bit or RGB")


def _read_tiff(path: str, colour: bool, grey: bool = True) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        if int(page.planarconfig) == 2 and arr.ndim == 3:  # separate planes: (S, H, W)
            arr = np.moveaxis(arr, 0, -1)
        extra = len(page.extrasamples or ())
        if extra and arr.ndim == 3:
            bands = arr.shape[-1] - extra
            _check_alpha(path, arr[..., bands])
            arr = arr[..., :bands]
        if int(page.photometric) == 3 and colour:  # palette TIFF: look the indices up in its colour map
            cmap = np.asarray(page.colormap)
            scale = 257 if cmap.max() > 255 else 1
            return (cmap[:, arr].transpose(1, 2, 0) // scale).astype(np.uint8)
    if colour and not grey and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1)):
        raise DataError(path, SINGLE_CHANNEL)
    return arr


def read_mask(path: str | os.PathLike, colour: bool, grey: bool = True) -> np.ndarray:
    """Read a mask file's stored samples.

    Args:
        path: a PNG, TIFF or JPEG mask.
        colour: ``True`` for a colour mask, ``False`` for class indices or instance ids.
        grey: colour masks: accept a single-band (grey) file, its values replicated to R, G, B; ``False`` (a palette
            with colours that are not grey) refuses it: class indices or a colour mask saved as grey would read as
            near-black colours.

    Returns:
        colour: ``(H, W, 3)`` uint8 RGB (palette files through their palette, grey replicated); otherwise
        ``(H, W)`` int64 values (palette files: the indices, 16- and 32-bit values in full; an RGB file only when
        its channels are equal).

    Raises:
        DataError: naming the file: missing, empty, truncated or unreadable; a varying alpha band; samples that
            are not what ``colour`` asks for (a colour image given as indices, fractional values, a single-band file
            given as colours without ``grey``, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise DataError(path, "unreadable mask (0 bytes)")
    try:
        if path.lower().endswith((".tif", ".tiff")):
            arr = _read_tiff(path, colour, grey)
        else:
            arr = _read_pil(path, colour, grey)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one message naming the file
        raise DataError(path, f"unreadable mask ({type(e).__name__}: {e})") from None
    return _colour_samples(path, arr) if colour else _integers(path, _single_band(path, arr))
