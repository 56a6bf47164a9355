"""Handlers that record the architecture during a search: softmax(alpha) to TensorBoard, the figures and the
verdict of the alphas at each validation (:class:`SearchDiagnosticsHandler`), an alpha heatmap figure, the
current genotype at each validation, the best genotype at the end of the run, and the divergence check that
stops a search whose loss or alphas became non-finite (:class:`DivergenceGuard`).

They follow MONAI's handler habits: small classes configured in ``__init__`` and hooked to an engine by
``attach(engine)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler
from monai.utils import CommonKeys as Keys

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents
from monai_nasscam.errors import InputError, SearchDiverged
from monai_nasscam.fileio import atomic_path
from monai_nasscam.handlers.checkpoint import learning_rates
from monai_nasscam.networks.attentions import block_cells
from monai_nasscam.networks.utils import unwrap_model
from monai_nasscam.networks.cell import EDGES, NASAttentionCell, arch_parameters
from monai_nasscam.networks.diagnostics import (
    CONVERGED,
    SearchDiagnostics,
    VerdictRule,
    diagnose,
    diagnose_genotype,
    genotype_weights,
    verdict_advice,
)
from monai_nasscam.networks.genotype import Genotype, attention_blocks

__all__ = [
    "alpha_weights",
    "search_diagnostics",
    "plot_alpha_heatmap",
    "AlphaTensorBoardHandler",
    "SearchDiagnosticsHandler",
    "AlphaHeatmapSaver",
    "GenotypeSaver",
    "BestGenotypeSaver",
    "SearchValidationHandler",
    "DivergenceGuard",
]



def _searchable_cells(block: nn.Module) -> dict[str, NASAttentionCell]:
    """The searchable cells of an attention block by kind (the block's ``cells()``)."""
    return {kind: cell for kind, cell in block_cells(block).items() if cell.searchable}


def alpha_weights(network: nn.Module) -> dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]]:
    """``{position: {kind: (candidate names, softmax(alpha) of shape (6, n_candidates))}}`` of a searchable network,
    positions in ``POSITIONS`` order, kinds ``"sam"`` / ``"cam"`` in the order of the blocks' ``cells()``."""
    out: dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]] = {}
    for position, block in attention_blocks(unwrap_model(network)).items():
        cells = _searchable_cells(block)
        if not cells:
            raise ValueError(f"the attention block at {position} has no searchable cell; is this a search network?")
        out[position] = {
            kind: (tuple(cell.candidates), cell.op_weights().detach().float().cpu()) for kind, cell in cells.items()
        }
    return out


def _is_shared(network: nn.Module) -> bool:
    """One set of alphas for all modules (a non-synchronous search): as many distinct alpha tensors as cell kinds."""
    blocks = attention_blocks(unwrap_model(network)).values()
    cells = [cell for b in blocks for cell in _searchable_cells(b).values()]
    kinds = {c.kind for c in cells}
    return len({id(c.alpha) for c in cells}) == len(kinds) and len(cells) > len(kinds)


def search_diagnostics(
    network: nn.Module,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    rule: VerdictRule | None = None,
    epoch: int | None = None,
) -> SearchDiagnostics:
    """:func:`~monai_nasscam.networks.diagnostics.diagnose` of a searchable network's current softmax(alpha)
    (:func:`alpha_weights`), shared alphas counted once.

    Args:
        network: the searchable network (a ``DataParallel`` / ``DistributedDataParallel`` wrapper is unwrapped).
        previous: the best operations of the previous validation (``SearchDiagnostics.decided_ops()``: ``None`` on
            the edges undecided then), or ``None``.
        rule: the verdict's thresholds (default: the module constants of :mod:`monai_nasscam.networks.diagnostics`).
        epoch: recorded in the result.
    """
    return diagnose(alpha_weights(network), previous=previous, rule=rule, shared=_is_shared(network), epoch=epoch)


def _edge_label(e: int) -> str:
    s, t = EDGES[e]
    return f"n{s}->n{t}"


def plot_alpha_heatmap(
    network: nn.Module | None = None,
    title: str | None = None,
    diagnostics: SearchDiagnostics | None = None,
    weights: Mapping[str, Mapping[str, tuple[Any, torch.Tensor]]] | None = None,
):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state) of softmax(alpha): one heatmap per module (rows, in
    ``POSITIONS`` order) and cell kind (columns), edges x candidate operations, the chosen (argmax) op of each edge
    framed in red.

    The colour scale shows the departure from uniform: a diverging map centred at the uniform weight ``1/K`` of the
    kind (white), purple above it and orange below, from 0 to 1 (``TwoSlopeNorm``). A search whose alphas stayed
    near uniform looks flat and white; an edge that chose is one dark purple cell in an orange row. Each panel's
    title gives its cell's mean normalised entropy ``H`` and mean margin ``p1 - p2`` (see
    :mod:`monai_nasscam.networks.diagnostics`).

    Args:
        network: the searchable network (or give ``weights``).
        title: the figure's title (e.g. the epoch and the verdict).
        diagnostics: the figures of the same alphas (default: computed, without a previous validation).
        weights: ``{position: {kind: (candidate names, softmax weights (6, K))}}`` instead of ``network``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if weights is None:
        if network is None:
            raise ValueError("plot_alpha_heatmap needs a network or weights.")
        weights = alpha_weights(network)
    if diagnostics is None:
        diagnostics = diagnose(weights, shared=_is_shared(network) if network is not None else None)
    kinds = list(next(iter(weights.values())).keys())
    fig = Figure(figsize=(4.6 * len(kinds) + 0.9, 1.55 * len(weights) + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(weights), len(kinds), squeeze=False)
    for col, kind in enumerate(kinds):
        k = len(next(iter(weights.values()))[kind][0])
        norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0 / k, vmax=1.0)
        image = None
        for row, (position, per) in enumerate(weights.items()):
            ax = axes[row][col]
            names, w = per[kind]
            w = torch.as_tensor(w, dtype=torch.float32)
            image = ax.imshow(w.numpy(), cmap="PuOr", norm=norm, aspect="auto", interpolation="nearest")
            for e, choice in enumerate(w.argmax(dim=-1).tolist()):
                ax.add_patch(Rectangle((choice - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
            ax.set_yticks(range(len(EDGES)), [_edge_label(e) for e in range(len(EDGES))], fontsize=6)
            last = row == len(weights) - 1
            ax.set_xticks(range(len(names)), names if last else [""] * len(names), fontsize=6, rotation=45)
            cell = diagnostics.cells.get(position, {}).get(kind)
            figures = "" if cell is None else f"  H {cell.mean_entropy:.2f}  margin {cell.mean_margin:.2f}"
            ax.set_title(f"{position} {kind.upper()}{figures}", fontsize=7)
        if image is not None:
            bar = fig.colorbar(image, ax=[axes[r][col] for r in range(len(weights))], shrink=0.5, aspect=30)
            bar.set_label(f"{kind.upper()} softmax(alpha); white = uniform 1/{k}", fontsize=7)
            bar.set_ticks([0.0, 1.0 / k, 0.5, 1.0], labels=["0", f"1/{k}", "0.5", "1"])
            bar.ax.tick_params(labelsize=6)
    import textwrap

    width = int(14 * fig.get_figwidth())  # characters of the 8-point title per line
    lines = [title or "softmax(alpha)", textwrap.fill(f"{diagnostics.summary()}; red frame: the chosen op", width)]
    fig.suptitle("\n".join(lines), fontsize=8)
    return fig


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
                        self._writer.add_scalar(f"{self.tag}/{position}/{kind}/{_edge_label(e)}/{name}", float(w[e, o]), step)

    def __call__(self, engine: Engine) -> None:
        self.write(engine.state.epoch)
        self._writer.flush()

    def close(self) -> None:
        if self.internal_writer:
            self._writer.close()


class SearchDiagnosticsHandler:
    """At each validation (attach to the evaluator; its epoch is the trainer's), compute the figures and the verdict
    of the current alphas (:func:`search_diagnostics`: entropy, margin, none share, decided share, best operations
    of the edges decided at the previous validation that changed since) and

    - put the scalar aggregates into ``engine.state.metrics`` (``alpha_entropy``, ``alpha_margin``,
      ``alpha_none_share``, ``alpha_decided`` and, from the second validation on, ``alpha_changed``), so the
      evaluator's stats, TensorBoard and MLflow handlers attached after this one log them;
    - write the per-module figures to TensorBoard as ``{tag}/{position}/{kind}/{entropy|margin|none_share|decided|
      changed}`` at the trainer's epoch (one position ``shared`` for a non-synchronous search);
    - log one line with the verdict.

    Attach it before the handlers that log the metrics. Its state (``state_dict`` / ``load_state_dict``: the best
    operations of the last validation) goes into the search checkpoint, so "changed" is right after a resume.
    :class:`AlphaHeatmapSaver`, :class:`GenotypeSaver` and :class:`BestGenotypeSaver` given this handler reuse its
    result (:meth:`for_epoch`).

    Args:
        network: the searchable network.
        summary_writer: a TensorBoard ``SummaryWriter``; ``None``: no TensorBoard figures.
        rule: the verdict's thresholds (default: the module constants of :mod:`monai_nasscam.networks.diagnostics`).
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
        self.latest: SearchDiagnostics | None = None

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def compute(self, epoch: int) -> SearchDiagnostics:
        """The diagnostics of the current alphas at ``epoch``, against the last recorded validation (not recorded)."""
        previous = self.previous if self.previous_epoch < epoch else None
        return search_diagnostics(self.network, previous=previous, rule=self.rule, epoch=epoch)

    def for_epoch(self, epoch: int) -> SearchDiagnostics:
        """The diagnostics this handler recorded at ``epoch`` or, if it did not, freshly computed ones."""
        if self.latest is not None and self.latest.epoch == epoch:
            return self.latest
        return self.compute(epoch)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        diagnostics = self.compute(epoch)
        engine.state.metrics.update(diagnostics.metrics(self.metric_prefix))
        if self._writer is not None:
            self.write(diagnostics, epoch)
        self.latest = diagnostics
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
        self.latest = None

    def record(self, epoch: int) -> dict[str, Any]:
        """The genotype's ``search`` section at ``epoch``: the diagnostics' figures and verdict, and ``settings``."""
        record = self.for_epoch(epoch).to_dict()
        if self.settings:
            record["settings"] = dict(self.settings)
        return record


def _plain(value: Any) -> Any:
    """A setting as plain JSON values (numbers as floats, sequences as lists), so saved and given values compare."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _search_record(source: SearchDiagnosticsHandler | None, network: nn.Module, epoch: int) -> dict[str, Any]:
    """The ``search`` section of a genotype saved at ``epoch`` (see :meth:`SearchDiagnosticsHandler.record`)."""
    return source.record(epoch) if source is not None else _diagnostics_at(None, network, epoch).to_dict()


def _diagnostics_at(source: SearchDiagnosticsHandler | None, network: nn.Module, epoch: int) -> SearchDiagnostics:
    return source.for_epoch(epoch) if source is not None else search_diagnostics(network, epoch=epoch)


class AlphaHeatmapSaver:
    """At each validation (attach to the evaluator; its epoch is the trainer's), save the alpha heatmap
    (:func:`plot_alpha_heatmap`, titled with the epoch and the verdict) as
    ``output_dir/alpha/alpha_epoch{epoch:04d}.png`` and as ``output_dir/alpha_heatmap.png`` (the latest).

    Args:
        network: the searchable network.
        output_dir: the run folder.
        latest_name: file name of the latest figure under ``output_dir`` (None: no copy).
        history_dir: sub-folder of the per-epoch figures (None: none kept).
        dpi: resolution of the PNG.
        diagnostics: the :class:`SearchDiagnosticsHandler` of the same evaluator, whose verdict (with the changed
            count) the title shows; default: the verdict is computed without a previous validation.
    """

    def __init__(
        self,
        network: nn.Module,
        output_dir: str | os.PathLike,
        latest_name: str | None = "alpha_heatmap.png",
        history_dir: str | None = "alpha",
        dpi: int = 110,
        diagnostics: SearchDiagnosticsHandler | None = None,
    ) -> None:
        self.network = network
        self.output_dir = Path(output_dir)
        self.latest_name = latest_name
        self.history_dir = history_dir
        self.dpi = int(dpi)
        self.diagnostics = diagnostics

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def save(self, epoch: int) -> Path:
        """Render and write the figure for ``epoch``; returns the path written."""
        diagnostics = _diagnostics_at(self.diagnostics, self.network, epoch)
        fig = plot_alpha_heatmap(self.network, title=f"softmax(alpha), epoch {epoch}", diagnostics=diagnostics)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.history_dir:
            path = self.output_dir / self.history_dir / f"alpha_epoch{epoch:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = self.output_dir / (self.latest_name or "alpha_heatmap.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=self.dpi)
        if self.latest_name and path.name != self.latest_name:
            with atomic_path(self.output_dir / self.latest_name) as tmp:
                shutil.copyfile(path, tmp)
        return path

    def __call__(self, engine: Engine) -> None:
        self.save(engine.state.epoch)


class GenotypeSaver:
    """At each validation (attach to the evaluator), derive the current genotype and write it to
    ``output_dir/genotypes/genotype_epoch{epoch:04d}.json``; log a one-line summary.

    Args:
        network: the searchable network.
        output_dir: the run folder.
        exclude_none: never choose ``none`` (see :meth:`Genotype.from_model`).
        name: logger name (default: the engine's logger).
        diagnostics: the :class:`SearchDiagnosticsHandler` of the same evaluator, whose figures (with the epoch and
            the changed count) become the genotype's ``search`` section; default: computed from the alphas alone.
    """

    def __init__(
        self,
        network: nn.Module,
        output_dir: str | os.PathLike,
        exclude_none: bool = False,
        name: str | None = None,
        diagnostics: SearchDiagnosticsHandler | None = None,
    ) -> None:
        self.network = network
        self.output_dir = Path(output_dir)
        self.exclude_none = exclude_none
        self._name = name
        self.logger = logging.getLogger(name)
        self.diagnostics = diagnostics

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        search = _search_record(self.diagnostics, self.network, epoch)
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


class SearchValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` (run the validator every ``interval`` epochs of the trainer, at the trainer's
    epoch) that also validates the trainer's final epoch (``state.max_epochs``) when ``interval`` does not divide
    it, so the last epochs of a search are never left out of the choice of the best genotype. The final validation
    runs at the end of that epoch, before the epoch's checkpoint
    (:class:`~monai_nasscam.handlers.ResumableCheckpointSaver` registers its handler when the run starts), so the
    checkpoint holds its result. Attach to the trainer on every rank (a sharded validation needs all of them).

    Args:
        validator: the evaluator.
        interval: validate every N epochs (and at the final epoch).
        epoch_level: only ``True`` (epoch-level validation) is supported.
        exec_at_start: also validate before training (see ``ValidationHandler``).

    Raises:
        ValueError: ``epoch_level`` is false.
    """

    def __init__(self, validator: Any = None, interval: int = 1, epoch_level: bool = True, exec_at_start: bool = False) -> None:
        if not epoch_level:
            raise ValueError("SearchValidationHandler validates at epoch level only (epoch_level=True).")
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        epoch, last = int(engine.state.epoch), engine.state.max_epochs
        if last is not None and epoch == int(last) and epoch % self.interval != 0:
            self(engine)


class BestGenotypeSaver:
    """Keep the genotype of the best validation (the evaluator's key metric, the pooled mean Dice) and write it
    to ``output_path`` (``RUN/genotype.json``) when the run ends, with the ``search`` section of that validation's
    alphas (figures and verdict), and its alpha heatmap next to it (``heatmap_name``); then log the verdict and,
    unless it is ``converged``, what to change. Attach to the trainer; it follows the given evaluator's
    validations. Its state (``state_dict`` / ``load_state_dict``) goes into the search checkpoint so a resumed run
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
        diagnostics: the evaluator's :class:`SearchDiagnosticsHandler` (attached to it before this saver), whose
            figures of the best validation become the ``search`` section; default: computed from the alphas alone.
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
        diagnostics: SearchDiagnosticsHandler | None = None,
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
        self.diagnostics = diagnostics
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
            search = _search_record(self.diagnostics, self.network, epoch)
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
        path = Path(path)
        search = genotype.search or {}
        epoch = search.get("epoch")
        title = f"{self.output_path.name}: softmax(alpha) of " + (f"epoch {epoch}" if epoch is not None else "the final alphas")
        fig = plot_alpha_heatmap(weights=genotype_weights(genotype.alphas), title=title, diagnostics=diagnose_genotype(genotype))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
        return path

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
                for cell in _searchable_cells(block).values():
                    bad = _nonfinite(cell.alpha)
                    if bad is not None:
                        self._fail(engine, f"the alphas of the {cell.kind} cell at {position} hold {bad} values")
        bad = _nonfinite((engine.state.output or {}).get(ARCH_LOSS))
        self._bad_step(engine, "arch", None if bad is None else f"the alpha-step loss is {bad}")
