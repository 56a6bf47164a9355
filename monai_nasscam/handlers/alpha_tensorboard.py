"""AlphaTensorBoardHandler: softmax(alpha) of every module, cell kind, edge and candidate to TensorBoard during a
search, and the loss of every alpha step."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents
from monai_nasscam.networks.alphas import alpha_weights
from monai_nasscam.networks.cell import edge_label

__all__ = ["AlphaTensorBoardHandler"]


class AlphaTensorBoardHandler:
    """Write softmax(alpha) of every module, cell kind, edge and candidate operation to TensorBoard as scalars
    tagged ``{tag}/{position}/{kind}/{edge}/{op}`` (e.g. ``alpha/down1/sam/n0->n1/conv3``), every
    ``epoch_interval`` epochs of the engine it is attached to (the trainer), at the trainer's epoch.

    Args:
        network: the searchable network.
        summary_writer: a ``SummaryWriter``; default: a new one writing to ``log_dir``.
        log_dir: where the default writer writes.
        tag: prefix of the scalar tags.
        epoch_interval: write every N epochs (and at epoch 0, before training, when the run starts fresh).
        arch_loss_tag: also write the loss of every alpha step under this tag, at the trainer's iteration
            (attached to a :class:`~monai_nasscam.engines.BilevelSearchTrainer`); ``None``: not written.
    """

    def __init__(
        self,
        network: nn.Module,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        tag: str = "alpha",
        epoch_interval: int = 1,
        arch_loss_tag: str | None = "arch_loss",
    ) -> None:
        self.network = network
        self.arch_loss_tag = arch_loss_tag
        if summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(log_dir=log_dir)
            self.internal_writer = True
        else:
            self.internal_writer = False
        self._writer = summary_writer
        self.tag = tag
        self.epoch_interval = int(epoch_interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self)
        engine.add_event_handler(Events.COMPLETED, self._flush)
        if self.arch_loss_tag and engine.has_registered_events(BilevelEvents.ARCH_STEP_COMPLETED):
            engine.add_event_handler(BilevelEvents.ARCH_STEP_COMPLETED, self._arch_loss)

    def _arch_loss(self, engine: Engine) -> None:
        value = engine.state.output[ARCH_LOSS]
        self._writer.add_scalar(self.arch_loss_tag, float(value), engine.state.iteration)

    def _started(self, engine: Engine) -> None:
        # the initial alphas, once per run from scratch (after any checkpoint was loaded at STARTED)
        if engine.state.epoch == 1 and engine.state.iteration == 0:
            self.write(0)

    def _flush(self, engine: Engine) -> None:
        self._writer.flush()

    def write(self, step: int) -> None:
        """Write the current softmax(alpha) at global step ``step``."""
        for position, per in alpha_weights(self.network).items():
            for kind, (names, w) in per.items():
                for e in range(w.shape[0]):
                    for o, name in enumerate(names):
                        self._writer.add_scalar(f"{self.tag}/{position}/{kind}/{edge_label(e)}/{name}", float(w[e, o]), step)

    def __call__(self, engine: Engine) -> None:
        self.write(engine.state.epoch)
        self._writer.flush()

    def close(self) -> None:
        if self.internal_writer:
            self._writer.close()
