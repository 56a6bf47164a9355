"""DivergenceGuard: stop a search with an error as soon as a loss, the network's output or an alpha is non-finite."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents
from monai_nasscam.errors import SearchDiverged
from monai_nasscam.handlers.checkpoint import learning_rates
from monai_nasscam.networks.attentions import block_cells
from monai_nasscam.networks.cell import arch_parameters
from monai_nasscam.networks.genotype import attention_blocks
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["DivergenceGuard"]


def _nonfinite(value: Any) -> str | None:
    """``"nan"`` / ``"inf"`` when a number or tensor holds a non-finite value, else ``None``."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() == 0 or bool(torch.isfinite(value).all()):
            return None
        return "nan" if bool(torch.isnan(value).any()) else "inf"
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else ("nan" if value != value else "inf")
    return None


class DivergenceGuard:
    """Stop a search with :class:`SearchDiverged` as soon as a weight-step loss, the network's output in a weight
    step, an alpha-step loss or an alpha is non-finite (NaN or infinite). Attach to the
    :class:`~monai_nasscam.engines.BilevelSearchTrainer`; it checks at MONAI's ``IterationEvents.LOSS_COMPLETED``
    (weight steps) and ``BilevelEvents.ARCH_STEP_COMPLETED`` (alpha steps).

    Unlike ignite's ``TerminateOnNan`` (which ends the run normally, so the end-of-run handlers would write a
    genotype of NaN alphas), the exception ends the run with an error: no genotype is written, and the search
    checkpoint keeps the last finished epoch (:class:`~monai_nasscam.handlers.ResumableCheckpointSaver` also refuses to
    write a non-finite state). The network's output is checked too because a loss can hide a NaN (the exponential
    logarithmic loss counts a NaN Dice term as 0).

    With mixed precision (``engine.amp``) the gradient scaler skips the steps whose gradients overflow, and a float16
    forward pass may overflow once in a while: there, a non-finite loss or output stops the search only after
    ``amp_patience`` consecutive such steps of the same kind; non-finite alphas always stop it.

    Args:
        network: the searchable network; default the engine's ``network``.
        amp_patience: consecutive non-finite steps tolerated with mixed precision.
        name: logger name (default: the engine's logger).
    """

    def __init__(self, network: nn.Module | None = None, amp_patience: int = 10, name: str | None = None) -> None:
        self.network = network
        self.amp_patience = int(amp_patience)
        self._name = name
        self.logger = logging.getLogger(name)
        self._streak = {"weight": 0, "arch": 0}

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.check_weight_step)
        if engine.has_registered_events(BilevelEvents.ARCH_STEP_COMPLETED):
            engine.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, self.check_arch_step)

    def _fail(self, engine: Engine, what: str) -> None:
        advice = (
            f"No genotype is written. Search again with a lower --learning_rate (now "
            f"{learning_rates(getattr(engine, 'optimizer', None))}) / --arch_learning_rate (now "
            f"{learning_rates(getattr(engine, 'arch_optimizer', None))}); start a new run, not --resume (a checkpoint keeps "
            "the learning rates it was saved with)"
        )
        raise SearchDiverged(engine.state.epoch, engine.state.iteration, what, advice)

    def _bad_step(self, engine: Engine, kind: str, what: str | None) -> None:
        if what is None:
            self._streak[kind] = 0
            return
        self._streak[kind] += 1
        if getattr(engine, "amp", False) and self._streak[kind] <= self.amp_patience:
            self.logger.warning(
                f"epoch {engine.state.epoch}, iteration {engine.state.iteration}: {what} (mixed precision: the step is "
                f"skipped; {self._streak[kind]} in a row, the search stops after {self.amp_patience})"
            )
            return
        if getattr(engine, "amp", False):
            what += f" on {self._streak[kind]} {kind} steps in a row"
        self._fail(engine, what)

    def check_weight_step(self, engine: Engine) -> None:
        """After a weight step's loss: the loss and the network's output must be finite."""
        output = engine.state.output or {}
        bad = _nonfinite(output.get(Keys.LOSS))
        what = None if bad is None else f"the weight-step loss is {bad}"
        if what is None:
            bad = _nonfinite(output.get(Keys.PRED))
            what = None if bad is None else f"the network's output in the weight step holds {bad} values"
        self._bad_step(engine, "weight", what)

    def check_arch_step(self, engine: Engine) -> None:
        """After an alpha step: the alpha-step loss and every alpha must be finite."""
        network = self.network if self.network is not None else getattr(engine, "network", None)
        params = arch_parameters(unwrap_model(network)) if network is not None else []
        if params and not bool(torch.isfinite(torch.cat([p.detach().flatten() for p in params])).all()):
            for position, block in attention_blocks(unwrap_model(network)).items():
                for cell in block_cells(block, searchable=True).values():
                    bad = _nonfinite(cell.alpha)
                    if bad is not None:
                        self._fail(engine, f"the alphas of the {cell.kind} cell at {position} hold {bad} values")
        bad = _nonfinite((engine.state.output or {}).get(ARCH_LOSS))
        self._bad_step(engine, "arch", None if bad is None else f"the alpha-step loss is {bad}")
