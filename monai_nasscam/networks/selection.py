"""Architecture selection by perturbation (DARTS-PT: Wang et al., "Rethinking Architecture Selection in
Differentiable NAS", ICLR 2021), with a confidence for every edge.

The argmax of the alphas says which operation the alpha steps favoured, not what the operation does for the trained
supernet. After the supernet phase this module asks the supernet itself: for each mixed edge and each candidate
operation ``o``, the supernet is evaluated on a fixed set of held-out crops with ``o`` masked out: its mixing weight
set to 0 and the edge's other weights rescaled to sum to 1 (:func:`~monai_nasscam.networks.importance.masked`; DARTS-PT leaves them as they are, but
here an edge feeds a sum of ReLU edges or a mean of sigmoid edges, and without the rescaling removing any operation
would shrink the edge, so that every operation would look important in proportion to its weight). The
**importance** of ``o`` is the loss with ``o`` masked out minus the loss of the supernet as it is, per crop; its
mean over the crops and a percentile-bootstrap interval over the crops (the same resamples for every operation of
the edge) are recorded. The operation whose removal hurts most wins. The edge is **decided**
when the winner's interval lies entirely above the interval of every other candidate (so above the runner-up's);
otherwise the candidates whose interval reaches the winner's are **tied** with it and the edge takes the tied
candidate with the fewest FLOPs (:func:`~monai_nasscam.networks.importance.op_flops`; ``none`` has none): without evidence for a costlier operation,
the cheaper one is kept.

Decisions are progressive, from the network's output back to its input (DARTS-PT draws the order at random): an
edge (``unit="edge"``) or all 6 edges of a cell (``unit="cell"``) are decided and projected (their mixing weights
become one-hot on the chosen operation; a cell whose 6 edges are decided is replaced by a fixed cell of its chosen
operations, which share the supernet's modules), and the supernet is fine-tuned for ``interval`` weight steps before
the next decision, so later decisions are measured on a supernet adapted to the earlier ones. In that order every
masked pass computes the decided part of the network at the cost of the derived network, and
:class:`~monai_nasscam.networks.replay.PrefixReplay` does not recompute the part before the masked cell. The mixing
weights of the undecided edges stay those the supernet was trained with (``softmax(alpha / T)`` at the end of the
search, or nearly uniform when the alphas were never stepped: the frozen-alpha variant of DARTS-PT).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.metrics.dice import PooledDiceMetric
from monai_nasscam.networks.attentions import block_cells
from monai_nasscam.networks.cell import EDGES, NASAttentionCell, edge_label
from monai_nasscam.networks.genotype import attention_blocks
from monai_nasscam.networks.importance import EdgeRecord, bootstrap_interval, cell_flops, decide_edge, masked, op_flops
from monai_nasscam.networks.replay import PrefixReplay

__all__ = ["UNITS", "CellGroup", "cell_groups", "PerturbationSelection"]

#: what is decided at once between two fine-tunes: one edge, or the 6 edges of one cell.
UNITS = ("edge", "cell")


@dataclass
class CellGroup:
    """The searchable cells chosen together: one cell of a synchronous search, or the cells of one kind at all 8
    positions of a shared search (one set of alphas).

    Args:
        kind: ``"sam"`` or ``"cam"``.
        cells: the cells (all of ``kind``, sharing the same alphas).
        positions: the position of each cell (e.g. ``("down1",)``); records and genotypes use them.
    """

    kind: str
    cells: list[NASAttentionCell]
    positions: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.cells[0].candidates)

    @property
    def label(self) -> str:
        """The group in log lines: its position, or ``shared``."""
        return self.positions[0] if len(self.positions) == 1 else "shared"

    def set_weights(self, weights: torch.Tensor | None) -> None:
        """Mix every cell of the group with ``weights`` ``(6, K)`` (``None``: their alphas again)."""
        for cell in self.cells:
            cell.weight_override = weights


def cell_groups(model: nn.Module) -> list[CellGroup]:
    """The searchable cells of a NAS-SCAM network (a ``NASSCAMUNet`` or a BasicUNet given searchable attention),
    grouped by their alphas, in position order, SAM before CAM.

    Raises:
        ValueError: the model has no attention blocks at the 8 positions, or a fixed cell.
    """
    groups: dict[int, CellGroup] = {}
    for position, block in attention_blocks(model).items():
        for kind, cell in block_cells(block).items():
            if not cell.searchable:
                raise ValueError(f"the {kind} cell at {position} is fixed; selection needs a searchable network.")
            group = groups.setdefault(id(cell.alpha), CellGroup(kind, [], ()))
            group.cells.append(cell)
            group.positions += (position,)
    return list(groups.values())


class PerturbationSelection:
    """Choose every edge's operation of a trained supernet by masking operations out (see the module docstring).

    Args:
        network: the supernet.
        groups: the cell groups to choose (:class:`CellGroup`), in the order of the records.
        batches: the fixed evaluation crops, ``(inputs, targets)`` pairs on the network's device; every masked pass
            sees the same crops (the importances are paired differences).
        forward: ``forward(inputs) -> logits`` of the network (e.g. an inferer applied to it).
        loss_function: ``loss_function(pred, target) -> scalar``, applied to each crop on its own (a batch of one).
        finetune: ``finetune(steps)`` makes that many weight steps of the supernet as it is mixed now (decided edges
            one-hot); ``None`` or ``interval = 0``: no fine-tuning.
        unit: ``"edge"`` or ``"cell"`` (:data:`UNITS`).
        interval: weight steps between two decisions.
        exclude_none: never choose ``none`` (it is still measured).
        samples: bootstrap resamples.
        confidence: coverage of the intervals.
        seed: seeds the resampling.
        dice: also record the pooled mean Dice over the crops (sigmoid > 0.5 on multi-label targets; targets below 0
            are ambiguous pixels, left out) of the supernet with each operation masked, and as it is (``"base"``).
        log: receives one line per decision.
    """

    def __init__(
        self,
        network: nn.Module,
        groups: Sequence[CellGroup],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        forward: Callable[[torch.Tensor], torch.Tensor],
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        finetune: Callable[[int], Any] | None = None,
        unit: str = "cell",
        interval: int = 0,
        exclude_none: bool = False,
        samples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        dice: bool = True,
        log: Callable[[str], Any] | None = None,
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}.")
        if not batches:
            raise ValueError("no evaluation crops: selection by perturbation needs at least one batch.")
        if int(interval) < 0:
            raise ValueError(f"interval must be >= 0 weight steps, got {interval}.")
        self.network, self.groups, self.batches = network, list(groups), list(batches)
        self.forward, self.loss_function, self.finetune = forward, loss_function, finetune
        self.unit, self.interval, self.exclude_none = unit, int(interval), bool(exclude_none)
        self.samples, self.confidence, self.seed, self.dice = int(samples), float(confidence), int(seed), bool(dice)
        self.log = log or (lambda line: None)
        self.records: dict[int, dict[int, EdgeRecord]] = {}
        self.spatial: dict[int, tuple[int, ...]] = {}  # cell id -> spatial size of its input
        self.passes = 0
        self.seconds = self.cpu_seconds = 0.0
        self._swapped: list[tuple[nn.Module, str, NASAttentionCell]] = []

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, dict[str, list[str]]]:
        """Decide every edge; returns the chosen operations ``{position: {kind: [6 names]}}``.

        Until :meth:`release`, the decided cells stay replaced by fixed cells and the others mixed with fixed
        weights.
        """
        start, cpu = time.perf_counter(), time.process_time()
        first_call = self._survey()
        for group in self.groups:
            group.set_weights(group.cells[0].mixture_weights().detach().clone())
        # from the output back to the input: a decided group's cells are replaced by fixed cells that compute only
        # their chosen ops, so the masked passes of the groups before it compute it at the derived network's cost
        order = sorted(range(len(self.groups)), key=lambda g: -min(first_call[id(c)] for c in self.groups[g].cells))
        units = [(g, list(range(len(EDGES)))) for g in order]
        if self.unit == "edge":
            units = [(g, [e]) for g in order for e in reversed(range(len(EDGES)))]
        for step, (g, edges) in enumerate(units, start=1):
            self._decide(step, self.groups[g], g, edges)
            if len(self.records[g]) == len(EDGES):
                self._fix(self.groups[g], [self.records[g][e].decision.op for e in range(len(EDGES))])
            if self.finetune is not None and self.interval > 0 and step < len(units):
                self.finetune(self.interval)
        self.seconds, self.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        return self.chosen()

    def release(self) -> None:
        """Put the searchable cells back and mix them with their alphas again (the chosen ops keep their fine-tuned
        weights: the fixed cells shared them)."""
        for parent, name, cell in reversed(self._swapped):
            setattr(parent, name, cell)
        self._swapped.clear()
        for group in self.groups:
            group.set_weights(None)

    def _survey(self) -> dict[int, int]:
        """One pass on the first batch: the spatial size of every cell's input (:attr:`spatial`) and the order of the
        cells' first calls (returned, by cell id)."""
        first_call: dict[int, int] = {}

        def hook(module: nn.Module, args: Any) -> None:
            first_call.setdefault(id(module), len(first_call))
            self.spatial[id(module)] = tuple(int(s) for s in args[0].shape[2:])

        handles = [c.register_forward_pre_hook(hook) for g in self.groups for c in g.cells]
        was_training = self.network.training
        try:
            self.network.eval()
            with torch.no_grad():
                self.forward(self.batches[0][0])
        finally:
            self.network.train(was_training)
            for h in handles:
                h.remove()
        self.passes += 1
        return first_call

    def _fix(self, group: CellGroup, ops: list[str]) -> None:
        """Replace the group's cells in the network by fixed cells of ``ops`` that share the chosen ops' modules
        (the same parameters: fine-tuning trains them)."""
        parents = {id(c): (parent, name) for parent in self.network.modules() for name, c in parent.named_children()}
        for cell in group.cells:
            fixed = NASAttentionCell(cell.kind, cell.spatial_dims, cell.in_channels, ops, cell.hidden_channels)
            for e, op in enumerate(ops):
                if op in fixed.edges[e]:
                    fixed.edges[e][op] = cell.edges[e][op]
            fixed.train(cell.training)
            parent, name = parents[id(cell)]
            setattr(parent, name, fixed)
            self._swapped.append((parent, name, cell))

    def chosen(self) -> dict[str, dict[str, list[str]]]:
        """The chosen operations so far, ``{position: {kind: [6 names]}}`` (every position of a shared group)."""
        out: dict[str, dict[str, list[str]]] = {}
        for g, group in enumerate(self.groups):
            for position in group.positions:
                out.setdefault(position, {})[group.kind] = [self.records[g][e].decision.op for e in range(len(EDGES))]
        return out

    def _decide(self, step: int, group: CellGroup, g: int, edges: list[int]) -> None:
        names = group.names
        base_weights = group.cells[0].weight_override
        masks = [(e, o) for e in edges for o in range(len(names))]
        losses = {m: [] for m in masks}
        base_losses: list[torch.Tensor] = []
        counts = {m: self._dice_counts() for m in [None, *masks]}
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                for b, (inputs, targets) in enumerate(self.batches):
                    replay = PrefixReplay(self.network)
                    pred = replay.record(lambda: self.forward(inputs))
                    base_losses.append(self._per_crop(pred, targets, counts[None]))
                    if b == 0 and g not in self.records:  # each group once: the replay gives the reference
                        replay.replay(lambda: self.forward(inputs), group.cells, check=True)
                        self.passes += 1
                    for e, o in masks:
                        group.set_weights(masked(base_weights, e, o))
                        pred = replay.replay(lambda: self.forward(inputs), group.cells)
                        losses[(e, o)].append(self._per_crop(pred, targets, counts[(e, o)]))
                    group.set_weights(base_weights)
                    self.passes += 1 + len(masks)
        finally:
            group.set_weights(base_weights)
            self.network.train(was_training)
        base = torch.cat(base_losses)
        projected = base_weights.clone()
        records = self.records.setdefault(g, {})
        for e in edges:
            diffs = torch.stack([torch.cat(losses[(e, o)]) - base for o in range(len(names))], dim=1)
            mean, low, high = bootstrap_interval(diffs, self.samples, self.confidence, seed=self.seed * 1000 + step)
            spatial = self.spatial[id(group.cells[0])]
            flops = [op_flops(group.kind, n, *self._edge_channels(group, e), spatial) for n in names]
            allowed = [not (self.exclude_none and n == "none") for n in names]
            decision = decide_edge(names, mean.tolist(), low.tolist(), high.tolist(), flops, allowed)
            dice = None
            if self.dice:
                dice = {"base": _pooled_dice(counts[None])}
                dice.update({n: _pooled_dice(counts[(e, o)]) for o, n in enumerate(names)})
            importance = {n: (float(mean[o]), float(low[o]), float(high[o])) for o, n in enumerate(names)}
            records[e] = EdgeRecord(decision, step, importance, dice)
            projected[e] = 0.0
            projected[e, names.index(decision.op)] = 1.0
            state = "decided" if decision.decided else f"tied {'/'.join(decision.tied)} -> cheapest"
            m, lo, hi = importance[decision.winner]
            self.log(
                f"selection step {step}: {group.label} {group.kind.upper()} {edge_label(e)}: {decision.op} "
                f"({state}; {decision.winner} importance {m:+.3g} [{lo:+.3g}, {hi:+.3g}])"
            )
        group.set_weights(projected)

    # -- measurements ----------------------------------------------------------------------------------------
    def _per_crop(self, pred: torch.Tensor, targets: torch.Tensor, counts: PooledDiceMetric | None) -> torch.Tensor:
        pred = pred.float()
        values = [float(self.loss_function(pred[i : i + 1], targets[i : i + 1])) for i in range(pred.shape[0])]
        if counts is not None:
            ambiguous = (targets < 0).any(dim=1, keepdim=True)
            counts(y_pred=(pred > 0).float(), y=(targets > 0.5).float(), mask=ambiguous)
        return torch.tensor(values, dtype=torch.float64)

    def _dice_counts(self) -> PooledDiceMetric | None:
        return PooledDiceMetric() if self.dice else None

    @staticmethod
    def _edge_channels(group: CellGroup, e: int) -> tuple[int, int]:
        s, t = EDGES[e]
        return group.cells[0].node_channels[s], group.cells[0].node_channels[t]

    # -- results ---------------------------------------------------------------------------------------------
    def flops(self, ops: Mapping[str, Mapping[str, Sequence[str]]]) -> int:
        """FLOPs of all the groups' cells (every cell of a shared group) with ``ops`` ``{position: {kind: [6]}}``,
        on inputs of the evaluation crops' size."""
        return sum(
            cell_flops(cell, self.spatial[id(cell)], ops[position][group.kind])
            for group in self.groups
            for cell, position in zip(group.cells, group.positions)
        )

    def record(self, argmax: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> dict[str, Any]:
        """The genotype's ``selection`` section (format in docs/search.md): settings, per group and edge the
        decision, the importances with their intervals and the Dice; the tied edges; with ``argmax`` (the operations
        the alphas' argmax derives) the FLOPs of the attention cells against that choice."""
        chosen = self.chosen()
        modules: dict[str, dict[str, list[dict[str, Any]]]] = {}
        tied = []
        for g, group in enumerate(self.groups):
            edges = [self.records[g][e] for e in range(len(EDGES))]
            for position in group.positions:
                modules.setdefault(position, {})[group.kind] = [r.to_dict() for r in edges]
            tied += [
                f"{group.label} {group.kind} {edge_label(e)}" for e, r in enumerate(edges) if not r.decision.decided
            ]
        edges = len(self.groups) * len(EDGES)
        out: dict[str, Any] = {
            "method": "perturbation",
            "criterion": "loss increase with the op masked out, mean over the crops",
            "unit": self.unit,
            "interval": self.interval,
            "crops": sum(int(b[0].shape[0]) for b in self.batches),
            "confidence": self.confidence,
            "bootstrap": self.samples,
            "seed": self.seed,
            "exclude_none": self.exclude_none,
            "edges": edges,
            "decided": edges - len(tied),
            "tied": tied,
            "passes": self.passes,
            "seconds": round(self.seconds, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "modules": modules,
        }
        if argmax is not None:
            selected, before = self.flops(chosen), self.flops(argmax)
            crop = " x ".join(str(s) for s in self.batches[0][0].shape[2:])
            out["flops"] = {
                "selected": selected,
                "argmax": before,
                "saved": round(1.0 - selected / before, 6) if before else 0.0,
                "input": crop,
            }
        return out


def _pooled_dice(metric: PooledDiceMetric) -> float | None:
    """The mean pooled Dice, ``None`` when no class was annotated or predicted on the crops."""
    value = float(metric.aggregate())
    return value if math.isfinite(value) else None
