"""The inference-time form of a fixed attention cell: batch norms folded into the convolutions.

:class:`FoldedAttentionCell` computes, in evaluation mode, the same function as a fixed
:class:`~monai_nasscam.networks.cell.NASAttentionCell` (to float rounding; tested), reading the cell's own graph
(:data:`~monai_nasscam.networks.cell.EDGES`, the output node and its fan-in, the node widths) rather than copies of
it. :func:`fold_attention_cells` swaps every fixed cell of a network for its folded form;
:func:`monai_nasscam.inference.optimize.prepare_network` calls it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from monai_nasscam.networks.cell import CONV_FUNCTIONS, EDGES, OUTPUT_FAN_IN, OUTPUT_NODE, NASAttentionCell
from monai_nasscam.networks.ops import OPS

__all__ = ["FoldedAttentionCell", "fold_attention_cells", "fold_batch_norm"]


def fold_batch_norm(module: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``Sequential(conv, batchnorm)`` with the evaluation-mode batch norm folded in.

    Args:
        module: a candidate operation as :func:`~monai_nasscam.networks.ops.build_op` builds it.

    Returns:
        ``(weight, bias)``: the convolution's weight ``(C_out, C_in, *kernel)`` scaled per output channel by
        ``gamma / sqrt(running_var + eps)``, and the matching bias ``(C_out,)``.

    Raises:
        ValueError: when the batch norm keeps no running statistics.
    """
    conv, bn = module[0], module[1]
    w, b = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn.running_mean is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    scale = (bn.weight.detach() if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.bias is not None else 0.0
    return w * scale.view(-1, *([1] * (w.ndim - 1))), (b - bn.running_mean) * scale + shift


class FoldedAttentionCell(nn.Module):
    """Evaluation-only equivalent of a fixed :class:`~monai_nasscam.networks.cell.NASAttentionCell`.

    Every batch norm is folded into its convolution. Each ReLU edge (into an inner node) is one convolution whose
    output is used in place. Each sigmoid edge (into the one-channel output node) is computed in two cheap steps
    instead of one convolution with a single output channel, which CPU convolution libraries run at a small
    fraction of their speed: a 1 x 1 convolution gives the ``k^d`` per-tap channel sums, then a fixed one-hot
    ``k x k`` (dilated) convolution adds the shifted taps -- the same sum of products in another order.

    Args:
        cell: a fixed cell in evaluation mode (its batch norms' running statistics are used).

    Raises:
        ValueError: for a searchable cell (no single op per edge) or a batch norm without running statistics.
    """

    def __init__(self, cell: NASAttentionCell) -> None:
        super().__init__()
        if cell.ops is None:
            raise ValueError("only a fixed (derived) cell can be folded; this one is searchable.")
        self.spatial_dims = int(cell.spatial_dims)
        self.node_channels = tuple(int(c) for c in cell.node_channels)
        specs = OPS[cell.kind]
        #: sigmoid edges on ``none``: each adds sigmoid(0) = 0.5 to the output node
        self.half_count = sum(1 for e, (_, t) in enumerate(EDGES) if t == OUTPUT_NODE and cell.ops[e] == "none")
        #: per live edge, in EDGES order: (source, target, padding, dilation, kernel)
        self.plan: list[tuple[int, int, int, int, int]] = []
        for e, (src, dst) in enumerate(EDGES):
            name = cell.ops[e]
            if name == "none":
                continue
            spec = specs[name]
            w, b = fold_batch_norm(cell.edges[e][name])
            i = len(self.plan)
            if dst != OUTPUT_NODE:
                self.register_buffer(f"weight_{i}", w.contiguous())
            else:
                k = spec.kernel_size
                taps = k**self.spatial_dims
                # (1, C, k, ..) -> (taps, C, 1, ..): channel sums per tap; then a one-hot (1, taps, k, ..) kernel
                self.register_buffer(f"weight_{i}", w.reshape(w.shape[1], taps).t().reshape(taps, w.shape[1], *([1] * self.spatial_dims)).contiguous())
                self.register_buffer(f"gather_{i}", torch.eye(taps).reshape(1, taps, *([k] * self.spatial_dims)))
            self.register_buffer(f"bias_{i}", b.contiguous())
            self.plan.append((src, dst, spec.padding, spec.dilation, spec.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> the attention map ``(B, 1, *spatial)`` in (0, 1)."""
        conv = CONV_FUNCTIONS[self.spatial_dims]
        nodes: list[torch.Tensor | None] = [x] + [None] * (OUTPUT_NODE - 1)
        out: torch.Tensor | None = None
        for i, (src, dst, padding, dilation, kernel) in enumerate(self.plan):
            source = nodes[src]
            if source is None:  # an inner node without live inputs is zero
                source = x.new_zeros((x.shape[0], self.node_channels[src], *x.shape[2:]))
                nodes[src] = source
            weight, bias = getattr(self, f"weight_{i}"), getattr(self, f"bias_{i}")
            if dst != OUTPUT_NODE:
                y = torch.relu_(conv(source, weight, bias, padding=padding, dilation=dilation))
                current = nodes[dst]
                nodes[dst] = y if current is None else current.add_(y)  # the node's own buffer
                continue
            if kernel == 1:
                y = conv(source, weight, bias)
            else:
                y = conv(conv(source, weight), getattr(self, f"gather_{i}"), bias, padding=padding, dilation=dilation)
            y = torch.sigmoid_(y)
            out = y if out is None else out.add_(y)
        if out is None:
            out = x.new_zeros((x.shape[0], 1, *x.shape[2:]))
        if self.half_count:
            out = out + 0.5 * self.half_count
        return out / OUTPUT_FAN_IN


def fold_attention_cells(network: nn.Module) -> int:
    """Replace, in place, every fixed attention cell of ``network`` by a :class:`FoldedAttentionCell`.

    Args:
        network: any module; searchable cells are left alone. Call it on an evaluation-mode copy.

    Returns:
        how many cells were replaced.
    """
    count = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NASAttentionCell) and child.ops is not None:
                setattr(parent, name, FoldedAttentionCell(child))
                count += 1
    return count
