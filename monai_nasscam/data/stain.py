"""Stain normalisation of H&E images: Macenko, Reinhard, or none. The one implementation used by ``nasscam prepare``
and by inference.

Each normaliser is fitted once on tissue-rich reference images (``fit``); then an image is normalised in two steps:

1. ``estimate(pixels)``: the image's own stain statistics (Macenko: its H&E matrix and 99th-percentile
   concentrations; Reinhard: the L*a*b* mean and deviation), from its *tissue* pixels only (optical density above
   ``beta`` in all three channels). Raises :class:`StainEstimationError` when the image holds too little tissue
   (fewer than ``min_tissue_pixels`` stained pixels), a single stain colour (Macenko: H and E vectors less than
   ``min_angle`` degrees apart), or degenerate concentrations.
2. ``transform(tile, statistics)``: maps any tile of that image, pixel by pixel, to the reference (so the result
   does not depend on how the image is cut into tiles).

``apply(image)`` does both on a whole image and returns ``(image, note)``: when the statistics cannot be estimated
the image is returned unchanged and ``note`` says why (``prepare`` and inference print it with the image's name).
``nasscam prepare`` calls ``apply`` per image; inference
(:class:`monai_nasscam.inference.stain.SlideStainNormalizer`) calls ``estimate`` once per image, on all its pixels
or a regular subsample of a slide, and ``transform`` per block. ``to_dict`` / :func:`stain_normalizer_from_dict`
save and restore a fitted normaliser (``nasscam prepare`` stores it in ``manifest.json``).

Why Macenko is not MONAI's ``NormalizeHEStains`` as is: MONAI's ``ExtractHEStains`` gives the stain matrix here
(reference and per image), but ``NormalizeHEStains`` (a) takes the 99th-percentile concentrations over *all*
pixels, glass included, so a mostly-glass image with a few nucleus pixels gets a zero percentile and a division by
zero (an all-black image and only numpy warnings); (b) fuses estimation and mapping in one call, so a slide
cannot be normalised block by block with one set of statistics; (c) solves with ``lstsq`` per call (several times
slower than the pseudo-inverse used here). ``ExtractHEStains`` itself raises ``ValueError`` on a background-only
image and returns two equal stain vectors (a singular matrix, no error) for single-colour tissue; both are caught
by ``estimate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.apps.pathology.transforms import ExtractHEStains, NormalizeHEStains

from monai_nasscam.errors import StainEstimationError

__all__ = [
    "tissue_fraction",
    "tissue_mask",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "IdentityNormalizer",
    "create_stain_normalizer",
    "stain_normalizer_from_dict",
    "STAIN_METHODS",
    "STAIN_SKIPPED",
]

STAIN_METHODS = ("macenko", "reinhard", "none")
#: start of the note of an image left unchanged (``prepare`` manifest notes, inference ``counts.csv``)
STAIN_SKIPPED = "stain normalisation skipped, image left unchanged"
#: default minimum number of stained pixels to estimate an image's stains from
MIN_TISSUE_PIXELS = 100
#: default minimum angle (degrees) between the estimated H and E vectors
MIN_STAIN_ANGLE = 1.0


def _absorbance(pixels: np.ndarray, tli: float) -> np.ndarray:
    """Optical density of uint8 RGB pixels ``(..., 3)`` (float32), as in MONAI's ``ExtractHEStains``."""
    return -np.log((pixels.astype(np.float32) + np.float32(1.0)).clip(max=np.float32(tli)) / np.float32(tli))


def tissue_mask(pixels: np.ndarray, tli: float = 240, beta: float = 0.15) -> np.ndarray:
    """Stained (tissue) pixels: optical density above ``beta`` in all three channels (MONAI's criterion).

    Args:
        pixels: ``(..., 3)`` uint8 RGB.
        tli: transmitted light intensity.
        beta: optical-density threshold.

    Returns:
        ``(...)`` bool mask.
    """
    return np.all(_absorbance(pixels, tli) > beta, axis=-1)


def tissue_fraction(image: np.ndarray, tli: float = 240, beta: float = 0.15) -> float:
    """Fraction of pixels whose optical density exceeds ``beta`` in all three channels (stained tissue)."""
    return float(tissue_mask(image[::4, ::4], tli, beta).mean()) if image.size else 0.0


def _pool_pixels(images: Sequence[np.ndarray], max_pixels: int, seed: int) -> np.ndarray:
    pixels = np.concatenate([np.asarray(im, dtype=np.uint8).reshape(-1, 3) for im in images], axis=0)
    if len(pixels) > max_pixels:
        idx = np.random.default_rng(seed).choice(len(pixels), size=max_pixels, replace=False)
        pixels = pixels[np.sort(idx)]
    return pixels


def _tissue_pixels(pixels: np.ndarray, tli: float, beta: float, minimum: int) -> np.ndarray:
    """The stained pixels ``(n, 3)`` of ``pixels``; raises when there are fewer than ``minimum`` (at least 2)."""
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    tissue = pixels[tissue_mask(pixels, tli, beta)]
    need = max(2, int(minimum))
    if len(tissue) == 0:
        raise StainEstimationError(
            f"no stained pixel: no pixel has an optical density above {beta:g} in all three channels (glass or "
            "background only)"
        )
    if len(tissue) < need:
        raise StainEstimationError(
            f"only {len(tissue)} stained pixel(s), fewer than {need}: too little tissue to estimate the stains"
        )
    return tissue


class IdentityNormalizer:
    """No stain normalisation (``--stain none``)."""

    method = "none"

    def fit(self, images: Sequence[np.ndarray]) -> IdentityNormalizer:
        return self

    def estimate(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def transform(self, tile: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
        return tile

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        return image, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


class _Normalizer:
    """``apply`` / ``__call__`` on top of the subclass's ``estimate`` + ``transform``."""

    estimate: Any
    transform: Any

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Normalise one whole image ``(H, W, 3)`` uint8 RGB with its own statistics.

        Returns:
            ``(normalised image, None)``, or ``(image unchanged, note)`` when its statistics cannot be estimated.
        """
        image = np.asarray(image, dtype=np.uint8)
        try:
            stats = self.estimate(image)
        except (ValueError, np.linalg.LinAlgError) as e:  # StainEstimationError, or MONAI's own checks
            return image, f"{STAIN_SKIPPED} ({e})"
        return self.transform(image, stats), None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image)[0]


class MacenkoNormalizer(_Normalizer):
    """Macenko normalisation towards a fitted reference; stain matrices from MONAI's ``ExtractHEStains``.

    An image's concentrations ``c = pinv(HE_image) @ OD`` are scaled by ``max_cref / p99`` (``p99``: the image's
    99th-percentile concentrations over its tissue pixels) and recomposed with the reference matrix:
    ``I = tli * exp(-target_he @ c)`` (values above 255 become 254, as in MONAI).

    Args:
        tli: transmitted light intensity.
        alpha: percentile tolerance of the stain-vector angles.
        beta: optical-density threshold of transparent (background) pixels.
        target_he: reference ``(3, 2)`` stain matrix (H and E columns); MONAI's default until ``fit``.
        max_cref: reference 99th-percentile H and E concentrations; MONAI's default until ``fit``.
        min_tissue_pixels: fewer stained pixels than this: the image is left unchanged (with a note).
        min_angle: H and E vectors closer than this (degrees; one stain colour only): left unchanged.
    """

    method = "macenko"

    def __init__(
        self,
        tli: float = 240,
        alpha: float = 1,
        beta: float = 0.15,
        target_he: Sequence[Sequence[float]] | None = None,
        max_cref: Sequence[float] | None = None,
        min_tissue_pixels: int = MIN_TISSUE_PIXELS,
        min_angle: float = MIN_STAIN_ANGLE,
    ) -> None:
        self.tli, self.alpha, self.beta = float(tli), float(alpha), float(beta)
        self.target_he = np.asarray(
            target_he if target_he is not None else ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
            dtype=np.float32,
        )
        self.max_cref = np.asarray(max_cref if max_cref is not None else (1.9705, 1.0308), dtype=np.float32)
        if self.target_he.shape != (3, 2) or self.max_cref.shape != (2,):
            raise ValueError(
                f"Macenko reference: target_he must be 3 x 2 and max_cref 2 values, got {self.target_he.shape} "
                f"and {self.max_cref.shape}."
            )
        self.min_tissue_pixels, self.min_angle = int(min_tissue_pixels), float(min_angle)
        #: percentiles over tissue pixels (``False``: over all pixels, as MONAI's ``NormalizeHEStains``)
        self.tissue_percentiles = True

    def _stains(self, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stain matrix ``(3, 2)`` of the tissue pixels and its pseudo-inverse ``(2, 3)`` (float32)."""
        he = ExtractHEStains(tli=self.tli, alpha=self.alpha, beta=self.beta)(tissue.reshape(-1, 1, 3))
        he = np.asarray(he, dtype=np.float64)
        norms = np.linalg.norm(he, axis=0)
        if not np.all(np.isfinite(he)) or np.any(norms == 0):
            raise StainEstimationError("the stain vectors could not be estimated")
        cos = float(np.clip(he[:, 0] @ he[:, 1] / (norms[0] * norms[1]), -1.0, 1.0))
        angle = float(np.degrees(np.arccos(abs(cos))))
        if angle < self.min_angle:
            raise StainEstimationError(
                f"H and E stain vectors {angle:.2f} degrees apart (at least {self.min_angle:g} needed): the tissue "
                "shows one stain colour only"
            )
        return he.astype(np.float32), np.linalg.pinv(he).astype(np.float32)

    @staticmethod
    def _concentrations(od: np.ndarray, pinv: np.ndarray) -> np.ndarray:
        # elementwise, so that every pixel's value is independent of the tile it is computed in
        c = [od[..., 0] * pinv[k, 0] + od[..., 1] * pinv[k, 1] + od[..., 2] * pinv[k, 2] for k in range(2)]
        return np.stack(c, axis=-1)

    def _p99(self, conc: np.ndarray) -> np.ndarray:
        p99 = np.percentile(conc.reshape(-1, 2), 99, axis=0).astype(np.float32)
        if not np.all(np.isfinite(p99)) or np.any(p99 <= 0):
            raise StainEstimationError(
                f"degenerate stain concentrations (99th percentiles H {p99[0]:.3g}, E {p99[1]:.3g})"
            )
        return p99

    def estimate(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The image's stain statistics from its pixels ``(..., 3)`` uint8 (all of them, or a subsample).

        Returns:
            ``{"pinv": (2, 3) float32 pseudo-inverse of its stain matrix, "scale": (2,) float32 max_cref / p99}``.

        Raises:
            StainEstimationError: too little tissue, one stain colour only, or degenerate concentrations.
        """
        pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
        tissue = _tissue_pixels(pixels, self.tli, self.beta, self.min_tissue_pixels)
        _, pinv = self._stains(tissue)
        basis = tissue if self.tissue_percentiles else pixels
        p99 = self._p99(self._concentrations(_absorbance(basis, self.tli), pinv))
        return {"pinv": pinv, "scale": (self.max_cref / p99).astype(np.float32)}

    def transform(self, tile: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
        """Map a tile ``(..., 3)`` uint8 of the image whose statistics are ``stats`` to the reference (uint8)."""
        conc = self._concentrations(_absorbance(tile, self.tli), stats["pinv"]) * stats["scale"]
        t = np.asarray(self.target_he, np.float32)  # (3, 2)
        out = np.empty(np.shape(tile), dtype=np.float32)
        for k in range(3):
            out[..., k] = np.float32(self.tli) * np.exp(-(conc[..., 0] * t[k, 0] + conc[..., 1] * t[k, 1]))
        out[out > 255] = 254
        return out.astype(np.uint8)

    def fit(self, images: Sequence[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> MacenkoNormalizer:
        """Fit the reference stain matrix and 99th-percentile concentrations on the pooled tissue pixels of ``images``.

        Raises:
            StainEstimationError: the reference images hold too little tissue or a single stain colour.
        """
        pixels = _pool_pixels(images, max_pixels, seed)
        tissue = _tissue_pixels(pixels, self.tli, self.beta, self.min_tissue_pixels)
        he, pinv = self._stains(tissue)
        self.max_cref = self._p99(self._concentrations(_absorbance(tissue, self.tli), pinv))
        self.target_he = he
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tli": self.tli,
            "alpha": self.alpha,
            "beta": self.beta,
            "target_he": np.round(self.target_he.astype(float), 6).tolist(),
            "max_cref": np.round(self.max_cref.astype(float), 6).tolist(),
            "min_tissue_pixels": self.min_tissue_pixels,
            "min_angle": self.min_angle,
        }


class _NormalizeHEStainsFast(NormalizeHEStains):
    """MONAI's ``NormalizeHEStains`` interface over :class:`MacenkoNormalizer` (kept to check it against MONAI).

    Computes what MONAI computes (percentiles over all pixels, as MONAI does), through
    :meth:`MacenkoNormalizer.estimate` / :meth:`MacenkoNormalizer.transform` (pseudo-inverse, float32): equal to
    MONAI's output within one grey level (tested), so the only difference of the normaliser used by ``prepare``
    and inference is the documented one, percentiles over tissue pixels. Raises
    :class:`StainEstimationError` where MONAI would divide by zero.
    """

    def __init__(self, tli: float = 240, alpha: float = 1, beta: float = 0.15, target_he=None, max_cref=None) -> None:
        super().__init__(tli=tli, alpha=alpha, beta=beta)
        self._macenko = MacenkoNormalizer(tli, alpha, beta, target_he, max_cref, min_tissue_pixels=2, min_angle=0.0)
        self._macenko.tissue_percentiles = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise TypeError("Image must be of type numpy.ndarray.")
        if image.min() < 0 or image.max() > 255:
            raise ValueError("Image values must lie in [0, 255].")
        image = image.astype(np.uint8)
        return self._macenko.transform(image, self._macenko.estimate(image))


class ReinhardNormalizer(_Normalizer):
    """Reinhard normalisation: match the mean and standard deviation of the tissue pixels in CIE L*a*b*.

    Background (unstained) pixels are left unchanged.

    Args:
        tli: transmitted light intensity (tissue detection).
        beta: optical-density threshold of background pixels (tissue detection).
        mean: reference L*a*b* means of tissue pixels.
        std: reference L*a*b* standard deviations of tissue pixels.
        min_tissue_pixels: fewer stained pixels than this: the image is left unchanged (with a note).
    """

    method = "reinhard"

    def __init__(
        self,
        tli: float = 240,
        beta: float = 0.15,
        mean: Sequence[float] = (62.0, 30.0, -15.0),
        std: Sequence[float] = (15.0, 10.0, 8.0),
        min_tissue_pixels: int = MIN_TISSUE_PIXELS,
    ) -> None:
        self.tli, self.beta = float(tli), float(beta)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.min_tissue_pixels = int(min_tissue_pixels)

    @staticmethod
    def _lab(pixels: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2lab

        return rgb2lab(pixels.reshape(-1, 1, 3)).reshape(-1, 3)

    def _stats(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = self._lab(_tissue_pixels(pixels, self.tli, self.beta, self.min_tissue_pixels))
        return lab.mean(axis=0), lab.std(axis=0) + 1e-6

    def fit(self, images: Sequence[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> ReinhardNormalizer:
        """Fit the reference statistics on the tissue pixels of ``images``.

        Raises:
            StainEstimationError: the reference images hold too little tissue.
        """
        self.mean, self.std = self._stats(_pool_pixels(images, max_pixels, seed))
        return self

    def estimate(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The L*a*b* mean and deviation ``{"mean", "std"}`` of the tissue pixels of ``pixels`` ``(..., 3)`` uint8.

        Raises:
            StainEstimationError: too little tissue.
        """
        mean, std = self._stats(np.asarray(pixels, dtype=np.uint8))
        return {"mean": mean, "std": std}

    def transform(self, tile: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
        """Map the tissue pixels of a tile ``(..., 3)`` uint8 to the reference statistics; background unchanged."""
        from skimage.color import lab2rgb

        tile = np.asarray(tile, dtype=np.uint8)
        mask = tissue_mask(tile, self.tli, self.beta)
        out = tile.copy()
        if not mask.any():
            return out
        lab = (self._lab(tile[mask]) - stats["mean"]) / stats["std"] * self.std + self.mean
        rgb = lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3)
        out[mask] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tli": self.tli,
            "beta": self.beta,
            "mean": np.round(self.mean, 6).tolist(),
            "std": np.round(self.std, 6).tolist(),
            "min_tissue_pixels": self.min_tissue_pixels,
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
    kwargs = {k: v for k, v in d.items() if k not in ("method", "reference_images")}
    method = d.get("method", "none")
    if method == "macenko":
        return MacenkoNormalizer(**kwargs)
    if method == "reinhard":
        return ReinhardNormalizer(**kwargs)
    if method == "none":
        return IdentityNormalizer()
    raise ValueError(f"unknown stain normalisation {method!r}; choose one of {', '.join(STAIN_METHODS)}.")
