"""Handlers of the search: architecture logging, alpha figures and verdict, genotype saving, selection by
perturbation, the divergence check, the resumable checkpoint; one handler per module. The handlers that need the
alphas' figures of a validation read them from the evaluator's ``engine.state``, where
:class:`SearchDiagnosticsHandler` leaves them."""

from monai_nasscam.errors import SearchDiverged, SearchInterrupted
from monai_nasscam.handlers.alpha_figure import plot_alpha_heatmap
from monai_nasscam.handlers.alpha_heatmap import AlphaHeatmapSaver
from monai_nasscam.handlers.alpha_tensorboard import AlphaTensorBoardHandler
from monai_nasscam.handlers.best_genotype import BestGenotypeSaver
from monai_nasscam.handlers.checkpoint import ResumableCheckpointSaver
from monai_nasscam.handlers.diagnostics import SearchDiagnosticsHandler
from monai_nasscam.handlers.divergence import DivergenceGuard
from monai_nasscam.handlers.genotype_saver import GenotypeSaver
from monai_nasscam.handlers.selection import PerturbationSelectionHandler, plot_selection_heatmap
from monai_nasscam.handlers.temperature import AlphaTemperatureScheduler
from monai_nasscam.handlers.validation import SearchValidationHandler
from monai_nasscam.networks.alphas import alpha_weights, search_diagnostics

__all__ = [
    "AlphaHeatmapSaver",
    "AlphaTemperatureScheduler",
    "AlphaTensorBoardHandler",
    "BestGenotypeSaver",
    "DivergenceGuard",
    "GenotypeSaver",
    "PerturbationSelectionHandler",
    "ResumableCheckpointSaver",
    "SearchDiagnosticsHandler",
    "SearchDiverged",
    "SearchInterrupted",
    "SearchValidationHandler",
    "alpha_weights",
    "plot_alpha_heatmap",
    "plot_selection_heatmap",
    "search_diagnostics",
]
