"""
Class instance stacks: the nucleus instances of every class of an image, as the instance-level metrics (panoptic
quality, AJI, F1) read them.

Instances of a class are stored as a "class instance stack": an integer array (C, *spatial) whose channel ``c``
holds the instance ids of class id ``c + 1`` (0 = none). Predictions get their instances from the (multi-label)
semantic output by a separation function (the metrics' ``instance_fn``), connected components (scikit-image
``label``) by default (:func:`instances_from_semantic`); the ground truth from the class map and the instance map of
the prepared data (:func:`instances_from_maps`). :func:`batch_instance_stacks` reads a batch so, for every metric.

Ambiguous regions (MoNuSAC's test release). The metrics leave out every instance, ground truth or predicted,
with more than half of its pixels in an ambiguous region (:py:func:`exclude_ambiguous_instances`); the others are
scored whole. Whole objects, not pixels: cutting a nucleus at the region's border would leave slivers scored as
false positives / negatives and lower the IoU of good matches. A prediction lying in an ambiguous region therefore
never counts, as in the challenge, whose script zeroes predicted pixels there (the ``"monusac_official"`` variant
keeps that rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from monai.utils import convert_to_numpy
from skimage.measure import label as connected_components

__all__ = [
    "AMBIGUOUS_MAX_FRACTION",
    "exclude_ambiguous_instances",
    "instances_from_semantic",
    "instances_from_maps",
    "batch_instance_stacks",
]

#: an instance with more than this share of its pixels in an ambiguous region is not scored
AMBIGUOUS_MAX_FRACTION = 0.5


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return convert_to_numpy(x, wrap_sequence=True)


def instances_from_semantic(mask: np.ndarray | torch.Tensor, connectivity: int = 1) -> np.ndarray:
    """
    Instances from a binary semantic / multi-label mask by connected components, per channel.

    Args:
        mask: (C, *spatial) binary (any non-zero value is foreground).
        connectivity: scikit-image ``label`` connectivity (1: 4-neighbourhood in 2-D / 6 in 3-D; ``ndim``: full).

    Returns:
        int32 class instance stack (C, *spatial), ids 1..n_c per channel.
    """
    mask = _to_numpy(mask)
    out = np.zeros(mask.shape, dtype=np.int32)
    for c in range(mask.shape[0]):
        out[c] = connected_components(mask[c] != 0, connectivity=connectivity, background=0)
    return out


def exclude_ambiguous_instances(
    instances: np.ndarray | torch.Tensor,
    ambiguous: np.ndarray | torch.Tensor | None,
    max_fraction: float = AMBIGUOUS_MAX_FRACTION,
) -> np.ndarray:
    """
    Remove (set to 0) the instances lying mostly in an ambiguous region; the others are kept whole.

    Args:
        instances: an instance map (*spatial) or a class instance stack (C, *spatial), 0 = background.
        ambiguous: mask (*spatial), non-zero = ambiguous; ``None`` or all zero: nothing is removed.
        max_fraction: an instance with more than this share of its pixels in the mask is removed.

    Returns:
        a copy of ``instances`` without those instances (same dtype).
    """
    out = np.array(_to_numpy(instances), copy=True)
    if ambiguous is None:
        return out
    amb = _to_numpy(ambiguous) != 0
    if not amb.any():
        return out
    stack = out if out.ndim == amb.ndim + 1 else out[None]
    if stack.shape[1:] != amb.shape:
        raise ValueError(f"instances {out.shape} and ambiguous mask {amb.shape} differ in spatial shape.")
    for c in range(stack.shape[0]):
        ids = stack[c]
        fg = ids != 0
        if not fg.any():
            continue
        values, inverse = np.unique(ids[fg], return_inverse=True)
        area = np.bincount(inverse, minlength=values.size)
        inside = np.bincount(inverse, weights=amb[fg].astype(np.float64), minlength=values.size)
        dropped = values[inside > max_fraction * area]
        if dropped.size:
            ids[np.isin(ids, dropped)] = 0
    return out


def instances_from_maps(
    class_map: np.ndarray | torch.Tensor, instance_map: np.ndarray | torch.Tensor, num_classes: int = 4
) -> np.ndarray:
    """
    Ground-truth class instance stack from a class map (0 background, 1..num_classes) and an instance map
    (unique id per nucleus), as in the prepared data (``label`` and ``instance`` of ``datalist.json``).

    Returns:
        int64 array (num_classes, *spatial): channel ``c`` keeps the instance ids whose pixels have class ``c + 1``.
    """
    class_map = _to_numpy(class_map)
    instance_map = _to_numpy(instance_map).astype(np.int64)
    if class_map.shape != instance_map.shape:
        raise ValueError(f"class map {class_map.shape} and instance map {instance_map.shape} differ in shape.")
    return np.stack([np.where(class_map == c + 1, instance_map, 0) for c in range(num_classes)])


def batch_instance_stacks(
    y_pred: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    include_background: bool = True,
    y_format: str = "instance_class",
    instance_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    connectivity: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per image of a batch, the ground-truth and predicted class instance stacks and the ambiguous mask.

    The one reading of a batch shared by the instance-level metrics
    (:class:`~monai_nasscam.metrics.panoptic.PooledPQMetric`, :class:`~monai_nasscam.metrics.instance.InstanceMetric`).

    Args:
        y_pred: binarised prediction (B, C, *spatial) (channel ``c`` = class id ``c + 1`` after dropping the
            background channel when ``include_background`` is false).
        y: ground truth: ``"instance_class"``: (B, 2 or 3, *spatial) class map, instance map[, ambiguous mask];
            ``"per_class"``: (B, C or C + 1, *spatial) class instance stack[, ambiguous mask].
        include_background: keep channel 0 of ``y_pred``.
        y_format: ``"instance_class"`` or ``"per_class"``.
        instance_fn: (C, *spatial) binary mask -> int class instance stack of the same shape; ``None``: connected
            components (:func:`instances_from_semantic` with ``connectivity``).
        connectivity: of the connected components when ``instance_fn`` is ``None``.

    Yields:
        ``(gt_stack, pred_stack, ambiguous)``: int arrays (C, *spatial) and the ambiguous mask (*spatial), or ``None``
        when the image has no ambiguous pixel.

    Raises:
        ValueError: shapes that do not match, a ``y`` with the wrong number of channels, or an ``instance_fn``
            returning another shape.
    """
    pred = _to_numpy(y_pred)
    if not include_background:
        pred = pred[:, 1:]
    gt = _to_numpy(y)
    if pred.shape[0] != gt.shape[0] or pred.shape[2:] != gt.shape[2:]:
        raise ValueError(f"y_pred {tuple(pred.shape)} and y {tuple(gt.shape)} do not match.")
    n_classes = pred.shape[1]
    for b in range(pred.shape[0]):
        if y_format == "instance_class":
            if gt.shape[1] not in (2, 3):
                raise ValueError(f"y_format 'instance_class' needs y with 2 channels (instance ids, class ids) "
                                 f"or 3 (and the ambiguous mask), got {gt.shape[1]}.")
            gt_stack = instances_from_maps(gt[b, 1], gt[b, 0], n_classes)
            ambiguous = gt[b, 2] if gt.shape[1] == 3 else None
        else:
            if gt.shape[1] not in (n_classes, n_classes + 1):
                raise ValueError(f"y has {gt.shape[1]} channels but y_pred has {n_classes} (y may add one "
                                 "channel: the ambiguous mask).")
            gt_stack = gt[b, :n_classes].astype(np.int64)
            ambiguous = gt[b, n_classes] if gt.shape[1] == n_classes + 1 else None
        if instance_fn is None:
            pred_stack = instances_from_semantic(pred[b], connectivity=connectivity)
        else:
            pred_stack = np.asarray(instance_fn(pred[b]))
            if pred_stack.shape != pred[b].shape:
                raise ValueError(f"instance_fn returned shape {pred_stack.shape} for a mask of shape {pred[b].shape}.")
        yield gt_stack, pred_stack, (ambiguous if ambiguous is not None and np.any(ambiguous) else None)
