"""Stain normalisation of a whole image applied tile by tile, the same way ``nasscam prepare`` normalised the
training images.

``nasscam prepare`` normalises each image as a whole: the image's own stain statistics (Macenko: its H&E matrix
and 99th-percentile concentrations; Reinhard: the L*a*b* mean and deviation of its tissue pixels) are estimated
from all its pixels and mapped to the reference fitted on the training set (stored in ``PREP/manifest.json``).
A slide cannot be normalised in one piece, and estimating the statistics per tile would make tiles disagree at
their seams. :class:`SlideStainNormalizer` therefore uses the two steps of the one normaliser in
:mod:`monai_nasscam.data.stain` separately: :meth:`~SlideStainNormalizer.fit_source` estimates the image's
statistics once (``estimate``, over its tissue pixels), from all pixels of an ordinary image or from a regular
subsample of a slide, and :meth:`~SlideStainNormalizer.apply` maps any tile with those fixed statistics
(``transform``, pixel by pixel), so the result does not depend on how the image is cut into tiles. An image whose
statistics cannot be estimated (blank glass, a few stained pixels, one stain colour) is left unchanged, with a note.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.overrides import is_null
from monai_nasscam.data.stain import (
    STAIN_METHODS,
    STAIN_SKIPPED,
    create_stain_normalizer,
    stain_normalizer_from_dict,
)

__all__ = ["SlideStainNormalizer", "load_stain_reference", "resolve_stain_spec"]


def load_stain_reference(spec: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The fitted stain reference (``{"method": ..., parameters}``) named by ``spec``.

    Args:
        spec: a method name (``macenko``, ``reinhard``, ``none``; MONAI's / default reference, not the training
            set's), the path of ``PREP/manifest.json`` (its ``settings.stain``), of a folder holding one, of a JSON
            file with the reference itself, or such a dict.

    Raises:
        FileNotFoundError / ValueError: naming the file or value at fault.
    """
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
        source = "stain reference"
    else:
        text = os.fspath(spec).strip()
        if text.lower() in STAIN_METHODS:
            return create_stain_normalizer(text.lower()).to_dict()
        path = Path(text)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"stain reference {path} does not exist; pass --stain PREP/manifest.json (written by nasscam prepare), "
                f"or one of {', '.join(STAIN_METHODS)}."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"stain reference {path} is not readable JSON ({e}).") from None
        source = str(path)
    if isinstance(data, Mapping) and "settings" in data and isinstance(data["settings"], Mapping):
        data = data["settings"].get("stain")
    elif isinstance(data, Mapping) and "stain" in data and isinstance(data["stain"], Mapping):
        data = data["stain"]
    if not isinstance(data, Mapping) or data.get("method") not in STAIN_METHODS:
        raise ValueError(f"{source} holds no stain reference (a 'method' among {list(STAIN_METHODS)}).")
    data = {k: v for k, v in data.items() if k != "reference_images"}
    stain_normalizer_from_dict(data)  # validates the parameters
    return data


def resolve_stain_spec(stain: Any, dataset_dir: str | os.PathLike | None = None,
                       run_dir: str | os.PathLike | None = None) -> Any:
    """Resolve ``stain: auto``: the first of ``RUN/stain.json``, ``RUN/manifest.json``, ``PREP/manifest.json``.

    Any other value is returned unchanged (see :func:`load_stain_reference`).

    Raises:
        FileNotFoundError: ``auto`` and none of those files exists (the message names them).
    """
    if not (isinstance(stain, str) and stain.strip().lower() == "auto"):
        return stain
    looked = []
    for folder, name in ((run_dir, "stain.json"), (run_dir, "manifest.json"), (dataset_dir, "manifest.json")):
        if is_null(folder):
            continue
        candidate = Path(folder) / name
        looked.append(str(candidate))
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        "inference must normalise stains as the training data were (stain: auto), but no stain reference was found "
        f"(looked at {', '.join(looked) or 'nothing'}). Pass --stain PREP/manifest.json (the prepared dataset the "
        "model was trained on), --dataset_dir PREP, or --stain none if the training data were not normalised."
    )


class SlideStainNormalizer:
    """A fitted stain reference applied to tiles with statistics estimated once per image.

    A thin caller of the normaliser ``nasscam prepare`` uses (:mod:`monai_nasscam.data.stain`): ``fit_source``
    is its ``estimate`` and ``apply`` its ``transform``, so an image normalised here equals the same image
    normalised by ``prepare`` (given the same pixels to estimate from), including the cases it leaves unchanged.

    Args:
        reference: ``{"method": "macenko" | "reinhard" | "none", ...}`` as ``nasscam prepare`` stores it
            (see :func:`load_stain_reference`).
        max_pixels: at most this many pixels estimate an image's statistics (a regular grid subsample beyond).
    """

    def __init__(self, reference: Mapping[str, Any], max_pixels: int = 2**23) -> None:
        self.reference = dict(reference)
        self.method = self.reference.get("method", "none")
        self.max_pixels = int(max_pixels)
        self._ref = stain_normalizer_from_dict(self.reference)
        self._source: dict[str, np.ndarray] | None = None
        #: why the current image is left unchanged (too little tissue, one stain colour ...), or ``None``.
        self.note: str | None = None

    @property
    def active(self) -> bool:
        return self.method != "none" and self._source is not None

    def sample_step(self, shape: tuple[int, int]) -> int:
        """Grid step of the pixel subsample for an image of ``shape`` (1: all pixels)."""
        n = int(shape[0]) * int(shape[1])
        return max(1, int(np.ceil(np.sqrt(n / self.max_pixels)))) if n > self.max_pixels else 1

    def fit_source(self, pixels: np.ndarray) -> SlideStainNormalizer:
        """Estimate the statistics of one image from its (sub-sampled) pixels ``(..., 3)`` uint8.

        When they cannot be estimated the image will be left unchanged and :attr:`note` says why.
        """
        self._source, self.note = None, None
        if self.method == "none":
            return self
        try:
            self._source = self._ref.estimate(np.asarray(pixels, dtype=np.uint8).reshape(-1, 3))
        except (ValueError, np.linalg.LinAlgError) as e:  # StainEstimationError, or MONAI's own checks
            self.note = f"{STAIN_SKIPPED} ({e})"
        return self

    def apply(self, tile: np.ndarray) -> np.ndarray:
        """Normalise an RGB uint8 tile ``(h, w, 3)`` of the image passed to :meth:`fit_source`."""
        if not self.active or tile.size == 0:
            return tile
        assert self._source is not None
        return self._ref.transform(tile, self._source)

    __call__ = apply
