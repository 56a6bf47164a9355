"""Prepare a trained network for fast inference: evaluation mode, folded batch norms, channels-last, TorchScript.

:func:`prepare_network` returns a callable for the sliding-window inferer. Its modes:

- ``none``: the network as it is (evaluation mode);
- ``eager``: a copy whose fixed attention cells are replaced by
  :class:`~monai_nasscam.networks.folded_cell.FoldedAttentionCell` (batch norms folded into the convolutions) and whose ReLUs work in place, run in
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

from monai_nasscam.networks.folded_cell import fold_attention_cells

__all__ = ["inplace_activations", "prepare_network", "PreparedNetwork", "PREPARE_MODES", "default_workers"]

logger = logging.getLogger(__name__)
PREPARE_MODES = ("auto", "none", "eager", "trace")


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
