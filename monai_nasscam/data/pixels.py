"""Decoded pixel samples to RGB uint8, the one pixel format the project works in: 16-bit samples to 8 bits, grey to
RGB, an alpha sample composited onto white (a transparent slide margin reads as glass), and full-range Y, Cb, Cr to
R, G, B with OpenSlide's integer arithmetic (Aperio JPEG 2000 ``33003`` tiles). The readers of
:mod:`monai_nasscam.data.slide` call these on what their decoders return."""

from __future__ import annotations

import numpy as np

__all__ = ["pixels_to_uint8", "composite_on_white", "ycbcr_to_rgb", "samples_to_rgb"]


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


def samples_to_rgb(arr: np.ndarray, alpha: str | None = None) -> np.ndarray:
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
