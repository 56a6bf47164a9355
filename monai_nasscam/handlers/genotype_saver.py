"""GenotypeSaver: the genotype of every validation of a search, with the figures and the verdict of its alphas."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.handlers.diagnostics import search_record
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["GenotypeSaver", "summarize"]


class GenotypeSaver:
    """At each validation (attach to the evaluator), derive the current genotype and write it to
    ``output_dir/genotypes/genotype_epoch{epoch:04d}.json``; log a one-line summary. Its ``search`` section holds the
    figures (with the epoch and the changed count) that a :class:`~monai_nasscam.handlers.SearchDiagnosticsHandler`
    attached to the same evaluator before this saver left in its state; without one, those of the alphas alone.

    Args:
        network: the searchable network.
        output_dir: the run folder.
        exclude_none: never choose ``none`` (see :meth:`Genotype.from_model`).
        name: logger name (default: the engine's logger).
    """

    def __init__(
        self,
        network: nn.Module,
        output_dir: str | os.PathLike,
        exclude_none: bool = False,
        name: str | None = None,
    ) -> None:
        self.network = network
        self.output_dir = Path(output_dir)
        self.exclude_none = exclude_none
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        search = search_record(engine.state, self.network, epoch)
        genotype = Genotype.from_model(unwrap_model(self.network), exclude_none=self.exclude_none, search=search)
        path = genotype.save(self.output_dir / "genotypes" / f"genotype_epoch{epoch:04d}.json")
        self.logger.info(f"epoch {epoch} genotype ({path.name}): {summarize(genotype)}")


def summarize(genotype: Genotype) -> str:
    """A compact text form of a genotype, e.g. ``down1 sam[conv3 none ...] cam[...] | down2 ...``."""
    parts = []
    for module in genotype.modules:
        ops = " ".join(f"{k}[{' '.join(v)}]" for k, v in module.items() if k != "position")
        parts.append(f"{module['position']} {ops}")
    if not genotype.synchronous:
        return f"shared: {parts[0].split(' ', 1)[1]}"
    return " | ".join(parts)
