"""Per-class Dice pooled over a split (the paper's protocol) and MONAI's per-image Dice for comparison."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, DiceMetric
from monai.utils import MetricReduction

from .report import CLASS_NAMES

__all__ = ["PooledDiceMetric", "PooledDiceHandler", "PerImageDiceMetric", "per_image_dice", "mean_over_scored_images"]


def _reduce_classes(per_class: torch.Tensor, reduction: MetricReduction | str) -> torch.Tensor:
    reduction = MetricReduction(reduction)
    if reduction == MetricReduction.NONE:
        return per_class
    if reduction == MetricReduction.MEAN:
        return torch.nanmean(per_class)
    raise ValueError(f"reduction must be 'mean' or 'none' for a pooled metric, got '{reduction.value}'.")


class PooledDiceMetric(CumulativeIterationMetric):
    """
    Per-class Dice with intersections and sums pooled over all images of a split, then the mean over classes
    (the NAS-SCAM paper's protocol):

    ``Dice_c = 2 sum_i |P_ic & G_ic| / (sum_i |P_ic| + sum_i |G_ic|)``, ``mean = nanmean_c Dice_c``.

    Each iteration buffers, per image and class, ``[intersection, prediction sum, ground-truth sum]`` (shape
    (B, C, 3), float64), so the result is independent of batching and works across distributed ranks (MONAI's
    ``Cumulative`` gathers the buffers). A class absent from both prediction and ground truth over the whole split
    (0 / 0) is NaN and left out of the mean (``ignore_empty=True``) or counts as 1.0 (``ignore_empty=False``); a
    class absent from the ground truth but predicted somewhere gets Dice 0.

    Inputs follow MONAI's ``DiceMetric``: binarised predictions (B, C, H[, W, D]) (e.g. after
    ``Activations(sigmoid=True)`` and ``AsDiscrete(threshold=0.5)``) and ground truth of the same shape
    (multi-label or one-hot), or lists of channel-first tensors of different sizes.

    Ambiguous regions: ``metric(y_pred, y, mask=ambiguous)`` (a (B, 1, ...) tensor, or a list of (1, ...) tensors
    beside lists) leaves out the pixels where ``mask`` is non-zero: they add nothing to any intersection or sum,
    whatever was predicted or annotated there. The bundle configs do the same by zeroing ``pred`` and ``label``
    there beforehand (:class:`~monai_nasscam.data.ExcludeAmbiguousd`).

    Args:
        include_background: whether to keep channel 0; set False for a one-hot (softmax) output whose channel 0
            is the background.
        reduction: ``"mean"`` (a scalar, the mean over classes) or ``"none"`` (per-class values, shape (C,)).
        ignore_empty: see above.
    """

    def __init__(
        self,
        include_background: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        ignore_empty: bool = True,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.reduction = MetricReduction(reduction)
        _reduce_classes(torch.zeros(1), self.reduction)  # validate early
        self.ignore_empty = ignore_empty

    def __call__(  # type: ignore[override]
        self, y_pred: Any, y: Any = None, mask: torch.Tensor | Sequence[torch.Tensor] | None = None
    ) -> Any:
        """
        Args:
            y_pred: binarised prediction (B, C, ...) or a list of (C, ...) tensors.
            y: ground truth, same layout.
            mask: optional ambiguous-region mask, (B, 1, ...) or a list of (1, ...) tensors (non-zero = not scored).

        Returns:
            the per-image statistics of this call, see :py:meth:`_compute_tensor`.
        """
        if mask is None:
            return super().__call__(y_pred, y)
        if isinstance(y_pred, (list, tuple)):
            if not isinstance(mask, (list, tuple)) or len(mask) != len(y_pred):
                raise ValueError("with lists of predictions, mask must be a list of the same length.")
            return torch.cat([super(PooledDiceMetric, self).__call__(p[None], g[None], mask=m[None])
                              for p, g, m in zip(y_pred, y, mask)])
        return super().__call__(y_pred, y, mask=mask)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            y_pred: binarised prediction (B, C, ...).
            y: ground truth (B, C, ...).
            mask: optional (B, 1, ...) ambiguous mask: pixels where it is non-zero are not counted.

        Returns:
            (B, C, 3) float64: intersection, prediction sum and ground-truth sum per image and class.
        """
        if y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred and y should have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if y_pred.ndim < 3:
            raise ValueError(f"y_pred should have at least 3 dimensions (B, C, spatial...), got {y_pred.ndim}.")
        if not self.include_background:
            y_pred, y = y_pred[:, 1:], y[:, 1:]
        y_pred = torch.as_tensor(y_pred).to(torch.float64)
        y = torch.as_tensor(y).to(torch.float64)
        if mask is not None:
            mask = torch.as_tensor(mask, device=y_pred.device)
            if mask.ndim != y_pred.ndim or mask.shape[0] != y_pred.shape[0] or mask.shape[1] != 1 or (
                    mask.shape[2:] != y_pred.shape[2:]):
                raise ValueError(f"mask should have shape (B, 1, spatial...) matching y_pred {tuple(y_pred.shape)}, "
                                 f"got {tuple(mask.shape)}.")
            keep = (mask == 0).to(torch.float64)
            y_pred, y = y_pred * keep, y * keep
        axes = list(range(2, y_pred.ndim))
        return torch.stack(
            [torch.sum(y_pred * y, dim=axes), torch.sum(y_pred, dim=axes), torch.sum(y, dim=axes)], dim=-1
        )

    def counts(self) -> torch.Tensor:
        """The pooled statistics, shape (C, 3): intersection, prediction sum, ground-truth sum per class."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor (call the metric on some data first).")
        return data.reshape(-1, data.shape[-2], data.shape[-1]).sum(dim=0)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        """
        Args:
            reduction: ``"mean"`` or ``"none"``; defaults to the constructor's.

        Returns:
            the mean over classes (0-dim tensor) or the per-class Dice (C,), as fractions in [0, 1] (NaN for a
            class empty in prediction and ground truth when ``ignore_empty``).
        """
        counts = self.counts()
        intersection, pred_sum, gt_sum = counts[:, 0], counts[:, 1], counts[:, 2]
        denominator = pred_sum + gt_sum
        empty_value = float("nan") if self.ignore_empty else 1.0
        dice = torch.where(
            denominator > 0,
            2.0 * intersection / torch.clamp(denominator, min=1e-12),
            torch.full_like(denominator, empty_value),
        )
        return _reduce_classes(dice, self.reduction if reduction is None else reduction)


class PerImageDiceMetric(DiceMetric):
    """
    MONAI ``DiceMetric`` (per image and class, an image without the class in its ground truth skipped) whose
    ``aggregate`` is the per-image Dice of ``metrics.json``: per class the mean over the images that scored it
    (:func:`mean_over_scored_images`), then the mean over the classes with a value. MONAI's ``reduction="mean"``
    averages each image over its classes, then the images, so a class weighs by the number of images holding it:
    the log and the file showed two numbers under one name.

    Args:
        include_background: as ``DiceMetric`` (the evaluation's multi-label prediction has no background channel).

    ``aggregate`` returns a float64 scalar tensor in [0, 1], NaN when no image scored any class.
    """

    def __init__(self, include_background: bool = True) -> None:
        super().__init__(include_background=include_background, reduction=MetricReduction.NONE, ignore_empty=True)

    def aggregate(self, reduction: Any = None) -> torch.Tensor:  # noqa: ARG002 (one reduction only)
        per_class = mean_over_scored_images(self.get_buffer())
        defined = per_class[~torch.isnan(per_class)]
        return defined.mean() if defined.numel() else torch.tensor(float("nan"), dtype=torch.float64)


class PooledDiceHandler(IgniteMetricHandler):
    """
    Ignite handler for :py:class:`PooledDiceMetric`: records the mean pooled Dice under its name (usable as an
    evaluator's ``key_val_metric``) and each class's pooled Dice under ``f"{name}_{class_name}"`` in
    ``engine.state.metrics``.

    Args:
        include_background: see :py:class:`PooledDiceMetric`.
        ignore_empty: see :py:class:`PooledDiceMetric`.
        class_names: names of the classes, in channel order (after dropping the background).
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``, e.g.
            ``from_engine(["pred", "label"])``.
        save_details: store the per-image statistics buffer (B, C, 3) in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        include_background: bool = True,
        ignore_empty: bool = True,
        class_names: Sequence[str] = CLASS_NAMES,
        output_transform: Callable = lambda x: x,
        save_details: bool = False,
    ) -> None:
        metric_fn = PooledDiceMetric(include_background=include_background, ignore_empty=ignore_empty)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.class_names = tuple(class_names)

    def completed(self, engine: Any, name: str) -> None:
        super().completed(engine, name)
        per_class = self.metric_fn.aggregate(reduction=MetricReduction.NONE)
        if per_class.numel() != len(self.class_names):
            raise ValueError(f"{per_class.numel()} classes in the data but class_names={self.class_names}.")
        for class_name, value in zip(self.class_names, per_class.tolist()):
            engine.state.metrics[f"{name}_{class_name}"] = value


def mean_over_scored_images(values: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
    """
    Per-class mean of per-image values over the images that scored the class.

    Args:
        values: per-image, per-class values (..., C), NaN where an image did not score a class (MONAI's
            ``DiceMetric(ignore_empty=True)`` buffer: the class is absent from that image's ground truth).

    Returns:
        float64 tensor (C,): the mean over the non-NaN values of each class, NaN for a class no image scored
        (MONAI's own ``aggregate`` reports 0 there, which would read as a total failure).
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().cpu().to(torch.float64)
    else:
        v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    v = v.reshape(-1, v.shape[-1])
    scored = ~torch.isnan(v)
    counts = scored.sum(dim=0)
    totals = torch.where(scored, v, torch.zeros_like(v)).sum(dim=0)
    return torch.where(counts > 0, totals / torch.clamp(counts, min=1), torch.full_like(totals, float("nan")))


def per_image_dice(
    y_pred: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor | Sequence[torch.Tensor],
    include_background: bool = True,
    ignore_empty: bool = True,
) -> torch.Tensor:
    """
    Per-class Dice computed per image by MONAI's ``DiceMetric`` and averaged over images, for comparison with
    :py:class:`PooledDiceMetric`. With ``ignore_empty=True`` (MONAI's default) an image whose ground truth lacks a
    class is left out of that class's mean whatever was predicted, so false positives on such images are not
    counted at all, unlike the pooled Dice; a class that no image could score is NaN (not MONAI's 0).

    Args:
        y_pred: binarised predictions (B, C, ...) or a list of (C, ...) tensors (sizes may differ).
        y: ground truth, same layout.
        include_background: keep channel 0.
        ignore_empty: MONAI ``DiceMetric(ignore_empty=...)``.

    Returns:
        float64 per-class mean over images, shape (C,) (NaN for a class no image could score).
    """
    metric = DiceMetric(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
    metric(y_pred=y_pred, y=y)
    return mean_over_scored_images(metric.get_buffer())
