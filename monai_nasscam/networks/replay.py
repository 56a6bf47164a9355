"""Forward passes that recompute only what a change of some cells' mixing weights can reach.

Selection by perturbation (:mod:`monai_nasscam.networks.selection`) evaluates the supernet hundreds of times on the
same crops, each time with one operation of one cell masked out. Everything the network computed before that cell
was first called is the same in every such pass: :class:`PrefixReplay` records one reference pass and, in a pass
where only given cells changed, returns the recorded outputs of the module calls that ended before the first of
those cells started, instead of computing them again. In the U-Net of this package a mask in the last decoder block
then recomputes that block and the output convolution only; over a whole selection the passes cost 0.6 times full
ones (docs/search.md, "Selection by perturbation").

It assumes what holds for the networks of this package in ``eval`` mode: the forward pass is deterministic, calls
its modules in the same order every time, and no module modifies a tensor another module returned in place.
:meth:`PrefixReplay.replay` with ``check=True`` (a pass whose cells did not actually change) tests this against the
reference output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.networks.cell import NASAttentionCell

__all__ = ["PrefixReplay"]


class PrefixReplay:
    """Record one forward pass of ``network``, then replay its beginning in passes where only some cells changed.

    Only calls made directly by a module that holds a searchable cell (the network itself, an attention block, ...)
    are kept, so memory is about one set of the network's feature maps for the batch.

    Args:
        network: the network whose passes are recorded (its modules are hooked during :meth:`record`).

    Example::

        replay = PrefixReplay(net)
        reference = replay.record(lambda: net(x))
        cell.weight_override = masked_weights
        out = replay.replay(lambda: net(x), [cell])  # computed from the cell's first call on
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        cells = {id(c) for c in network.modules() if isinstance(c, NASAttentionCell) and c.searchable}
        self._holders = {id(m) for m in network.modules() if any(id(c) in cells for c in m.modules())}
        # (module id, call number) -> (start, end, output)
        self._calls: dict[tuple[int, int], tuple[int, int, Any]] = {}
        self._cell_starts: dict[int, int] = {}  # cell id -> start of its first call
        self._modules: dict[int, nn.Module] = {}
        self.reference: Any = None

    def record(self, run: Callable[[], Any]) -> Any:
        """Run ``run()`` (a forward pass of the network, e.g. through an inferer) and record its module calls.

        Returns:
            what ``run()`` returns (also kept as :attr:`reference`).
        """
        self._calls.clear()
        self._cell_starts.clear()
        self._modules.clear()
        counts: dict[int, int] = {}
        stack: list[tuple[nn.Module, int, int]] = []
        sequence = iter(range(1 << 62))

        def pre(module: nn.Module, args: Any) -> None:
            number = counts.get(id(module), 0)
            counts[id(module)] = number + 1
            start = next(sequence)
            stack.append((module, number, start))
            if isinstance(module, NASAttentionCell):
                self._cell_starts.setdefault(id(module), start)

        def post(module: nn.Module, args: Any, output: Any) -> None:
            _, number, start = stack.pop()
            if stack and id(stack[-1][0]) in self._holders:
                self._calls[(id(module), number)] = (start, next(sequence), output)
                self._modules[id(module)] = module

        handles = []
        try:
            for m in self.network.modules():
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
            self.reference = run()
        finally:
            for h in handles:
                h.remove()
        return self.reference

    def replay(self, run: Callable[[], Any], changed: Iterable[NASAttentionCell], check: bool = False) -> Any:
        """Run ``run()`` again, returning the recorded outputs of the calls that ended before the first call of any
        ``changed`` cell began instead of computing them.

        Args:
            run: the same forward pass as recorded.
            changed: the cells whose mixing weights may differ from the recorded pass (at least one).
            check: the weights did not actually change: test that the result equals the reference.

        Raises:
            RuntimeError: nothing was recorded; no changed cell, or one that was not called in the recorded pass;
                or (``check``) the result differs from the reference (a forward pass that is not deterministic or
                modifies its modules' outputs in place: replaying it would give wrong results).
        """
        if self.reference is None:
            raise RuntimeError("PrefixReplay.replay before record: record a reference pass first.")
        starts = [self._cell_starts.get(id(c)) for c in changed]
        if not starts or None in starts:
            raise RuntimeError("PrefixReplay.replay needs changed cells that were called in the recorded pass.")
        first = min(starts)
        replayed = {key: out for key, (start, end, out) in self._calls.items() if end < first}
        counts: dict[int, int] = {}

        def wrap(module: nn.Module, forward: Callable) -> Callable:
            def forward_or_replay(*args: Any, **kwargs: Any) -> Any:
                number = counts.get(id(module), 0)
                counts[id(module)] = number + 1
                key = (id(module), number)
                return replayed[key] if key in replayed else forward(*args, **kwargs)

            return forward_or_replay

        patched = [self._modules[i] for i in {key[0] for key in replayed}]
        try:
            for module in patched:
                module.forward = wrap(module, module.forward)  # an instance attribute shadows the method
            out = run()
        finally:
            for module in patched:
                if "forward" in vars(module):
                    del module.forward
        if check and not _same(out, self.reference):
            raise RuntimeError(
                "replaying the recorded forward pass changed its output: the network's forward pass is not "
                "deterministic in eval mode or modifies its modules' outputs in place; selection by perturbation "
                "cannot reuse its computations."
            )
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    return a is b or a == b
