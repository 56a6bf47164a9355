"""Temperature annealing of the alphas' softmax during a search (a published DARTS remedy).

The supernet mixes each edge's candidates with ``softmax(alpha / T)``. At ``T = 1`` (the method) the mixture of a
short search stays close to uniform, so the network that is trained is far from the single-op network that is
derived from it. Lowering ``T`` over the search makes the mixture approach the argmax it will be discretised to
(the annealed softmax of SNAS, Xie et al., ICLR 2019, and GDAS, Dong and Yang, CVPR 2019; here without their
sampling). The derived operation, the argmax of alpha, does not depend on ``T``; genotypes and the search verdict
record ``softmax(alpha)`` at ``T = 1``, so runs with and without annealing are read on one scale.
"""

from __future__ import annotations

import logging
import math

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.networks.cell import NASAttentionCell
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["AlphaTemperatureScheduler", "annealed_temperature"]

logger = logging.getLogger(__name__)


def annealed_temperature(epoch: int, max_epochs: int, warmup_epochs: int, start: float, end: float) -> float:
    """The softmax temperature of a 1-based search ``epoch``: geometric from ``start`` to ``end``.

    ``start`` through the warm-up and in the first alpha epoch (``warmup_epochs + 1``), ``end`` in the last
    (``max_epochs``; with a single alpha epoch, that one), geometric in between: ``start * (end / start) ** progress``.

    Args:
        epoch: the epoch, 1-based (ignite's ``engine.state.epoch`` during the epoch).
        max_epochs: the search's epochs, warm-up included.
        warmup_epochs: the leading weight-only epochs.
        start: the temperature of the first alpha epoch, > 0.
        end: the temperature of the last epoch, > 0.

    Returns:
        the temperature, a float in ``[min(start, end), max(start, end)]``.

    Raises:
        ValueError: ``start`` or ``end`` is not a finite positive number.
    """
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"alpha_temperature {name} must be a finite number > 0, got {value!r}.")
    alpha_epoch = int(epoch) - int(warmup_epochs)  # 1 = the first alpha epoch; <= 0 in the warm-up
    span = int(max_epochs) - int(warmup_epochs) - 1
    if alpha_epoch <= 0:
        return float(start)
    progress = 1.0 if span <= 0 else min(1.0, (alpha_epoch - 1) / span)
    return float(start) * (float(end) / float(start)) ** progress


class AlphaTemperatureScheduler:
    """Set the softmax temperature of every searchable cell at the start of each epoch.

    Attach it to the search trainer (``BilevelSearchTrainer``); the temperature follows
    :func:`annealed_temperature` from the engine's epoch, so a resumed search continues on the same schedule. With
    ``start == end == 1`` it changes nothing (the method as published, search.yaml's default).

    Args:
        network: the supernet (or a ``DistributedDataParallel`` wrapping it).
        start: temperature of the warm-up and the first alpha epoch, > 0 (1.0: plain softmax).
        end: temperature of the last epoch, > 0 (e.g. 0.1 sharpens a weight ratio of ``e`` per logit to ``e^10``).
        warmup_epochs: the search's weight-only epochs.

    Raises:
        ValueError: a temperature is not a finite positive number (raised when built).
    """

    def __init__(self, network: nn.Module, start: float = 1.0, end: float = 1.0, warmup_epochs: int = 0) -> None:
        annealed_temperature(1, 1, 0, start, end)  # validates both
        self.network = network
        self.start = float(start)
        self.end = float(end)
        self.warmup_epochs = int(warmup_epochs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        t = annealed_temperature(engine.state.epoch, engine.state.max_epochs, self.warmup_epochs, self.start, self.end)
        cells = [m for m in unwrap_model(self.network).modules() if isinstance(m, NASAttentionCell) and m.searchable]
        for cell in cells:
            cell.temperature = t
        if (self.start, self.end) != (1.0, 1.0):
            logger.info(f"epoch {engine.state.epoch}: alpha softmax temperature {t:.4g}")
