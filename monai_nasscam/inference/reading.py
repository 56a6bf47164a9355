"""The reading part of the inference workflow (:class:`~monai_nasscam.inference.predictor.NucleiPredictor`): which
images an input holds, and how each one is opened (:func:`monai_nasscam.data.slide.open_image`, the pixel-reading
path that ``nasscam prepare`` uses too)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monai_nasscam.data.slide import IMAGE_SUFFIXES, RegionReader, open_image
from monai_nasscam.overrides import as_bool, is_null

__all__ = ["ImageSource", "find_images"]


def find_images(
    input_dir: str | os.PathLike, recursive: bool = True, output_dir: str | os.PathLike | None = None
) -> list[str]:
    """Image files under ``input_dir`` (or the file itself), sorted; where ``NAME.svs`` and ``NAME.tif`` sit side by
    side (the MoNuSAC release), only the ``.svs`` (the source of truth) is kept. An ``output_dir`` inside
    ``input_dir`` is not searched (nor anything in it): a run does not take an earlier run's class maps and overlays
    for images.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist, or holds no image (the message names it).
        ValueError: ``input_dir`` is a file whose suffix is none of :data:`~monai_nasscam.data.slide.IMAGE_SUFFIXES`.
    """
    root = Path(input_dir)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"input file {root} is not an image this workflow reads (its suffix is none of "
                f"{', '.join(IMAGE_SUFFIXES)}); pass an image file or a folder of images as --input_dir."
            )
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist.")
    skip = _folder_inside(output_dir, root)
    walker = root.rglob("*") if recursive else root.glob("*")
    files = sorted(
        str(p) for p in walker
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        and (skip is None or not Path(os.path.realpath(p)).is_relative_to(skip))
    )
    svs = {os.path.splitext(f)[0] for f in files if f.lower().endswith(".svs")}
    files = [f for f in files if f.lower().endswith(".svs") or os.path.splitext(f)[0] not in svs]
    if not files:
        raise FileNotFoundError(
            f"input folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}){'' if recursive else ' (not searched recursively)'}."
        )
    return files


def _folder_inside(folder: str | os.PathLike | None, root: Path) -> Path | None:
    """``folder`` resolved, if it lies strictly inside ``root`` (an output folder to leave out of the search);
    ``None`` otherwise (no folder, ``root`` itself, or elsewhere)."""
    if is_null(folder):
        return None
    resolved, top = Path(os.path.realpath(os.fspath(folder))), Path(os.path.realpath(root))
    return resolved if resolved != top and resolved.is_relative_to(top) else None


class ImageSource:
    """The images of an inference run and how they are read.

    Args:
        input_dir: a folder of images (searched recursively) or one image file.
        recursive: search ``input_dir`` recursively.
        tiled: ``auto`` (TIFF / SVS larger than ``max_whole_pixels`` are read block by block), ``True`` (every TIFF /
            SVS block by block) or ``False``.
        max_whole_pixels: larger images are inferred block by block (and TIFFs read segment by segment).
        tif_bgr: ``.tif`` files store B, G, R (MoNuSAC ``.tif`` copies); ``.svs`` are always RGB.
        output_dir: the run's output folder: where it lies inside ``input_dir``, it is not searched for images.

    Raises:
        InputError: ``recursive``, ``tiled`` or ``tif_bgr`` is no boolean (``tiled`` may also be ``auto``).
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        recursive: Any = True,
        tiled: Any = "auto",
        max_whole_pixels: int = 4096 * 4096,
        tif_bgr: Any = False,
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        self.input_dir = os.path.abspath(os.fspath(input_dir))
        self.output_dir = None if output_dir is None else os.path.abspath(os.fspath(output_dir))
        self.recursive = as_bool(recursive, "recursive")
        self.tiled: bool | str = "auto" if str(tiled).strip().lower() == "auto" else as_bool(tiled, "tiled")
        self.max_whole_pixels = int(max_whole_pixels)
        self.tif_bgr = as_bool(tif_bgr, "tif_bgr")

    @property
    def root(self) -> str:
        """The folder the images' names are relative to: ``input_dir``, or the folder of a single input file."""
        return self.input_dir if os.path.isdir(self.input_dir) else os.path.dirname(self.input_dir)

    def relative(self, path: str) -> str:
        """``path`` relative to :attr:`root`: the image's name in the log and the tables."""
        return os.path.relpath(path, self.root)

    def find(self) -> list[str]:
        """The images, sorted (:func:`find_images`; the output folder is not searched)."""
        return find_images(self.input_dir, self.recursive, self.output_dir)

    def open(self, path: str) -> RegionReader:
        """A reader of ``path`` (:func:`~monai_nasscam.data.slide.open_image`); the caller closes it.

        Raises:
            DataError: naming the file, when it cannot be read.
        """
        return open_image(path, swap_rb=self.tif_bgr, tiled=self.tiled, max_whole_pixels=self.max_whole_pixels)

    def is_large(self, reader: RegionReader) -> bool:
        """Whether an opened image is inferred block by block (read tile by tile, or over ``max_whole_pixels``)."""
        height, width = reader.shape
        return bool(reader.tiled) or height * width > self.max_whole_pixels
