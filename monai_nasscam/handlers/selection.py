"""Selection by perturbation as an ignite handler: after the supernet phase of a search, choose every edge's operation
by masking operations out of the trained supernet (:mod:`monai_nasscam.networks.selection`), write the genotype with
its per-edge importances, intervals and decided flags, its figure, and say how many edges the data decided.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.errors import InputError
from monai_nasscam.handlers.alpha_figure import save_figure
from monai_nasscam.handlers.diagnostics import search_record
from monai_nasscam.networks.cell import EDGES
from monai_nasscam.networks.genotype import Genotype
from monai_nasscam.networks.selection import UNITS, PerturbationSelection, cell_groups
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["PerturbationSelectionHandler", "plot_selection_heatmap", "selection_summary"]

#: crops per masked pass (the selection of the demo's supernet on 8 crops of 64 x 64: 46 s of CPU in passes of 8,
#: 59 s in passes of 4)
EVALUATION_BATCH = 8


class PerturbationSelectionHandler:
    """When the search ends (the trainer's ``COMPLETED``, after the last validation), choose the operations by
    perturbation and write ``output_path`` (``RUN/genotype.json``) and its figure (``heatmap_name`` next to it).

    The evaluation crops are the next ``crops`` crops of the trainer's architecture loader (the held-out images of the
    alpha steps, which the weights never trained on), drawn once and reused for every masked pass; the fine-tuning
    between decisions makes weight steps on the training loader (``trainer.weight_step``, with the run's inferer,
    loss and optimiser). The written genotype's ``alphas`` and ``search`` section are those of the final alphas (the
    figures and the verdict a :class:`~monai_nasscam.handlers.SearchDiagnosticsHandler` left in the ``evaluator``'s
    state at the last validation, when given); its ``selection`` section holds the decisions
    (:meth:`~monai_nasscam.networks.selection.PerturbationSelection.record`), with the FLOPs of the attention cells
    against the argmax of the alphas.

    Args:
        network: the searchable network.
        output_path: the genotype file to write.
        crops: evaluation crops (whole loader batches are drawn until there are at least this many).
        unit: ``"cell"`` (the 6 edges of a cell at a time) or ``"edge"``.
        interval: weight steps of fine-tuning between two decisions (0: none).
        exclude_none: never choose ``none``.
        evaluator: the search's validation evaluator, whose state holds the figures of the final validation (the
            ``search`` section); ``None``: computed from the alphas.
        heatmap_name: file name of the figure next to ``output_path`` (:func:`plot_selection_heatmap`); ``None``: none.
        samples: bootstrap resamples of each edge's intervals.
        confidence: coverage of the intervals.
        seed: seeds the order of the decisions and the bootstrap.
        name: logger name (default: the trainer's logger).

    Raises:
        ValueError: ``crops`` < 2, ``interval`` < 0, an unknown ``unit``.
    """

    def __init__(
        self,
        network: nn.Module,
        output_path: str | os.PathLike,
        crops: int = 8,
        unit: str = "cell",
        interval: int = 1,
        exclude_none: bool = False,
        evaluator: Engine | None = None,
        heatmap_name: str | None = "genotype_heatmap.png",
        samples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if isinstance(crops, bool) or int(crops) < 2:
            raise ValueError(f"selection_crops must be at least 2 (the intervals resample crops), got {crops!r}.")
        if unit not in UNITS:
            raise ValueError(f"selection_unit must be one of {list(UNITS)}, got {unit!r}.")
        if isinstance(interval, bool) or int(interval) < 0:
            raise ValueError(f"selection_interval must be a number of weight steps >= 0, got {interval!r}.")
        self.network = network
        self.output_path = Path(output_path)
        self.crops, self.unit, self.interval = int(crops), unit, int(interval)
        self.exclude_none = bool(exclude_none)
        self.evaluator = evaluator
        self.heatmap_name = heatmap_name
        self.samples, self.confidence, self.seed = int(samples), float(confidence), int(seed)
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        """Run at the trainer's ``COMPLETED``.

        Raises:
            InputError: a run of several processes (each would measure its own crops and decide differently).
        """
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise InputError(
                "selection: perturbation runs in one process (each rank would measure its own crops and decide "
                "differently); search with one process, or with --selection alpha."
            )
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> Path:
        net = unwrap_model(self.network)
        batches = self._evaluation_crops(engine)
        count = sum(int(b[0].shape[0]) for b in batches)
        self.logger.info(
            f"selection by perturbation: {self.unit} at a time, {count} held-out crops, {self.interval} weight steps "
            "between decisions"
        )
        selection = PerturbationSelection(
            net, cell_groups(net), batches,
            forward=lambda x: engine.inferer(x, engine.network),
            loss_function=engine.loss_function,
            finetune=self._finetuner(engine),
            unit=self.unit, interval=self.interval, exclude_none=self.exclude_none,
            samples=self.samples, confidence=self.confidence, seed=self.seed, log=self.logger.info,
        )
        try:
            chosen = selection.run()
        finally:
            selection.release()  # the supernet again (with the fine-tuned weights)
        epoch = int(engine.state.epoch)
        search = search_record(getattr(self.evaluator, "state", None), net, epoch)
        argmax = Genotype.from_model(net, exclude_none=self.exclude_none, search=search)
        ops = {m["position"]: {k: v for k, v in m.items() if k != "position"} for m in argmax.modules}
        genotype = dataclasses.replace(
            argmax,
            modules=[{"position": p, **chosen[p]} for p in ops],
            selection=selection.record(argmax=ops),
        )
        path = genotype.save(self.output_path)
        if self.heatmap_name:
            title = f"{path.name}: selection by perturbation after epoch {epoch}"
            save_figure(plot_selection_heatmap(genotype, title=title), path.parent / self.heatmap_name)
        for line in selection_summary(genotype, path):
            self.logger.info(line)
        return path

    def _evaluation_crops(self, engine: Engine) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Whole batches of the architecture loader until there are ``crops`` crops, regrouped into batches of at most
        :data:`EVALUATION_BATCH` (fewer, larger passes)."""
        inputs, targets, count = [], [], 0
        while count < self.crops:
            batch = engine.next_arch_batch()
            data = engine.prepare_batch(batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)
            inputs.append(_plain(data[0]))
            targets.append(_plain(data[1]))
            count += int(data[0].shape[0])
        x, y = torch.cat(inputs), torch.cat(targets)
        return [(x[i : i + EVALUATION_BATCH], y[i : i + EVALUATION_BATCH]) for i in range(0, count, EVALUATION_BATCH)]

    def _finetuner(self, engine: Engine):
        """``finetune(steps)``: weight steps on the training loader, cycled; the seeds of their dropout follow
        iteration numbers past the end of the search, so they differ from step to step and from the search's."""
        batches: Iterator | None = None
        done = 0

        def finetune(steps: int) -> None:
            nonlocal batches, done
            iteration = engine.state.iteration
            try:
                for _ in range(steps):
                    batch = next(batches, None) if batches is not None else None
                    if batch is None:
                        batches = iter(engine.data_loader)
                        batch = next(batches)
                    done += 1
                    engine.state.iteration = iteration + done
                    engine.weight_step(batch)
            finally:
                engine.state.iteration = iteration

        return finetune


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A MONAI ``MetaTensor`` as a plain tensor (batches of different images' metadata cannot be concatenated)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def selection_summary(genotype: Genotype, path: str | os.PathLike) -> list[str]:
    """The log lines of a genotype chosen by perturbation: how many edges the data decided, the tied edges (which took
    their cheapest tied operation), and the attention's FLOPs against the argmax of the alphas.

    Raises:
        ValueError: the genotype records no selection by perturbation.
    """
    selection = genotype.selection or {}
    if selection.get("method") != "perturbation":
        raise ValueError(f"{path}: the genotype records no selection by perturbation.")
    tied = selection["tied"]
    lines = [
        f"selection by perturbation for {path}: the data decided {selection['decided']} of {selection['edges']} "
        f"edges (the winner's {selection['confidence']:.0%} interval over {selection['crops']} crops above every other "
        f"operation's); {len(tied)} tied edge(s) take their cheapest tied operation"
        + (f": {', '.join(tied)}" if tied else "")
    ]
    flops = selection.get("flops")
    if flops:
        lines.append(
            f"attention cells: {flops['selected'] / 1e6:.2f} MFLOPs per {flops['input']} input, against "
            f"{flops['argmax'] / 1e6:.2f} for the argmax of the alphas ({flops['saved']:.1%} saved); "
            f"{selection['passes']} masked passes in {selection['seconds']:.0f} s ({selection['cpu_seconds']:.0f} s of "
            "CPU, fine-tuning included)"
        )
    return lines


def plot_selection_heatmap(genotype: Genotype, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas) of a selection by perturbation: one panel per module (rows) and cell kind
    (columns), edges x candidate operations, coloured by each operation's mean importance divided by the largest
    absolute one of its edge (purple: removing it hurts; orange: removing it helps; white: no effect). The chosen
    operation is framed in red, solid where the data decided the edge and dashed where it was tied (then the other
    tied operations are framed in grey); a decided edge's label ends in ``*``.

    Raises:
        ValueError: the genotype records no selection by perturbation.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    selection = genotype.selection or {}
    if selection.get("method") != "perturbation":
        raise ValueError("plot_selection_heatmap needs a genotype chosen by perturbation.")
    records: Mapping[str, Mapping[str, list]] = selection["modules"]
    positions = [m["position"] for m in genotype.modules]
    kinds = [k for k in genotype.modules[0] if k != "position"]
    fig = Figure(figsize=(4.6 * len(kinds) + 0.9, 1.55 * len(positions) + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(positions), len(kinds), squeeze=False)
    image = None
    for row, position in enumerate(positions):
        for col, kind in enumerate(kinds):
            ax, edges = axes[row][col], records[position][kind]
            names = list(edges[0]["importance"])
            mean = torch.tensor([[r["importance"][n]["mean"] for n in names] for r in edges], dtype=torch.float64)
            scale = mean.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            image = ax.imshow(
                (mean / scale).numpy(), cmap="PuOr_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
            )
            for e, record in enumerate(edges):
                for op in record["tied"]:
                    if op != record["op"]:
                        corner = (names.index(op) - 0.5, e - 0.5)
                        ax.add_patch(Rectangle(corner, 1, 1, fill=False, edgecolor="0.45", linewidth=1.0))
                style = "solid" if record["decided"] else (0, (2, 1.5))
                ax.add_patch(Rectangle((names.index(record["op"]) - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red",
                                       linewidth=1.6, linestyle=style))
            labels = [f"n{s}->n{t}" + (" *" if r["decided"] else "") for (s, t), r in zip(EDGES, edges)]
            ax.set_yticks(range(len(EDGES)), labels, fontsize=6)
            last = row == len(positions) - 1
            ax.set_xticks(range(len(names)), names if last else [""] * len(names), fontsize=6, rotation=45)
            decided = sum(r["decided"] for r in edges)
            ax.set_title(f"{position} {kind.upper()}  decided {decided}/{len(edges)}", fontsize=7)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.4, aspect=30)
        bar.set_label("importance / largest |importance| of the edge", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    flops = selection.get("flops")
    cost = f"; attention FLOPs {flops['saved']:.0%} below the alphas' argmax" if flops else ""
    summary = (
        f"the data decided {selection['decided']} of {selection['edges']} edges "
        f"({selection['confidence']:.0%} intervals over {selection['crops']} crops); red: the chosen op, solid = decided, dashed = tied (cheapest of the grey "
        f"and red){cost}"
    )
    width = int(14 * fig.get_figwidth())
    fig.suptitle("\n".join([title or "selection by perturbation", textwrap.fill(summary, width)]), fontsize=8)
    return fig
