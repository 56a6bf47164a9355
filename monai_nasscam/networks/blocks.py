"""Attention blocks: NAS-SAM, NAS-CAM, NAS-SCAM (docs/method.md §2) and the CBAM and scSE baselines (§3.4).

Every block maps ``(B, C, *spatial)`` to a tensor of the same shape and takes ``(spatial_dims, in_channels)``
first, like MONAI's own blocks. A NAS block is searchable when built without a genotype and fixed
when built with one; it exposes its cells with ``cells()`` (``(kind, NASAttentionCell)`` pairs) and its attention
name as ``attention_name``. The names, labels and builders of all attentions are registered in
:mod:`monai_nasscam.networks.attentions`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers.factories import Conv, Pool

from monai_nasscam.networks.cell import NASAttentionCell

__all__ = ["NASSAMBlock", "NASCAMBlock", "NASSCAMBlock", "CBAMBlock", "SCSEBlock"]


class _NASCellBlock(nn.Module):
    """A block around one attention cell of ``kind``: the shared constructor and ``cells()`` of NAS-SAM / NAS-CAM."""

    kind: str
    attention_name: str

    def __init__(
        self, spatial_dims: int, in_channels: int, genotype: Sequence[str] | None = None, hidden_channels: int = 32
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"{type(self).__name__} supports spatial_dims 2 or 3, got {spatial_dims}.")
        self.in_channels = in_channels
        # the spatial cell convolves the feature map; the channel cell slides 1-D along the pooled channel vector
        dims, channels = (spatial_dims, in_channels) if self.kind == "sam" else (1, 1)
        self.cell = NASAttentionCell(self.kind, dims, channels, genotype, hidden_channels)

    def cells(self) -> Iterator[tuple[str, NASAttentionCell]]:
        """The block's cell: ``(kind, cell)``."""
        yield self.kind, self.cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class NASSAMBlock(_NASCellBlock):
    """NAS-SAM: a searched spatial attention map ``n`` (B, 1, *spatial) from the cell; returns ``n * x``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input feature map.
        genotype: the 6 SAM operation names (edge order of :data:`~monai_nasscam.networks.cell.EDGES`) for a
            fixed block; ``None`` for a searchable one.
        hidden_channels: channels of the cell's inner nodes (32 in the paper).

    Raises:
        ValueError: ``spatial_dims`` other than 2 or 3, or a genotype that is not 6 SAM operation names.
    """

    kind = "sam"
    attention_name = "nas-sam"

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial attention map, ``(B, 1, *spatial)`` in (0, 1)."""
        return self.cell(x)


class NASCAMBlock(_NASCellBlock):
    """NAS-CAM: global average pooling, then the cell's 1-D convolutions slide along the channel axis of
    the pooled vector (an ECA-like design whose size does not depend on ``in_channels``); returns ``z * x``.

    Args:
        spatial_dims: 2 or 3 (of the feature map; the cell itself is 1-D).
        in_channels: channels of the input feature map.
        genotype: the 6 CAM operation names for a fixed block; ``None`` for a searchable one.
        hidden_channels: channels of the cell's inner nodes (32 in the paper).

    Raises:
        ValueError: ``spatial_dims`` other than 2 or 3, or a genotype that is not 6 CAM operation names.
    """

    kind = "cam"
    attention_name = "nas-cam"

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights, ``(B, C, 1, ...)`` in (0, 1)."""
        if not torch.jit.is_tracing() and x.shape[1] != self.in_channels:  # an input check: not traced
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).")
        z = x.mean(dim=tuple(range(2, x.ndim)))  # (B, C)
        weights = self.cell(z.unsqueeze(1))  # (B, 1, C)
        return weights.reshape(x.shape[:2] + (1,) * (x.ndim - 2))


class NASSCAMBlock(nn.Module):
    """NAS-SCAM: spatial and channel attention, ``serial`` (SAM then CAM) or ``parallel`` (element-wise max).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input feature map.
        mode: "parallel" (NAS-SCAM-P, ``max(SAM(x), CAM(x))``) or "serial" (NAS-SCAM-S, ``CAM(SAM(x))``).
        genotype: ``{"sam": [6 names], "cam": [6 names]}`` for a fixed block; ``None`` for a searchable one.
        hidden_channels: channels of the cells' inner nodes (32 in the paper).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        mode: str = "parallel",
        genotype: Mapping[str, Sequence[str]] | None = None,
        hidden_channels: int = 32,
    ) -> None:
        super().__init__()
        if mode not in ("parallel", "serial"):
            raise ValueError(f"mode must be 'parallel' or 'serial', got {mode!r}.")
        if genotype is not None and not {"sam", "cam"} <= set(genotype):
            raise ValueError(f"a NASSCAMBlock genotype needs 'sam' and 'cam' entries, got keys {sorted(genotype)}.")
        self.mode = mode
        self.sam = NASSAMBlock(spatial_dims, in_channels, None if genotype is None else genotype["sam"], hidden_channels)
        self.cam = NASCAMBlock(spatial_dims, in_channels, None if genotype is None else genotype["cam"], hidden_channels)

    @property
    def attention_name(self) -> str:
        """``"nas-scam-s"`` (serial) or ``"nas-scam-p"`` (parallel)."""
        return "nas-scam-s" if self.mode == "serial" else "nas-scam-p"

    def cells(self) -> Iterator[tuple[str, NASAttentionCell]]:
        """The block's cells: ``("sam", cell)`` then ``("cam", cell)``."""
        yield from self.sam.cells()
        yield from self.cam.cells()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "serial":
            return self.cam(self.sam(x))
        return torch.maximum(self.sam(x), self.cam(x))


class CBAMBlock(nn.Module):
    """CBAM (Woo et al., 2018): channel attention from a shared MLP over average- and max-pooled vectors,
    then spatial attention from a ``kernel_size`` convolution over the channel-wise mean and max.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input feature map.
        reduction: channel reduction of the MLP (hidden size ``max(1, in_channels // reduction)``).
        kernel_size: kernel of the spatial convolution.
    """

    def __init__(self, spatial_dims: int, in_channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(1, in_channels // reduction)
        conv = Conv[Conv.CONV, spatial_dims]
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max_pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.mlp = nn.Sequential(conv(in_channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, in_channels, 1))
        self.spatial = conv(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class SCSEBlock(nn.Module):
    """scSE (Roy et al., 2018): channel squeeze-and-excitation (MONAI ``ChannelSELayer``) plus a spatial
    squeeze-and-excitation from a 1x1 convolution, combined by addition.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input feature map.
        reduction: reduction ratio of the channel excitation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.channel = ChannelSELayer(spatial_dims, in_channels, r=reduction)
        self.spatial = Conv[Conv.CONV, spatial_dims](in_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x) + x * torch.sigmoid(self.spatial(x))
