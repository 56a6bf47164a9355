"""The reference code's whole-image inference: overlapping windows, each contributing only its central block."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import ensure_tuple_rep

__all__ = ["CentreStitchingInferer"]


class CentreStitchingInferer(Inferer):
    """Infer an image as ``roi_size`` windows every ``stride`` and keep the central ``stride`` block of each window.

    The NAS-SCAM reference code's protocol (256 windows at stride 128): the image is padded by
    ``(roi_size - stride) / 2`` on each side (constant ``cval``, white for [0, 1] H&E images) and up to a whole
    number of strides; window ``k`` predicts output pixels ``[k * stride, (k + 1) * stride)`` from its centre, so
    every pixel is predicted by exactly one window, with at least ``(roi_size - stride) / 2`` pixels of context on
    each side, and nothing is averaged (unlike MONAI's ``SlidingWindowInferer``, which blends overlapping windows).

    Args:
        roi_size: window size (an int for all spatial axes, or one per axis).
        stride: step between windows; ``roi_size - stride`` must be even and >= 0 on each axis.
        sw_batch_size: windows per network call.
        cval: padding value of the image.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int = 256,
        stride: Sequence[int] | int = 128,
        sw_batch_size: int = 4,
        cval: float = 1.0,
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.stride = stride
        self.sw_batch_size = int(sw_batch_size)
        self.cval = float(cval)
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")

    def _geometry(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        n = len(spatial)
        roi = ensure_tuple_rep(self.roi_size, n)
        stride = ensure_tuple_rep(self.stride, n)
        for r, s in zip(roi, stride):
            if s < 1 or r < s or (r - s) % 2:
                raise ValueError(
                    f"CentreStitchingInferer needs 1 <= stride <= roi_size with an even difference, got roi_size "
                    f"{self.roi_size} and stride {self.stride}."
                )
        margin = tuple((r - s) // 2 for r, s in zip(roi, stride))
        return tuple(int(r) for r in roi), tuple(int(s) for s in stride), margin

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            inputs: (B, C, *spatial).
            network: maps (N, C, *roi_size) to (N, C_out, *roi_size).
            args, kwargs: further arguments of ``network``.

        Returns:
            (B, C_out, *spatial).
        """
        spatial = tuple(int(s) for s in inputs.shape[2:])
        roi, stride, margin = self._geometry(spatial)
        counts = [math.ceil(size / s) for size, s in zip(spatial, stride)]
        pad: list[int] = []
        for size, r, s, m, k in reversed(list(zip(spatial, roi, stride, margin, counts))):
            pad += [m, k * s - size + (r - s - m)]
        padded = F.pad(torch.as_tensor(inputs), pad, mode="constant", value=self.cval)
        starts = list(itertools.product(*[range(0, k * s, s) for k, s in zip(counts, stride)]))
        batch = inputs.shape[0]
        out: torch.Tensor | None = None
        for i in range(0, len(starts), self.sw_batch_size):
            chunk = starts[i : i + self.sw_batch_size]
            windows = torch.cat(
                [padded[(slice(None), slice(None), *[slice(a, a + r) for a, r in zip(st, roi)])] for st in chunk]
            )
            pred = network(windows, *args, **kwargs)
            if out is None:
                full = [k * s for k, s in zip(counts, stride)]
                out = torch.zeros((batch, pred.shape[1], *full), dtype=pred.dtype, device=pred.device)
            centre = (slice(None), slice(None), *[slice(m, m + s) for m, s in zip(margin, stride)])
            for j, st in enumerate(chunk):
                target = (slice(None), slice(None), *[slice(a, a + s) for a, s in zip(st, stride)])
                out[target] = pred[j * batch : (j + 1) * batch][centre]
        if out is None:  # unreachable: there is always at least one window
            raise RuntimeError("no window was inferred.")
        return out[(slice(None), slice(None), *[slice(0, size) for size in spatial])]
