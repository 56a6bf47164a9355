"""AlphaHeatmapSaver: the alpha heatmap of every validation of a search, and the latest one, as PNG files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.nn as nn
from ignite.engine import Engine, Events

from monai_nasscam.fileio import atomic_path
from monai_nasscam.handlers.alpha_figure import plot_alpha_heatmap, save_figure
from monai_nasscam.handlers.diagnostics import validation_diagnostics
from monai_nasscam.networks.diagnostics import SearchDiagnostics

__all__ = ["AlphaHeatmapSaver"]


class AlphaHeatmapSaver:
    """At each validation (attach to the evaluator; its epoch is the trainer's), save the alpha heatmap
    (:func:`~monai_nasscam.handlers.alpha_figure.plot_alpha_heatmap`, titled with the epoch and the verdict) as
    ``output_dir/alpha/alpha_epoch{epoch:04d}.png`` and as ``output_dir/alpha_heatmap.png`` (the latest). The verdict
    (with the changed count) is the one a :class:`~monai_nasscam.handlers.SearchDiagnosticsHandler` attached to the
    same evaluator before this saver left in its state; without one it is computed without a previous validation.

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

    def save(self, epoch: int, diagnostics: SearchDiagnostics | None = None) -> Path:
        """Render and write the figure for ``epoch`` (titled with the verdict of ``diagnostics``, default: computed
        from the alphas); returns the path written."""
        fig = plot_alpha_heatmap(self.network, title=f"softmax(alpha), epoch {epoch}", diagnostics=diagnostics)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.history_dir:
            path = self.output_dir / self.history_dir / f"alpha_epoch{epoch:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = self.output_dir / (self.latest_name or "alpha_heatmap.png")
        save_figure(fig, path, dpi=self.dpi)
        if self.latest_name and path.name != self.latest_name:
            with atomic_path(self.output_dir / self.latest_name) as tmp:
                shutil.copyfile(path, tmp)
        return path

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        self.save(epoch, validation_diagnostics(engine.state, self.network, epoch))
