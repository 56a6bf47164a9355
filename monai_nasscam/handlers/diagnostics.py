"""SearchDiagnosticsHandler: the figures and the verdict of the alphas at each validation of a search, into the
evaluator's metrics, TensorBoard, the log and the evaluator's ``engine.state``, where the handlers after it find them
(:func:`validation_diagnostics`, :func:`search_record`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.errors import InputError
from monai_nasscam.networks.alphas import search_diagnostics
from monai_nasscam.networks.diagnostics import SearchDiagnostics, VerdictRule

__all__ = ["STATE_DIAGNOSTICS", "STATE_SETTINGS", "SearchDiagnosticsHandler", "validation_diagnostics", "search_record"]

#: the attribute of the evaluator's ``engine.state`` that holds the last validation's :class:`SearchDiagnostics`
STATE_DIAGNOSTICS = "search_diagnostics"
#: ... and the one that holds the search settings recorded with them (``None``: none)
STATE_SETTINGS = "search_settings"


class SearchDiagnosticsHandler:
    """At each validation (attach to the evaluator; its epoch is the trainer's), compute the figures and the verdict
    of the current alphas (:func:`~monai_nasscam.networks.alphas.search_diagnostics`: entropy, margin, none share,
    decided share, best operations of the edges decided at the previous validation that changed since) and

    - put the scalar aggregates into ``engine.state.metrics`` (``alpha_entropy``, ``alpha_margin``,
      ``alpha_none_share``, ``alpha_decided`` and, from the second validation on, ``alpha_changed``), so the
      evaluator's stats, TensorBoard and MLflow handlers attached after this one log them;
    - write the per-module figures to TensorBoard as ``{tag}/{position}/{kind}/{entropy|margin|none_share|decided|
      changed}`` at the trainer's epoch (one position ``shared`` for a non-synchronous search);
    - log one line with the verdict;
    - leave the result in the evaluator's ``engine.state`` (:data:`STATE_DIAGNOSTICS`, with the ``settings`` under
      :data:`STATE_SETTINGS`), where the handlers after it read it (:func:`validation_diagnostics`,
      :func:`search_record`): the alpha heatmap's title, the per-epoch and the best genotypes' ``search`` section.

    Attach it before the handlers that log the metrics or read its result. Its state (``state_dict`` /
    ``load_state_dict``: the best operations of the last validation) goes into the search checkpoint, so "changed" is
    right after a resume.

    Args:
        network: the searchable network.
        summary_writer: a TensorBoard ``SummaryWriter``; ``None``: no TensorBoard figures.
        rule: the verdict's thresholds (default: the module constants of :mod:`monai_nasscam.networks.verdict`).
        tag: prefix of the TensorBoard tags.
        metric_prefix: prefix of the metric names.
        name: logger name (default: the engine's logger).
        settings: search settings that change what the alphas learn and must not change on a resume (search.yaml
            gives ``alpha_temperature`` and ``alpha_entropy_weight``): kept in the checkpoint, compared on resume,
            and recorded in the genotypes' ``search`` section as ``settings``. ``None``: none.

    Raises:
        InputError: on resume (``load_state_dict``), a setting differs from the checkpoint's.
    """

    def __init__(
        self,
        network: nn.Module,
        summary_writer: Any = None,
        rule: VerdictRule | Mapping[str, Any] | None = None,
        tag: str = "alpha_diagnostics",
        metric_prefix: str = "alpha_",
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = None if settings is None else {str(k): _plain(v) for k, v in settings.items()}
        self.network = network
        self._writer = summary_writer
        self.rule = VerdictRule.from_dict(rule) if isinstance(rule, Mapping) else (rule or VerdictRule())
        self.tag = tag
        self.metric_prefix = metric_prefix
        self._name = name
        self.logger = logging.getLogger(name)
        self.previous: dict[str, dict[str, list[str]]] | None = None
        self.previous_epoch: int = -1

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def compute(self, epoch: int) -> SearchDiagnostics:
        """The diagnostics of the current alphas at ``epoch``, against the last recorded validation (not recorded)."""
        previous = self.previous if self.previous_epoch < epoch else None
        return search_diagnostics(self.network, previous=previous, rule=self.rule, epoch=epoch)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        diagnostics = self.compute(epoch)
        engine.state.metrics.update(diagnostics.metrics(self.metric_prefix))
        if self._writer is not None:
            self.write(diagnostics, epoch)
        setattr(engine.state, STATE_DIAGNOSTICS, diagnostics)
        setattr(engine.state, STATE_SETTINGS, dict(self.settings) if self.settings else None)
        self.previous, self.previous_epoch = diagnostics.decided_ops(), epoch
        self.logger.info(f"epoch {epoch} alphas: {diagnostics.summary()}")

    def write(self, diagnostics: SearchDiagnostics, step: int) -> None:
        """Write the per-module figures to TensorBoard at ``step``."""
        cells = diagnostics.cells
        if diagnostics.shared:
            cells = {"shared": next(iter(cells.values()))}
        for position, per in cells.items():
            for kind, cell in per.items():
                tag = f"{self.tag}/{position}/{kind}"
                self._writer.add_scalar(f"{tag}/entropy", cell.mean_entropy, step)
                self._writer.add_scalar(f"{tag}/margin", cell.mean_margin, step)
                self._writer.add_scalar(f"{tag}/none_share", cell.none_share, step)
                self._writer.add_scalar(f"{tag}/decided", cell.decided / cell.edges, step)
                if cell.changed is not None:
                    self._writer.add_scalar(f"{tag}/changed", cell.changed, step)
        self._writer.flush()

    def state_dict(self) -> dict:
        return {"previous": self.previous, "previous_epoch": self.previous_epoch, "settings": self.settings}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("settings")
        if saved is not None and self.settings is not None:
            for key in sorted(set(saved) | set(self.settings)):
                if saved.get(key) != self.settings.get(key):
                    raise InputError(
                        f"resume: the checkpoint's search ran with {key} {saved.get(key)!r}, this run has "
                        f"{self.settings.get(key)!r}; resume with --{key} {json.dumps(saved.get(key))} (or start a new "
                        "search in another output_dir)."
                    )
        self.previous = state.get("previous")
        self.previous_epoch = int(state.get("previous_epoch", -1))


def _plain(value: Any) -> Any:
    """A setting as plain JSON values (numbers as floats, sequences as lists), so saved and given values compare."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _left_at(state: Any, epoch: int) -> SearchDiagnostics | None:
    """The diagnostics a :class:`SearchDiagnosticsHandler` left in ``state`` at ``epoch``, else ``None``."""
    found = getattr(state, STATE_DIAGNOSTICS, None)
    return found if isinstance(found, SearchDiagnostics) and found.epoch == epoch else None


def validation_diagnostics(state: Any, network: nn.Module, epoch: int) -> SearchDiagnostics:
    """The diagnostics a :class:`SearchDiagnosticsHandler` left in an evaluator's ``state`` at ``epoch`` (with the
    changed count since the validation before) or, when it left none for that epoch (no such handler, or attached
    after the reader), those of ``network``'s current alphas (nothing counted as changed).

    Args:
        state: the evaluator's ``engine.state`` (``None``: no evaluator).
        network: the searchable network.
        epoch: the (trainer) epoch of the validation.
    """
    found = _left_at(state, epoch)
    return search_diagnostics(network, epoch=epoch) if found is None else found


def search_record(state: Any, network: nn.Module, epoch: int) -> dict[str, Any]:
    """The ``search`` section of a genotype saved at ``epoch`` (arguments as :func:`validation_diagnostics`): the
    figures and the verdict and, when a :class:`SearchDiagnosticsHandler` left them with its result, its
    ``settings``."""
    found = _left_at(state, epoch)
    if found is None:
        return search_diagnostics(network, epoch=epoch).to_dict()
    record = found.to_dict()
    settings = getattr(state, STATE_SETTINGS, None)
    if settings:
        record["settings"] = dict(settings)
    return record
