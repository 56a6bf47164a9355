"""Metrics: per-class Dice pooled over a split, panoptic quality (correct and MoNuSAC official), metrics.json."""

from .dice import PooledDiceHandler, PooledDiceMetric, mean_over_scored_images, per_image_dice
from .panoptic import (
    AMBIGUOUS_MAX_FRACTION,
    PooledPQMetric,
    exclude_ambiguous_instances,
    instances_from_maps,
    instances_from_semantic,
    monusac_official_pq,
    panoptic_quality,
    pq_counts,
    pq_from_counts,
    pq_monusac_official,
)
from .report import CLASS_NAMES, metrics_dict, write_metrics_json

__all__ = [
    "AMBIGUOUS_MAX_FRACTION",
    "CLASS_NAMES",
    "PooledDiceHandler",
    "PooledDiceMetric",
    "PooledPQMetric",
    "exclude_ambiguous_instances",
    "instances_from_maps",
    "instances_from_semantic",
    "mean_over_scored_images",
    "metrics_dict",
    "monusac_official_pq",
    "panoptic_quality",
    "per_image_dice",
    "pq_counts",
    "pq_from_counts",
    "pq_monusac_official",
    "write_metrics_json",
]
