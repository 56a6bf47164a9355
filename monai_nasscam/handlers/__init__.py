"""Handlers of the search: architecture logging, alpha figures and verdict, genotype saving, selection by
perturbation, the divergence check, the resumable checkpoint."""

from monai_nasscam.errors import SearchDiverged, SearchInterrupted
from monai_nasscam.handlers.architecture import (
    AlphaHeatmapSaver,
    AlphaTensorBoardHandler,
    BestGenotypeSaver,
    DivergenceGuard,
    GenotypeSaver,
    SearchDiagnosticsHandler,
    alpha_weights,
    plot_alpha_heatmap,
    search_diagnostics,
)
from monai_nasscam.handlers.checkpoint import ResumableCheckpointSaver
from monai_nasscam.handlers.selection import PerturbationSelectionHandler, plot_selection_heatmap
from monai_nasscam.handlers.temperature import AlphaTemperatureScheduler

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
    "alpha_weights",
    "plot_alpha_heatmap",
    "plot_selection_heatmap",
    "search_diagnostics",
]
