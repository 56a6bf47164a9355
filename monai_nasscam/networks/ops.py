"""Candidate operations of the NAS-SCAM attention cell (docs/method.md §1.2).

Every candidate except ``none`` is a convolution (with bias) followed by batch normalisation; the cell
applies the activation. ``none`` outputs zeros and has no parameters. Operations are described by
:class:`OpSpec` so that the cell can fuse all candidates that read the same node into one convolution
per kernel shape; :func:`build_op` builds one candidate as a module with MONAI's factories.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm

__all__ = ["OpSpec", "SAM_OPS", "CAM_OPS", "OPS", "op_names", "build_op"]


class OpSpec(NamedTuple):
    """A candidate operation: ``kernel_size`` and ``dilation`` of its convolution; ``none`` has kernel 0."""

    kernel_size: int
    dilation: int = 1

    @property
    def padding(self) -> int:
        """'Same' padding for odd kernels."""
        return self.dilation * (self.kernel_size - 1) // 2


NONE = OpSpec(0)

#: spatial attention (NAS-SAM): 2-D / 3-D convolutions over the feature map, in index order.
SAM_OPS: dict[str, OpSpec] = {
    "none": NONE,
    "conv1": OpSpec(1),
    "conv3": OpSpec(3),
    "conv5": OpSpec(5),
    "dil_conv3": OpSpec(3, 2),
    "dil_conv5": OpSpec(5, 2),
}

#: channel attention (NAS-CAM): 1-D convolutions sliding along the channel axis, in index order.
CAM_OPS: dict[str, OpSpec] = {
    "none": NONE,
    "conv1": OpSpec(1),
    "conv3": OpSpec(3),
    "conv5": OpSpec(5),
    "conv9": OpSpec(9),
    "conv15": OpSpec(15),
    "dil_conv3": OpSpec(3, 2),
    "dil_conv5": OpSpec(5, 2),
}

OPS: dict[str, dict[str, OpSpec]] = {"sam": SAM_OPS, "cam": CAM_OPS}


def op_names(kind: str) -> tuple[str, ...]:
    """Candidate names of ``kind`` ("sam" or "cam") in index order."""
    if kind not in OPS:
        raise ValueError(f"unknown attention cell kind {kind!r}, expected one of {sorted(OPS)}.")
    return tuple(OPS[kind])


def build_op(kind: str, name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module | None:
    """Build candidate ``name`` as ``Sequential(conv, batchnorm)``; ``None`` for the parameter-free ``none``.

    Args:
        kind: "sam" or "cam".
        name: an operation name of ``kind`` (see :data:`SAM_OPS`, :data:`CAM_OPS`).
        spatial_dims: number of spatial dimensions of the convolution (1 for channel attention).
        in_channels: input channels.
        out_channels: output channels.
    """
    specs = OPS.get(kind)
    if specs is None:
        raise ValueError(f"unknown attention cell kind {kind!r}, expected one of {sorted(OPS)}.")
    if name not in specs:
        raise ValueError(f"unknown {kind} operation {name!r}, expected one of {list(specs)}.")
    spec = specs[name]
    if spec == NONE:
        return None
    conv = Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, spec.kernel_size, padding=spec.padding, dilation=spec.dilation, bias=True
    )
    return nn.Sequential(conv, Norm[Norm.BATCH, spatial_dims](out_channels))
