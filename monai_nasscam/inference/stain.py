"""Stain normalisation of a whole image applied tile by tile, the same way ``nasscam prepare`` normalised the
training images.

``nasscam prepare`` normalises each image as a whole: the image's own stain statistics (Macenko: its H&E matrix
and 99th-percentile concentrations; Reinhard: the L*a*b* mean and deviation of its tissue pixels) are estimated
from all its pixels and mapped to the reference fitted on the training set (stored in ``PREP/manifest.json``).
A slide cannot be normalised in one piece, and estimating the statistics per tile would make tiles disagree at
their seams. :class:`SlideStainNormalizer` therefore splits the two steps: :meth:`~SlideStainNormalizer.fit_source`
estimates the image's statistics once, from all pixels of an ordinary image or from a regular subsample of a
slide, and :meth:`~SlideStainNormalizer.apply` maps any tile with those fixed statistics, pixel by pixel, so the
result does not depend on how the image is cut into tiles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.data.stain import STAIN_METHODS, create_stain_normalizer, stain_normalizer_from_dict

__all__ = ["SlideStainNormalizer", "load_stain_reference", "resolve_stain_spec"]


def _absorbance(pixels: np.ndarray, tli: float) -> np.ndarray:
    return -np.log((pixels.astype(np.float32) + np.float32(1.0)).clip(max=np.float32(tli)) / np.float32(tli))


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
        if folder is None or str(folder).strip().lower() in ("", "none", "null"):
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
        #: why the current image is left unchanged (no stained pixel), or ``None``.
        self.note: str | None = None

    @property
    def active(self) -> bool:
        return self.method != "none" and self._source is not None

    def sample_step(self, shape: tuple[int, int]) -> int:
        """Grid step of the pixel subsample for an image of ``shape`` (1: all pixels)."""
        n = int(shape[0]) * int(shape[1])
        return max(1, int(np.ceil(np.sqrt(n / self.max_pixels)))) if n > self.max_pixels else 1

    def fit_source(self, pixels: np.ndarray) -> SlideStainNormalizer:
        """Estimate the statistics of one image from its (sub-sampled) pixels ``(..., 3)`` uint8."""
        self._source, self.note = None, None
        if self.method == "none":
            return self
        pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
        try:
            if self.method == "macenko":
                self._source = self._fit_macenko(pixels)
            else:
                self._source = self._fit_reinhard(pixels)
        except (ValueError, np.linalg.LinAlgError) as e:
            self.note = f"stain normalisation skipped, image left unchanged ({e})"
        return self

    # ---------------------------------------------------------------------------------------------- Macenko
    def _fit_macenko(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        from monai.apps.pathology.transforms import ExtractHEStains

        ref = self._ref
        he = ExtractHEStains(tli=ref.tli, alpha=ref.alpha, beta=ref.beta)(pixels.reshape(-1, 1, 3))
        pinv = np.linalg.pinv(he.astype(np.float64)).astype(np.float32)  # (2, 3)
        conc = self._concentrations(_absorbance(pixels, ref.tli), pinv)
        max_conc = np.array([np.percentile(conc[..., 0], 99), np.percentile(conc[..., 1], 99)], dtype=np.float32)
        if not np.all(np.isfinite(max_conc)) or np.any(max_conc == 0):
            raise ValueError("degenerate stain concentrations")
        return {"pinv": pinv, "scale": (np.asarray(ref.max_cref, np.float32) / max_conc).astype(np.float32)}

    @staticmethod
    def _concentrations(od: np.ndarray, pinv: np.ndarray) -> np.ndarray:
        # elementwise, so that every pixel's value is independent of the tile it is computed in
        c = [od[..., 0] * pinv[k, 0] + od[..., 1] * pinv[k, 1] + od[..., 2] * pinv[k, 2] for k in range(2)]
        return np.stack(c, axis=-1)

    def _apply_macenko(self, tile: np.ndarray) -> np.ndarray:
        ref, src = self._ref, self._source
        assert src is not None
        conc = self._concentrations(_absorbance(tile, ref.tli), src["pinv"]) * src["scale"]
        t = np.asarray(ref.target_he, np.float32)  # (3, 2)
        out = np.empty(tile.shape, dtype=np.float32)
        for k in range(3):
            out[..., k] = np.float32(ref.tli) * np.exp(-(conc[..., 0] * t[k, 0] + conc[..., 1] * t[k, 1]))
        out[out > 255] = 254
        return out.astype(np.uint8)

    # --------------------------------------------------------------------------------------------- Reinhard
    def _tissue(self, pixels: np.ndarray) -> np.ndarray:
        ref = self._ref
        return np.all(_absorbance(pixels, ref.tli) > ref.beta, axis=-1)

    def _fit_reinhard(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        from skimage.color import rgb2lab

        tissue = pixels[self._tissue(pixels)]
        if len(tissue) < 2:
            raise ValueError("no stained pixel")
        lab = rgb2lab(tissue.reshape(-1, 1, 3)).reshape(-1, 3)
        return {"mean": lab.mean(axis=0), "std": lab.std(axis=0) + 1e-6}

    def _apply_reinhard(self, tile: np.ndarray) -> np.ndarray:
        from skimage.color import lab2rgb, rgb2lab

        ref, src = self._ref, self._source
        assert src is not None
        mask = self._tissue(tile)
        out = tile.copy()
        if not mask.any():
            return out
        lab = rgb2lab(tile[mask].reshape(-1, 1, 3)).reshape(-1, 3)
        lab = (lab - src["mean"]) / src["std"] * ref.std + ref.mean
        rgb = lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3)
        out[mask] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        return out

    def apply(self, tile: np.ndarray) -> np.ndarray:
        """Normalise an RGB uint8 tile ``(h, w, 3)`` of the image passed to :meth:`fit_source`."""
        if not self.active or tile.size == 0:
            return tile
        if self.method == "macenko":
            return self._apply_macenko(tile)
        return self._apply_reinhard(tile)

    __call__ = apply
