"""BestGenotypeSaver: the genotype of a search's best validation, written with its verdict and alpha heatmap when
the search ends."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.handlers.alpha_figure import plot_alpha_heatmap, save_figure
from monai_nasscam.handlers.diagnostics import search_record
from monai_nasscam.networks.alphas import diagnose_genotype, genotype_weights
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.utils import unwrap_model
from monai_nasscam.networks.verdict import CONVERGED, verdict_advice

__all__ = ["BestGenotypeSaver"]


class BestGenotypeSaver:
    """Keep the genotype of the best validation (the evaluator's key metric, the pooled mean Dice) and write it
    to ``output_path`` (``RUN/genotype.json``) when the run ends, with the ``search`` section of that validation's
    alphas (figures and verdict), and its alpha heatmap next to it (``heatmap_name``); then log the verdict and,
    unless it is ``converged``, what to change. Attach to the trainer; it follows the given evaluator's
    validations, and the ``search`` section is what a :class:`~monai_nasscam.handlers.SearchDiagnosticsHandler`
    attached to that evaluator left in its state (computed from the alphas alone without one). Its state (``state_dict`` / ``load_state_dict``) goes into the search checkpoint so a resumed run
    keeps the best.

    A validation during the warm-up (trainer epoch ``<= warmup_epochs``: the alphas have not moved, the derived
    operations are the argmax of their initial values) is a candidate only while no validation after the warm-up
    happened: the first validation after it replaces a warm-up best whatever its metric. When every validation was
    in the warm-up, the best of them is written with a warning; with no validation at all, the final genotype is
    written (with a warning).

    Args:
        network: the searchable network.
        evaluator: the validation evaluator.
        output_path: the genotype file to write.
        metric_name: metric to maximise; default the evaluator's key metric.
        exclude_none: never choose ``none`` (see :meth:`Genotype.from_model`).
        name: logger name (default: the trainer's logger).
        warmup_epochs: the trainer's weight-only epochs; ``None``: the attached trainer's ``warmup_epochs`` (0 when
            it has none).
        heatmap_name: file name, next to ``output_path``, of the alpha heatmap of the written genotype (its recorded
            alphas, titled with its epoch and verdict); ``None``: not written.
    """

    def __init__(
        self,
        network: nn.Module,
        evaluator: Engine,
        output_path: str | os.PathLike,
        metric_name: str | None = None,
        exclude_none: bool = False,
        name: str | None = None,
        warmup_epochs: int | None = None,
        heatmap_name: str | None = "genotype_heatmap.png",
    ) -> None:
        self.network = network
        self.evaluator = evaluator
        self.output_path = Path(output_path)
        self.metric_name = metric_name
        self.exclude_none = exclude_none
        self._name = name
        self.logger = logging.getLogger(name)
        self.best_metric: float | None = None
        self.best_epoch: int = -1
        self.best_genotype: dict | None = None
        self._warmup_epochs = None if warmup_epochs is None else int(warmup_epochs)
        self._trainer: Engine | None = None
        self.heatmap_name = heatmap_name

    @property
    def warmup_epochs(self) -> int:
        """The warm-up epochs: the given ones, else the attached trainer's ``warmup_epochs`` (read when needed: a
        trainer attaches its handlers before it sets its own attributes), else 0."""
        if self._warmup_epochs is not None:
            return self._warmup_epochs
        return int(getattr(self._trainer, "warmup_epochs", 0) or 0)

    def _warmup(self) -> int:
        return self.warmup_epochs

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        self._trainer = engine
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, evaluator: Engine) -> None:
        """Compare the validation's metric with the best so far and keep the genotype if it improved."""
        name = self.metric_name or getattr(evaluator.state, "key_metric_name", None)
        if name is None or name not in evaluator.state.metrics:
            raise KeyError(f"metric {name!r} not in the evaluator's metrics {sorted(evaluator.state.metrics)}.")
        value = float(evaluator.state.metrics[name])
        if value != value:  # NaN: nothing to compare
            return
        epoch = int(evaluator.state.epoch)
        warm = epoch <= self._warmup()
        best_warm = self.best_genotype is not None and self.best_epoch <= self._warmup()
        if self.best_genotype is None or (warm == best_warm and value > self.best_metric) or (best_warm and not warm):
            search = search_record(evaluator.state, self.network, epoch)
            genotype = Genotype.from_model(unwrap_model(self.network), exclude_none=self.exclude_none, search=search)
            self.best_metric, self.best_epoch, self.best_genotype = value, epoch, genotype.to_dict()
            note = " (a warm-up validation: kept only until one after the warm-up)" if warm else ""
            self.logger.info(f"best genotype so far at epoch {self.best_epoch}: {name}={value:.4f}{note}")

    def write(self, engine: Engine | None = None) -> Path:
        """Write the best genotype (or the current one if nothing was validated), then log its verdict."""
        if self.best_genotype is None:
            self.logger.warning("no validation ran during the search; writing the final genotype instead of the best.")
            genotype = Genotype.from_model(unwrap_model(self.network), exclude_none=self.exclude_none)
        else:
            genotype = Genotype.from_dict(self.best_genotype, source="best genotype")
            if self.best_epoch <= self._warmup():
                self.logger.warning(
                    f"no validation after the warm-up (epochs 1-{self._warmup()}, the alphas do not move): the genotype "
                    f"of epoch {self.best_epoch} is the argmax of alphas that never trained; search with more --epochs "
                    "than --warmup_epochs."
                )
        path = genotype.save(self.output_path)
        self.logger.info(f"genotype of epoch {self.best_epoch} (best validation {self.best_metric}) written to {path}")
        if self.heatmap_name:
            self.save_heatmap(genotype, path.parent / self.heatmap_name)
        self.log_verdict(genotype, path)
        return path

    def save_heatmap(self, genotype: Genotype, path: str | os.PathLike, dpi: int = 110) -> Path | None:
        """Write the alpha heatmap of ``genotype``'s recorded alphas to ``path`` (atomically), titled with the
        genotype's epoch; ``None`` (nothing written) when the genotype records no alphas."""
        if not genotype.alphas:
            return None
        search = genotype.search or {}
        epoch = search.get("epoch")
        title = f"{self.output_path.name}: softmax(alpha) of " + (f"epoch {epoch}" if epoch is not None else "the final alphas")
        fig = plot_alpha_heatmap(weights=genotype_weights(genotype.alphas), title=title, diagnostics=diagnose_genotype(genotype))
        return save_figure(fig, path, dpi=dpi)

    def log_verdict(self, genotype: Genotype, path: str | os.PathLike) -> None:
        """Log the verdict of the ``search`` section of ``genotype`` (written to ``path``) and what to do about it."""
        search = genotype.search or {}
        verdict = search.get("verdict")
        if verdict is None:
            return
        epoch = search.get("epoch")
        where = f"the alphas of epoch {epoch}" if epoch is not None else "the final alphas"
        figures = (
            f"decided {search.get('decided', float('nan')):.0%} of {search.get('edges')} edges, entropy "
            f"{search.get('entropy', float('nan')):.3f}, margin {search.get('margin', float('nan')):.3f}"
        )
        reasons = "; ".join(search.get("reasons") or [])
        line = f"search verdict for {path} ({where}): {verdict.upper()}: {figures}" + (f" ({reasons})" if reasons else "")
        log = self.logger.info if verdict == CONVERGED else self.logger.warning
        log(line)
        log(("next: " if verdict == CONVERGED else "what to change: ") + verdict_advice(verdict, search))

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "best_genotype": self.best_genotype}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = state.get("best_metric")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_genotype = state.get("best_genotype")
