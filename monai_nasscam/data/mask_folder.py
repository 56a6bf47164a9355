"""Image + mask folders for ``nasscam prepare``: ``FOLDER/images/NAME.ext`` beside ``FOLDER/masks/NAME.ext`` (PNG,
TIFF or JPEG; paired by name, never by listing order), the layout of most tools' exports and of the public MoNuSAC
mirrors.

Three kinds of mask (:class:`MaskFolderSpec`):

- ``colour``: RGB colours, read with a :class:`~monai_nasscam.data.palette.Palette`: each pixel takes the nearest
  colour's class within ``tolerance``; farther pixels are *unmatched* and left out (lossy JPEG masks have them at
  edges); an unmatched *region* (a 5 x 5 block of unmatched pixels: a colour the palette lacks) refuses the file, and
  so does a single-channel (grey) mask unless every class colour of the palette is grey (class indices 0-4 would
  read as near-black colours: all background);
- ``index``: class indices, read with a :class:`~monai_nasscam.data.palette.ValueMap` (a value it does not list
  refuses the file);
- ``instance``: instance ids (0 background), with the class of each instance from a CSV table
  (:func:`~monai_nasscam.data.instance_table.read_instance_classes`).

Colour and index masks are *semantic*: touching nuclei of one class are one region, so their instance map is the
connected regions of each class (8-connectivity) and the entries are marked ``semantic_only`` (evaluation then
reports Dice and leaves the instance metrics out). Pixels left out (unmatched, or mapped to ``ignore``) go to the
prepared ``ambiguous`` mask: not trained on, not scored. Regions (instances) under ``min_size`` pixels are specks:
they take the class and instance of the nearest pixel that is neither a speck nor left out.

Images are read by the project's one reading path (:func:`~monai_nasscam.data.slide.open_image`), as stored. An
EXIF orientation tag is resolved by the sizes: an image and mask that match as stored are used as stored; a pair
that matches only as displayed (the tags applied) is turned as displayed; a pair that matches both ways (a square
image, a 180-degree turn, a mirror) is refused, since nothing tells which pixels the mask was drawn on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .classes import CLASS_NAMES, parse_remap
from ..errors import DataError
from .mask_file import LOSSY_SUFFIXES, MASK_SUFFIXES, exif_orientation, orient, oriented_shape, read_mask
from .palette import IGNORE_ID, Palette, ValueMap, class_label
from .raster import Masks, clear_transparent
from .slide import open_image

__all__ = [
    "DEFAULT_PATIENT_REGEX",
    "MASK_KINDS",
    "FolderCase",
    "MaskFolderSpec",
    "is_mask_folder",
    "patient_of",
    "scan_mask_folder",
    "load_folder_case",
    "folder_case_classes",
]

#: the patient of a file name: the TCGA patient barcode (its first three fields) where the name has one, else the
#: name up to its last underscore, else the whole name
DEFAULT_PATIENT_REGEX = r"^TCGA-[A-Za-z0-9]+-[A-Za-z0-9]+|^.+(?=_)|^.+"
MASK_KINDS = ("colour", "index", "instance")
#: side of the square block of unmatched pixels that marks a colour missing from the palette (JPEG ringing is thinner)
SOLID_BLOCK = 5
_TURNS = {2: "mirrored", 3: "turned 180 degrees", 4: "flipped upside down", 5: "transposed",
          6: "turned 90 degrees clockwise", 7: "transversed", 8: "turned 90 degrees anticlockwise"}


@dataclass(frozen=True)
class MaskFolderSpec:
    """How to read an image + mask folder.

    Args:
        kind: ``"colour"``, ``"index"`` or ``"instance"`` (see the module docstring).
        palette: the palette of colour masks.
        values: the value map of index masks.
        instance_classes: for instance masks, ``{image name: {instance id: class id}}`` (:func:`~monai_nasscam.data.instance_table.read_instance_classes`).
        instance_table: the file ``instance_classes`` came from (for messages and the manifest).
        tolerance: colour masks: the largest Euclidean RGB distance (0-442) at which a pixel takes its nearest
            palette colour.
        min_size: regions (colour / index masks) or instances smaller than this many pixels are specks; 0 keeps all.
        mask_suffix: the mask of ``images/NAME.ext`` is ``masks/NAME<mask_suffix>.ext`` (e.g. ``"_mask"``).
        patient_regex: the patient of an image: the first group of this regular expression's match in its name (the
            whole match when it has no group); default :data:`DEFAULT_PATIENT_REGEX`.

    Raises:
        ValueError: an unknown kind, a missing palette / value map / class table, a negative tolerance or size, or a
            regular expression that does not compile.
    """

    kind: str
    palette: Palette | None = None
    values: ValueMap | None = None
    instance_classes: Mapping[str, Mapping[int, int]] | None = field(default=None, repr=False)
    instance_table: str | None = None
    tolerance: float = 100.0
    min_size: int = 10
    mask_suffix: str = ""
    patient_regex: str = DEFAULT_PATIENT_REGEX

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {self.kind!r}")
        needed = {"colour": self.palette, "index": self.values, "instance": self.instance_classes}[self.kind]
        if needed is None:
            raise ValueError(f"{self.kind} masks need " + {"colour": "a palette", "index": "a value map",
                                                           "instance": "a table of instance classes"}[self.kind])
        if not 0 <= float(self.tolerance) <= 442:
            raise ValueError(f"--tolerance must be an RGB distance between 0 and 442, got {self.tolerance}")
        if int(self.min_size) < 0:
            raise ValueError(f"--min-size must be >= 0 pixels, got {self.min_size}")
        try:
            re.compile(self.patient_regex)
        except re.error as e:
            raise ValueError(f"--patient-regex {self.patient_regex!r}: {e}") from None

    @property
    def semantic_only(self) -> bool:
        """Colour and index masks hold classes, not nuclei: touching nuclei of a class are one region."""
        return self.kind != "instance"

    def describe(self) -> list[str]:
        """The reading rules, printed at the start of ``nasscam prepare``."""
        if self.kind == "colour":
            lines = [f"colour masks, {self.palette.describe()}",  # type: ignore[union-attr]
                     f"a pixel takes the nearest colour within RGB distance {self.tolerance:g}; farther pixels are "
                     "left out (not trained on, not scored)"]
        elif self.kind == "index":
            lines = [f"index masks, {self.values.describe()} (change with --mask-values)"]  # type: ignore[union-attr]
        else:
            lines = [f"instance masks, classes per instance from {self.instance_table}"]
        if self.semantic_only:
            lines.append("semantic masks: nuclei are the connected regions of each class; evaluation will report Dice "
                         "and leave the instance metrics out")
        lines.append(f"regions under {self.min_size} px are removed as specks" if self.min_size else "specks are kept")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The settings for ``manifest.json``."""
        out: dict[str, Any] = {"kind": self.kind, "semantic_only": self.semantic_only, "min_size": int(self.min_size),
                               "mask_suffix": self.mask_suffix, "patient_regex": self.patient_regex}
        if self.kind == "colour":
            out.update(palette=self.palette.to_dict(), tolerance=float(self.tolerance))  # type: ignore[union-attr]
        elif self.kind == "index":
            out["values"] = self.values.to_dict()  # type: ignore[union-attr]
        else:
            out["instance_classes"] = self.instance_table
        return out


@dataclass
class FolderCase:
    """One image and its mask.

    Args:
        name: the image's file name without suffix (file-system safe).
        patient: the patient, from the name (:func:`patient_of`).
        image: path of the image.
        mask: path of the mask.
    """

    name: str
    patient: str
    image: str
    mask: str


def is_mask_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds ``images/`` and ``masks/`` folders."""
    return all(os.path.isdir(os.path.join(root, sub)) for sub in ("images", "masks"))


def patient_of(name: str, regex: str = DEFAULT_PATIENT_REGEX) -> str | None:
    """The patient of an image name: the first group of ``regex``'s first match (the whole match without groups);
    ``None`` when it does not match. ``patient_of("TCGA-2Z-A9JG-01Z-00-DX1_3")`` is ``"TCGA-2Z-A9JG"``,
    ``patient_of("slide7_12")`` is ``"slide7"``."""
    m = re.search(regex, name)
    if m is None:
        return None
    found = next((g for g in m.groups() if g), None) if m.groups() else m.group(0)
    return found or None


def _listing(folder: str) -> tuple[dict[str, list[str]], list[DataError]]:
    """``{stem: [paths]}`` of the PNG / TIFF / JPEG files of ``folder``; other (non-hidden) files are problems."""
    stems: dict[str, list[str]] = {}
    problems = []
    for fname in sorted(os.listdir(folder)):
        path = os.path.join(folder, fname)
        if fname.startswith(".") or os.path.isdir(path):
            continue
        stem, suffix = os.path.splitext(fname)
        if suffix.lower() in MASK_SUFFIXES:
            stems.setdefault(stem, []).append(path)
        else:
            problems.append(DataError(path, "not a PNG, TIFF or JPEG file (.png, .tif, .tiff, .jpg, .jpeg)"))
    return stems, problems


def _suffix_hint(image_stems: set[str], mask_stems: set[str]) -> str:
    """`` (the masks' names end in '_mask': give --mask-suffix _mask)`` when the unpaired masks share such an ending."""
    endings = {m[len(i):] for m in mask_stems - image_stems for i in image_stems if m.startswith(i) and m != i}
    return f" (the masks' names end in {endings.pop()!r}: give --mask-suffix)" if len(endings) == 1 else ""


def scan_mask_folder(
    root: str | os.PathLike, mask_suffix: str = "", patient_regex: str = DEFAULT_PATIENT_REGEX
) -> tuple[list[FolderCase], list[DataError]]:
    """Pair ``root/images/NAME.ext`` with ``root/masks/NAME<mask_suffix>.ext`` by name (suffixes may differ: a
    ``.jpg`` image with a ``.png`` mask, ``.tif`` with ``.tiff``).

    Args:
        root: the folder holding ``images/`` and ``masks/``.
        mask_suffix: the ending of a mask's name after its image's name.
        patient_regex: see :class:`MaskFolderSpec`.

    Returns:
        the cases sorted by (patient, name), and one :class:`DataError` per problem: an image without mask, a mask
        without image, two images (or masks) of one name, a name the patient rule does not match, a file that is
        not PNG / TIFF / JPEG.

    Raises:
        DataError: ``root`` does not exist or lacks ``images/`` or ``masks/``, or holds no image at all.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(root, "data folder does not exist" if not os.path.exists(root) else "is not a folder")
    if not is_mask_folder(root):
        raise DataError(root, "no images/ and masks/ folders (an image + mask folder holds images/NAME.ext and "
                              "masks/NAME.ext)")
    images, problems = _listing(os.path.join(root, "images"))
    masks, mask_problems = _listing(os.path.join(root, "masks"))
    problems += mask_problems
    if not images:
        raise DataError(os.path.join(root, "images"), "no PNG, TIFF or JPEG image")
    for listing in (images, masks):
        for stem, paths in listing.items():
            if len(paths) > 1:
                problems.append(DataError(paths[0], f"{len(paths)} files named {stem} "
                                          f"({', '.join(os.path.basename(p) for p in paths)}): keep one"))
    def base(mask_stem: str) -> str:
        cut = mask_suffix and mask_stem.endswith(mask_suffix)
        return mask_stem[: len(mask_stem) - len(mask_suffix)] if cut else mask_stem

    hint = None
    cases, paired = [], set()
    for stem, paths in sorted(images.items()):
        mask_paths = masks.get(stem + mask_suffix)
        paired.add(stem + mask_suffix)
        if len(paths) > 1 or (mask_paths and len(mask_paths) > 1):
            continue
        if not mask_paths:
            hint = _suffix_hint(set(images), {base(m) for m in masks}) if hint is None else hint
            problems.append(DataError(paths[0], f"no mask masks/{stem}{mask_suffix}.(png|tif|tiff|jpg|jpeg){hint}"))
            continue
        patient = patient_of(stem, patient_regex)
        if patient is None:
            problems.append(DataError(paths[0], f"the name does not match --patient-regex {patient_regex!r}"))
            continue
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "image"
        cases.append(FolderCase(name=name, patient=patient, image=paths[0], mask=mask_paths[0]))
    for stem, paths in sorted(masks.items()):
        if stem not in paired:
            problems.append(DataError(paths[0], f"mask without image (no images/{base(stem)}.*)"))
    names = [c.name for c in cases]
    clashes = {n for n in names if names.count(n) > 1}
    for c in [c for c in cases if c.name in clashes]:
        problems.append(DataError(c.image, f"another image's name also becomes {c.name} (file-system-safe names)"))
    cases = [c for c in cases if c.name not in clashes]
    cases.sort(key=lambda c: (c.patient, c.name))
    return cases, problems


def _orientations(case: FolderCase, image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> tuple[int, int]:
    """The EXIF orientations to apply to (image, mask): ``(1, 1)`` (as stored) or their tags (as displayed); see the
    module docstring."""
    oi, om = exif_orientation(case.image), exif_orientation(case.mask)
    stored = tuple(image_shape[:2]) == tuple(mask_shape[:2])
    shown = oriented_shape(image_shape, oi) == oriented_shape(mask_shape, om)
    if stored and (oi == om or not shown):
        return 1, 1
    if shown and not stored:
        return oi, om
    (ih, iw), (mh, mw) = image_shape[:2], mask_shape[:2]
    if stored:
        tag = f"EXIF orientation {oi} ({_TURNS[oi]} for display)" if oi != 1 else "no EXIF orientation"
        mtag = f"EXIF orientation {om} ({_TURNS[om]})" if om != 1 else "no EXIF orientation"
        raise DataError(case.image, f"{tag}, its mask {mtag}: the pair matches both as stored and as displayed, so "
                                    "which pixels the mask was drawn on is unknown; save the image without the tag, "
                                    "in the orientation the mask was drawn on")
    turned = f" (image EXIF orientation {oi})" if oi != 1 else ""
    raise DataError(case.mask, f"mask is {mw}x{mh} px but its image {case.image} is {iw}x{ih} (width x height){turned}")


def _mask_classes(case: FolderCase, spec: MaskFolderSpec) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Class ids of every mask pixel (0-4, :data:`IGNORE_ID` for pixels left out), the instance ids (instance masks;
    ``None`` otherwise) and notes, as stored."""
    if spec.kind != "colour" and case.mask.lower().endswith(LOSSY_SUFFIXES):
        what = "class indices" if spec.kind == "index" else "instance ids"
        raise DataError(case.mask, f"a JPEG cannot hold exact {what} (lossy compression changes values at every "
                                   "edge): save the masks as PNG or TIFF")
    notes: list[str] = []
    if spec.kind == "colour":
        palette: Palette = spec.palette  # type: ignore[assignment]
        rgb = read_mask(case.mask, colour=True, grey=palette.grey)
        ids, unmatched = palette.classify(rgb, spec.tolerance)
        if unmatched.any():
            from scipy.ndimage import binary_erosion

            solid = binary_erosion(unmatched, np.ones((SOLID_BLOCK, SOLID_BLOCK), bool))
            if solid.any():
                colours, counts = np.unique(rgb[solid], axis=0, return_counts=True)
                top = tuple(int(v) for v in colours[counts.argmax()])
                raise DataError(case.mask, f"{int(unmatched.sum())} pixels match no colour of {palette.name} "
                                           f"within {spec.tolerance:g}, some in solid regions (most common there: "
                                           f"{top}): a colour missing from the palette?")
            n = int(unmatched.sum())
            notes.append(f"{n} pixels ({100 * n / unmatched.size:.2f}%) match no palette colour within "
                         f"{spec.tolerance:g}: left out")
            ids[unmatched] = IGNORE_ID
        return ids, None, notes
    values = read_mask(case.mask, colour=False)
    if spec.kind == "index":
        value_map: ValueMap = spec.values  # type: ignore[assignment]
        ids, unknown = value_map.classify(values)
        if unknown:
            listed = ", ".join(f"{v} ({n} px)" for v, n in sorted(unknown.items())[:8])
            binary = " (a 0/255 binary mask?)" if set(np.unique(values).tolist()) <= {0, 255} else ""
            raise DataError(case.mask, f"value(s) {listed} not in the value map{binary}: say their class with "
                                       f"--mask-values VALUE:CLASS (CLASS may be ignore); {value_map.describe()}")
        return ids, None, notes
    table = (spec.instance_classes or {}).get(case.name) or {}
    found = np.unique(values)  # ids may be large (random 32-bit ids): no lookup table indexed by id
    if found.size and found[0] < 0:
        raise DataError(case.mask, f"negative instance id {int(found[0])}: ids are 1, 2, ... and 0 is background")
    missing = [int(v) for v in found if v > 0 and int(v) not in table]
    if missing:
        listed = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DataError(case.mask, f"instance(s) {listed} have no class in {spec.instance_table} "
                                   f"(rows {case.name},ID,CLASS)")
    classes = np.asarray([table.get(int(v), 0) for v in found], dtype=np.uint8)
    return classes[np.searchsorted(found, values)], values, notes


def _fill_specks(maps: list[np.ndarray], specks: np.ndarray, left_out: np.ndarray) -> None:
    """Give each speck pixel, in every map, the value of the nearest pixel that is neither a speck nor left out."""
    sources = ~specks & ~left_out
    if not sources.any():
        for m in maps:
            m[specks] = 0
        return
    from scipy.ndimage import distance_transform_edt

    _, (rr, cc) = distance_transform_edt(~sources, return_indices=True)
    for m in maps:
        m[specks] = m[rr[specks], cc[specks]]


def _specks(instances: np.ndarray, min_size: int) -> np.ndarray:
    """The pixels of the instances (ids > 0) smaller than ``min_size`` pixels."""
    areas = np.bincount(instances.ravel())
    small = (areas < int(min_size)) & (areas > 0)
    small[0] = False
    return small[instances]


def load_folder_case(
    case: FolderCase, spec: MaskFolderSpec, remap: Mapping[int, int] | str | None = None, tif_bgr: bool = False
) -> tuple[np.ndarray, Masks]:
    """Read one image and convert its mask into the prepared maps.

    Args:
        case: from :func:`scan_mask_folder`.
        spec: how to read the masks.
        remap: optional class-order remap of the written ids (:func:`~monai_nasscam.data.classes.parse_remap`).
        tif_bgr: ``.tif`` / ``.tiff`` images store B, G, R.

    Returns:
        ``(image (H, W, 3) uint8 RGB, masks)``: ``class_map`` uint8 0-4 (0 on left-out pixels), ``instance_map``
        int32 (1..N, connected regions of each class for semantic masks), ``instance_classes``, ``ambiguous`` (uint8
        0/1, the left-out pixels; ``None`` when none), ``warnings`` (what was left out, removed or turned),
        ``unusable`` (the number of specks removed). Class ids on fully transparent image pixels are set to
        background, as on the XML path.

    Raises:
        DataError: naming the image or mask file (see :func:`~monai_nasscam.data.mask_file.read_mask`, size and
            orientation, colours and values, instance classes).
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    reader = open_image(case.image, swap_rb=tif_bgr, tiled=False)
    try:
        image, transparent = reader.read_region(0, reader.shape[0], 0, reader.shape[1])
    finally:
        reader.close()
    if transparent is not None and transparent.all():
        raise DataError(case.image, "every pixel is fully transparent (alpha 0): no tissue to read; save the image "
                                    "without its alpha band")
    ids, instances, notes = _mask_classes(case, spec)
    oi, om = _orientations(case, image.shape, ids.shape)
    if (oi, om) != (1, 1):
        image, ids = orient(image, oi), orient(ids, om)
        transparent = None if transparent is None else orient(transparent, oi)
        instances = None if instances is None else orient(instances, om)
        notes.append(f"image and mask turned as displayed (EXIF orientation {oi} / {om}): the mask matches the "
                     "displayed image only")
    left_out = ids == IGNORE_ID
    ids[left_out] = 0
    if instances is None:
        instances = label(ids, background=0, connectivity=2)
    else:
        instances = relabel_sequential(np.where(left_out | (ids == 0), 0, instances))[0]
    specks = _specks(instances, spec.min_size) if spec.min_size else np.zeros(ids.shape, bool)
    removed = int(np.unique(instances[specks]).size)
    if removed:
        _fill_specks([ids, instances], specks, left_out)
        notes.append(f"{removed} speck(s) under {spec.min_size} px given the class of their surroundings")
        if spec.semantic_only:
            instances = label(ids, background=0, connectivity=2)
    instances = relabel_sequential(instances.astype(np.int64))[0].astype(np.int32)
    classes = np.zeros(int(instances.max()) + 1, dtype=np.uint8)
    classes[instances.ravel()] = ids.ravel()
    classes[0] = 0
    mapping = parse_remap(remap)
    lut = np.asarray([0, *(mapping[i] for i in range(1, len(CLASS_NAMES) + 1))], dtype=np.uint8)
    masks = Masks(lut[ids], instances, lut[classes], left_out.astype(np.uint8) if left_out.any() else None,
                  warnings=notes, unusable=removed)
    clear_transparent(masks, transparent)
    return image, masks


def _stored_shape(path: str) -> tuple[int, int] | None:
    """``(H, W)`` of an image file as stored, from its header (``None`` when it cannot be read: reported later)."""
    try:
        if path.lower().endswith((".tif", ".tiff")):
            reader = open_image(path, tiled=True)
            try:
                return tuple(reader.shape[:2])  # type: ignore[return-value]
            finally:
                reader.close()
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - an unreadable image is reported when it is read
        return None


def folder_case_classes(case: FolderCase, spec: MaskFolderSpec, strict: bool = False) -> set[str]:
    """The classes present in a case's mask (for the stratified split).

    Args:
        case: from :func:`scan_mask_folder`.
        spec: how to read the masks.
        strict: raise the mask's :class:`DataError`, and one for a mask whose size matches no orientation of its
            image (from the image's header), instead of returning no classes (``on_error="fail"``: the first bad file
            stops the run before the split).

    Returns:
        the class names in the mask (empty when it cannot be read and not ``strict``: reported later).

    Raises:
        DataError: with ``strict``, naming the mask (or image) at fault.
    """
    try:
        ids = _mask_classes(case, spec)[0]
        image_shape = _stored_shape(case.image) if strict else None
        if image_shape is not None:
            _orientations(case, image_shape, ids.shape)
    except DataError:
        if strict:
            raise
        return set()
    return {class_label(int(c)) for c in np.unique(ids) if 0 < c <= len(CLASS_NAMES)}
