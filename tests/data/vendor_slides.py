"""Tiny whole-slide files in vendor formats that OpenSlide reads, written by the tests themselves (no slide is
downloaded or shipped): a Hamamatsu NDPI and a 3DHISTECH MIRAX slide.

The layouts follow OpenSlide's public format notes (openslide.org/formats/hamamatsu, /mirax) and what its readers
check; both hold JPEG-compressed pixels, so a read-back image equals the written one within JPEG error (quality 95,
no chroma subsampling: a few grey levels on smooth images).

**NDPI** (``write_ndpi``): a little-endian TIFF in the NDPI layout -- classic TIFF pretending to be BigTIFF: the
header's first-IFD offset is followed by 4 zero bytes, each IFD ends with an 8-byte next-IFD offset followed by one
4-byte "high word" per entry (all zero in a file under 4 GiB), and ASCII values are always stored out of line::

    header  "II" 42 <uint32 first IFD> <uint32 0>
    level k JPEG   one baseline JPEG of the whole level (one strip), restart markers every ``restart_blocks`` MCUs:
                   each restart interval (``8 * restart_blocks`` x 8 px) is a tile OpenSlide decodes on its own
    IFD k   ImageWidth, ImageLength, BitsPerSample 8,8,8, Compression 7 (JPEG), Photometric 6 (YCbCr),
            Make "Hamamatsu", StripOffsets / StripByteCounts / RowsPerStrip (one strip), SamplesPerPixel 3,
            X/YResolution in pixels per cm (ResolutionUnit 3: OpenSlide's and tifffile's resolution),
            YCbCrSubSampling 1,1, and the private NDPI tags 65420 (format flag, what OpenSlide detects the format
            by), 65421 (source lens, FLOAT: the objective's magnification; > 0 marks a pyramid level),
            65422 / 65423 (X / Y offset from the slide centre, nm), 65424 (focal plane 0),
            65426 (McuStarts: where each restart interval's data begins, relative to the strip),
            65427 (reference)

Level k is level 0 reduced ``2**k`` times (box filter), levels in decreasing width, as OpenSlide requires.

**MIRAX** (``write_mirax``): ``NAME.mrxs`` (OpenSlide only checks that it exists) and the folder ``NAME/``::

    NAME/Slidedat.ini   key file (UTF-8 BOM, CRLF): [GENERAL] SLIDE_ID, IMAGENUMBER_X / _Y (images across / down at
                        level 0), OBJECTIVE_MAGNIFICATION, CameraImageDivisionsPerSide 1; [HIERARCHICAL] INDEXFILE,
                        HIER_COUNT 1 (HIER_0_NAME "Slide zoom level", one value and section per level),
                        NONHIER_COUNT 0; [DATAFILE] FILE_COUNT 1, FILE_0 Data0000.dat; one section per level:
                        IMAGE_FORMAT JPEG, DIGITIZER_WIDTH / _HEIGHT (the image size), OVERLAP_X / _Y 0,
                        MICROMETER_PER_PIXEL_X / _Y (OpenSlide's mpp), IMAGE_CONCAT_FACTOR (0 at level 0, then 1:
                        each level halves the previous), IMAGE_FILL_COLOR_BGR
    NAME/Index.dat      "01.02" + SLIDE_ID, then two little-endian int32 pointers: the hierarchical root (a table
                        of one pointer per level -> [0, pointer to a data page]; a page is [entry count, next page
                        0, entries of (image index y * IMAGENUMBER_X + x, offset, length, data file number)]) and
                        the non-hierarchical root (an empty table: no position map, no macro / label images)
    NAME/Data0000.dat   the images' JPEGs, one after the other

Level 0 is cut into ``tile`` sized images; level k's images are 2**k x 2**k level-0 images reduced to one image of
the same size, indexed by their top-left level-0 image. Without a position map and with no overlap, OpenSlide places
the images edge to edge.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_ndpi", "write_mirax", "he_like_image", "jpeg_bytes"]


def he_like_image(h: int, w: int, seed: int = 0, nuclei: int = 12, radius: int = 6) -> np.ndarray:
    """A smooth H&E-like RGB uint8 image: a pink background with a gentle gradient and dark purple discs (nuclei).

    Smooth content keeps JPEG's error small, so read-back pixels can be compared with the written ones.

    Returns:
        ``(h, w, 3)`` uint8.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.empty((h, w, 3), np.float64)
    image[..., 0] = 235 - 15 * yy / max(h - 1, 1)
    image[..., 1] = 190 + 20 * xx / max(w - 1, 1)
    image[..., 2] = 215
    for _ in range(nuclei):
        cy, cx = rng.integers(radius, h - radius), rng.integers(radius, w - radius)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (75, 45, 120)
    return np.round(image).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95, restart_blocks: int = 0) -> bytes:
    """Baseline JFIF JPEG (Y Cb Cr, no chroma subsampling: 8 x 8 px MCUs) of an RGB uint8 image, with a restart
    marker every ``restart_blocks`` MCUs (0: none)."""
    buf = io.BytesIO()
    extra = {"restart_marker_blocks": int(restart_blocks)} if restart_blocks else {}
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=0, **extra)
    data = buf.getvalue()
    if restart_blocks and b"\xff\xdd" not in data:  # DRI segment: older Pillow ignores the option silently
        raise RuntimeError("Pillow >= 10.2 is needed to write JPEG restart markers (restart_marker_blocks)")
    return data


def _halve(image: np.ndarray) -> np.ndarray:
    """2 x 2 box reduction of an image with even sides."""
    return np.round(image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2, 3).mean(axis=(1, 3))).astype(np.uint8)


def _mcu_starts(jpeg: bytes) -> list[int]:
    """Offsets (from the JPEG's start) of each restart interval's entropy-coded data: after the SOS segment, then
    after each RSTn marker (0xFFD0-0xFFD7; inside entropy-coded data a 0xFF byte is otherwise followed by 0x00)."""
    pos = 2  # after SOI
    while True:
        marker, length = jpeg[pos + 1], struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        pos += 2 + length
        if marker == 0xDA:  # SOS: the entropy-coded data begin here
            break
    starts = [pos]
    i = pos
    while True:
        i = jpeg.find(b"\xff", i)
        if i < 0 or i + 1 >= len(jpeg):
            break
        if 0xD0 <= jpeg[i + 1] <= 0xD7:
            starts.append(i + 2)
        i += 2
    return starts


# TIFF field types: (code, struct format of one value)
_SHORT, _LONG, _RATIONAL, _SLONG, _FLOAT, _ASCII = (3, "H"), (4, "I"), (5, "II"), (9, "i"), (11, "f"), (2, "s")


def _ndpi_ifd(entries: dict[int, tuple[tuple[int, str], list]], at: int) -> bytes:
    """One IFD in the NDPI layout, to be written at file offset ``at``: entries, 8-byte next offset (patched later),
    4-byte high words (0), then the out-of-line values."""
    n = len(entries)
    head = struct.pack("<H", n)
    values = b""
    values_at = at + 2 + 12 * n + 8 + 4 * n
    for tag in sorted(entries):
        (code, fmt), vals = entries[tag]
        if code == 2:
            data = vals[0].encode("ascii") + b"\0"
            count = len(data)
        else:
            flat = [v for pair in vals for v in pair] if code == 5 else vals
            data = struct.pack("<" + fmt[-1] * len(flat), *flat)
            count = len(vals)
        if len(data) <= 4 and code != 2:  # inline (ASCII never is in NDPI)
            field = data.ljust(4, b"\0")
        else:
            if len(values) % 2:
                values += b"\0"
            field = struct.pack("<I", values_at + len(values))
            values += data
        head += struct.pack("<HHI", tag, code, count) + field
    return head + struct.pack("<Q", 0) + b"\0" * (4 * n) + values


def write_ndpi(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float | None = 0.5,
    lens: float | None = 20.0,
    levels: int = 2,
    quality: int = 95,
    restart_blocks: int = 8,
) -> list[np.ndarray]:
    """Write ``image`` as a Hamamatsu NDPI slide (layout in the module docstring).

    Args:
        path: the ``.ndpi`` file to write.
        image: level 0, RGB uint8 ``(H, W, 3)``; ``H`` a multiple of ``8 * 2**(levels-1)``, ``W`` of
            ``8 * restart_blocks * 2**(levels-1)`` (whole restart intervals at every level).
        mpp: microns per pixel of level 0 (written as XResolution = YResolution = 10000 / mpp pixels per cm);
            ``None``: no resolution tags (the file does not say).
        lens: the source lens (objective magnification); ``None``: no source lens tag, which OpenSlide refuses
            (it tells pyramid levels from the macro image by it).
        levels: pyramid levels.
        quality: JPEG quality.
        restart_blocks: MCUs (8 x 8 px) per restart interval (OpenSlide's tile width / 8).

    Returns:
        the levels' pixels as written (before JPEG), level 0 first.

    Raises:
        ValueError: sides that do not hold whole restart intervals at every level.
    """
    h, w = image.shape[:2]
    step = 2 ** (levels - 1)
    if h % (8 * step) or w % (8 * restart_blocks * step):
        raise ValueError(f"{path}: {h} x {w} px does not hold whole {8 * restart_blocks} x 8 tiles at every level")
    pyramid = [np.ascontiguousarray(image)]
    for _ in range(levels - 1):
        pyramid.append(_halve(pyramid[-1]))
    out = bytearray(b"II*\0" + struct.pack("<II", 0, 0))  # first-IFD offset patched below; 4 zero bytes (NDPI)
    strips = []
    for level in pyramid:
        jpeg = jpeg_bytes(level, quality, restart_blocks)
        strips.append((len(out), jpeg))
        out += jpeg
    previous_next = 4  # where the pointer to the next IFD goes
    for k, (level, (offset, jpeg)) in enumerate(zip(pyramid, strips)):
        if len(out) % 2:
            out += b"\0"
        lh, lw = level.shape[:2]
        entries = {
            254: (_LONG, [0]), 256: (_LONG, [lw]), 257: (_LONG, [lh]), 258: (_SHORT, [8, 8, 8]),
            259: (_SHORT, [7]), 262: (_SHORT, [6]), 271: (_ASCII, ["Hamamatsu"]), 273: (_LONG, [offset]),
            277: (_SHORT, [3]), 278: (_LONG, [lh]), 279: (_LONG, [len(jpeg)]),
            530: (_SHORT, [1, 1]),
            65420: (_LONG, [1]), 65422: (_SLONG, [0]), 65423: (_SLONG, [0]),
            65424: (_SLONG, [0]), 65426: (_LONG, _mcu_starts(jpeg)), 65427: (_ASCII, ["test fixture"]),
        }
        if lens is not None:
            entries[65421] = (_FLOAT, [lens / 2**k])
        if mpp is not None:  # pixels per cm as a rational with 3 decimals
            per_cm = round(10000.0 / (mpp * 2**k) * 1000)
            entries.update({282: (_RATIONAL, [(per_cm, 1000)]), 283: (_RATIONAL, [(per_cm, 1000)]),
                            296: (_SHORT, [3])})
        at = len(out)
        struct.pack_into("<I", out, previous_next, at)
        out += _ndpi_ifd(entries, at)
        previous_next = at + 2 + 12 * len(entries)  # its 8-byte next-IFD offset (low word; high word stays 0)
    Path(path).write_bytes(bytes(out))
    return pyramid


def write_mirax(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float = 0.25,
    tile: tuple[int, int] = (64, 64),
    levels: int = 2,
    magnification: int = 40,
    quality: int = 95,
    slide_id: str = "0123456789abcdef0123456789abcdef",
    missing: tuple[tuple[int, int], ...] = (),
) -> list[np.ndarray]:
    """Write ``image`` as a 3DHISTECH MIRAX slide: ``path`` (``.mrxs``) and its data folder (module docstring).

    Args:
        path: the ``.mrxs`` file to write; the folder of the same name without the suffix is created beside it.
        image: level 0, RGB uint8 ``(H, W, 3)``, ``H`` and ``W`` multiples of ``tile``'s sides.
        mpp: microns per pixel of level 0 (``MICROMETER_PER_PIXEL_X`` / ``_Y``).
        tile: ``(height, width)`` of one stored image, multiples of 8.
        levels: pyramid levels.
        magnification: ``OBJECTIVE_MAGNIFICATION``.
        quality: JPEG quality.
        slide_id: ``SLIDE_ID`` (also written at the start of ``Index.dat``).
        missing: ``(row, column)`` of level-0 images left out of the index (camera positions the scanner skipped:
            OpenSlide returns them transparent); the other levels keep them.

    Returns:
        the levels' pixels as written (before JPEG), level 0 first, each covering whole stored images (white
        where a level's last image reaches past the slide).

    Raises:
        ValueError: a path without ``.mrxs``, or sides that are not multiples of ``tile``.
    """
    path = Path(path)
    if path.suffix != ".mrxs":
        raise ValueError(f"{path}: a MIRAX slide file ends in .mrxs")
    th, tw = tile
    h, w = image.shape[:2]
    if h % th or w % tw:
        raise ValueError(f"{path}: {h} x {w} px is not a whole number of {th} x {tw} images")
    across, down = w // tw, h // th
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)

    data = bytearray()
    pages: list[list[tuple[int, int, int, int]]] = []  # per level: (image index, offset, length, file number)
    pyramid = []
    for k in range(levels):
        n = 2**k  # level-0 images per image of this level, along each side
        rows, cols = -(-down // n), -(-across // n)
        canvas = np.full((rows * n * th, cols * n * tw, 3), 255, np.uint8)  # white past the slide's edge
        canvas[:h, :w] = image
        level = canvas
        for _ in range(k):
            level = _halve(level)
        pyramid.append(level)
        entries = []
        for r in range(rows):
            for c in range(cols):
                if k == 0 and (r, c) in missing:
                    continue
                jpeg = jpeg_bytes(level[r * th : (r + 1) * th, c * tw : (c + 1) * tw], quality)
                entries.append(((r * n) * across + c * n, len(data), len(jpeg), 0))
                data += jpeg
        pages.append(entries)
    (folder / "Data0000.dat").write_bytes(bytes(data))

    # Index.dat: version + slide id, the two roots, the per-level pointer table, per level [0, page], the pages
    head = b"01.02" + slide_id.encode("ascii")
    hier_table = len(head) + 8
    nonhier_table = hier_table + 4 * levels
    level_records = nonhier_table + 4
    page_at = level_records + 8 * levels
    index = bytearray(head + struct.pack("<ii", hier_table, nonhier_table))
    page_offsets = []
    for entries in pages:
        page_offsets.append(page_at)
        page_at += 8 + 16 * len(entries)
    index += struct.pack(f"<{levels}i", *(level_records + 8 * k for k in range(levels)))
    index += struct.pack("<i", 0)  # the (empty) non-hierarchical table
    for k in range(levels):
        index += struct.pack("<ii", 0, page_offsets[k])
    for entries in pages:
        index += struct.pack("<ii", len(entries), 0)
        for entry in entries:
            index += struct.pack("<iiii", *entry)
    (folder / "Index.dat").write_bytes(bytes(index))

    lines = [
        "[GENERAL]", f"SLIDE_ID = {slide_id}", f"IMAGENUMBER_X = {across}", f"IMAGENUMBER_Y = {down}",
        f"OBJECTIVE_MAGNIFICATION = {magnification}", "CameraImageDivisionsPerSide = 1",
        "[HIERARCHICAL]", "INDEXFILE = Index.dat", "HIER_COUNT = 1", "NONHIER_COUNT = 0",
        "HIER_0_NAME = Slide zoom level", f"HIER_0_COUNT = {levels}",
    ]
    lines += [f"HIER_0_VAL_{k} = ZoomLevel_{k}" for k in range(levels)]
    lines += [f"HIER_0_VAL_{k}_SECTION = LAYER_0_LEVEL_{k}_SECTION" for k in range(levels)]
    lines += ["[DATAFILE]", "FILE_COUNT = 1", "FILE_0 = Data0000.dat"]
    for k in range(levels):
        lines += [
            f"[LAYER_0_LEVEL_{k}_SECTION]", "IMAGE_FORMAT = JPEG", f"DIGITIZER_WIDTH = {tw}",
            f"DIGITIZER_HEIGHT = {th}", "OVERLAP_X = 0", "OVERLAP_Y = 0",
            f"MICROMETER_PER_PIXEL_X = {mpp * 2**k}", f"MICROMETER_PER_PIXEL_Y = {mpp * 2**k}",
            f"IMAGE_CONCAT_FACTOR = {0 if k == 0 else 1}", "IMAGE_FILL_COLOR_BGR = 16777215",
        ]
    (folder / "Slidedat.ini").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    path.write_bytes(b"MIRAX slide: see the folder " + folder.name.encode("utf-8") + b"\n")
    return pyramid
