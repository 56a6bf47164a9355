"""How the masks of an image + mask folder encode classes: the **palette** of colour masks (class -> RGB colour) and
the **value map** of class-index masks (mask value -> class).

Both map onto the class ids of the prepared label maps (0 background, 1-4 the nucleus classes of
:data:`~monai_nasscam.data.classes.CLASS_NAMES`) or onto ``ignore``: pixels left out of training and scoring
(written to the prepared ``ambiguous`` mask). Neither is ever guessed: a palette is a preset (``monusac``), a
JSON file or ``CLASS=COLOUR`` pairs, and the value map is the documented default :data:`DEFAULT_VALUES` unless
given, and is printed at the start of ``nasscam prepare``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .classes import CLASS_IDS, CLASS_NAMES, normalize_layer_name

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "IGNORE_ID",
    "PALETTE_PRESETS",
    "DEFAULT_VALUES",
    "Palette",
    "ValueMap",
    "class_id",
    "class_label",
    "parse_palette",
    "parse_value_map",
]

BACKGROUND = "background"
#: the class name of pixels left out of training and scoring (the prepared ``ambiguous`` mask)
IGNORE = "ignore"
#: the id of :data:`IGNORE` in the class-id arrays of this module (never written to a label map)
IGNORE_ID = 255

#: named palettes (class -> RGB). ``monusac``: the colours of the MoNuSAC 2020 image + mask mirrors
#: (e.g. the ``ImageMask-Dataset-MoNuSAC-2020`` masks).
PALETTE_PRESETS: dict[str, dict[str, tuple[int, int, int]]] = {
    "monusac": {
        BACKGROUND: (0, 0, 0),
        "Epithelial": (0, 255, 0),
        "Lymphocyte": (255, 255, 0),
        "Neutrophil": (255, 0, 0),
        "Macrophage": (0, 0, 255),
    },
}

#: the value map of class-index masks when none is given: the MoNuSAC class ids
DEFAULT_VALUES: dict[int, str] = {0: BACKGROUND, **{i: name for name, i in CLASS_IDS.items()}}


def class_id(name: str, where: str = "class") -> int:
    """The class id of a class name: ``background`` 0, a nucleus class 1-4 (case, plural and trailing words such as
    ``cells`` ignored: ``macrophages`` is Macrophage), ``ignore`` :data:`IGNORE_ID`.

    Raises:
        ValueError: an unknown name, naming ``where`` and the names allowed.
    """
    text = str(name).strip()
    if text.lower() in (BACKGROUND, IGNORE):
        return 0 if text.lower() == BACKGROUND else IGNORE_ID
    canonical = normalize_layer_name(text)
    if canonical not in CLASS_IDS:
        raise ValueError(f"{where}: unknown class {name!r}; use one of {', '.join((BACKGROUND, *CLASS_NAMES, IGNORE))}")
    return CLASS_IDS[canonical]


def class_label(cid: int) -> str:
    """The name of a class id of this module (0 ``background``, 1-4 a class, :data:`IGNORE_ID` ``ignore``)."""
    return BACKGROUND if cid == 0 else IGNORE if cid == IGNORE_ID else CLASS_NAMES[cid - 1]


def _rgb(value: Any, where: str) -> tuple[int, int, int]:
    """``[r, g, b]``, ``"r,g,b"`` or ``"#rrggbb"`` -> an RGB triple of 0-255 integers."""
    parts = value
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"#?[0-9a-fA-F]{6}", text):
            text = text.lstrip("#")
            return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
        parts = [v for v in re.split(r"[,\s]+", text.strip("()[] ")) if v]
    try:
        rgb = tuple(int(v) for v in parts)
        ok = len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) and all(float(v) == int(v) for v in parts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: {value!r} is not an RGB colour; write 0,255,0 or #00ff00 (values 0-255)")
    return rgb  # type: ignore[return-value]


@dataclass(frozen=True)
class Palette:
    """The colours of colour masks: each pixel takes the class of the nearest colour (Euclidean RGB distance) when it
    lies within a tolerance of it; farther pixels are *unmatched* (left out; lossy JPEG masks have them at edges).

    Args:
        name: the preset name or where the palette came from (for the record).
        entries: ``((r, g, b), class id)`` pairs; class ids 0-4 or :data:`IGNORE_ID`; a class may have several
            colours, a colour one class.
    """

    name: str
    entries: tuple[tuple[tuple[int, int, int], int], ...]

    def classify(self, rgb: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
        """The class of every pixel of a colour mask.

        Args:
            rgb: ``(H, W, 3)`` uint8 colours.
            tolerance: the largest Euclidean RGB distance (0-442) at which a pixel takes its nearest colour's class.

        Returns:
            ``(ids, unmatched)``: ``(H, W)`` uint8 class ids of the nearest colour (0-4 or :data:`IGNORE_ID`) and the
            ``(H, W)`` bool mask of pixels farther than ``tolerance`` from every colour (their id is the nearest's).
        """
        packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        colours = np.unique(packed)  # a JPEG mask: ~1000 colours, not millions (np.unique's inverse sorts: slow)
        inverse = np.searchsorted(colours, packed)
        distinct = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float64)
        table = np.asarray([c for c, _ in self.entries], dtype=np.float64)
        dist = np.sqrt(((distinct[:, None, :] - table[None]) ** 2).sum(-1))
        nearest = dist.argmin(1)
        ids = np.asarray([cid for _, cid in self.entries], dtype=np.uint8)[nearest]
        far = dist[np.arange(len(colours)), nearest] > float(tolerance)
        return ids[inverse], far[inverse]

    @property
    def grey(self) -> bool:
        """Every class colour (background and nucleus classes; ``ignore`` colours aside) is grey (r = g = b): a
        single-channel mask can then be read with this palette, its value as r, g and b."""
        return all(c[0] == c[1] == c[2] for c, cid in self.entries if cid != IGNORE_ID)

    def describe(self) -> str:
        """One line: ``palette monusac: background (0, 0, 0), Epithelial (0, 255, 0), ...``."""
        return f"palette {self.name}: " + ", ".join(f"{class_label(cid)} {c}" for c, cid in self.entries)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "colours": {class name: [[r, g, b], ...]}}`` (for the manifest; :func:`parse_palette`
        reads the ``colours`` part back)."""
        colours: dict[str, list[list[int]]] = {}
        for c, cid in self.entries:
            colours.setdefault(class_label(cid), []).append(list(c))
        return {"name": self.name, "colours": colours}


def _palette_from_mapping(spec: Mapping[str, Any], name: str) -> Palette:
    entries: list[tuple[tuple[int, int, int], int]] = []
    seen: dict[tuple[int, int, int], int] = {}
    for cls, value in spec.items():
        cid = class_id(cls, f"palette {name}")
        where = f"palette {name}, {cls}"
        many = isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (list, tuple, str))
        for colour in [_rgb(v, where) for v in value] if many else [_rgb(value, where)]:
            if colour in seen and seen[colour] != cid:
                raise ValueError(f"palette {name}: colour {colour} is given to both {class_label(seen[colour])} and "
                                 f"{class_label(cid)}")
            if colour not in seen:
                seen[colour] = cid
                entries.append((colour, cid))
    if 0 not in seen.values():
        raise ValueError(f"palette {name}: no background colour; add background=R,G,B (e.g. background=0,0,0)")
    if not any(0 < cid <= len(CLASS_NAMES) for cid in seen.values()):
        raise ValueError(f"palette {name}: no nucleus class colour")
    return Palette(name, tuple(entries))


def parse_palette(spec: str | os.PathLike | Sequence[str] | Mapping[str, Any]) -> Palette:
    """Read a palette.

    Args:
        spec: a preset name of :data:`PALETTE_PRESETS` (``"monusac"``); the path of a JSON file
            ``{"background": [0, 0, 0], "Epithelial": [0, 255, 0], ...}`` (a colour as ``[r, g, b]``,
            ``"r,g,b"`` or ``"#rrggbb"``; a list of colours for a class with several; ``"ignore"`` for colours to
            leave out); ``CLASS=COLOUR`` strings (``["background=0,0,0", "Epithelial=#00ff00"]``); or a mapping
            like the file's. A background colour is required.

    Returns:
        the :class:`Palette`.

    Raises:
        ValueError: an unknown preset, an unreadable file, an unknown class, a malformed colour, a colour given to
            two classes, or no background / no nucleus colour; the message names the file or the entry.
    """
    if isinstance(spec, Mapping):
        return _palette_from_mapping(spec, "(given)")
    tokens = [os.fspath(spec)] if isinstance(spec, (str, os.PathLike)) else [str(t) for t in spec]
    if len(tokens) == 1 and "=" not in tokens[0]:
        token = tokens[0]
        if token.lower() in PALETTE_PRESETS:
            return _palette_from_mapping(PALETTE_PRESETS[token.lower()], token.lower())
        if not os.path.isfile(token):
            raise ValueError(f"palette {token!r}: neither a preset ({', '.join(PALETTE_PRESETS)}) nor a JSON file")
        try:
            with open(token) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{token}: not a readable palette JSON file ({e})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{token}: a palette file holds an object {{class: [r, g, b], ...}}")
        return _palette_from_mapping(data, token)
    pairs: dict[str, list[str]] = {}
    for token in tokens:
        cls, sep, colour = token.partition("=")
        if not sep or not cls.strip():
            raise ValueError(f"palette: cannot read {token!r}; write CLASS=R,G,B or CLASS=#rrggbb")
        pairs.setdefault(cls.strip(), []).append(colour)
    return _palette_from_mapping(pairs, "(command line)")


@dataclass(frozen=True)
class ValueMap:
    """The classes of class-index masks: mask value -> class id (0-4 or :data:`IGNORE_ID`).

    Args:
        values: ``(value, class id)`` pairs.
    """

    values: tuple[tuple[int, int], ...]

    def classify(self, values: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """The class of every pixel of an index mask.

        Args:
            values: ``(H, W)`` integer mask values (any bit depth).

        Returns:
            ``(ids, unknown)``: ``(H, W)`` uint8 class ids (0 where the value is unknown) and ``{value: pixels}`` of
            the values the map does not list.
        """
        found = np.unique(values)
        inverse = np.searchsorted(found, values)
        table = dict(self.values)
        ids = np.asarray([table.get(int(v), 0) for v in found], dtype=np.uint8)
        counts = np.bincount(inverse.ravel(), minlength=len(found))
        unknown = {int(v): int(n) for v, n in zip(found, counts) if int(v) not in table}
        return ids[inverse], unknown

    def describe(self) -> str:
        """One line: ``mask value -> class: 0 background, 1 Epithelial, ...``."""
        return "mask value -> class: " + ", ".join(f"{v} {class_label(cid)}" for v, cid in self.values)

    def to_dict(self) -> dict[str, str]:
        """``{"0": "background", "1": "Epithelial", ...}`` (for the manifest)."""
        return {str(v): class_label(cid) for v, cid in self.values}


def parse_value_map(spec: str | Sequence[str] | Mapping[Any, str] | None = None) -> ValueMap:
    """Read the value map of class-index masks.

    Args:
        spec: ``None`` (:data:`DEFAULT_VALUES`: 0 background, 1 Epithelial, 2 Lymphocyte, 3 Neutrophil,
            4 Macrophage); ``VALUE:CLASS`` strings (``["0:background", "255:ignore", "1:Epithelial"]``, or one
            string separated by commas or spaces); or a mapping ``{value: class name}``. Values not listed are
            errors when they occur in a mask, never assumed.

    Returns:
        the :class:`ValueMap`, sorted by value.

    Raises:
        ValueError: a malformed pair, a negative value, a value given twice, an unknown class, or no nucleus class.
    """
    if spec is None:
        spec = DEFAULT_VALUES
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
        pairs = []
        for token in (t for item in items for t in re.split(r"[,\s]+", str(item).strip()) if t):
            m = re.fullmatch(r"(\d+)\s*[:=]\s*(.+)", token)
            if m is None:
                raise ValueError(f"mask values: cannot read {token!r}; write VALUE:CLASS, e.g. 255:ignore or "
                                 "1:Epithelial")
            pairs.append((m.group(1), m.group(2)))
    table: dict[int, int] = {}
    for value, cls in pairs:
        if not re.fullmatch(r"\d+", value.strip()):
            raise ValueError(f"mask values: {value!r} is not a non-negative integer mask value")
        v = int(value)
        if v in table:
            raise ValueError(f"mask values: value {v} is given twice")
        table[v] = class_id(cls, f"mask values, {v}")
    if not any(0 < cid <= len(CLASS_NAMES) for cid in table.values()):
        raise ValueError("mask values: no value maps to a nucleus class")
    return ValueMap(tuple(sorted(table.items())))
