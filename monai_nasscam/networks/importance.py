"""The statistics of a selection by perturbation, edge by edge (:mod:`monai_nasscam.networks.selection` runs it):
masking an operation out of an edge's mixture, the importances' bootstrap interval, the decision with its tie rule
(the cheapest tied operation by FLOPs), the record each edge leaves in a genotype's ``selection`` section, and the
check of that section when a genotype is loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_nasscam.networks.cell import EDGES, NASAttentionCell, edge_label
from monai_nasscam.networks.ops import OPS

__all__ = [
    "op_flops", "cell_flops", "masked", "bootstrap_interval", "EdgeDecision", "decide_edge", "EdgeRecord",
    "check_selection_record",
]


def op_flops(kind: str, name: str, in_channels: int, out_channels: int, spatial: Sequence[int]) -> int:
    """Floating-point operations of one candidate's convolution on one input: ``2 * k^d * C_in * C_out * prod(spatial)``
    (a multiply and an add per tap; the batch norm and the activation, the same for every candidate, are left out).

    Args:
        kind: ``"sam"`` or ``"cam"``.
        name: a candidate of ``kind`` (:data:`~monai_nasscam.networks.ops.OPS`); ``none`` costs 0.
        in_channels: channels of the edge's source node.
        out_channels: channels of the edge's target node.
        spatial: the node's spatial size (e.g. ``(64, 64)``; ``(C,)`` for a channel cell, whose 1-D convolutions slide
            along the ``C`` channels of the pooled vector).

    Raises:
        ValueError: an unknown kind or operation.
    """
    if kind not in OPS or name not in OPS[kind]:
        raise ValueError(f"unknown {kind} operation {name!r}.")
    k = OPS[kind][name].kernel_size
    pixels = math.prod(int(s) for s in spatial)
    return 0 if k == 0 else 2 * k ** len(spatial) * int(in_channels) * int(out_channels) * pixels


def cell_flops(cell: NASAttentionCell, spatial: Sequence[int], ops: Sequence[str]) -> int:
    """FLOPs of a cell with one operation per edge (``ops`` in edge order) on one input of size ``spatial``."""
    return sum(
        op_flops(cell.kind, op, cell.node_channels[s], cell.node_channels[t], spatial) for op, (s, t) in zip(ops, EDGES)
    )


def bootstrap_interval(
    values: torch.Tensor, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and percentile-bootstrap interval of the mean of each column, resampling the rows (the crops).

    Args:
        values: ``(N, K)``: one row per crop, one column per candidate (e.g. loss increases); ``N >= 1``.
        samples: bootstrap resamples; every column uses the same resampled rows (the candidates stay paired).
        confidence: coverage of the interval, in (0, 1).
        seed: seeds the resampling (the interval is reproducible).

    Returns:
        ``(mean, low, high)``, float64 tensors of shape ``(K,)``.

    Raises:
        ValueError: ``values`` is not 2-D with at least one row, holds non-finite values, or ``confidence`` is not in
            (0, 1).
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 2 or v.shape[0] < 1:
        raise ValueError(f"values must have shape (crops >= 1, candidates), got {tuple(v.shape)}.")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("values hold non-finite numbers (a loss was NaN or infinite).")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    g = torch.Generator().manual_seed(int(seed))
    rows = torch.randint(v.shape[0], (int(samples), v.shape[0]), generator=g)
    means = v[rows].mean(dim=1)  # (samples, K)
    tail = (1.0 - confidence) / 2.0
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64), dim=0)
    return v.mean(dim=0), low, high


@dataclass(frozen=True)
class EdgeDecision:
    """The choice on one edge.

    Attributes:
        op: the chosen operation: the winner when ``decided``, else the tied candidate with the fewest FLOPs.
        winner: the candidate with the largest mean importance.
        decided: the winner's interval lies above every other allowed candidate's.
        tied: the allowed candidates whose interval reaches the winner's (the winner first; only it when decided).
    """

    op: str
    winner: str
    decided: bool
    tied: tuple[str, ...]


def decide_edge(
    names: Sequence[str],
    mean: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    flops: Sequence[int],
    allowed: Sequence[bool] | None = None,
) -> EdgeDecision:
    """Choose an edge's operation from its candidates' importances (see the module docstring).

    Args:
        names: the candidates.
        mean: mean importance of each candidate.
        low: lower end of each candidate's interval.
        high: upper end of each candidate's interval.
        flops: cost of each candidate; ties among tied candidates go to the first in ``names`` order.
        allowed: which candidates may be chosen (e.g. not ``none`` with ``exclude_none``); default all.

    Raises:
        ValueError: lengths differ or no candidate is allowed.
    """
    k = len(names)
    allowed = [True] * k if allowed is None else list(allowed)
    if not (len(mean) == len(low) == len(high) == len(flops) == len(allowed) == k):
        raise ValueError("names, mean, low, high, flops and allowed must have one entry per candidate.")
    choices = [i for i in range(k) if allowed[i]]
    if not choices:
        raise ValueError("no candidate is allowed on this edge.")
    winner = max(choices, key=lambda i: (float(mean[i]), -i))
    tied = [winner] + [i for i in choices if i != winner and float(high[i]) >= float(low[winner])]
    op = winner if len(tied) == 1 else min(tied, key=lambda i: (int(flops[i]), i))
    return EdgeDecision(names[op], names[winner], len(tied) == 1, tuple(names[i] for i in tied))


def masked(weights: torch.Tensor, edge: int, op: int) -> torch.Tensor:
    """Mixing weights ``(6, K)`` with operation ``op`` of ``edge`` masked out: its weight 0, the edge's other weights
    rescaled to sum to 1 (the edge keeps its scale)."""
    out = weights.clone()
    out[edge, op] = 0.0
    out[edge] = out[edge] / out[edge].sum()
    return out


@dataclass
class EdgeRecord:
    """What an edge's decision leaves in the genotype (:meth:`to_dict`): the decision, the step it was made in, each
    candidate's importance ``(mean, low, high)`` and, when measured, the pooled Dice with each candidate masked."""

    decision: EdgeDecision
    step: int
    importance: dict[str, tuple[float, float, float]]
    dice: dict[str, float | None] | None

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        out: dict[str, Any] = {
            "op": d.op,
            "decided": d.decided,
            "winner": d.winner,
            "tied": list(d.tied),
            "step": self.step,
            "importance": {
                n: {"mean": _r(m), "low": _r(lo), "high": _r(hi)} for n, (m, lo, hi) in self.importance.items()
            },
        }
        if self.dice is not None:
            out["dice"] = {n: None if v is None else _r(v) for n, v in self.dice.items()}
        return out


def _r(value: float) -> float:
    """6 significant digits (importances are differences of losses, often far below 1)."""
    return float(f"{float(value):.6g}")


def check_selection_record(selection: Any, modules: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> None:
    """Check a genotype's ``selection`` section against its ``modules``.

    Args:
        selection: the section; ``method`` must be ``alpha``, ``perturbation`` or ``random``.
        modules: the genotype's modules (``{"position": ..., kind: [6 ops]}``).
        kinds: the cell kinds of the genotype's attention.

    Raises:
        ValueError: an unknown method, a non-finite number, or for ``perturbation`` a module, kind or edge without its
            record, a record naming another operation than the genotype, a ``decided`` that is not a boolean, or an
            importance missing for a candidate or not three numbers.
    """
    if not isinstance(selection, Mapping) or selection.get("method") not in SELECTION_METHODS:
        got = selection.get("method") if isinstance(selection, Mapping) else type(selection).__name__
        raise ValueError(f"'selection': unknown method {got!r}; expected one of {list(SELECTION_METHODS)}.")
    if not _finite(selection):
        raise ValueError("'selection' holds non-finite numbers.")
    if selection["method"] != "perturbation":
        return
    records = selection.get("modules")
    for module in modules:
        position = module["position"]
        for kind in kinds:
            cell = (records.get(position) or {}).get(kind) if isinstance(records, Mapping) else None
            if not isinstance(cell, list) or len(cell) != len(EDGES):
                raise ValueError(f"'selection': module {position} {kind!r} must record {len(EDGES)} edges, got {cell!r}.")
            for e, record in enumerate(cell):
                where = f"'selection': module {position} {kind} edge {e} ({edge_label(e)})"
                if not isinstance(record, Mapping) or record.get("op") != module[kind][e]:
                    got = record.get("op") if isinstance(record, Mapping) else record
                    raise ValueError(f"{where} records op {got!r}, the genotype has {module[kind][e]!r}.")
                if not isinstance(record.get("decided"), bool):
                    raise ValueError(f"{where}: 'decided' must be true or false, got {record.get('decided')!r}.")
                importance = record.get("importance")
                if not isinstance(importance, Mapping) or sorted(importance) != sorted(OPS[kind]):
                    raise ValueError(f"{where}: 'importance' must give every {kind} candidate {list(OPS[kind])}.")
                for name, stat in importance.items():
                    values = [stat.get(k) for k in ("mean", "low", "high")] if isinstance(stat, Mapping) else [None]
                    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                        raise ValueError(f"{where}: the importance of {name} must be numbers mean, low, high.")


#: how a genotype's operations were chosen (its ``selection.method``).
SELECTION_METHODS = ("alpha", "perturbation", "random")


def _finite(value: Any) -> bool:
    """Whether every number in a nested structure of dicts and lists is finite (other values pass)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True
