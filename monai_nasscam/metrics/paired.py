"""Paired differences between two models evaluated on the same test images, with 95 % intervals: across seeds (a
Student-t interval of the mean of per-seed differences) and across test images (a percentile bootstrap of the pooled
Dice over the images). ``nasscam compare`` reports searched minus random genotypes with them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONFIDENCE", "BOOTSTRAP_SAMPLES", "seed_interval", "pooled_mean_dice", "image_bootstrap", "image_differences",
]

#: coverage of the intervals of the paired differences
CONFIDENCE = 0.95
#: bootstrap resamples of the test images
BOOTSTRAP_SAMPLES = 2000


def seed_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """The Student-t interval of the mean of per-seed differences, ``mean +- t((1 + confidence) / 2, n - 1) *
    sd / sqrt(n)``; ``None`` under 2 values (no spread to judge from). It treats the seeds as independent draws of the
    search and retraining: with 3 seeds ``t`` is 4.30, so it is wide unless the seeds agree."""
    from scipy.stats import t

    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf((1.0 + confidence) / 2.0, len(values) - 1)) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def pooled_mean_dice(counts: np.ndarray) -> np.ndarray:
    """Mean over classes of the pooled Dice ``2 I / (P + G)``.

    Args:
        counts: summed counts ``(..., C, 3)``: intersection, prediction sum, ground-truth sum per class.

    Returns:
        float64 ``(...)``: the mean over the classes with ``P + G > 0`` (the others are left out, as in
        ``metrics.json``), NaN where every class is.
    """
    inter, total = counts[..., 0], counts[..., 1] + counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * inter / np.where(total > 0, total, 1.0), np.nan)
    defined = ~np.isnan(dice)
    return np.where(defined.any(-1), np.nansum(dice, -1) / np.maximum(defined.sum(-1), 1), np.nan)


def image_bootstrap(
    searched: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Searched minus baseline mean pooled Dice with a percentile-bootstrap interval over the test images.

    Each resample draws the test images with replacement (the same draw for both models and every seed) and pools the
    Dice counts of the drawn images; the difference is averaged over the seeds. It tells whether a difference
    would hold on other images of the same kind, for these trained networks.

    Args:
        searched: per seed, the per-image Dice counts ``(N, C, 3)`` (intersection, prediction, ground truth) of the
            searched model (``metrics.json``'s ``per_image.dice_counts``).
        baseline: the same for the baseline, the same images in the same order.
        samples: bootstrap resamples.
        confidence: coverage of the interval.
        seed: seeds the resampling.

    Returns:
        ``{"difference": mean over seeds of the pooled-Dice differences, "interval": [low, high], "images": N,
        "per_seed": [difference of each seed]}``, fractions (0.01 is one point of Dice).

    Raises:
        ValueError: no seed, or counts of different shapes.
    """
    if not searched or len(searched) != len(baseline):
        raise ValueError("image_bootstrap needs the counts of at least one seed for both models.")
    a = np.stack([np.asarray(c, dtype=np.float64) for c in searched])  # (S, N, C, 3)
    b = np.stack([np.asarray(c, dtype=np.float64) for c in baseline])
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(
            f"per-image Dice counts must be (images, classes, 3) for both models, got {a.shape[1:]} and {b.shape[1:]}."
        )
    per_seed = pooled_mean_dice(a.sum(1)) - pooled_mean_dice(b.sum(1))  # (S,)
    rows = np.random.default_rng(seed).integers(0, a.shape[1], size=(int(samples), a.shape[1]))
    boot = np.nanmean(pooled_mean_dice(a[:, rows].sum(2)) - pooled_mean_dice(b[:, rows].sum(2)), axis=0)  # (samples,)
    tail = 100 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(boot, [tail, 100 - tail])
    return {"difference": float(np.nanmean(per_seed)), "interval": [float(low), float(high)], "images": int(a.shape[1]),
            "per_seed": [float(d) for d in per_seed]}


def image_differences(
    searched: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]], seeds: Sequence[str]
) -> dict[str, Any] | None:
    """:func:`image_bootstrap` of two models' runs, per seed and over all seeds.

    Args:
        searched: seed -> the searched model's ``metrics.json`` (its ``per_image`` holds ``names`` and
            ``dice_counts``).
        baseline: seed -> the baseline's ``metrics.json``.
        seeds: the seeds to pair; a seed is left out unless both runs recorded counts of the same images (by name).

    Returns:
        ``{"per_seed": {seed: image_bootstrap(...)}, "all_seeds": {**image_bootstrap(...), "seeds": [...]}}`` (all
        seeds: those evaluated on the first seed's images); ``None`` when no seed has counts (``metrics.json`` files
        written before they were recorded).
    """
    pairs = {}
    for s in seeds:
        mine, theirs = searched[s].get("per_image") or {}, baseline[s].get("per_image") or {}
        names = mine.get("names")
        if not names or names != theirs.get("names") or "dice_counts" not in mine or "dice_counts" not in theirs:
            continue
        pairs[s] = (np.asarray(mine["dice_counts"]), np.asarray(theirs["dice_counts"]), tuple(names))
    if not pairs:
        return None
    out: dict[str, Any] = {"per_seed": {s: image_bootstrap([a], [b]) for s, (a, b, _) in pairs.items()}}
    same = [s for s in pairs if pairs[s][2] == next(iter(pairs.values()))[2]]  # the seeds evaluated on one image set
    out["all_seeds"] = {**image_bootstrap([pairs[s][0] for s in same], [pairs[s][1] for s in same]), "seeds": same}
    return out
