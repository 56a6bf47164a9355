"""Class weights from label frequencies (Wong et al., MICCAI 2018): the pixel count of each class over the training
label maps, and the weights ``w_l = ((sum_k f_k) / f_l) ** 0.5`` that
:class:`~monai_nasscam.losses.ExpLogLoss` takes as ``class_weights``
(:func:`~monai_nasscam.data.datalist.label_class_weights` computes them from a prepared datalist)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["count_labels", "weights_from_frequencies"]


def weights_from_frequencies(frequencies: Sequence[float] | torch.Tensor | np.ndarray) -> torch.Tensor:
    """Wong et al.'s label weights ``w_l = ((sum_k f_k) / f_l) ** 0.5``.

    Args:
        frequencies: label frequencies or pixel counts ``f_k`` of the training set, one per class, each > 0.

    Returns:
        float32 tensor of shape ``(len(frequencies),)``; the rarest class gets the largest weight.

    Raises:
        ValueError: no frequency, or one that is not > 0.
    """
    f = np.asarray(frequencies, dtype=np.float64).flatten()
    if f.size == 0 or (f <= 0).any():
        raise ValueError(f"frequencies must be positive, got {f.tolist()}.")
    return torch.as_tensor(np.sqrt(f.sum() / f), dtype=torch.float32)


def count_labels(
    label_maps: Iterable[torch.Tensor | np.ndarray], num_classes: int, skip_background: bool = False
) -> torch.Tensor:
    """Pixel count of each class id over class maps (e.g. the training label PNGs): the ``f_k`` of
    :func:`weights_from_frequencies`.

    Args:
        label_maps: class maps with integer ids in ``0..num_classes - 1`` (any shape each).
        num_classes: number of class ids, the background 0 included.
        skip_background: drop id 0 from the result (for heads without a background channel, where channel
            ``c`` is class id ``c + 1``).

    Returns:
        int64 tensor of shape ``(num_classes,)``, or ``(num_classes - 1,)`` with ``skip_background``.

    Raises:
        ValueError: a class id outside ``0..num_classes - 1``.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for label_map in label_maps:
        values = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else label_map
        values = np.asarray(values).astype(np.int64).ravel()
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"class ids must be in 0..{num_classes - 1}, got {values.min()}..{values.max()}.")
        counts += np.bincount(values, minlength=num_classes)
    return torch.as_tensor(counts[1:] if skip_background else counts)
