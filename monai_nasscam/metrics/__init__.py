"""Metrics: per-class Dice pooled over a split, class instance stacks, panoptic quality (correct and MoNuSAC
official), instance metrics (AJI, AJI+, HoVer-Net detection / classification F1, mPQ+), metrics.json."""

from .dice import PerImageDiceMetric, PooledDiceHandler, PooledDiceMetric, mean_over_scored_images, per_image_dice
from .instance_stacks import (
    AMBIGUOUS_MAX_FRACTION,
    batch_instance_stacks,
    exclude_ambiguous_instances,
    instances_from_maps,
    instances_from_semantic,
)
from .panoptic import (
    PooledPQMetric,
    monusac_official_pq,
    panoptic_quality,
    pq_counts,
    pq_from_counts,
    pq_monusac_official,
)
from .instance import (
    DETECTION_RADIUS_PX,
    InstanceMetric,
    aggregated_jaccard_index,
    aji_counts,
    detection_counts,
    f1_from_counts,
    flatten_instances,
    instance_centroids,
    mpq_plus,
    pair_centroids,
)
from .report import CLASS_NAMES, INSTANCE_KEYS, instance_metrics_dict, metrics_dict, write_metrics_json

__all__ = [
    "AMBIGUOUS_MAX_FRACTION",
    "CLASS_NAMES",
    "DETECTION_RADIUS_PX",
    "INSTANCE_KEYS",
    "InstanceMetric",
    "PerImageDiceMetric",
    "PooledDiceHandler",
    "PooledDiceMetric",
    "PooledPQMetric",
    "aggregated_jaccard_index",
    "aji_counts",
    "batch_instance_stacks",
    "detection_counts",
    "exclude_ambiguous_instances",
    "f1_from_counts",
    "flatten_instances",
    "instance_centroids",
    "instance_metrics_dict",
    "instances_from_maps",
    "instances_from_semantic",
    "mean_over_scored_images",
    "metrics_dict",
    "monusac_official_pq",
    "mpq_plus",
    "pair_centroids",
    "panoptic_quality",
    "per_image_dice",
    "pq_counts",
    "pq_from_counts",
    "pq_monusac_official",
    "write_metrics_json",
]
