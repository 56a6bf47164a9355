"""Stain normalisation of H&E tiles: Macenko (MONAI ``NormalizeHEStains``), Reinhard, or none.

Each normaliser is fitted once on tissue-rich reference tiles (``fit``) and then applied tile by tile
(``apply``), on numpy ``(H, W, 3)`` uint8 RGB arrays. A tile with no stained pixel cannot be
deconvolved: it is returned unchanged with a note. ``to_dict`` / :func:`stain_normalizer_from_dict`
save and restore a fitted normaliser (``nasscam prepare`` stores it in ``manifest.json`` so new images
can be normalised the same way at inference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.apps.pathology.transforms import ExtractHEStains, NormalizeHEStains

__all__ = [
    "tissue_fraction",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "IdentityNormalizer",
    "create_stain_normalizer",
    "stain_normalizer_from_dict",
    "STAIN_METHODS",
]

STAIN_METHODS = ("macenko", "reinhard", "none")


def _absorbance(pixels: np.ndarray, tli: float) -> np.ndarray:
    """Optical density of uint8 RGB pixels ``(..., 3)``, as in MONAI's ``ExtractHEStains``."""
    return -np.log((pixels.astype(np.float32) + 1.0).clip(max=tli) / tli)


def _tissue_mask(image: np.ndarray, tli: float = 240, beta: float = 0.15) -> np.ndarray:
    return np.all(_absorbance(image, tli) > beta, axis=-1)


def tissue_fraction(image: np.ndarray, tli: float = 240, beta: float = 0.15) -> float:
    """Fraction of pixels whose optical density exceeds ``beta`` in all three channels (stained tissue)."""
    return float(_tissue_mask(image[::4, ::4], tli, beta).mean()) if image.size else 0.0


def _pool_pixels(images: Sequence[np.ndarray], max_pixels: int, seed: int) -> np.ndarray:
    pixels = np.concatenate([np.asarray(im, dtype=np.uint8).reshape(-1, 3) for im in images], axis=0)
    if len(pixels) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(pixels), size=max_pixels, replace=False)
        pixels = pixels[np.sort(idx)]
    return pixels


class _NormalizeHEStainsFast(NormalizeHEStains):
    """MONAI ``NormalizeHEStains`` with the concentration solve done through the pseudo-inverse.

    The stain matrix comes from MONAI's ``ExtractHEStains`` (the Macenko estimate) as in the parent; the
    least-squares concentrations ``lstsq(he, od)`` are computed as ``pinv(he) @ od`` (the same solution
    for a full-rank 3 x 2 matrix) and the rest in float32, which is several times faster on large tiles.
    The output matches the parent's to within one grey level (tested).
    """

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise TypeError("Image must be of type numpy.ndarray.")
        if image.min() < 0 or image.max() > 255:
            raise ValueError("Image values must lie in [0, 255].")
        he = self.stain_extractor(image)
        h, w, _ = image.shape
        od = _absorbance(image.reshape(-1, 3), self.tli)
        conc = od @ np.linalg.pinv(he.astype(np.float64)).T.astype(np.float32)
        max_conc = np.array([np.percentile(conc[:, 0], 99), np.percentile(conc[:, 1], 99)], dtype=np.float32)
        conc *= (self.max_cref / max_conc).astype(np.float32)
        out = np.float32(self.tli) * np.exp(-(conc @ self.target_he.T.astype(np.float32)))
        out[out > 255] = 254
        return out.reshape(h, w, 3).astype(np.uint8)


class IdentityNormalizer:
    """No stain normalisation (``--stain none``)."""

    method = "none"

    def fit(self, images: Sequence[np.ndarray]) -> IdentityNormalizer:
        return self

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        return image, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


class MacenkoNormalizer:
    """Macenko normalisation through MONAI's ``NormalizeHEStains`` towards a fitted reference.

    Args:
        tli: transmitted light intensity.
        alpha: percentile tolerance of the stain-vector angles.
        beta: optical-density threshold of transparent (background) pixels.
        target_he: reference ``(3, 2)`` stain matrix (H and E columns); MONAI's default until ``fit``.
        max_cref: reference 99th-percentile H and E concentrations; MONAI's default until ``fit``.
    """

    method = "macenko"

    def __init__(
        self,
        tli: float = 240,
        alpha: float = 1,
        beta: float = 0.15,
        target_he: Sequence[Sequence[float]] | None = None,
        max_cref: Sequence[float] | None = None,
    ) -> None:
        self.tli, self.alpha, self.beta = float(tli), float(alpha), float(beta)
        self.target_he = np.asarray(
            target_he if target_he is not None else ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
            dtype=np.float32,
        )
        self.max_cref = np.asarray(max_cref if max_cref is not None else (1.9705, 1.0308), dtype=np.float32)
        self._build()

    def _build(self) -> None:
        self._normalize = _NormalizeHEStainsFast(
            tli=self.tli, alpha=self.alpha, beta=self.beta, target_he=self.target_he, max_cref=self.max_cref
        )

    def fit(self, images: Sequence[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> MacenkoNormalizer:
        """Fit the reference stain matrix and maximum concentrations on the pooled pixels of ``images``.

        Raises:
            ValueError: the reference tiles hold no stained pixel.
        """
        pixels = _pool_pixels(images, max_pixels, seed)
        he = ExtractHEStains(tli=self.tli, alpha=self.alpha, beta=self.beta)(pixels.reshape(-1, 1, 3))
        conc = np.linalg.lstsq(he, _absorbance(pixels, self.tli).T, rcond=None)[0]
        self.target_he = np.asarray(he, dtype=np.float32)
        self.max_cref = np.percentile(conc, 99, axis=1).astype(np.float32)
        self._build()
        return self

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Normalise one tile; returns ``(image, note)`` where ``note`` explains an identity fallback."""
        try:
            out = self._normalize(np.asarray(image, dtype=np.uint8))
        except (ValueError, np.linalg.LinAlgError) as e:
            return image, f"stain normalisation skipped, tile left unchanged ({e})"
        return out, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tli": self.tli,
            "alpha": self.alpha,
            "beta": self.beta,
            "target_he": np.round(self.target_he.astype(float), 6).tolist(),
            "max_cref": np.round(self.max_cref.astype(float), 6).tolist(),
        }


class ReinhardNormalizer:
    """Reinhard normalisation: match the mean and standard deviation of the tissue pixels in CIE L*a*b*.

    Background (unstained) pixels are left unchanged.

    Args:
        tli: transmitted light intensity (tissue detection).
        beta: optical-density threshold of background pixels (tissue detection).
        mean: reference L*a*b* means of tissue pixels.
        std: reference L*a*b* standard deviations of tissue pixels.
    """

    method = "reinhard"

    def __init__(
        self,
        tli: float = 240,
        beta: float = 0.15,
        mean: Sequence[float] = (62.0, 30.0, -15.0),
        std: Sequence[float] = (15.0, 10.0, 8.0),
    ) -> None:
        self.tli, self.beta = float(tli), float(beta)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    @staticmethod
    def _lab(pixels: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2lab

        return rgb2lab(pixels.reshape(-1, 1, 3)).reshape(-1, 3)

    def fit(self, images: Sequence[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> ReinhardNormalizer:
        """Fit the reference statistics on the tissue pixels of ``images``.

        Raises:
            ValueError: the reference tiles hold no stained pixel.
        """
        pixels = _pool_pixels(images, max_pixels, seed)
        tissue = pixels[_tissue_mask(pixels, self.tli, self.beta)]
        if len(tissue) < 2:
            raise ValueError("All pixels of the reference tiles are below the absorbance threshold.")
        lab = self._lab(tissue)
        self.mean, self.std = lab.mean(axis=0), lab.std(axis=0) + 1e-6
        return self

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Normalise one tile; returns ``(image, note)`` where ``note`` explains an identity fallback."""
        from skimage.color import lab2rgb

        mask = _tissue_mask(image, self.tli, self.beta)
        if mask.sum() < 2:
            return image, "stain normalisation skipped, tile left unchanged (no stained pixel)"
        lab = self._lab(image[mask])
        lab = (lab - lab.mean(axis=0)) / (lab.std(axis=0) + 1e-6) * self.std + self.mean
        rgb = lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3)
        out = image.copy()
        out[mask] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        return out, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tli": self.tli,
            "beta": self.beta,
            "mean": np.round(self.mean, 6).tolist(),
            "std": np.round(self.std, 6).tolist(),
        }


def create_stain_normalizer(method: str) -> MacenkoNormalizer | ReinhardNormalizer | IdentityNormalizer:
    """An unfitted normaliser for ``method`` in :data:`STAIN_METHODS`."""
    method = (method or "none").lower()
    if method == "macenko":
        return MacenkoNormalizer()
    if method == "reinhard":
        return ReinhardNormalizer()
    if method == "none":
        return IdentityNormalizer()
    raise ValueError(f"unknown stain normalisation {method!r}; choose one of {', '.join(STAIN_METHODS)}.")


def stain_normalizer_from_dict(d: dict[str, Any]) -> MacenkoNormalizer | ReinhardNormalizer | IdentityNormalizer:
    """Rebuild a fitted normaliser from :meth:`to_dict` output (e.g. ``manifest.json["settings"]["stain"]``)."""
    kwargs = {k: v for k, v in d.items() if k != "method"}
    method = d.get("method", "none")
    if method == "macenko":
        return MacenkoNormalizer(**kwargs)
    if method == "reinhard":
        return ReinhardNormalizer(**kwargs)
    if method == "none":
        return IdentityNormalizer()
    raise ValueError(f"unknown stain normalisation {method!r}; choose one of {', '.join(STAIN_METHODS)}.")
