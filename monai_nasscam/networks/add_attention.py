"""Drop NAS-SCAM (or baseline) attention into a MONAI ``BasicUNet``."""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet
from monai.networks.nets.basic_unet import UpCat

from monai_nasscam.networks.attentions import attention_block, check_attention, share_alphas
from monai_nasscam.networks.genotype import BASIC_UNET_POSITIONS, Genotype

__all__ = ["add_attention"]


class _AttentionAfter(nn.Sequential):
    """``Sequential(block, attention)`` after a down block (one input); TorchScript-scriptable."""

    is_attention_wrapper = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x))


class _AttentionAfterUpCat(_AttentionAfter):
    """``Sequential(UpCat, attention)``: passes the up path and the skip (``x_e``) to MONAI's ``UpCat``."""

    def forward(self, x: torch.Tensor, x_e: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP007 (TorchScript)
        return self[1](self[0](x, x_e))


def add_attention(
    net: BasicUNet, attention: str = "nas-scam-p", genotype: Genotype | str | os.PathLike | None = None, synchronous: bool = True
) -> BasicUNet:
    """Put an attention block after each down block and each up block of a MONAI ``BasicUNet``, in place.

    The positions are those of :class:`NASSCAMUNet`: ``down_1..down_4`` and ``upcat_4..upcat_1`` (deep to
    shallow). A searchable model (no genotype) works with :class:`Genotype.from_model`,
    ``monai_nasscam.networks.cell.arch_parameters`` and the bilevel trainer.

    Args:
        net: the ``BasicUNet`` to modify (spatial_dims and features are read from it).
        attention: an attention name (a block attention of :mod:`monai_nasscam.networks.attentions`).
        genotype: a :class:`Genotype` or its JSON path for fixed NAS blocks; ``None`` for searchable ones.
        synchronous: ``False`` shares one set of alphas between the 8 searchable modules.

    Returns:
        ``net``, with its blocks wrapped.
    """
    if not isinstance(net, BasicUNet):
        raise TypeError(f"add_attention expects a monai.networks.nets.BasicUNet, got {type(net).__name__}.")
    if isinstance(genotype, (str, os.PathLike)):
        genotype = Genotype.load(genotype)
    if genotype is not None and genotype.attention != attention:
        raise ValueError(f"attention {attention!r} does not match the genotype's {genotype.attention!r}.")
    check_attention(attention)
    spatial_dims = net.final_conv.weight.ndim - 2
    blocks = []
    for position, name in BASIC_UNET_POSITIONS.items():
        block = getattr(net, name)
        if isinstance(block, _AttentionAfter):
            raise ValueError(f"{name} already has attention; build a new BasicUNet.")
        channels = _out_channels(block)
        attn = attention_block(attention, spatial_dims, channels, genotype.entry(position) if genotype else None)
        blocks.append(attn)
        setattr(net, name, (_AttentionAfterUpCat if isinstance(block, UpCat) else _AttentionAfter)(block, attn))
    if not synchronous and genotype is None:
        share_alphas(blocks)
    return net


def _out_channels(block: nn.Module) -> int:
    """Output channels of a BasicUNet block: those of its last convolution."""
    convs = [m for m in block.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return convs[-1].out_channels
