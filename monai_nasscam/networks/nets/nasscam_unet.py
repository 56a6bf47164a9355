"""NASSCAMUNet: the U-Net of docs/method.md §3 with an attention module after each of its 4 down and 4 up blocks."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool

from monai_nasscam.data.classes import NUM_CLASSES
from monai_nasscam.networks.attentions import attention_block, check_attention, share_alphas
from monai_nasscam.networks.cell import arch_parameters, weight_parameters
from monai_nasscam.networks.genotype import POSITIONS, Genotype

__all__ = ["NASSCAMUNet", "DoubleConv", "BitsDropout"]


class BitsDropout(nn.Module):
    """Inverted dropout whose CPU mask is drawn 16 random bits per element instead of one float sample each.

    ``torch.nn.Dropout`` draws one ``bernoulli_`` sample per element, and on CPU that costs as much as several
    convolutions of the same tensor (about 27 ms for a 4 x 16 x 256 x 256 tensor, single-threaded; the U-Net has
    10 dropout layers). Here one 64-bit draw of the default generator gives four 16-bit integers, and an element
    is kept where its integer is at least the drop threshold: the same Bernoulli mask with the drop probability
    rounded to a multiple of ``2 ** -16`` (``p = 0.2`` drops with probability 13107 / 65536 = 0.199997), and the
    kept elements are scaled by the inverse of the keep probability so that the expectation is the input, as in
    ``torch.nn.Dropout``. The mask is seeded by ``torch.manual_seed`` like any other CPU draw. Off the CPU, or for
    ``p`` of 0, or scripted (TorchScript), it is ``torch.nn.functional.dropout``; in evaluation mode the identity.

    Args:
        p: drop probability in ``[0, 1)``.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}.")
        self.p = float(p)
        self.drop_count = round(self.p * 2**16)  # of the 65536 16-bit values, this many drop
        self.threshold = self.drop_count - 2**15  # keep where the signed 16-bit value >= threshold
        self.scale = 2**16 / (2**16 - self.drop_count)
        self.int64_min = -(2**63)  # random_(int64_min, None) draws all 64 bits

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if torch.jit.is_scripting() or x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return self._bits_dropout(x)

    @torch.jit.unused
    def _bits_dropout(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(self.int64_min, None).view(torch.int16)[:n]
        keep = bits.view(x.shape) >= self.threshold
        return (x * keep).mul_(self.scale)


class DoubleConv(nn.Sequential):
    """conv3x3 -> norm -> ReLU -> dropout -> conv3x3 -> norm -> ReLU, from MONAI ``Convolution`` units.

    The dropout is :class:`BitsDropout` (the same inverted dropout, a cheaper mask on CPU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm, dropout: float) -> None:
        super().__init__()
        self.add_module("conv_0", Convolution(spatial_dims, in_channels, out_channels, act="relu", norm=norm, dropout=dropout, adn_ordering="NAD"))
        self.add_module("conv_1", Convolution(spatial_dims, out_channels, out_channels, act="relu", norm=norm, adn_ordering="NA"))
        if "D" in self.conv_0.adn._modules:
            self.conv_0.adn.D = BitsDropout(dropout)


class NASSCAMUNet(nn.Module):
    """U-Net with attention at 8 positions: after each down block (conv block, 2x max-pool) and each up
    block (transposed conv k4 s2 p1, concatenated skip, conv block). Skips carry the attention-weighted
    features. The network returns logits; apply a sigmoid (the paper's 4 multi-label channels, threshold
    0.5) or a softmax (with a background channel) outside, as MONAI networks do.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (3 for RGB).
        out_channels: output channels (4 nucleus types; 5 for a softmax head with background).
        attention: a block attention of :mod:`monai_nasscam.networks.attentions` ("none", "cbam", "scse",
            "nas-sam", "nas-cam", "nas-scam-s", "nas-scam-p", or a registered one); ``None`` takes the genotype's.
        synchronous: for a searchable network, each module has its own alphas (``True``, the method) or
            all 8 share one set (``False``, the ablation).
        genotype: a :class:`Genotype`, or the path of its JSON file, to build the derived (fixed) network;
            ``None`` builds the searchable supernet for NAS attentions.
        features: widths of the input block, the 4 down blocks (the middle block repeats the last), e.g.
            ``(16, 32, 64, 128, 256)``; the up blocks mirror them.
        norm: normalisation of the conv blocks (GroupNorm with 4 groups by default).
        dropout: dropout between the two convolutions of each conv block.

    Inputs must have spatial sizes divisible by 16.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = NUM_CLASSES,
        attention: str | None = "nas-scam-p",
        synchronous: bool = True,
        genotype: Genotype | str | os.PathLike | None = None,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        norm: tuple | str = ("group", {"num_groups": 4}),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(features) != 5:
            raise ValueError(f"features must give 5 widths (input block and 4 down blocks), got {list(features)}.")
        if isinstance(genotype, (str, os.PathLike)):
            genotype = Genotype.load(genotype)
        if genotype is not None:
            if attention is not None and attention != genotype.attention:
                raise ValueError(f"attention {attention!r} does not match the genotype's {genotype.attention!r}.")
            attention = genotype.attention
        attention = check_attention(attention or "nas-scam-p")
        self.attention = attention
        self.synchronous = synchronous
        self.genotype = genotype
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels

        f = list(features)
        self.conv_0 = DoubleConv(spatial_dims, in_channels, f[0], norm, dropout)
        widths = dict(zip(POSITIONS, f[1:] + [f[3], f[2], f[1], f[0]]))

        def attention_at(position: str) -> nn.Module:
            entry = genotype.entry(position) if genotype is not None else None
            return attention_block(attention, spatial_dims, widths[position], entry)

        self.down = nn.ModuleList(
            nn.ModuleDict(
                {
                    "conv": DoubleConv(spatial_dims, f[k], f[k + 1], norm, dropout),
                    "pool": Pool[Pool.MAX, spatial_dims](2),
                    "attention": attention_at(POSITIONS[k]),
                }
            )
            for k in range(4)
        )
        self.middle = DoubleConv(spatial_dims, f[4], f[4], norm, dropout)
        self.up = nn.ModuleList(
            nn.ModuleDict(
                {
                    "upsample": Conv[Conv.CONVTRANS, spatial_dims](f[k + 1], f[k], kernel_size=4, stride=2, padding=1),
                    "conv": DoubleConv(spatial_dims, 2 * f[k], f[k], norm, dropout),
                    "attention": attention_at(POSITIONS[7 - k]),
                }
            )
            for k in (3, 2, 1, 0)
        )
        if not synchronous and genotype is None:
            share_alphas(self.attention_blocks().values())  # the non-synchronous ablation: one set of alphas
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1)

    def attention_blocks(self) -> dict[str, nn.Module]:
        """The attention block at each of the 8 positions."""
        blocks = [b["attention"] for b in self.down] + [b["attention"] for b in self.up]
        return dict(zip(POSITIONS, blocks))

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture weights (alphas); empty for a fixed network."""
        return arch_parameters(self)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter."""
        return weight_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a check of the input, not of the computation: skipped while tracing (the sizes are traced values there,
        # and a trace would keep the check's outcome for its example input as a constant, with a TracerWarning)
        if not torch.jit.is_tracing() and any(size % 16 != 0 for size in x.shape[2:]):
            raise ValueError(f"NASSCAMUNet needs spatial sizes divisible by 16, got {x.shape[2:]}.")
        skips = [self.conv_0(x)]
        for block in self.down:
            skips.append(block["attention"](block["pool"](block["conv"](skips[-1]))))
        h = self.middle(skips.pop())
        for block in self.up:
            h = torch.cat([block["upsample"](h), skips.pop()], dim=1)
            h = block["attention"](block["conv"](h))
        return self.final_conv(h)
