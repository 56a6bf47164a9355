"""MoNuSAC nucleus classes: ids, names, layer-name normalisation and class-order remaps."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CLASS_NAMES",
    "CLASS_IDS",
    "NUM_CLASSES",
    "CLASS_COLORS",
    "BACKGROUND_COLOR",
    "AMBIGUOUS",
    "IGNORE_VALUE",
    "REMAP_PRESETS",
    "normalize_layer_name",
    "parse_remap",
    "labels_dict",
]

#: organisers' class order (0 is background); the network has one output channel per entry.
CLASS_NAMES: tuple[str, ...] = ("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage")
#: class name -> id in the label maps written by ``nasscam prepare`` (before any remap).
CLASS_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
NUM_CLASSES: int = len(CLASS_NAMES)
#: RGB colour (0-255) per class id, used by every picture and export (overlays, comparison figures, QuPath GeoJSON,
#: the ImageScope XML of the synthetic generator): the colours of the MoNuSAC 2020 colour masks, so that an
#: overlay reads like the masks it is compared with (and the ``monusac`` palette preset of ``nasscam prepare``).
CLASS_COLORS: dict[int, tuple[int, int, int]] = {1: (0, 255, 0), 2: (255, 255, 0), 3: (255, 0, 0), 4: (0, 0, 255)}
#: RGB colour of background (class id 0) in class-map pictures.
BACKGROUND_COLOR: tuple[int, int, int] = (0, 0, 0)
#: name of the test-release layer whose regions are excluded from scoring.
AMBIGUOUS: str = "Ambiguous"
#: label value of a pixel left out of the loss: the training transforms write it at the pixels of an ``ambiguous``
#: mask (:class:`~monai_nasscam.data.transforms.IgnoreAmbiguousd`), and ``ExpLogLoss(ignore_value=...)`` leaves such
#: pixels out by default; never a class id.
IGNORE_VALUE: float = -1.0

#: named class-order remaps (source id -> destination id); ``hovernet`` swaps 3 and 4.
REMAP_PRESETS: dict[str, dict[int, int]] = {
    "none": {1: 1, 2: 2, 3: 3, 4: 4},
    "hovernet": {1: 1, 2: 2, 3: 4, 4: 3},
}

_ALIASES = {
    "epithelial": "Epithelial",
    "epithelium": "Epithelial",
    "lymphocyte": "Lymphocyte",
    "neutrophil": "Neutrophil",
    "macrophage": "Macrophage",
    "ambiguous": AMBIGUOUS,
}


def normalize_layer_name(name: str | None) -> str | None:
    """Map an ImageScope layer/attribute name to a canonical class name.

    Case, surrounding white space, a plural ``s`` and trailing words such as ``cells`` are ignored, so
    ``"Macrophages"``, ``" lymphocyte "`` and ``"Epithelial cells"`` are recognised.

    Args:
        name: the raw name found in the XML.

    Returns:
        one of :data:`CLASS_NAMES`, :data:`AMBIGUOUS`, or ``None`` when the name is not recognised.
    """
    if not name:
        return None
    words = re.findall(r"[a-z]+", name.lower())
    if not words:
        return None
    for word in (words[0], words[0].rstrip("s"), words[0][:-2] if words[0].endswith("es") else words[0]):
        if word in _ALIASES:
            return _ALIASES[word]
    return None


def parse_remap(spec: str | Sequence[str] | Mapping[int, int] | None) -> dict[int, int]:
    """Parse a class-order remap.

    Args:
        spec: ``None`` (identity), a preset name from :data:`REMAP_PRESETS` (``"hovernet"`` swaps 3 and 4),
            a mapping ``{src: dst}``, or pairs written ``"3:4"`` / ``"3=4"`` (a sequence of such strings,
            or one string separated by commas or spaces). Ids not mentioned map to themselves.

    Returns:
        a full mapping over ids 1-4 that is a permutation.

    Raises:
        ValueError: when the spec cannot be parsed or is not a permutation of 1-4.
    """
    mapping = dict(REMAP_PRESETS["none"])
    if spec is None:
        return mapping
    if isinstance(spec, Mapping):
        pairs: Iterable[tuple[int, int]] = ((int(k), int(v)) for k, v in spec.items())
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
        tokens = [t for item in items for t in re.split(r"[,\s]+", str(item).strip()) if t]
        if len(tokens) == 1 and tokens[0].lower() in REMAP_PRESETS:
            return dict(REMAP_PRESETS[tokens[0].lower()])
        parsed = []
        for token in tokens:
            m = re.fullmatch(r"(\d+)\s*[:=]\s*(\d+)", token)
            if m is None:
                raise ValueError(
                    f"remap: cannot parse {token!r}; use a preset ({', '.join(REMAP_PRESETS)}) or pairs like 3:4 4:3."
                )
            parsed.append((int(m.group(1)), int(m.group(2))))
        pairs = parsed
    for src, dst in pairs:
        if src not in mapping or dst not in mapping:
            raise ValueError(f"remap: class ids must be in 1-{NUM_CLASSES}, got {src}->{dst}.")
        mapping[src] = dst
    if sorted(mapping.values()) != sorted(mapping):
        raise ValueError(f"remap: {mapping} is not a permutation of the class ids 1-{NUM_CLASSES}.")
    return mapping


def labels_dict(remap: Mapping[int, int] | None = None) -> dict[str, str]:
    """The decathlon-style ``"labels"`` entry (id as string -> name) after an optional remap."""
    mapping = parse_remap(remap)
    out = {"0": "background"}
    for name, cid in sorted(((n, mapping[i]) for n, i in CLASS_IDS.items()), key=lambda t: t[1]):
        out[str(cid)] = name
    return out
