"""Exponential logarithmic loss (Wong et al., MICCAI 2018), as a MONAI-style loss."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_nasscam.data.class_weights import weights_from_frequencies
from monai_nasscam.data.classes import IGNORE_VALUE

__all__ = ["ExpLogLoss"]

class ExpLogLoss(_Loss):
    """
    Exponential logarithmic loss of Wong et al., "3D Segmentation with Exponential Logarithmic Loss for Highly
    Unbalanced Object Sizes", MICCAI 2018:

    .. math::

        L = w_{dice}\\, \\mathrm{mean}_c\\big[(-\\ln D_c)^{\\gamma_{dice}}\\big]
          + w_{cross}\\, \\mathrm{mean}_x\\big[w_{l(x)}\\, (-\\ln p_{l(x)}(x))^{\\gamma_{cross}}\\big]

    Dice term. ``D_c = (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``, sums over the spatial axes of each
    sample (``batch=False``, then the mean runs over samples and classes) or over the batch and spatial axes
    (``batch=True``, one Dice per class). ``-ln D_c`` is computed as ``ln(sum(p) + sum(t) + smooth) -
    ln(2 sum(p t) + smooth)``.

    Cross term, one value ``e`` per element, computed from the logits (never ``log(p + eps)``):

    - ``sigmoid=True`` (multi-label, one independent binary problem per channel, the project default):
      ``e(x, c) = -[t ln p + (1 - t) ln(1 - p)]`` = ``binary_cross_entropy_with_logits``, i.e. ``-ln p`` on
      positives and ``-ln(1 - p)`` on negatives for binary targets. The element weight is ``w_c`` on positives
      and 1 on negatives (soft targets interpolate: ``t w_c + (1 - t)``); the mean runs over batch, channels and
      voxels.
    - ``softmax=True`` (mutually exclusive classes): ``e(x) = -sum_c t_c log_softmax_c(x)`` (= ``-ln p_l`` for
      one-hot targets), weight ``sum_c t_c w_c`` (= ``w_l``); the mean runs over batch and voxels.

    Both ``-ln D`` and ``e`` are clamped to at least ``clamp`` before the power ``gamma`` (``gamma < 1`` has an
    infinite derivative at 0), and a value at or below ``clamp`` contributes exactly 0: a perfect prediction, an
    empty class predicted empty, or a saturated logit (e.g. +-100) gives a finite loss (0 for that term) and a
    finite (zero) gradient. Above ``clamp`` the value is the formula's; the derivative there is at most
    ``gamma * clamp ** (gamma - 1)``.

    ``include_background=False`` removes channel 0 from the Dice term; in the cross term it removes channel 0 with
    ``sigmoid`` and gives background voxels weight 0 with ``softmax`` (the softmax still runs over all channels).

    Ignored pixels. A pixel is left out of both terms, as if it were not in the image, when the target equals
    ``ignore_value`` there (in any channel of a one-hot / multi-label target, or as the class index with
    ``to_onehot_y``), or when ``forward``'s ``mask`` is 0 there. Its prediction and label then change nothing: the
    Dice sums run over the counted pixels only and the cross term is the mean over the counted elements of each
    sample (0 for a sample without any). With no pixel ignored the value is exactly the formula above. The training
    transforms mark the ambiguous regions of MoNuSAC's test release this way.

    Class weights: ``w_l = ((sum_k f_k) / f_l) ** 0.5`` from training-set label frequencies ``f`` (see
    :mod:`monai_nasscam.data.class_weights` and :py:meth:`from_frequencies`), one per channel used; ``None`` means
    all 1. For the sigmoid head without background channel pass the frequencies of its classes
    (``count_labels(..., skip_background=True)``): the sum then runs over those classes only, and negatives keep
    weight 1 (close to Wong's background weight ``((sum_k f_k) / f_0) ** 0.5`` when the background dominates).

    The reference code's setting (Dice term only, gamma 0.3, per-class Dice over the whole batch, sigmoid
    outputs) is :py:meth:`reference`.

    Args:
        include_background: if False, channel 0 (background) is excluded, see above.
        to_onehot_y: convert a class-index ``target`` (B, 1, ...) to one-hot, with ``input.shape[1]`` classes
            (or ``input.shape[1] + 1`` with ``onehot_skip_background``).
        sigmoid: apply a sigmoid to the logits (multi-label). The cross term needs ``sigmoid`` or ``softmax``.
        softmax: apply a softmax over the channels to the logits (mutually exclusive classes).
        w_dice: weight of the Dice term.
        w_cross: weight of the cross term; 0 skips it.
        gamma_dice: exponent of ``-ln D_c``.
        gamma_cross: exponent of the per-element cross-entropy.
        smooth: Dice smoothing, added to numerator and denominator; must be > 0.
        class_weights: one weight per channel used (after removing the background with
            ``include_background=False``, as MONAI's ``DiceLoss(weight=...)``); applied in the cross term.
        batch: sum the Dice statistics over the batch too (one Dice per class) before the logarithm.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``; ``"none"`` returns one loss per sample, shape (B,)
            (with ``batch=True`` every sample carries the same batch Dice term). ``"mean"`` is the formula above.
        onehot_skip_background: with ``to_onehot_y``, encode ``C + 1`` classes and drop class 0, so channel ``c``
            is class id ``c + 1``: for heads without a background channel (the project's 4 sigmoid outputs for
            class ids 1-4 of a 0-4 label map).
        clamp: lower bound of ``-ln D`` and of ``e`` before the power.
        ignore_value: target value of the pixels to leave out (default :data:`IGNORE_VALUE`, -1, never a valid
            target); ``None``: every target value is used as is.

    Raises:
        ValueError: both ``sigmoid`` and ``softmax``; ``w_cross > 0`` without either; ``smooth <= 0``;
            negative weights; unknown ``reduction``.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        smooth: float = 1.0,
        class_weights: Sequence[float] | torch.Tensor | np.ndarray | None = None,
        batch: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        onehot_skip_background: bool = False,
        clamp: float = 1e-6,
        ignore_value: float | None = IGNORE_VALUE,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if sigmoid and softmax:
            raise ValueError("Incompatible values: sigmoid=True and softmax=True.")
        if w_cross > 0 and not (sigmoid or softmax):
            raise ValueError("the cross term is computed from logits: set sigmoid=True or softmax=True (or w_cross=0).")
        if smooth <= 0:
            raise ValueError(f"smooth must be > 0 (an empty class predicted empty is 0/0 otherwise), got {smooth}.")
        if w_dice < 0 or w_cross < 0 or gamma_dice <= 0 or gamma_cross <= 0 or clamp <= 0:
            raise ValueError("w_dice, w_cross must be >= 0 and gamma_dice, gamma_cross, clamp > 0.")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.w_dice = float(w_dice)
        self.w_cross = float(w_cross)
        self.gamma_dice = float(gamma_dice)
        self.gamma_cross = float(gamma_cross)
        self.smooth = float(smooth)
        self.batch = batch
        self.onehot_skip_background = onehot_skip_background
        self.clamp = float(clamp)
        self.ignore_value = None if ignore_value is None else float(ignore_value)
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(np.asarray(class_weights, dtype=np.float64), dtype=torch.float32).flatten()
            if (weights < 0).any():
                raise ValueError(f"class_weights must be >= 0, got {weights.tolist()}.")
        self.register_buffer("class_weights", weights)
        self.class_weights: torch.Tensor | None

    @classmethod
    def from_frequencies(cls, frequencies: Sequence[float] | torch.Tensor | np.ndarray, **kwargs: Any) -> ExpLogLoss:
        """Build the loss with ``class_weights=weights_from_frequencies(frequencies)``; other args as ``__init__``."""
        return cls(class_weights=weights_from_frequencies(frequencies), **kwargs)

    @classmethod
    def reference(cls, **kwargs: Any) -> ExpLogLoss:
        """
        The reference code's loss: Dice term only (``w_dice=1, w_cross=0``), ``gamma_dice=0.3``, per-class Dice
        over the whole batch (``batch=True``) on sigmoid outputs, ``smooth=1``. ``kwargs`` override any of these.
        """
        args: dict[str, Any] = {
            "sigmoid": True,
            "w_dice": 1.0,
            "w_cross": 0.0,
            "gamma_dice": 0.3,
            "batch": True,
            "smooth": 1.0,
        }
        args.update(kwargs)
        return cls(**args)

    def _prepare_target(self, target: torch.Tensor, n_pred_ch: int) -> torch.Tensor:
        if not self.to_onehot_y:
            return target
        if n_pred_ch == 1 and not self.onehot_skip_background:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
            return target
        n_classes = n_pred_ch + 1 if self.onehot_skip_background else n_pred_ch
        target = one_hot(target, num_classes=n_classes)
        return target[:, 1:] if self.onehot_skip_background else target

    def _weights(self, n_ch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self.class_weights is None:
            return torch.ones(n_ch, device=device, dtype=dtype)
        if self.class_weights.numel() != n_ch:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} values but {n_ch} channels are used "
                f"(include_background={self.include_background})."
            )
        return self.class_weights.to(device=device, dtype=dtype)

    def _power(self, value: torch.Tensor, gamma: float) -> torch.Tensor:
        # value ** gamma above `clamp`, exactly 0 at or below it; the clamp keeps the derivative of the selected
        # branch finite (gamma * clamp ** (gamma - 1) at most) and the other branch carries no gradient.
        powered = torch.clamp(value, min=self.clamp).pow(gamma)
        return torch.where(value > self.clamp, powered, torch.zeros_like(powered))

    def _dice_term(self, probs: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Per-sample Dice term, shape (B,); ``keep``: (B, 1 or C, ...) 1 on the counted pixels, or None."""
        if not self.include_background and probs.shape[1] > 1:
            probs, target = probs[:, 1:], target[:, 1:]
            keep = _drop_first_channel(keep)
        if keep is not None:
            probs, target = probs * keep, target * keep
        axes = list(range(2, probs.ndim))
        if self.batch:
            axes = [0] + axes
        intersection = torch.sum(probs * target, dim=axes)
        denominator = torch.sum(probs, dim=axes) + torch.sum(target, dim=axes)
        neg_log_dice = torch.log(denominator + self.smooth) - torch.log(2.0 * intersection + self.smooth)
        term = self._power(neg_log_dice, self.gamma_dice)
        if self.batch:
            return term.mean().expand(probs.shape[0])
        return term.mean(dim=1)

    @staticmethod
    def _mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Per-sample mean of ``values`` (B, ...) over the elements where ``keep`` (broadcastable) is 1."""
        if keep is None:
            return values.flatten(1).mean(dim=1)
        keep = keep.expand_as(values)
        total = (values * keep).flatten(1).sum(dim=1)
        count = keep.flatten(1).sum(dim=1)
        return torch.where(count > 0, total / torch.clamp(count, min=1.0), torch.zeros_like(total))

    def _cross_term(self, logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Per-sample cross term, shape (B,); ``keep`` as in :py:meth:`_dice_term`."""
        n_ch = logits.shape[1]
        if self.sigmoid:
            if not self.include_background and n_ch > 1:
                logits, target = logits[:, 1:], target[:, 1:]
                keep = _drop_first_channel(keep)
            shape = [1, logits.shape[1]] + [1] * (logits.ndim - 2)
            w = self._weights(logits.shape[1], logits.device, logits.dtype).view(shape)
            e = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            weight = target * w + (1.0 - target)
            return self._mean(weight * self._power(e, self.gamma_cross), keep)
        # softmax over all channels; the background (channel 0) gets weight 0 when excluded
        if self.include_background or n_ch == 1:
            w = self._weights(n_ch, logits.device, logits.dtype)
        else:
            w = torch.cat([logits.new_zeros(1), self._weights(n_ch - 1, logits.device, logits.dtype)])
        shape = [1, n_ch] + [1] * (logits.ndim - 2)
        e = -torch.sum(target * F.log_softmax(logits, dim=1), dim=1)
        weight = torch.sum(target * w.view(shape), dim=1)
        pixel_keep = None if keep is None else torch.amin(keep, dim=1)  # a pixel counts when all its channels do
        return self._mean(weight * self._power(e, self.gamma_cross), pixel_keep)

    def _keep_mask(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target with its ignored values set to 0, and the counted-pixel mask (None when all count)."""
        keep = None
        if self.ignore_value is not None:
            ignored = target == self.ignore_value
            if bool(ignored.any()):
                keep = ~torch.any(ignored, dim=1, keepdim=True)
                target = torch.where(ignored, torch.zeros_like(target), target)
        if mask is not None:
            mask = torch.as_tensor(mask, device=input.device)
            spatial = tuple(input.shape[2:])
            if (mask.ndim != input.ndim or mask.shape[0] != input.shape[0] or mask.shape[1] not in (1, input.shape[1])
                    or tuple(mask.shape[2:]) != spatial):
                raise ValueError(f"mask should have shape (B, 1, ...) or (B, C, ...) = ({input.shape[0]}, 1 or "
                                 f"{input.shape[1]}, {', '.join(map(str, spatial))}), got {tuple(mask.shape)}.")
            counted = mask != 0
            keep = counted if keep is None else keep & counted
        return target, None if keep is None else keep.to(dtype=input.dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: logits (B, C, H[, W, D]) (probabilities when neither ``sigmoid`` nor ``softmax``, Dice term only);
                float16 / bfloat16 input (autocast) is cast to float32 first.
            target: (B, C, ...) one-hot / multi-label, or (B, 1, ...) class indices with ``to_onehot_y``; pixels whose
                target is ``ignore_value`` (in any channel) are left out.
            mask: optional (B, 1, ...) or (B, C, ...) mask, non-zero on the pixels (elements) that count, 0 on those
                left out (e.g. ``1 - ambiguous``).

        Raises:
            ValueError: when target and input shapes differ after the one-hot conversion, or ``mask`` has another
                shape than (B, 1 or C, spatial...).
        """
        if input.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the loss is computed in float32
            input = input.float()
        n_pred_ch = input.shape[1]
        target, keep = self._keep_mask(input, target, mask)
        target = self._prepare_target(target, n_pred_ch)
        if target.shape != input.shape:
            raise ValueError(f"ground truth has a different shape ({tuple(target.shape)}) from input "
                             f"({tuple(input.shape)}).")
        target = target.to(dtype=input.dtype)
        if self.sigmoid:
            probs = torch.sigmoid(input)
        elif self.softmax:
            if n_pred_ch == 1:
                raise ValueError("softmax=True needs more than one channel.")
            probs = torch.softmax(input, dim=1)
        else:
            probs = input

        loss = input.new_zeros(input.shape[0])
        if self.w_dice > 0:
            loss = loss + self.w_dice * self._dice_term(probs, target, keep)
        if self.w_cross > 0:
            loss = loss + self.w_cross * self._cross_term(input, target, keep)

        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        if self.reduction == LossReduction.NONE.value:
            return loss
        raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')


def _drop_first_channel(keep: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel mask without channel 0 (the background); a (B, 1, ...) mask is shared by all channels."""
    if keep is None or keep.shape[1] == 1:
        return keep
    return keep[:, 1:]
