"""
Instance metrics of nuclear segmentation and classification, beside the pooled Dice and panoptic quality:

- **AJI**, the Aggregated Jaccard Index of Kumar et al. 2017 (IEEE TMI 36(7)), as the MoNuSeg challenge and
  HoVer-Net's ``get_fast_aji`` compute it: every ground-truth nucleus ``G_i`` is paired with the predicted nucleus
  ``S_j`` of largest IoU (a prediction may serve several ground-truth nuclei); ``C`` sums ``|G_i & S_j|``, ``U``
  sums ``|G_i | S_j|``, then ``U`` adds the area of every ground-truth nucleus without overlap and of every
  prediction never picked; ``AJI = C / U``. **AJI+** (Graham et al. 2019, HoVer-Net's ``get_fast_aji_plus``) pairs
  one-to-one (maximal-IoU Hungarian assignment among overlapping pairs), so a prediction covering two nuclei is not
  counted twice. Both are class-agnostic, per image, averaged over the images (as HoVer-Net and MoNuSeg).
- **Detection F1** and **per-class classification F1** with the matching rule of HoVer-Net (Graham et al. 2019,
  Medical Image Analysis 58; their public ``compute_stats.py`` / ``pair_coordinates``): per image, ground-truth
  and predicted nuclei are paired one-to-one by a Hungarian assignment on the Euclidean distance of their centroids,
  and a pair counts only if the distance is at most ``radius`` = 12 pixels (the public code's value for 40x images;
  it halves it at 20x). At MoNuSAC's 40x, about 0.25 µm per pixel, 12 px is 3 µm. Pairs and the unpaired nuclei
  are pooled over all images, then ``F1_d = 2 TP / (2 TP + FP + FN)`` and, per class ``c``,
  ``F1_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c)``, where among the pairs in which either side
  has class ``c``: ``TP_c`` both have it, ``FP_c`` only the prediction, ``FN_c`` only the ground truth (the
  paper's ``TN_c`` is zero on that subset in the public code); ``FP_d,c`` / ``FN_d,c`` are the unpaired predicted
  / ground-truth nuclei of class ``c`` (weights 2, 2, 1, 1 as in the paper).
- **mPQ+** (PanNuke / CoNIC): per-class PQ from TP, FP, FN and IoU sums pooled over all images, averaged over the
  classes: :func:`mpq_plus` of the pooled counts of :class:`~monai_nasscam.metrics.PooledPQMetric`. A class with
  neither ground truth nor prediction in the whole split is left out of the mean (CoNIC's script, through its
  ``1e-6`` guard, would count it as 0).

Predictions are multi-label (one sigmoid per class): a predicted nucleus is an instance of one class channel, so a
pixel may belong to nuclei of two classes. Detection and classification use every instance with its channel's
class; AJI needs one class-agnostic map, in which a pixel claimed by several channels goes to the lowest class id.
Ambiguous regions: the instances (ground truth or predicted) with more than half of their pixels in one are left out
first, as for PQ.

How predicted instances are cut out of the semantic output is a parameter (``instance_fn``): connected components
by default here; evaluation passes the project's instance separation (``bundle/configs/evaluate.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from .instance_stacks import _to_numpy, batch_instance_stacks, exclude_ambiguous_instances
from .panoptic import pq_from_counts

__all__ = [
    "DETECTION_RADIUS_PX",
    "aji_counts",
    "aggregated_jaccard_index",
    "instance_centroids",
    "pair_centroids",
    "detection_counts",
    "f1_from_counts",
    "flatten_instances",
    "mpq_plus",
    "InstanceMetric",
]

#: HoVer-Net's centroid pairing radius in pixels at 40x (about 0.25 µm/px: 3 µm)
DETECTION_RADIUS_PX = 12.0

#: per-image buffer columns before the per-class ones
_HEAD = ("aji_inter", "aji_union", "ajip_inter", "ajip_union", "tp_d", "fp_d", "fn_d")
#: per-class buffer columns
_PER_CLASS = ("tp_c", "fp_c", "fn_c", "fp_dc", "fn_dc")


def _intersections(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Areas of the ground-truth and predicted instances (ids without 0, in increasing order) and their
    intersection matrix (n_gt, n_pred), int64."""
    gt, pred = gt.ravel(), pred.ravel()
    gt_ids, gt_idx = np.unique(gt, return_inverse=True)
    pred_ids, pred_idx = np.unique(pred, return_inverse=True)
    n_gt, n_pred = gt_ids.size, pred_ids.size
    joint = np.bincount(gt_idx.ravel() * n_pred + pred_idx.ravel(), minlength=n_gt * n_pred).reshape(n_gt, n_pred)
    gt_keep, pred_keep = gt_ids != 0, pred_ids != 0
    gt_area = joint.sum(axis=1)[gt_keep]
    pred_area = joint.sum(axis=0)[pred_keep]
    return gt_area, pred_area, joint[np.ix_(gt_keep, pred_keep)], gt_ids[gt_keep]


def aji_counts(gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor, plus: bool = False) -> tuple[int, int]:
    """
    Aggregated intersection ``C`` and union ``U`` of one image (AJI = C / U).

    Args:
        gt: ground-truth instance map (any shape, 0 = background, unique id per nucleus).
        pred: predicted instance map, same shape.
        plus: ``False``: AJI (Kumar et al.: each ground-truth nucleus takes its best-IoU prediction, predictions may
            be reused); ``True``: AJI+ (one-to-one Hungarian pairing on IoU among overlapping pairs).

    Returns:
        ``(C, U)`` in pixels; ``(0, 0)`` when both maps are empty.
    """
    gt, pred = _to_numpy(gt), _to_numpy(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred should have the same shape, got {gt.shape} and {pred.shape}.")
    gt_area, pred_area, inter, _ = _intersections(gt, pred)
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
    if plus:
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        keep = iou[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
    else:
        rows = np.nonzero(iou.max(axis=1, initial=0.0) > 0)[0]
        cols = iou[rows].argmax(axis=1) if rows.size else np.zeros(0, int)
    c_sum = int(inter[rows, cols].sum())
    u_sum = int(union[rows, cols].sum())
    u_sum += int(np.delete(gt_area, rows).sum()) + int(np.delete(pred_area, np.unique(cols)).sum())
    return c_sum, u_sum


def aggregated_jaccard_index(
    gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor, plus: bool = False
) -> float:
    """AJI (or AJI+ with ``plus=True``) of one image, see :func:`aji_counts`; NaN when both maps are empty."""
    c_sum, u_sum = aji_counts(gt, pred, plus)
    return c_sum / u_sum if u_sum > 0 else float("nan")


def instance_centroids(instance_map: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """
    Centres of mass of the instances of a map.

    Args:
        instance_map: (*spatial) integer map, 0 = background.

    Returns:
        ``(ids, centroids)``: the ids present (n,) and their centroids (n, ndim), float64, in pixel coordinates
        in the array's axis order (``(row, col)`` in 2-D; a pixel's centre at integer coordinates).
    """
    ids_map = _to_numpy(instance_map)
    fg = ids_map != 0
    ids, idx = np.unique(ids_map[fg], return_inverse=True)
    coords = np.nonzero(fg)
    count = np.bincount(idx, minlength=ids.size).astype(np.float64)
    cent = np.stack([np.bincount(idx, weights=c, minlength=ids.size) for c in coords], axis=1) if ids.size else \
        np.zeros((0, ids_map.ndim))
    return ids, cent / np.maximum(count, 1)[:, None]


def pair_centroids(
    gt_points: np.ndarray, pred_points: np.ndarray, radius: float = DETECTION_RADIUS_PX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    HoVer-Net's pairing: a Hungarian assignment minimising the total Euclidean distance between the two point
    sets, of which the pairs at most ``radius`` apart are kept.

    Args:
        gt_points: (n, d) ground-truth centroids in pixels.
        pred_points: (m, d) predicted centroids in pixels.
        radius: pairing radius in pixels (12 at 40x, 3 µm at 0.25 µm/px).

    Returns:
        ``(pairs, unpaired_gt, unpaired_pred)``: (k, 2) indices ``[gt, pred]``, and the indices left unpaired.
    """
    gt_points = np.atleast_2d(np.asarray(gt_points, dtype=np.float64))
    pred_points = np.atleast_2d(np.asarray(pred_points, dtype=np.float64))
    gt_points = gt_points if gt_points.size else np.zeros((0, 2))
    pred_points = pred_points if pred_points.size else np.zeros((0, 2))
    if len(gt_points) and len(pred_points):
        dist = cdist(gt_points, pred_points)
        rows, cols = linear_sum_assignment(dist)
        keep = dist[rows, cols] <= radius
        rows, cols = rows[keep], cols[keep]
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    pairs = np.stack([rows, cols], axis=1).astype(np.int64)
    return pairs, np.setdiff1d(np.arange(len(gt_points)), rows), np.setdiff1d(np.arange(len(pred_points)), cols)


def _stack_nuclei(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, ndim) and class ids (n,) of every instance of a class instance stack (C, *spatial)."""
    points, classes = [], []
    for c in range(stack.shape[0]):
        _, cent = instance_centroids(stack[c])
        points.append(cent)
        classes.append(np.full(len(cent), c + 1, dtype=np.int64))
    return np.concatenate(points), np.concatenate(classes)


def detection_counts(
    gt_stack: np.ndarray | torch.Tensor, pred_stack: np.ndarray | torch.Tensor, radius: float = DETECTION_RADIUS_PX
) -> np.ndarray:
    """
    Detection and classification counts of one image (HoVer-Net's rule, see the module's docstring).

    Args:
        gt_stack: ground-truth class instance stack (C, *spatial).
        pred_stack: predicted class instance stack (C, *spatial); a nucleus's class is its channel's.
        radius: centroid pairing radius in pixels.

    Returns:
        float64 ``[tp_d, fp_d, fn_d]`` followed by ``[tp_c, fp_c, fn_c, fp_dc, fn_dc]`` for each class (3 + 5 C).
    """
    gt_stack, pred_stack = _to_numpy(gt_stack), _to_numpy(pred_stack)
    if gt_stack.shape != pred_stack.shape:
        raise ValueError(f"gt and pred stacks differ in shape: {gt_stack.shape} and {pred_stack.shape}.")
    gt_points, gt_cls = _stack_nuclei(gt_stack)
    pred_points, pred_cls = _stack_nuclei(pred_stack)
    pairs, un_gt, un_pred = pair_centroids(gt_points, pred_points, radius)
    out = [len(pairs), len(un_pred), len(un_gt)]
    pg, pp = gt_cls[pairs[:, 0]], pred_cls[pairs[:, 1]]
    for c in range(1, gt_stack.shape[0] + 1):
        out += [int(((pg == c) & (pp == c)).sum()), int(((pg != c) & (pp == c)).sum()),
                int(((pg == c) & (pp != c)).sum()), int((pred_cls[un_pred] == c).sum()),
                int((gt_cls[un_gt] == c).sum())]
    return np.asarray(out, dtype=np.float64)


def f1_from_counts(counts: np.ndarray | torch.Tensor) -> tuple[float, np.ndarray]:
    """
    Detection F1 and per-class classification F1 from (pooled) :func:`detection_counts`.

    Returns:
        ``(f1_d, f1_c)``: a float and a (C,) float64 array; NaN where the denominator is 0 (no nucleus at all, or a
        class in neither ground truth nor prediction).
    """
    c = _to_numpy(counts).astype(np.float64)
    tp, fp, fn = c[0], c[1], c[2]
    per = c[3:].reshape(-1, 5)
    with np.errstate(invalid="ignore", divide="ignore"):
        den_d = 2 * tp + fp + fn
        f1_d = float(2 * tp / den_d) if den_d > 0 else float("nan")
        den_c = 2 * per[:, 0] + 2 * per[:, 1] + 2 * per[:, 2] + per[:, 3] + per[:, 4]
        f1_c = np.where(den_c > 0, 2 * per[:, 0] / np.maximum(den_c, 1e-300), np.nan)
    return f1_d, f1_c


def flatten_instances(stack: np.ndarray | torch.Tensor) -> np.ndarray:
    """
    One class-agnostic instance map from a class instance stack (C, *spatial): ids made unique over the channels; a
    pixel in several channels goes to the lowest class id's instance.

    Returns:
        int64 (*spatial), 0 = background.
    """
    stack = _to_numpy(stack).astype(np.int64)
    out = np.zeros(stack.shape[1:], dtype=np.int64)
    offset = 0
    for c in range(stack.shape[0]):
        free = (out == 0) & (stack[c] != 0)
        out[free] = stack[c][free] + offset
        offset += int(stack[c].max(initial=0))
    return out


def mpq_plus(counts: np.ndarray | torch.Tensor) -> float:
    """
    mPQ+ from per-class counts pooled over all images.

    Args:
        counts: (C, 4) ``[tp, fp, fn, iou_sum]`` per class, pooled over the split
            (:py:meth:`~monai_nasscam.metrics.PooledPQMetric.counts`).

    Returns:
        the mean over classes of ``PQ_c = iou_sum / (tp + fp / 2 + fn / 2)``, leaving out the classes without any
        instance (NaN when none has one).
    """
    pq = pq_from_counts(counts)["pq"]
    return float(np.nanmean(pq)) if np.any(~np.isnan(pq)) else float("nan")


class InstanceMetric(CumulativeIterationMetric):
    """
    AJI, AJI+, detection F1 and per-class classification F1 of nucleus instances, accumulated over a split.

    Each iteration cuts every channel of the binarised prediction into instances with ``instance_fn``, drops the
    instances lying mostly in an ambiguous region, and buffers per image ``[C, U]`` of AJI and AJI+, the detection
    counts and the per-class classification counts (:func:`detection_counts`): (B, 7 + 5 C) float64.

    :py:meth:`results` returns ``{"aji", "aji_plus", "f1_detection", "f1_classification"}``, :py:meth:`aggregate`
    the AJI alone (a 0-dim tensor, as ignite's metric handlers expect). AJI and AJI+ are the means of the per-image
    values over the images with any nucleus (ground truth or predicted); F1 from counts pooled over all images;
    ``f1_classification`` is a (C,) tensor (NaN for a class in neither ground truth nor prediction).

    Args:
        include_background: keep channel 0 of ``y_pred``; after this, channel ``c`` is class id ``c + 1``.
        instance_fn: (C, *spatial) binary mask -> int class instance stack (C, *spatial); ``None``: connected
            components (4-connectivity). Evaluation passes the project's instance separation
            (``monai_nasscam.inference.instances.InstanceSeparator``).
        radius: centroid pairing radius in pixels (:data:`DETECTION_RADIUS_PX`, 3 µm at 0.25 µm/px).
        y_format: ``"instance_class"`` or ``"per_class"``, as :class:`~monai_nasscam.metrics.PooledPQMetric`.
    """

    def __init__(
        self,
        include_background: bool = True,
        instance_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        radius: float = DETECTION_RADIUS_PX,
        y_format: str = "instance_class",
    ) -> None:
        super().__init__()
        if y_format not in ("instance_class", "per_class"):
            raise ValueError(f"y_format must be 'instance_class' or 'per_class', got '{y_format}'.")
        if not radius > 0:
            raise ValueError(f"radius must be > 0 pixels, got {radius}.")
        self.include_background = include_background
        self.instance_fn = instance_fn
        self.radius = float(radius)
        self.y_format = y_format

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, 7 + 5 C) float64 per-image counts of a batch read by
        :func:`~monai_nasscam.metrics.instance_stacks.batch_instance_stacks` (``y_pred`` binarised (B, C, *spatial))."""
        images = list(batch_instance_stacks(y_pred, y, self.include_background, self.y_format, self.instance_fn))
        n_classes = y_pred.shape[1] - (0 if self.include_background else 1)
        out = np.zeros((len(images), len(_HEAD) + len(_PER_CLASS) * n_classes), dtype=np.float64)
        for b, (gt_stack, pred_stack, ambiguous) in enumerate(images):
            if ambiguous is not None:
                gt_stack = exclude_ambiguous_instances(gt_stack, ambiguous)
                pred_stack = exclude_ambiguous_instances(pred_stack, ambiguous)
            gt_map, pred_map = flatten_instances(gt_stack), flatten_instances(pred_stack)
            out[b, 0:2] = aji_counts(gt_map, pred_map, plus=False)
            out[b, 2:4] = aji_counts(gt_map, pred_map, plus=True)
            out[b, 4:] = detection_counts(gt_stack, pred_stack, self.radius)
        return torch.as_tensor(out)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """The AJI over the accumulated images (0-dim float64 tensor, NaN when no image has a nucleus); all the
        metrics: :py:meth:`results`."""
        return self.results()["aji"]

    def results(self) -> dict[str, torch.Tensor]:
        """
        Returns:
            ``{"aji": 0-dim, "aji_plus": 0-dim, "f1_detection": 0-dim, "f1_classification": (C,)}``, float64 tensors
            (NaN where undefined).

        Raises:
            ValueError: nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor (call the metric on some data first).")
        d = data.reshape(-1, data.shape[-1]).double().numpy()
        result: dict[str, torch.Tensor] = {}
        for name, (i, u) in (("aji", (0, 1)), ("aji_plus", (2, 3))):
            scored = d[:, u] > 0
            value = float(np.mean(d[scored, i] / d[scored, u])) if scored.any() else float("nan")
            result[name] = torch.tensor(value, dtype=torch.float64)
        f1_d, f1_c = f1_from_counts(d[:, 4:].sum(axis=0))
        result["f1_detection"] = torch.tensor(f1_d, dtype=torch.float64)
        result["f1_classification"] = torch.as_tensor(f1_c, dtype=torch.float64)
        return result
