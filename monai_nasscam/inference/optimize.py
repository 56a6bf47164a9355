"""Prepare a trained network for fast inference: evaluation mode, folded batch norms, channels-last, TorchScript.

:func:`prepare_network` returns a callable for the sliding-window inferer. Its modes:

- ``none``: the network as it is (evaluation mode);
- ``eager``: a copy whose fixed attention cells are replaced by :class:`FoldedAttentionCell` (batch norms folded
  into the convolutions, one convolution per source node and kernel shape) and whose ReLUs work in place, run in
  channels-last memory format on CPU;
- ``trace``: ``eager``, traced with TorchScript and frozen (``torch.jit.freeze``);
- ``auto``: ``trace`` on CPU, ``eager`` on GPU; falls back to ``eager`` when tracing fails.

On CPU, :class:`PreparedNetwork` can also split each batch of windows between parallel worker threads, each running
single-threaded torch (see its ``workers``).

Every mode computes the same function as the original network (to float rounding; tested).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_nasscam.allocator import tune_allocator
from monai_nasscam.networks.cell import EDGES, NASAttentionCell
from monai_nasscam.networks.ops import OPS

__all__ = ["FoldedAttentionCell", "fold_attention_cells", "inplace_activations", "prepare_network", "PreparedNetwork", "PREPARE_MODES", "default_workers", "tune_allocator"]

logger = logging.getLogger(__name__)
PREPARE_MODES = ("auto", "none", "eager", "trace")
_OUTPUT = 3
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _fold(module: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``Sequential(conv, batchnorm)`` with the (evaluation) batch norm folded in."""
    conv, bn = module[0], module[1]
    w, b = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn.running_mean is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    scale = (bn.weight.detach() if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.bias is not None else 0.0
    return w * scale.view(-1, *([1] * (w.ndim - 1))), (b - bn.running_mean) * scale + shift


def _embed(w: torch.Tensor, dilation: int, footprint: int) -> torch.Tensor:
    """A (dilated) kernel placed in a dense ``footprint``-wide kernel (zeros elsewhere); 1-D or N-D."""
    k = w.shape[-1]
    out = w.new_zeros(*w.shape[:2], *([footprint] * (w.ndim - 2)))
    start = footprint // 2 - dilation * (k - 1) // 2
    taps = (slice(start, start + dilation * (k - 1) + 1, dilation),) * (w.ndim - 2)
    out[(slice(None), slice(None)) + taps] = w
    return out


class FoldedAttentionCell(nn.Module):
    """Evaluation-only equivalent of a fixed :class:`~monai_nasscam.networks.cell.NASAttentionCell`.

    Every batch norm is folded into its convolution. Each ReLU edge (into ``n1``/``n2``) is one convolution whose
    output is used in place. Each sigmoid edge (into the one-channel output node) is computed in two cheap steps
    instead of one convolution with a single output channel, which CPU convolution libraries run at a small
    fraction of their speed: a 1 x 1 convolution gives the ``k^d`` per-tap channel sums, then a fixed one-hot
    ``k x k`` (dilated) convolution adds the shifted taps -- the same sum of products in another order.

    Args:
        cell: a fixed cell in evaluation mode (its batch norms' running statistics are used).
    """

    def __init__(self, cell: NASAttentionCell) -> None:
        super().__init__()
        if cell.ops is None:
            raise ValueError("only a fixed (derived) cell can be folded; this one is searchable.")
        self.spatial_dims = int(cell.spatial_dims)
        self.hidden = int(cell.hidden_channels)
        self.in_channels = int(cell.in_channels)
        specs = OPS[cell.kind]
        self.half_count = sum(1 for e, (_, t) in enumerate(EDGES) if t == _OUTPUT and cell.ops[e] == "none")
        #: per live edge, in EDGES order: (source, target, padding, dilation, kernel)
        self.plan: list[tuple[int, int, int, int, int]] = []
        for e, (src, dst) in enumerate(EDGES):
            name = cell.ops[e]
            if name == "none":
                continue
            spec = specs[name]
            w, b = _fold(cell.edges[e][name])
            i = len(self.plan)
            if dst != _OUTPUT:
                self.register_buffer(f"weight_{i}", w.contiguous())
                self.register_buffer(f"bias_{i}", b.contiguous())
            else:
                k, d = spec.kernel_size, spec.dilation
                taps = k**self.spatial_dims
                # (1, C, k, ..) -> (taps, C, 1, ..): channel sums per tap; then a one-hot (1, taps, k, ..) kernel
                self.register_buffer(f"weight_{i}", w.reshape(w.shape[1], taps).t().reshape(taps, w.shape[1], *([1] * self.spatial_dims)).contiguous())
                gather = torch.zeros(taps, taps)
                gather[torch.arange(taps), torch.arange(taps)] = 1.0
                self.register_buffer(f"gather_{i}", gather.reshape(1, taps, *([k] * self.spatial_dims)))
                self.register_buffer(f"bias_{i}", b.contiguous())
            self.plan.append((src, dst, spec.padding, spec.dilation, spec.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV[self.spatial_dims]
        nodes: list[torch.Tensor | None] = [x, None, None]
        out: torch.Tensor | None = None
        for i, (src, dst, padding, dilation, kernel) in enumerate(self.plan):
            source = nodes[src]
            if source is None:  # an inner node without live inputs is zero
                source = x.new_zeros((x.shape[0], self.hidden, *x.shape[2:]))
                nodes[src] = source
            weight, bias = getattr(self, f"weight_{i}"), getattr(self, f"bias_{i}")
            if dst != _OUTPUT:
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
        return out / 3.0


def inplace_activations(network: nn.Module) -> int:
    """Make the ReLUs of MONAI ``Convolution`` blocks work in place (their input is always the block's own fresh
    convolution or normalisation output, so this is safe in evaluation); returns how many were changed."""
    from monai.networks.blocks import ADN

    count = 0
    for module in network.modules():
        if isinstance(module, ADN):
            for child in module.children():
                if isinstance(child, nn.ReLU) and not child.inplace:
                    child.inplace = True
                    count += 1
    return count


def fold_attention_cells(network: nn.Module) -> int:
    """Replace, in place, every fixed attention cell of ``network`` by a :class:`FoldedAttentionCell`; returns how
    many were replaced (searchable cells are left alone)."""
    count = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NASAttentionCell) and child.ops is not None:
                setattr(parent, name, FoldedAttentionCell(child))
                count += 1
    return count


class PreparedNetwork:
    """A callable network for the inferer, with a one-line ``description`` of how it was prepared.

    Args:
        module: the module to call.
        description: how it was prepared.
        channels_last: feed it channels-last inputs.
        batch: if given, always call ``module`` with batches of exactly this size (a smaller batch is padded with
            zeros, a larger one split), so that a TorchScript module is specialised for one shape only.
        workers: run the parts of a batch in this many threads at once, each worker taking the next part when it
            is free. With one torch thread per worker (``torch.set_num_threads(1)``), this keeps every core busy on
            whole windows instead of splitting each small operation across cores, which is much faster on CPU for
            this network's many small tensors, and balances itself when other processes slow one core down.
        part: windows per part (default: ``batch``, or the whole batch with one worker and an equal share with
            several).
    """

    def __init__(
        self, module: Any, description: str, channels_last: bool, batch: int | None = None, workers: int = 1,
        part: int | None = None,
    ) -> None:
        self.module = module
        self.description = description
        self.channels_last = channels_last
        self.batch = batch
        self.workers = max(1, int(workers))
        self.part = part if part is not None else batch
        self._pool = None
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nasscam-infer")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # grad mode is per thread: set it in the workers too
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            n = x.shape[0]
            if self.batch is not None and n < self.batch:
                x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
                return self.module(x)[:n]
            return self.module(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = self.part if self.part is not None else -(-n // self.workers)
        parts = [x[i : i + size] for i in range(0, n, size)]
        if self._pool is None or len(parts) == 1:
            outs = [self._run(p) for p in parts]
        else:
            outs = list(self._pool.map(self._run, parts))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def default_workers(device: Any = "cpu") -> int:
    """Parallel network calls for ``parallel: auto``: one per usable CPU core on CPU, 1 on GPU."""
    import os

    if torch.device(device).type != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def prepare_network(
    network: nn.Module,
    mode: str = "auto",
    example_shape: Sequence[int] = (4, 3, 256, 256),
    device: Any = "cpu",
    workers: int = 1,
) -> PreparedNetwork:
    """Prepare ``network`` (already on ``device``, weights loaded) for inference; see the module docstring.

    Args:
        network: the network.
        mode: ``auto``, ``none``, ``eager`` or ``trace``.
        example_shape: the shape of the batches the inferer will pass (``sw_batch_size`` windows).
        device: the network's device.
        workers: with more than one, each batch is split into one-window parts computed by this many parallel threads
            (see :class:`PreparedNetwork`; a traced module is then traced for one window); set
            ``torch.set_num_threads(1)`` for it to pay off.

    The original network is not modified (``eager`` and ``trace`` work on a copy).
    """
    mode = str(mode).strip().lower()
    if mode not in PREPARE_MODES:
        raise ValueError(f"optimize must be one of {list(PREPARE_MODES)}, got {mode!r}.")
    device = torch.device(device)
    workers = max(1, int(workers))
    network = network.eval()
    threads = f", {workers} parallel workers" if workers > 1 else ""
    part = 1 if workers > 1 else None  # several workers: one window per part, handed out as workers free up
    if mode == "none":
        return PreparedNetwork(network, f"none (evaluation mode{threads})", False, workers=workers, part=part)
    cpu = device.type == "cpu"
    fast = copy.deepcopy(network).eval()
    folded = fold_attention_cells(fast)
    inplace_activations(fast)
    channels_last = cpu and len(example_shape) == 4
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    what = f"{folded} attention cells folded" + (", channels-last" if channels_last else "") + threads
    if mode == "eager" or (mode == "auto" and not cpu):
        return PreparedNetwork(fast, f"eager ({what})", channels_last, workers=workers, part=part)
    batch = part or max(1, int(example_shape[0]))
    example = torch.rand(batch, *example_shape[1:], device=device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(fast, example, check_trace=False).eval())
            traced(example)  # the first calls specialise the graph
            traced(example)
    except Exception as e:  # noqa: BLE001 - fall back to eager for networks TorchScript cannot trace
        if mode == "trace":
            raise
        logger.warning("TorchScript tracing failed (%s: %s); running eager", type(e).__name__, e)
        return PreparedNetwork(fast, f"eager ({what}; tracing failed)", channels_last, workers=workers, part=part)
    return PreparedNetwork(traced, f"TorchScript traced + frozen ({what})", channels_last, batch=batch, workers=workers)
