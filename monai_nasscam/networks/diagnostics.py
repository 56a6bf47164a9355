"""Figures of softmax(alpha) and the verdict they give (:mod:`monai_nasscam.networks.verdict`: did the search choose?).

A search whose alphas never left uniform still derives a genotype (the argmax of near-equal weights), so the
figures below say how far the alphas are from uniform and whether the chosen operations are stable:

- **entropy**: the normalised entropy of an edge's softmax weights ``p`` over its ``K`` candidates,
  ``-sum(p ln p) / ln K`` in [0, 1] (1: uniform, 0: one candidate holds all the weight);
- **margin**: ``p1 - p2``, the weight of the best candidate minus that of the second best, in [0, 1];
- **none share**: the share of edges whose best candidate is ``none``;
- **changed**: how many edges that were decided at the previous validation have a different best candidate now
  (the flip of an edge that was undecided then, an argmax of near-equal weights, is no change of a choice);
- **decided**: the share of edges whose margin is at least :data:`~monai_nasscam.networks.verdict.DECIDED_MARGIN`.

Edges are counted once per distinct cell: in a shared search the 8 modules hold the same alphas, so a kind
has 6 edges, not 48. The weights come from a network or a genotype through :mod:`monai_nasscam.networks.alphas`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from monai_nasscam.networks.verdict import (  # noqa: F401  (the verdict's names, importable from here as before)
    COLLAPSE_MIN_EDGES,
    COLLAPSE_OP_SHARE,
    COLLAPSED,
    CONVERGED,
    CONVERGED_DECIDED_SHARE,
    CONVERGED_MAX_CHANGED_SHARE,
    DECIDED_MARGIN,
    NOT_CONVERGED,
    STABILITY_UNCHECKED,
    VERDICTS,
    VerdictRule,
    _unchecked_reason,
    stability_checked,
)

__all__ = [
    "Weights",
    "CellDiagnostics",
    "SearchDiagnostics",
    "edge_figures",
    "diagnose",
]

#: ``{position: {kind: (candidate names, softmax weights (6, K))}}``, as
#: :func:`~monai_nasscam.networks.alphas.alpha_weights` returns.
Weights = Mapping[str, Mapping[str, tuple[Sequence[str], Any]]]


def edge_figures(weights: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-edge figures of softmax weights.

    Args:
        weights: softmax(alpha) of one cell, shape ``(E, K)`` (rows sum to 1), a tensor or nested lists.

    Returns:
        ``(entropy, margin, best)``: the normalised entropy ``-sum(p ln p) / ln K`` (float64, ``(E,)``, in
        [0, 1]), the margin ``p1 - p2`` (float64, ``(E,)``) and the index of the best candidate (int64, ``(E,)``).

    Raises:
        ValueError: when the weights are not a 2-D array with at least 2 candidates, or hold non-finite values.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"softmax weights must have shape (edges, candidates >= 2), got {tuple(w.shape)}.")
    if not torch.isfinite(w).all():
        raise ValueError("softmax weights hold non-finite values (the search diverged).")
    p = w.clamp(min=0.0)
    entropy = -(torch.xlogy(p, p)).sum(-1) / math.log(w.shape[1])
    top = torch.topk(w, 2, dim=-1).values
    return entropy.clamp(0.0, 1.0), top[:, 0] - top[:, 1], w.argmax(-1)


@dataclass
class CellDiagnostics:
    """The figures of one cell (a module's SAM or CAM cell).

    Attributes:
        entropy: normalised entropy per edge, in [0, 1].
        margin: ``p1 - p2`` per edge.
        best: the best (argmax) candidate per edge.
        changed: edges decided at the previous validation whose best candidate differs now; ``None`` without one.
        decided: edges with ``margin >= rule.decided_margin``.
    """

    entropy: tuple[float, ...]
    margin: tuple[float, ...]
    best: tuple[str, ...]
    changed: int | None
    decided: int

    @property
    def edges(self) -> int:
        return len(self.best)

    @property
    def mean_entropy(self) -> float:
        return sum(self.entropy) / len(self.entropy)

    @property
    def mean_margin(self) -> float:
        return sum(self.margin) / len(self.margin)

    @property
    def none_share(self) -> float:
        return sum(b == "none" for b in self.best) / len(self.best)

    def to_dict(self) -> dict[str, Any]:
        """The per-cell figures of the genotype's ``search`` section (means over the cell's edges)."""
        return {
            "entropy": round(self.mean_entropy, 6),
            "margin": round(self.mean_margin, 6),
            "none_share": round(self.none_share, 6),
            "decided": round(self.decided / self.edges, 6),
            "changed": self.changed,
            "best": list(self.best),
        }


@dataclass
class SearchDiagnostics:
    """The figures of a network's alphas and the verdict (see the module docstring).

    Attributes:
        verdict: one of :data:`VERDICTS`.
        reasons: why, in words (one sentence per reason).
        cells: ``{position: {kind: CellDiagnostics}}``, every position (a shared search repeats the same cell).
        shared: one set of alphas for all modules (a non-synchronous search); edges are counted once.
        edges: distinct edges over the network.
        entropy: mean normalised entropy over the distinct edges.
        margin: mean margin over the distinct edges.
        none_share: share of the distinct edges whose best operation is ``none``.
        decided: share of the distinct edges that are decided.
        changed: distinct edges, decided at the previous validation, whose best operation changed since (``None``:
            no previous validation).
        previous_decided: share of the distinct edges decided at the previous validation (``None``: no previous
            validation, or not recorded).
        dominant: per kind, the operation that is the decided best on most distinct edges and its share of all the
            kind's distinct edges (``(None, 0.0)`` when no edge of the kind is decided).
        rule: the thresholds used.
        epoch: the (trainer) epoch of the alphas, when known.
    """

    verdict: str
    reasons: tuple[str, ...]
    cells: dict[str, dict[str, CellDiagnostics]]
    shared: bool
    edges: int
    entropy: float
    margin: float
    none_share: float
    decided: float
    changed: int | None
    dominant: dict[str, tuple[str | None, float]]
    rule: VerdictRule = field(default_factory=VerdictRule)
    epoch: int | None = None
    previous_decided: float | None = None

    @property
    def changed_share(self) -> float | None:
        return None if self.changed is None else self.changed / self.edges

    @property
    def stability_checked(self) -> bool:
        """Whether the decided choices were compared with a previous validation that had decided edges
        (:func:`~monai_nasscam.networks.verdict.stability_checked`)."""
        return stability_checked(self.changed, self.previous_decided, self.rule)

    def best_ops(self) -> dict[str, dict[str, list[str]]]:
        """``{position: {kind: [best op per edge]}}``, decided or not."""
        return {p: {k: list(c.best) for k, c in per.items()} for p, per in self.cells.items()}

    def decided_ops(self) -> dict[str, dict[str, list[str | None]]]:
        """``{position: {kind: [best op per edge, None where the edge is undecided]}}``: the ``previous`` of the
        next :func:`diagnose` (only the edges decided now can count as changed then)."""
        return {
            p: {k: [b if m >= self.rule.decided_margin else None for b, m in zip(c.best, c.margin)] for k, c in per.items()}
            for p, per in self.cells.items()
        }

    def metrics(self, prefix: str = "alpha_") -> dict[str, float]:
        """The scalar aggregates, e.g. for ``engine.state.metrics``: ``{prefix}entropy``, ``{prefix}margin``,
        ``{prefix}none_share``, ``{prefix}decided`` (shares and means in [0, 1]) and, from the second validation on,
        ``{prefix}changed`` (a count of edges)."""
        out = {
            f"{prefix}entropy": self.entropy,
            f"{prefix}margin": self.margin,
            f"{prefix}none_share": self.none_share,
            f"{prefix}decided": self.decided,
        }
        if self.changed is not None:
            out[f"{prefix}changed"] = float(self.changed)
        return out

    def summary(self) -> str:
        """One line: the verdict, the aggregates and the reasons."""
        changed = "" if self.changed is None else f", changed {self.changed}/{self.edges}"
        line = (
            f"{self.verdict}: decided {self.decided:.0%} of {self.edges} edges, entropy {self.entropy:.3f}, "
            f"margin {self.margin:.3f}, none {self.none_share:.0%}{changed}"
        )
        return f"{line} ({'; '.join(self.reasons)})" if self.reasons else line

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a genotype's ``search`` section)."""
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "epoch": self.epoch,
            "shared": self.shared,
            "edges": self.edges,
            "entropy": round(self.entropy, 6),
            "margin": round(self.margin, 6),
            "none_share": round(self.none_share, 6),
            "decided": round(self.decided, 6),
            "changed": self.changed,
            "previous_decided": None if self.previous_decided is None else round(self.previous_decided, 6),
            "dominant": {k: {"op": op, "share": round(share, 6)} for k, (op, share) in self.dominant.items()},
            "modules": {p: {k: c.to_dict() for k, c in per.items()} for p, per in self.cells.items()},
            "rule": self.rule.to_dict(),
        }


def _detect_shared(weights: Weights) -> bool:
    """Every position holds exactly the same weights (a shared search)."""
    per = [{k: torch.as_tensor(w) for k, (_, w) in kinds.items()} for kinds in weights.values()]
    first = per[0]
    return len(per) > 1 and all(p.keys() == first.keys() and all(torch.equal(p[k], first[k]) for k in p) for p in per[1:])


def diagnose(
    weights: Weights,
    previous: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    rule: VerdictRule | None = None,
    shared: bool | None = None,
    epoch: int | None = None,
    changed: int | None = None,
    previous_decided: float | None = None,
) -> SearchDiagnostics:
    """The figures and the verdict of a network's softmax(alpha).

    Args:
        weights: ``{position: {kind: (candidate names, softmax weights (6, K))}}``
            (:func:`~monai_nasscam.networks.alphas.alpha_weights`).
        previous: the best operation per edge at the previous validation, ``{position: {kind: [names]}}``
            (:meth:`SearchDiagnostics.decided_ops`); an edge given as ``None`` was undecided then and is never
            counted as changed. ``None``: no previous validation, nothing is counted as changed.
        rule: the thresholds; default :class:`VerdictRule` with the module's constants.
        shared: whether all modules share one set of alphas (counted once); ``None``: detected (every position
            holds the same weights).
        epoch: recorded in the result.
        changed: with ``previous=None``, the changed count recorded elsewhere (a genotype's ``search`` section),
            used in the verdict as if it came from a previous validation; ignored when ``previous`` is given.
        previous_decided: with ``previous=None``, the share of the edges decided at the previous validation recorded
            with ``changed`` (:func:`~monai_nasscam.networks.verdict.stability_checked`); ignored when ``previous`` is given (counted from it).

    Returns:
        a :class:`SearchDiagnostics`.

    Raises:
        ValueError: no cells, or weights with non-finite values (the message names the position and kind).
    """
    rule = rule or VerdictRule()
    if not weights or not any(weights.values()):
        raise ValueError("no alphas to diagnose: the network has no searchable cells.")
    shared = _detect_shared(weights) if shared is None else bool(shared)
    cells: dict[str, dict[str, CellDiagnostics]] = {}
    decided_by_cell: dict[tuple[str, str], list[str]] = {}
    for position, kinds in weights.items():
        cells[position] = {}
        for kind, (names, w) in kinds.items():
            try:
                entropy, margin, best = edge_figures(w)
            except ValueError as e:
                raise ValueError(f"the {kind} cell at {position}: {e}") from None
            best_names = tuple(names[i] for i in best.tolist())
            cell_changed = None
            if previous is not None:
                before = list((previous.get(position) or {}).get(kind) or [])
                cell_changed = sum(a is not None and a != b for a, b in zip(before, best_names))
                cell_changed += abs(len(before) - len(best_names))
            decided_best = [b for b, m in zip(best_names, margin.tolist()) if m >= rule.decided_margin]
            decided_by_cell[(position, kind)] = decided_best
            cells[position][kind] = CellDiagnostics(
                entropy=tuple(entropy.tolist()),
                margin=tuple(margin.tolist()),
                best=best_names,
                changed=cell_changed,
                decided=int((margin >= rule.decided_margin).sum()),
            )
    distinct = [next(iter(cells.values()))] if shared else list(cells.values())
    pool = [(kind, c) for per in distinct for kind, c in per.items()]
    edges = sum(c.edges for _, c in pool)
    entropy = sum(sum(c.entropy) for _, c in pool) / edges
    margin = sum(sum(c.margin) for _, c in pool) / edges
    none_share = sum(c.none_share * c.edges for _, c in pool) / edges
    decided = sum(c.decided for _, c in pool) / edges
    positions = list(cells)[:1] if shared else list(cells)
    if previous is not None:
        changed = sum(c.changed or 0 for _, c in pool)
        decided_before = sum(
            b is not None
            for position in positions
            for kind, c in cells[position].items()
            for b in list((previous.get(position) or {}).get(kind) or [])[: c.edges]
        )
        previous_decided = decided_before / edges
    else:
        changed = None if changed is None else int(changed)
        previous_decided = None if changed is None or previous_decided is None else float(previous_decided)

    dominant: dict[str, tuple[str | None, float]] = {}
    kind_edges: dict[str, int] = {}
    for kind in dict.fromkeys(k for k, _ in pool):
        kind_edges[kind] = sum(c.edges for k, c in pool if k == kind)
        best = [b for p in positions for b in decided_by_cell.get((p, kind), [])]
        counts = {op: best.count(op) for op in dict.fromkeys(best)}
        op = max(counts, key=counts.get) if counts else None
        dominant[kind] = (op, counts[op] / kind_edges[kind] if op is not None else 0.0)

    reasons: list[str] = []
    for position in positions:
        for kind, c in cells[position].items():
            if len(decided_by_cell[(position, kind)]) == c.edges and c.none_share == 1.0:
                where = "the shared" if shared else f"the {position}"
                reasons.append(f"{where} {kind.upper()} cell has all {c.edges} edges decided on none")
    for kind, (op, share) in dominant.items():
        if op is not None and kind_edges[kind] >= rule.collapse_min_edges and share >= rule.collapse_op_share:
            reasons.append(f"{op} is the decided best op on {share:.0%} of the {kind_edges[kind]} {kind.upper()} edges")
    if reasons:
        verdict = COLLAPSED
    else:
        if decided < rule.converged_decided_share:
            reasons.append(
                f"{decided:.1%} of the edges decided (margin >= {rule.decided_margin:g}), "
                f"{rule.converged_decided_share:.0%} needed"
            )
        if changed is not None and changed / edges > rule.converged_max_changed_share:
            reasons.append(
                f"{changed / edges:.1%} of the best ops changed since the previous validation, "
                f"at most {rule.converged_max_changed_share:.0%} allowed"
            )
        if not stability_checked(changed, previous_decided, rule):  # decided or not, not shown to be stable
            reasons.append(_unchecked_reason(changed, previous_decided, rule))
        verdict = NOT_CONVERGED if reasons else CONVERGED
    return SearchDiagnostics(
        verdict=verdict,
        reasons=tuple(reasons),
        cells=cells,
        shared=shared,
        edges=edges,
        entropy=entropy,
        margin=margin,
        none_share=none_share,
        decided=decided,
        changed=changed,
        dominant=dominant,
        rule=rule,
        epoch=epoch,
        previous_decided=previous_decided,
    )

