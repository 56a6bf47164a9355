"""Handlers of the search: architecture logging, alpha figures, genotype saving, the resumable checkpoint."""

from monai_nasscam.handlers.architecture import (
    AlphaHeatmapSaver,
    AlphaTensorBoardHandler,
    BestGenotypeSaver,
    GenotypeSaver,
    alpha_weights,
    plot_alpha_heatmap,
)
from monai_nasscam.handlers.checkpoint import SearchCheckpointer, SearchInterrupted

__all__ = [
    "AlphaHeatmapSaver",
    "AlphaTensorBoardHandler",
    "BestGenotypeSaver",
    "GenotypeSaver",
    "SearchCheckpointer",
    "SearchInterrupted",
    "alpha_weights",
    "plot_alpha_heatmap",
]
