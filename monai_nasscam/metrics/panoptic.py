"""
Per-class panoptic quality (PQ = SQ * RQ, Kirillov et al. 2019) on nucleus instances, and the MoNuSAC 2020
challenge's official variant, reproduced with its known bugs and labelled as such.

Both score class instance stacks (:mod:`monai_nasscam.metrics.instance_stacks`): predictions get their instances
from the (multi-label) semantic output by a separation given as ``PooledPQMetric(instance_fn=...)``, connected
components (scikit-image ``label``) by default; the ground truth from the class map and the instance map of the
prepared data. The correct PQ leaves out every instance, ground truth or predicted, lying mostly in an ambiguous
region (:func:`~monai_nasscam.metrics.instance_stacks.exclude_ambiguous_instances`), so that a prediction there never
counts, as in the challenge, whose script zeroes predicted pixels there (the ``"monusac_official"`` variant keeps
that rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.ndimage
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction
from scipy.optimize import linear_sum_assignment

from .dice import _reduce_classes
from .instance_stacks import _to_numpy, batch_instance_stacks, exclude_ambiguous_instances

__all__ = [
    "pq_counts",
    "panoptic_quality",
    "pq_from_counts",
    "pq_monusac_official",
    "monusac_official_pq",
    "PooledPQMetric",
]

PQ_VARIANTS = ("pooled", "monusac_official")




def _overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids of both maps (without 0) and the IoU matrix (n_gt, n_pred), in one pass over the foreground pixels."""
    gt, pred = gt.ravel(), pred.ravel()
    foreground = (gt != 0) | (pred != 0)
    gt, pred = gt[foreground], pred[foreground]
    gt_ids, gt_idx = np.unique(gt, return_inverse=True)
    pred_ids, pred_idx = np.unique(pred, return_inverse=True)
    # shift so that the background 0 (when present among the foreground of the other map) maps to -1
    gt_shift = int(gt_ids.size > 0 and gt_ids[0] == 0)
    pred_shift = int(pred_ids.size > 0 and pred_ids[0] == 0)
    gt_idx = gt_idx.ravel() - gt_shift
    pred_idx = pred_idx.ravel() - pred_shift
    gt_ids, pred_ids = gt_ids[gt_shift:], pred_ids[pred_shift:]
    n_gt, n_pred = gt_ids.size, pred_ids.size
    gt_area = np.bincount(gt_idx[gt_idx >= 0], minlength=n_gt)
    pred_area = np.bincount(pred_idx[pred_idx >= 0], minlength=n_pred)
    both = (gt_idx >= 0) & (pred_idx >= 0)
    inter = np.bincount(gt_idx[both] * n_pred + pred_idx[both], minlength=n_gt * n_pred).reshape(n_gt, n_pred)
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
    return gt_ids, pred_ids, iou


def _sorted_values(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` computed on the non-zero values (cheap for sparse instance maps)."""
    values = np.unique(x[x != 0])
    return np.unique(np.append(values, np.zeros(1, values.dtype))) if (x == 0).any() else values


def pq_counts(
    gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor, iou_threshold: float = 0.5
) -> np.ndarray:
    """
    Matching of one class's instances in one image.

    Pairs with IoU > ``iou_threshold`` are matched; for a threshold >= 0.5 the matching is unique by
    construction, below 0.5 a maximum-IoU assignment (Hungarian) is used.

    Args:
        gt: ground-truth instance map (any shape, 0 = background, any ids).
        pred: predicted instance map, same shape.
        iou_threshold: matching threshold in (0, 1).

    Returns:
        float64 array ``[tp, fp, fn, iou_sum]``.
    """
    gt, pred = _to_numpy(gt), _to_numpy(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred should have the same shape, got {gt.shape} and {pred.shape}.")
    if not 0.0 < iou_threshold < 1.0:
        raise ValueError(f"iou_threshold should be in (0, 1), got {iou_threshold}.")
    gt_ids, pred_ids, iou = _overlaps(gt, pred)
    if iou_threshold >= 0.5:
        matched = iou > iou_threshold
        tp, iou_sum = int(matched.sum()), float(iou[matched].sum())
    else:
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        keep = iou[rows, cols] > iou_threshold
        tp, iou_sum = int(keep.sum()), float(iou[rows, cols][keep].sum())
    return np.array([tp, pred_ids.size - tp, gt_ids.size - tp, iou_sum], dtype=np.float64)


def pq_from_counts(counts: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """
    PQ, SQ, RQ from ``[..., 4]`` counts ``[tp, fp, fn, iou_sum]``: ``SQ = iou_sum / tp``,
    ``RQ = tp / (tp + fp / 2 + fn / 2)``, ``PQ = SQ * RQ = iou_sum / (tp + fp / 2 + fn / 2)``.
    PQ and RQ are NaN when there is nothing at all (``tp + fp + fn == 0``); SQ is NaN without a match.
    """
    c = _to_numpy(counts).astype(np.float64)
    tp, fp, fn, iou_sum = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    denominator = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(invalid="ignore", divide="ignore"):
        pq = np.where(denominator > 0, iou_sum / denominator, np.nan)
        rq = np.where(denominator > 0, tp / denominator, np.nan)
        sq = np.where(tp > 0, iou_sum / tp, np.nan)
    return {"pq": pq, "sq": sq, "rq": rq}


def panoptic_quality(
    gt: np.ndarray | torch.Tensor,
    pred: np.ndarray | torch.Tensor,
    iou_threshold: float = 0.5,
    ambiguous: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """
    Correct panoptic quality of one class in one image (Kirillov et al.): each prediction is a true positive
    (matched, IoU > threshold) or a false positive, each ground-truth instance a true positive or a false negative,
    whatever the ids.

    Args:
        gt: ground-truth instance map.
        pred: predicted instance map, same shape.
        iou_threshold: matching threshold.
        ambiguous: optional mask of ambiguous regions: instances with more than half of their pixels there are not
            scored (:py:func:`exclude_ambiguous_instances`).

    Returns:
        ``{"pq", "sq", "rq", "tp", "fp", "fn", "iou_sum"}`` (PQ NaN when both maps are empty).
    """
    if ambiguous is not None:
        gt, pred = exclude_ambiguous_instances(gt, ambiguous), exclude_ambiguous_instances(pred, ambiguous)
    counts = pq_counts(gt, pred, iou_threshold)
    scores = pq_from_counts(counts)
    out = {k: float(v) for k, v in scores.items()}
    out.update(tp=float(counts[0]), fp=float(counts[1]), fn=float(counts[2]), iou_sum=float(counts[3]))
    return out


def pq_monusac_official(gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> float:
    """
    PQ of one class in one image exactly as the MoNuSAC 2020 challenge's official script computes it
    (``Panoptic_quality`` of the organisers' ``PQ_metric``), bugs included. **Not a correct PQ.**

    Behaviour reproduced:

    - a ground-truth instance ``i`` is matched to a prediction ``j`` when their IoU > 0.5 (this part is right);
    - the candidate false positives are ``np.unique(pred)[1:]``, which drops the smallest id whether or not it is
      the background 0;
    - for every matched ground-truth id ``i`` the script removes the prediction **whose id equals** ``i`` from the
      candidates, instead of the matched prediction ``j``: a matched prediction with another id is counted as a
      false positive, and an unmatched prediction that happens to carry a matched ground-truth id is not;
    - ``PQ = sum(IoU of matches) / (TP + FP / 2 + FN / 2)``.

    The script only evaluates a class in an image whose ground truth contains it (see
    :py:func:`monusac_official_pq`); here a ground truth without instances gives NaN.

    Args:
        gt: ground-truth instance map of the class, 2-D (or any shape).
        pred: predicted instance map of the class, same shape.
    """
    gt, pred = _to_numpy(gt), _to_numpy(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred should have the same shape, got {gt.shape} and {pred.shape}.")
    gt_ids, _, iou = _overlaps(gt, pred)
    if gt_ids.size == 0:
        return float("nan")
    matched_rows = iou > 0.5
    matched_gt = matched_rows.any(axis=1)
    tp = int(matched_gt.sum())
    fn = int(gt_ids.size - tp)
    sum_iou = float(iou[matched_rows].sum())
    candidates = _sorted_values(pred)[1:]  # the script's np.unique(predicted_image)[1:]
    candidates = candidates[~np.isin(candidates, gt_ids[matched_gt])]
    fp = int(np.unique(candidates).size)
    return sum_iou / (tp + 0.5 * fp + 0.5 * fn)


def monusac_official_pq(
    gt_stacks: Sequence[np.ndarray | torch.Tensor],
    pred_stacks: Sequence[np.ndarray | torch.Tensor],
    ambiguous: Sequence[np.ndarray | torch.Tensor | None] | None = None,
) -> np.ndarray:
    """
    The MoNuSAC 2020 official evaluation over a set of images, bugs included (labelled "official", not a correct
    PQ). Per image and class, as the organisers' script:

    - the class is evaluated only if the image's ground truth contains it; otherwise it is skipped, so false
      positives of classes absent from an image's ground truth never count;
    - no predicted instance of the class: PQ 0;
    - a prediction map with exactly two distinct values is relabelled by connected components
      (``scipy.ndimage.label``, 4-connectivity), then pixels in the ambiguous regions are zeroed;
    - PQ by :py:func:`pq_monusac_official`.

    The class's score is the mean of its per-image values over the images that were evaluated.

    Args:
        gt_stacks: per image, a ground-truth class instance stack (C, H, W).
        pred_stacks: per image, a predicted class instance stack (C, H, W).
        ambiguous: per image, an optional mask (H, W) of the regions excluded from scoring.

    Returns:
        per-class official PQ, shape (C,), NaN for a class no ground truth contains.
    """
    if len(gt_stacks) != len(pred_stacks):
        raise ValueError(f"{len(gt_stacks)} ground-truth stacks but {len(pred_stacks)} predictions.")
    scores = np.stack([_official_image_scores(g, p, None if ambiguous is None else ambiguous[i])
                       for i, (g, p) in enumerate(zip(gt_stacks, pred_stacks))])
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(scores)
        total = np.where(valid, scores, 0.0).sum(axis=0)
        count = valid.sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _official_image_scores(
    gt_stack: np.ndarray | torch.Tensor, pred_stack: np.ndarray | torch.Tensor, ambiguous: np.ndarray | None
) -> np.ndarray:
    """Official per-class PQ of one image, NaN where the class is absent from the ground truth."""
    gt_stack, pred_stack = _to_numpy(gt_stack), _to_numpy(pred_stack)
    if gt_stack.shape != pred_stack.shape:
        raise ValueError(f"gt and pred stacks differ in shape: {gt_stack.shape} and {pred_stack.shape}.")
    keep = None if ambiguous is None else (_to_numpy(ambiguous) == 0)
    scores = np.full(gt_stack.shape[0], np.nan)
    for c in range(gt_stack.shape[0]):
        gt = gt_stack[c]
        if not gt.any():
            continue
        pred = pred_stack[c]
        if not pred.any():
            scores[c] = 0.0
            continue
        if _sorted_values(pred).size == 2:
            pred = scipy.ndimage.label(pred)[0]
        if keep is not None:
            pred = pred * keep
        scores[c] = pq_monusac_official(gt, pred)
    return scores


class PooledPQMetric(CumulativeIterationMetric):
    """
    Per-class panoptic quality on instances derived from the semantic output, accumulated over a split.

    Each iteration turns every channel of the binarised prediction into instances (``instance_fn``; by default
    connected components, :py:func:`instances_from_semantic`), matches them to the ground-truth instances of the
    same class (IoU > 0.5) and buffers, per image and class, ``[tp, fp, fn, iou_sum, official]`` (shape (B, C, 5),
    float64), where ``official`` is the MoNuSAC official per-image value (NaN when the class is absent from the
    image's ground truth).

    Variants (``aggregate(variant=...)``):

    - ``"pooled"`` (default, correct): TP, FP, FN and IoU sums pooled over all images of the split per class (as
      COCO panoptic), ``PQ_c = iou_sum / (tp + fp / 2 + fn / 2)``; NaN (left out of the mean) when a class has
      neither prediction nor ground truth in the whole split.
    - ``"monusac_official"``: the challenge script's value (see :py:func:`monusac_official_pq`), per-image PQ
      averaged over the images whose ground truth contains the class; with its bugs, not a correct PQ.

    Ambiguous regions: give ``y`` one more channel holding the ambiguous mask (see ``y_format``). The pooled PQ
    then leaves out the ground-truth and predicted instances with more than half of their pixels in it
    (:py:func:`exclude_ambiguous_instances`); the official variant applies the script's rule (predicted pixels
    there are zeroed after the connected-component labelling).

    Args:
        include_background: keep channel 0 of ``y_pred`` (False for a one-hot softmax output with background).
            After this, channel ``c`` is class id ``c + 1``.
        reduction: ``"mean"`` (scalar, nanmean over classes) or ``"none"`` (per class, (C,)).
        variant: default variant of :py:meth:`aggregate`.
        iou_threshold: matching threshold of the correct PQ (the official variant always uses 0.5).
        connectivity: connected-component connectivity for the predicted instances (when ``instance_fn`` is
            ``None``).
        instance_fn: how instances are cut out of the prediction: a callable taking the binary (C, *spatial) mask
            of one image and returning its class instance stack (C, *spatial) of ints; ``None``: connected
            components (:py:func:`instances_from_semantic`, the paper's protocol). Evaluation passes the project's
            instance separation (``monai_nasscam.inference.instances.InstanceSeparator``, a marker-controlled
            watershed by default, see ``instance_method`` in ``bundle/configs/evaluate.yaml``); this module does
            not depend on it.
        y_format: ``"instance_class"`` (MONAI ``PanopticQualityMetric`` convention: ``y`` is (B, 2, ...) with the
            instance ids in channel 0 and the class ids in channel 1, optionally the ambiguous mask in a channel 2)
            or ``"per_class"`` (``y`` is a class instance stack (B, C, ...), see :py:func:`instances_from_maps`,
            optionally followed by the ambiguous mask: (B, C + 1, ...)).
    """

    def __init__(
        self,
        include_background: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        variant: str = "pooled",
        iou_threshold: float = 0.5,
        connectivity: int = 1,
        y_format: str = "instance_class",
        instance_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if instance_fn is not None and not callable(instance_fn):
            raise ValueError(f"instance_fn must be callable (mask -> class instance stack), got {instance_fn!r}.")
        if variant not in PQ_VARIANTS:
            raise ValueError(f"variant must be one of {PQ_VARIANTS}, got '{variant}'.")
        if y_format not in ("instance_class", "per_class"):
            raise ValueError(f"y_format must be 'instance_class' or 'per_class', got '{y_format}'.")
        self.include_background = include_background
        self.reduction = MetricReduction(reduction)
        _reduce_classes(torch.zeros(1), self.reduction)
        self.variant = variant
        self.iou_threshold = iou_threshold
        self.connectivity = connectivity
        self.y_format = y_format
        self.instance_fn = instance_fn

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """
        Args:
            y_pred: binarised prediction (B, C, H, W[, D]).
            y: ground truth, see ``y_format`` (with or without the ambiguous-mask channel).

        Returns:
            (B, C, 5) float64: tp, fp, fn, iou_sum and the official per-image PQ per image and class.
        """
        images = list(batch_instance_stacks(y_pred, y, self.include_background, self.y_format, self.instance_fn, self.connectivity))
        n_classes = y_pred.shape[1] - (0 if self.include_background else 1)
        out = np.zeros((len(images), n_classes, 5), dtype=np.float64)
        for b, (gt_stack, pred_stack, ambiguous) in enumerate(images):
            scored_gt = exclude_ambiguous_instances(gt_stack, ambiguous)
            scored_pred = exclude_ambiguous_instances(pred_stack, ambiguous)
            for c in range(n_classes):
                out[b, c, :4] = pq_counts(scored_gt[c], scored_pred[c], self.iou_threshold)
            out[b, :, 4] = _official_image_scores(gt_stack, pred_stack, ambiguous)
        return torch.as_tensor(out)

    def counts(self) -> torch.Tensor:
        """Pooled ``[tp, fp, fn, iou_sum]`` per class, shape (C, 4)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor (call the metric on some data first).")
        return data[..., :4].reshape(-1, data.shape[-2], 4).sum(dim=0)

    def aggregate(  # type: ignore[override]
        self, reduction: MetricReduction | str | None = None, variant: str | None = None
    ) -> torch.Tensor:
        """
        Args:
            reduction: ``"mean"`` or ``"none"``; defaults to the constructor's.
            variant: ``"pooled"`` or ``"monusac_official"``; defaults to the constructor's.

        Returns:
            the mean over classes (0-dim tensor) or per-class PQ (C,), float64.
        """
        variant = self.variant if variant is None else variant
        if variant not in PQ_VARIANTS:
            raise ValueError(f"variant must be one of {PQ_VARIANTS}, got '{variant}'.")
        if variant == "pooled":
            per_class = torch.as_tensor(pq_from_counts(self.counts())["pq"])
        else:
            data = self.get_buffer()
            if not isinstance(data, torch.Tensor):
                raise ValueError("the data to aggregate must be a PyTorch Tensor (call the metric on some data first).")
            official = data[..., 4].reshape(-1, data.shape[-2])
            per_class = torch.nanmean(official, dim=0)
        return _reduce_classes(per_class, self.reduction if reduction is None else reduction)
