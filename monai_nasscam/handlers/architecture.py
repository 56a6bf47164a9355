"""Handlers that record the architecture during a search: softmax(alpha) to TensorBoard, an alpha heatmap
figure, the current genotype at each validation and the best genotype at the end of the run.

They follow MONAI's handler habits: small classes configured in ``__init__`` and hooked to an engine by
``attach(engine)``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.engines.bilevel import ARCH_LOSS, BilevelEvents
from monai_nasscam.networks.cell import EDGES, NASAttentionCell
from monai_nasscam.networks.genotype import Genotype, attention_blocks

__all__ = [
    "alpha_weights",
    "plot_alpha_heatmap",
    "AlphaTensorBoardHandler",
    "AlphaHeatmapSaver",
    "GenotypeSaver",
    "BestGenotypeSaver",
]


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


def alpha_weights(network: nn.Module) -> dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]]:
    """``{position: {kind: (candidate names, softmax(alpha) of shape (6, n_candidates))}}`` of a searchable network,
    positions in ``POSITIONS`` order, kinds ``"sam"`` / ``"cam"`` as the attention has them."""
    out: dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]] = {}
    for position, block in attention_blocks(_unwrap(network)).items():
        cells = {m.kind: m for m in block.modules() if isinstance(m, NASAttentionCell) and m.searchable}
        if not cells:
            raise ValueError(f"the attention block at {position} has no searchable cell; is this a search network?")
        out[position] = {
            kind: (tuple(cells[kind].candidates), cells[kind].op_weights().detach().float().cpu())
            for kind in ("sam", "cam")
            if kind in cells
        }
    return out


def _edge_label(e: int) -> str:
    s, t = EDGES[e]
    return f"n{s}->n{t}"


def plot_alpha_heatmap(network: nn.Module, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state) of softmax(alpha): one heatmap per module (rows, in
    ``POSITIONS`` order) and cell kind (columns), edges x candidate operations, the chosen (argmax) op of
    each edge framed in red. Each column has its own colour scale (from its smallest to its largest weight over
    the 8 modules), so the early, nearly uniform weights of a search still show their differences."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    weights = alpha_weights(network)
    kinds = list(next(iter(weights.values())).keys())
    fig = Figure(figsize=(4.6 * len(kinds) + 0.6, 1.55 * len(weights) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(weights), len(kinds), squeeze=False)
    for col, kind in enumerate(kinds):
        values = torch.stack([per[kind][1] for per in weights.values()])
        vmin, vmax = float(values.min()), float(values.max())
        if vmax - vmin < 1e-6:
            vmin, vmax = vmin - 1e-3, vmax + 1e-3
        image = None
        for row, (position, per) in enumerate(weights.items()):
            ax = axes[row][col]
            names, w = per[kind]
            image = ax.imshow(w.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
            for e, choice in enumerate(w.argmax(dim=-1).tolist()):
                ax.add_patch(Rectangle((choice - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
            ax.set_yticks(range(len(EDGES)), [_edge_label(e) for e in range(len(EDGES))], fontsize=6)
            last = row == len(weights) - 1
            ax.set_xticks(range(len(names)), names if last else [""] * len(names), fontsize=6, rotation=45)
            ax.set_title(f"{position} {kind.upper()}", fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=[axes[r][col] for r in range(len(weights))], shrink=0.4, aspect=30, label=f"{kind.upper()} softmax(alpha)")
    if title:
        fig.suptitle(title, fontsize=10)
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


class AlphaHeatmapSaver:
    """At each validation (attach to the evaluator; its epoch is the trainer's), save the alpha heatmap
    (:func:`plot_alpha_heatmap`) as ``output_dir/alpha/alpha_epoch{epoch:04d}.png`` and as
    ``output_dir/alpha_heatmap.png`` (the latest).

    Args:
        network: the searchable network.
        output_dir: the run folder.
        latest_name: file name of the latest figure under ``output_dir`` (None: no copy).
        history_dir: sub-folder of the per-epoch figures (None: none kept).
        dpi: resolution of the PNG.
    """

    def __init__(
        self,
        network: nn.Module,
        output_dir: str | os.PathLike,
        latest_name: str | None = "alpha_heatmap.png",
        history_dir: str | None = "alpha",
        dpi: int = 110,
    ) -> None:
        self.network = network
        self.output_dir = Path(output_dir)
        self.latest_name = latest_name
        self.history_dir = history_dir
        self.dpi = int(dpi)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def save(self, epoch: int) -> Path:
        """Render and write the figure for ``epoch``; returns the path written."""
        fig = plot_alpha_heatmap(self.network, title=f"softmax(alpha), epoch {epoch}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.history_dir:
            path = self.output_dir / self.history_dir / f"alpha_epoch{epoch:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = self.output_dir / (self.latest_name or "alpha_heatmap.png")
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=self.dpi)
        os.replace(tmp, path)
        if self.latest_name and path.name != self.latest_name:
            latest = self.output_dir / self.latest_name
            tmp_latest = latest.with_name(f".{latest.name}.tmp.png")
            shutil.copyfile(path, tmp_latest)
            os.replace(tmp_latest, latest)
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
    """

    def __init__(
        self, network: nn.Module, output_dir: str | os.PathLike, exclude_none: bool = False, name: str | None = None
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
        genotype = Genotype.from_model(_unwrap(self.network), exclude_none=self.exclude_none)
        path = genotype.save(self.output_dir / "genotypes" / f"genotype_epoch{engine.state.epoch:04d}.json")
        self.logger.info(f"epoch {engine.state.epoch} genotype ({path.name}): {summarize(genotype)}")


def summarize(genotype: Genotype) -> str:
    """A compact text form of a genotype, e.g. ``down1 sam[conv3 none ...] cam[...] | down2 ...``."""
    parts = []
    for module in genotype.modules:
        ops = " ".join(f"{k}[{' '.join(v)}]" for k, v in module.items() if k != "position")
        parts.append(f"{module['position']} {ops}")
    if not genotype.synchronous:
        return f"shared: {parts[0].split(' ', 1)[1]}"
    return " | ".join(parts)


class BestGenotypeSaver:
    """Keep the genotype of the best validation (the evaluator's key metric, the pooled mean Dice) and write it
    to ``output_path`` (``RUN/genotype.json``) when the run ends. Attach to the trainer; it follows the given
    evaluator's validations. With no validation at all, the final genotype is written (with a warning). Its state
    (``state_dict`` / ``load_state_dict``) goes into the search checkpoint so a resumed run keeps the best.

    Args:
        network: the searchable network.
        evaluator: the validation evaluator.
        output_path: the genotype file to write.
        metric_name: metric to maximise; default the evaluator's key metric.
        exclude_none: never choose ``none`` (see :meth:`Genotype.from_model`).
        name: logger name (default: the trainer's logger).
    """

    def __init__(
        self,
        network: nn.Module,
        evaluator: Engine,
        output_path: str | os.PathLike,
        metric_name: str | None = None,
        exclude_none: bool = False,
        name: str | None = None,
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

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
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
        if self.best_metric is None or value > self.best_metric:
            self.best_metric = value
            self.best_epoch = int(evaluator.state.epoch)
            self.best_genotype = Genotype.from_model(_unwrap(self.network), exclude_none=self.exclude_none).to_dict()
            self.logger.info(f"best genotype so far at epoch {self.best_epoch}: {name}={value:.4f}")

    def write(self, engine: Engine | None = None) -> Path:
        """Write the best genotype (or the current one if nothing was validated)."""
        if self.best_genotype is None:
            self.logger.warning("no validation ran during the search; writing the final genotype instead of the best.")
            genotype = Genotype.from_model(_unwrap(self.network), exclude_none=self.exclude_none)
        else:
            genotype = Genotype.from_dict(self.best_genotype, source="best genotype")
        path = genotype.save(self.output_path)
        self.logger.info(f"genotype of epoch {self.best_epoch} (best validation {self.best_metric}) written to {path}")
        return path

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "best_genotype": self.best_genotype}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = state.get("best_metric")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_genotype = state.get("best_genotype")

