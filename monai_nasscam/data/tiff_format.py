"""TIFF, OME-TIFF and JPEG 2000 parsing that the readers need and the decoders do not do: the TIFF header, a level's
resolution (Aperio ``ImageDescription``, OME-XML ``PhysicalSizeX``, the TIFF resolution tags) and whether an Aperio
JPEG 2000 codestream subsamples its chroma (its SIZ marker). A resolution outside :data:`PLAUSIBLE_MPP` counts as
unknown, whichever reader found it."""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np

__all__ = ["APERIO_JP2K_YCBCR", "PLAUSIBLE_MPP", "plausible_mpp", "tiff_mpp", "j2k_chroma_subsampled", "is_tiff"]

#: TIFF compression of Aperio JPEG 2000 tiles whose codestream holds Y, Cb, Cr (33005 holds R, G, B).
APERIO_JP2K_YCBCR = 33003

#: length units of OME ``PhysicalSizeXUnit`` in microns
_OME_UNITS = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
              "pm": 1e-6, "Å": 1e-4}
#: microns per pixel outside this range are not a microscope's (e.g. a 72 dpi default of an image editor)
PLAUSIBLE_MPP = (0.01, 100.0)


def plausible_mpp(mpp: float | None) -> float | None:
    """``mpp`` as a float when it lies in :data:`PLAUSIBLE_MPP`, else ``None`` (unknown)."""
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
            return plausible_mpp(float(m.group(1)))
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
                    return plausible_mpp(float(size.group(1)) * factor)
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
                return plausible_mpp((1e4 if unit == int(RESUNIT.CENTIMETER) else 25400.0) / per_unit)
    except Exception:  # noqa: BLE001 - a malformed tag is no resolution
        return None
    return None


def j2k_chroma_subsampled(codestream: bytes) -> bool | None:
    """Whether a JPEG 2000 codestream's 2nd or 3rd component is subsampled (from its SIZ marker); ``None`` when the
    bytes are not a J2K codestream with at least 3 components."""
    if len(codestream) < 4 + 38 + 9 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    (n_comps,) = struct.unpack(">H", codestream[4 + 36 : 4 + 38])
    if n_comps < 3:
        return None
    comps = codestream[4 + 38 : 4 + 38 + 3 * 3]  # Ssiz, XRsiz, YRsiz per component
    return any(comps[3 * c + 1] != 1 or comps[3 * c + 2] != 1 for c in (1, 2))


def is_tiff(path: str) -> bool:
    """Whether the file starts with a TIFF / BigTIFF header."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
