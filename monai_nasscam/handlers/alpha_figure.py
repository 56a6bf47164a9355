"""The alpha heatmap: softmax(alpha) of a searchable network, or recorded in a genotype, as a figure (one panel per
module and cell kind), and the atomic writing of a figure."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.fileio import atomic_path
from monai_nasscam.networks.alphas import alpha_weights, shares_alphas
from monai_nasscam.networks.cell import EDGES, edge_label
from monai_nasscam.networks.diagnostics import SearchDiagnostics, diagnose

__all__ = ["plot_alpha_heatmap", "save_figure"]


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
        diagnostics = diagnose(weights, shared=shares_alphas(network) if network is not None else None)
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
            ax.set_yticks(range(len(EDGES)), [edge_label(e) for e in range(len(EDGES))], fontsize=6)
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
    width = int(14 * fig.get_figwidth())  # characters of the 8-point title per line
    lines = [title or "softmax(alpha)", textwrap.fill(f"{diagnostics.summary()}; red frame: the chosen op", width)]
    fig.suptitle("\n".join(lines), fontsize=8)
    return fig


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` atomically (a temporary file, then a rename); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return path
