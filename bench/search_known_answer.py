"""Known-answer benchmark of the architecture search: does ``BilevelSearchTrainer`` find planted operations?

A synthetic task whose best operation on several cell edges is known by construction is searched with the
search workflow's alpha settings (Adam with PyTorch defaults on ``network.arch_parameters()``,
``schedule="iteration"``, the budget-aware alpha learning rate ``budget_arch_learning_rate("auto",
count_alpha_steps(...))``), and the rank of each planted operation by ``softmax(alpha)`` is reported (1 = best).

The student is a small module of the project's own searchable blocks, each block a "probe" reading its own
group of input channels: three :class:`~monai_nasscam.networks.NASSAMBlock` and one
:class:`~monai_nasscam.networks.NASCAMBlock`. Their attention maps (``block.attention(x)``, the map the block
multiplies its input by) are fitted by mean squared error to the maps of a teacher written in plain ``torch``
(no project code). The inputs are white noise (independent N(0, 1) values), so that the taps of a kernel are
uncorrelated regressors: the best fit of ``k * x`` by a convolution restricted to another support is ``k``
restricted to it, and it explains the share of the variance that ``k`` holds on that support.

- Three probes plant an operation ``P`` on the direct edge ``n0 -> n3``: the teacher map is
  ``sigmoid(g * (k * x) / sd)`` (``sd`` the standard deviation of ``k * x``, ``g`` = :data:`GAIN` = 3) with a
  random unit-norm kernel ``k`` per seed that holds :data:`UNIQUE_SHARE` (3/4) of its energy on taps that only
  ``P`` has: ``conv5`` (SAM) on offsets (+-1, +-2) and (+-2, +-1), odd and even at once, which no dilated op has
  and ``conv3`` does not reach; ``dil_conv5`` (SAM) on offsets with a coordinate +-4, which no other spatial op
  reaches; ``conv15`` (CAM, along the channel axis) on offsets +-5..+-7, beyond ``conv9`` and ``dil_conv5``.
  The cell's output is the mean of its three sigmoid edges, each in (0, 1), so a map that is near 0 or 1 on
  most pixels needs all three edges, the direct one included; on that edge only ``P`` fits the map.
- One probe has a constant target 0.5: ``none`` (which outputs sigmoid(0) = 0.5 exactly) is planted on its three
  edges into ``n3``; every other op outputs ``sigmoid(gamma * z + beta)`` with ``z`` batch-normalised.

Why these planted ops are the unique best on their edges, which edges are not planted and why, and the figures
are in bench/README.md (section "search: known-answer benchmark").

``--selection perturbation`` chooses the operations of the trained supernet by masking them out instead
(:mod:`monai_nasscam.networks.selection`, on ``--crops`` fresh crops of the architecture stream, ``--interval`` weight
steps between decisions); a planted op then counts as found when it is the chosen op of its edge, and its rank is by
mean importance. With ``--warmup-epochs`` equal to ``--epochs`` the alphas are never stepped (the frozen-alpha
variant).

    python bench/search_known_answer.py [--seeds 0 1 2] [--jobs 2] [--epochs 9] [--warmup-epochs 3]
        [--iterations 40] [--arch-lr auto] [--selection alpha|perturbation] [--json out.json]

Exit status 0 when the planted op is found (ranks first by ``softmax(alpha)``, or is the op chosen by perturbation)
on at least ``--bar`` (80 %) of the planted edges for every seed, 1 otherwise. ``--arch-lr 0`` is the negative
control of the alpha selection (the alphas never move; the bar then fails).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_nasscam.engines import BilevelSearchTrainer, budget_arch_learning_rate, count_alpha_steps
from monai_nasscam.networks import NASCAMBlock, NASSAMBlock
from monai_nasscam.networks.cell import EDGES, arch_parameters, weight_parameters
from monai_nasscam.networks.ops import CAM_OPS, SAM_OPS
from monai_nasscam.networks.selection import CellGroup, PerturbationSelection

__all__ = [
    "Probe", "PROBES", "planted_kernel", "competitor_shares", "Teacher", "KnownAnswerNet", "ProbeMSE",
    "SyntheticStream", "SearchResult", "run_search", "main",
]

#: share of the planted kernel's energy on taps that only the planted operation has.
UNIQUE_SHARE = 0.75
#: gain ``g`` of the teacher map ``sigmoid(g * u)``, ``u`` of unit variance: below 0.1 or above 0.9 on 46 % of the
#: pixels (``|u| > ln(9) / 3``), values the cell's output (the mean of three sigmoid edges) reaches only if all
#: three edges do.
GAIN = 3.0
EDGE_NAMES = tuple(f"n{s}->n{t}" for s, t in EDGES)
DIRECT_EDGE = EDGES.index((0, 3))
#: the edges into the output node (sigmoid edges).
SIGMOID_EDGES = tuple(e for e, (_, t) in enumerate(EDGES) if t == 3)


@dataclass(frozen=True)
class Probe:
    """One searchable block of the student and its teacher.

    Args:
        name: label in the report.
        kind: "sam" (2-D spatial cell on ``channels`` input channels) or "cam" (1-D cell along ``channels``).
        op: the operation planted on the direct edge ``n0 -> n3``.
        channels: input channels of the block.
    """

    name: str
    kind: str
    op: str
    channels: int

    def planted(self) -> dict[int, str]:
        """``{edge index: planted op name}``."""
        if self.op == "none":
            return {e: "none" for e in SIGMOID_EDGES}
        return {DIRECT_EDGE: self.op}


PROBES: tuple[Probe, ...] = (
    Probe("sam-a", "sam", "conv5", 2),
    Probe("sam-b", "sam", "dil_conv5", 2),
    Probe("cam", "cam", "conv15", 32),
    Probe("sam-const", "sam", "none", 1),
)


def _offsets(kind: str, op: str) -> set[tuple[int, ...]]:
    """Tap offsets of operation ``op`` (1-D tuples for CAM, 2-D for SAM)."""
    spec = (SAM_OPS if kind == "sam" else CAM_OPS)[op]
    if spec.kernel_size == 0:
        return set()
    r = spec.dilation * (spec.kernel_size - 1) // 2
    axis = range(-r, r + 1, spec.dilation)
    if kind == "cam":
        return {(a,) for a in axis}
    return {(a, b) for a in axis for b in axis}


def _candidates(kind: str) -> tuple[str, ...]:
    return tuple(SAM_OPS if kind == "sam" else CAM_OPS)


def planted_kernel(probe: Probe, generator: torch.Generator) -> torch.Tensor:
    """A random kernel for ``probe``'s planted op, dense over the op's footprint, unit norm, with
    :data:`UNIQUE_SHARE` of its energy on the offsets no other candidate has.

    Returns:
        ``(1, channels, F, F)`` for SAM or ``(1, 1, F)`` for CAM, ``F`` the footprint of the planted op.
    """
    own = _offsets(probe.kind, probe.op)
    others = set().union(*(_offsets(probe.kind, o) for o in _candidates(probe.kind) if o != probe.op))
    unique = sorted(own - others)
    shared = sorted(own & others)
    if not unique:
        raise ValueError(f"{probe.kind} op {probe.op!r} has no offset of its own: it cannot be planted uniquely.")
    r = max(abs(a) for off in own for a in off)
    width = 2 * r + 1
    channels = probe.channels if probe.kind == "sam" else 1
    shape = (1, channels) + (width,) * len(unique[0])
    kernel = torch.zeros(shape)
    parts = []
    for offsets, share in ((unique, UNIQUE_SHARE), (shared, 1.0 - UNIQUE_SHARE)):
        values = torch.randn(channels, len(offsets), generator=generator)
        values = values * math.sqrt(share) / values.norm()
        parts.append((offsets, values))
    for offsets, values in parts:
        for j, off in enumerate(offsets):
            index = tuple(a + r for a in off)
            kernel[(0, slice(None)) + index] = values[:, j]
    return kernel


def competitor_shares(probe: Probe, kernel: torch.Tensor) -> dict[str, float]:
    """Per candidate op: the share of ``kernel``'s energy on that op's taps, i.e. the fraction of the variance
    of ``k * x`` (white-noise ``x``) that the best convolution with that op's support explains."""
    r = kernel.shape[-1] // 2
    shares = {}
    total = float(kernel.pow(2).sum())
    for op in _candidates(probe.kind):
        offs = [off for off in _offsets(probe.kind, op) if all(abs(a) <= r for a in off)]  # the rest is zero
        s = sum(float(kernel[(0, slice(None)) + tuple(a + r for a in off)].pow(2).sum()) for off in offs)
        shares[op] = s / total
    return shares


class Teacher:
    """The target maps, in plain ``torch``, flattened and concatenated like :class:`KnownAnswerNet`'s output:
    ``sigmoid(GAIN * (k * x) / sd)`` for a probe with a planted op (``sd`` the standard deviation of ``k * x`` for
    white-noise ``x``, away from the borders; for CAM ``x`` is the channel vector pooled over the pixels, as
    :class:`~monai_nasscam.networks.NASCAMBlock` pools it) and 0.5 for the probe that plants ``none``.

    Args:
        probes: the probes.
        seed: seeds the planted kernels.
    """

    def __init__(self, probes: tuple[Probe, ...], seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        self.probes = probes
        self.kernels = [None if p.op == "none" else planted_kernel(p, g) for p in probes]

    def __call__(self, groups: list[torch.Tensor]) -> torch.Tensor:
        maps = []
        for probe, kernel, x in zip(self.probes, self.kernels, groups):
            if kernel is None:
                maps.append(x.new_full((x.shape[0], x.shape[2] * x.shape[3]), 0.5))
                continue
            if probe.kind == "sam":
                u = F.conv2d(x, kernel, padding=kernel.shape[-1] // 2)  # (B, 1, H, W)
                scale = 1.0
            else:
                z = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C): the pooled vector the CAM block sees
                u = F.conv1d(z, kernel, padding=kernel.shape[-1] // 2)
                scale = 1.0 / math.sqrt(x.shape[2] * x.shape[3])  # std of the mean of H*W unit normals
            maps.append(torch.sigmoid(GAIN * u / scale).flatten(1))
        return torch.cat(maps, dim=1)


class KnownAnswerNet(nn.Module):
    """The student: one searchable NAS block per probe, each reading its own group of input channels.

    ``forward(x)`` with ``x`` of shape ``(B, sum(channels), H, W)`` returns the blocks' attention maps
    flattened and concatenated, ``(B, sum(H * W for SAM, channels for CAM))``.
    """

    def __init__(self, probes: tuple[Probe, ...], hidden_channels: int = 8) -> None:
        super().__init__()
        self.probes = probes
        blocks = []
        for p in probes:
            block = NASSAMBlock if p.kind == "sam" else NASCAMBlock
            blocks.append(block(2, p.channels, hidden_channels=hidden_channels))
        self.blocks = nn.ModuleList(blocks)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split([p.channels for p in self.probes], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b.attention(g).flatten(1) for b, g in zip(self.blocks, self.split(x))], dim=1)

    def arch_parameters(self) -> list[nn.Parameter]:
        return arch_parameters(self)

    def weight_parameters(self) -> list[nn.Parameter]:
        return weight_parameters(self)

    def op_weights(self) -> list[torch.Tensor]:
        """``softmax(alpha)`` of each probe's cell, ``(6, n_candidates)`` each."""
        return [b.cell.op_weights().detach() for b in self.blocks]


class ProbeMSE(nn.Module):
    """Mean squared error averaged within each probe's entries, summed over the probes (each probe weighs the
    same whatever its number of outputs)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.register_buffer("weight", torch.cat([torch.full((n,), 1.0 / n) for n in sizes]))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target).pow(2) * self.weight).sum(dim=1).mean()


class SyntheticStream:
    """An endless source of fresh white-noise batches, ``length`` batches per pass; every pass (every call of
    ``iter``) draws new ones from its own generator, seeded by ``(seed, stream, pass)``, so the stream is
    reproducible and independent of the global random state.

    Yields ``{"image": (B, C, H, W) float32, "label": (B, N) float32}`` with labels from ``teacher``.
    """

    def __init__(self, teacher: Teacher, net: KnownAnswerNet, seed: int, stream: int, length: int, batch_size: int,
                 size: int) -> None:
        self.teacher, self.net = teacher, net
        self.seed, self.stream, self.length = int(seed), int(stream), int(length)
        self.batch_size, self.size = int(batch_size), int(size)
        self.channels = sum(p.channels for p in net.probes)
        self.passes = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed((self.seed * 1000003 + self.stream) * 10007 + self.passes)
        self.passes += 1
        for _ in range(self.length):
            x = torch.randn(self.batch_size, self.channels, self.size, self.size, generator=g)
            with torch.no_grad():
                y = self.teacher(self.net.split(x))
            yield {"image": x, "label": y}


@dataclass
class SearchResult:
    """Outcome of one search: the rank of each planted op (1 = largest ``softmax(alpha)`` on its edge, or with
    ``selection="perturbation"`` the largest mean importance; a tie counts against it) and ``softmax(alpha)`` of every
    edge, keyed ``"probe edge"``; with perturbation also the chosen op of every edge, whether the data decided it,
    and each op's mean importance (``weights`` then holds the importances)."""

    seed: int
    ranks: dict[str, int] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    arch_lr: float = 0.0
    alpha_steps: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    final_loss: float = float("nan")
    selection: str = "alpha"
    chosen: dict[str, str] = field(default_factory=dict)
    decided: dict[str, bool] = field(default_factory=dict)
    selection_seconds: float = 0.0

    @property
    def hits(self) -> int:
        """Planted edges found: ranked first by the alphas, or chosen by perturbation."""
        if self.selection == "perturbation":
            return sum(self.chosen[key] == op for key, op in _planted_ops().items() if key in self.ranks)
        return sum(r == 1 for r in self.ranks.values())

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, len(self.ranks))


def run_search(
    seed: int,
    epochs: int = 9,
    warmup_epochs: int = 3,
    iterations: int = 40,
    batch_size: int = 8,
    size: int = 16,
    hidden_channels: int = 8,
    learning_rate: float = 1e-3,
    arch_lr: str | float = "auto",
    probes: tuple[Probe, ...] = PROBES,
    threads: int | None = None,
    selection: str = "alpha",
    crops: int = 32,
    interval: int = 5,
    unit: str = "cell",
) -> SearchResult:
    """Search the student against the teacher of ``seed`` and rank the planted ops.

    Args:
        seed: seeds the teacher's kernels, the student's initialisation, the data streams and the trainer.
        epochs: search epochs, warm-up included.
        warmup_epochs: leading weight-only epochs.
        iterations: iterations per epoch (a weight step, then an alpha step after the warm-up).
        batch_size: samples per batch.
        size: height and width of the white-noise inputs.
        hidden_channels: channels of the cells' inner nodes.
        learning_rate: Adam learning rate of the weights.
        arch_lr: ``"auto"`` (the budget-aware rate) or a positive number; ``0`` is the negative control (Adam with
            learning rate 0: the alphas stay at their random initialisation).
        probes: the probes.
        threads: torch intra-op threads (``None``: leave torch's setting).
        selection: ``"alpha"`` (the argmax of the alphas) or ``"perturbation"`` (masking ops out of the trained
            supernet, :class:`~monai_nasscam.networks.selection.PerturbationSelection`).
        crops: with perturbation, the evaluation samples (fresh draws of the architecture stream).
        interval: with perturbation, weight steps of fine-tuning between decisions.
        unit: with perturbation, ``"cell"`` or ``"edge"`` decided at a time.

    Returns:
        the ranks and op weights (or importances), the alpha learning rate and number of alpha steps, wall and CPU
        seconds of the search (selection included) and its last weight-step loss.
    """
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    teacher = Teacher(probes, seed)
    net = KnownAnswerNet(probes, hidden_channels)
    alpha_steps = count_alpha_steps(epochs, warmup_epochs, iterations)
    if isinstance(arch_lr, (int, float)) and float(arch_lr) == 0.0:
        lr = 0.0
    else:
        lr = budget_arch_learning_rate(arch_lr, alpha_steps)
    sizes = [size * size if p.kind == "sam" else p.channels for p in probes]
    trainer = BilevelSearchTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=SyntheticStream(teacher, net, seed, 1, iterations, batch_size, size),
        network=net,
        optimizer=torch.optim.Adam(net.weight_parameters(), lr=learning_rate),
        loss_function=ProbeMSE(sizes),
        arch_data_loader=SyntheticStream(teacher, net, seed, 2, iterations, batch_size, size),
        arch_optimizer=torch.optim.Adam(net.arch_parameters(), lr=lr),
        warmup_epochs=warmup_epochs,
        schedule="iteration",
        seed=seed,
        decollate=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    loss = float(trainer.state.output["loss"].detach())
    result = SearchResult(seed, arch_lr=lr, alpha_steps=alpha_steps, final_loss=loss, selection=selection)
    weights = net.op_weights()
    if selection == "perturbation":
        weights = _select(trainer, net, probes, seed, crops, interval, unit, batch_size, size, result)
    result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    for probe, w in zip(probes, weights):
        names = _candidates(probe.kind)
        for e in range(len(EDGES)):
            result.weights[f"{probe.name} {EDGE_NAMES[e]}"] = {n: float(v) for n, v in zip(names, w[e])}
        for e, op in probe.planted().items():
            row = w[e]
            result.ranks[f"{probe.name} {EDGE_NAMES[e]}"] = int((row >= row[names.index(op)]).sum())
    return result


def _select(trainer, net, probes, seed, crops, interval, unit, batch_size, size, result) -> list[torch.Tensor]:
    """Choose the ops of the trained student by perturbation; fills ``result.chosen`` / ``decided`` /
    ``selection_seconds`` and returns each probe's mean importances ``(6, K)``."""
    teacher = trainer.data_loader.teacher
    stream = SyntheticStream(teacher, net, seed, 3, -(-crops // batch_size), batch_size, size)
    batches = [(b["image"], b["label"]) for b in stream]
    train = iter(())

    def finetune(steps: int) -> None:
        nonlocal train
        for _ in range(steps):
            batch = next(train, None)
            if batch is None:
                train = iter(trainer.data_loader)
                batch = next(train)
            trainer.weight_step(batch)

    groups = [CellGroup(p.kind, [b.cell], (p.name,)) for p, b in zip(probes, net.blocks)]
    selector = PerturbationSelection(net, groups, batches, net, trainer.loss_function, finetune, unit=unit,
                                     interval=interval, seed=seed, dice=False)
    start = time.perf_counter()
    selector.run()
    result.selection_seconds = time.perf_counter() - start
    record = selector.record()
    importances = []
    for probe in probes:
        edges = record["modules"][probe.name][probe.kind]
        for e, r in enumerate(edges):
            result.chosen[f"{probe.name} {EDGE_NAMES[e]}"] = r["op"]
            result.decided[f"{probe.name} {EDGE_NAMES[e]}"] = r["decided"]
        importances.append(torch.tensor([[r["importance"][n]["mean"] for n in _candidates(probe.kind)] for r in edges]))
    return importances


def _planted_ops(probes: tuple[Probe, ...] = PROBES) -> dict[str, str]:
    return {f"{p.name} {EDGE_NAMES[e]}": op for p in probes for e, op in p.planted().items()}


def planted_table(results: list[SearchResult], probes: tuple[Probe, ...] = PROBES) -> str:
    """A markdown table: per planted edge and seed, the rank of the planted op and the op ranked first (with
    perturbation: the rank by importance, the chosen op and decided / tied)."""
    planted = _planted_ops(probes)
    head = "rank (first: op, weight)"
    if any(r.selection == "perturbation" for r in results):
        head = "rank by importance; chosen op (decided or tied)"
    lines = ["| probe, edge | planted | " + " | ".join(f"seed {r.seed}: {head}" for r in results)
             + " |", "|---|---|" + "---|" * len(results)]
    for key, op in planted.items():
        cells = []
        for r in results:
            w = r.weights[key]
            best = max(w, key=w.get)
            if r.selection == "perturbation":
                cells.append(f"{r.ranks[key]}; {r.chosen[key]} ({'decided' if r.decided[key] else 'tied'})")
            else:
                cells.append(f"{r.ranks[key]} ({best} {w[best]:.2f})")
        lines.append(f"| {key} | {op} | " + " | ".join(cells) + " |")
    found = "chosen" if any(r.selection == "perturbation" for r in results) else "ranked first"
    lines.append(f"| **{found}** | | " + " | ".join(f"**{r.hits}/{len(r.ranks)}**" for r in results) + " |")
    return "\n".join(lines)


def unplanted_table(results: list[SearchResult], probes: tuple[Probe, ...] = PROBES) -> str:
    """A markdown table of the op ranked first on every edge that is not planted (for information)."""
    keys = [f"{p.name} {EDGE_NAMES[e]}" for p in probes for e in range(len(EDGES)) if e not in p.planted()]
    lines = ["| probe, edge (not planted) | " + " | ".join(f"seed {r.seed}" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for key in keys:
        cells = []
        for r in results:
            w = r.weights[key]
            best = max(w, key=w.get)
            if r.selection == "perturbation":
                cells.append(f"{r.chosen[key]} ({'decided' if r.decided[key] else 'tied'})")
            else:
                cells.append(f"{best} {w[best]:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(kwargs: dict) -> SearchResult:
    return run_search(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=None,
                        help="seeds searched at once, each in its own process (default: min(seeds, CPU cores))")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="height and width of the inputs")
    parser.add_argument("--hidden-channels", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, weights")
    parser.add_argument("--arch-lr", default="auto", help="'auto' (default) or a number; 0 = negative control")
    parser.add_argument("--selection", choices=("alpha", "perturbation"), default="alpha",
                        help="alpha: the argmax of the alphas; perturbation: mask ops out of the trained supernet")
    parser.add_argument("--crops", type=int, default=32, help="perturbation: evaluation samples")
    parser.add_argument("--interval", type=int, default=5, help="perturbation: weight steps between decisions")
    parser.add_argument("--unit", choices=("cell", "edge"), default="cell", help="perturbation: decided at a time")
    parser.add_argument("--bar", type=float, default=0.8, help="share of planted edges to rank first, per seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per job (default: CPU cores // jobs)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    arch_lr = args.arch_lr if str(args.arch_lr).strip().lower() == "auto" else float(args.arch_lr)
    cores = os.cpu_count() or 1
    jobs = max(1, min(len(args.seeds), args.jobs or cores))
    threads = args.threads or max(1, cores // jobs)
    common = dict(epochs=args.epochs, warmup_epochs=args.warmup_epochs, iterations=args.iterations,
                  batch_size=args.batch_size, size=args.size, hidden_channels=args.hidden_channels,
                  learning_rate=args.learning_rate, arch_lr=arch_lr, threads=threads, selection=args.selection,
                  crops=args.crops, interval=args.interval, unit=args.unit)
    load = os.getloadavg()
    start = time.perf_counter()
    tasks = [dict(common, seed=seed) for seed in args.seeds]
    if jobs == 1:
        results = [_run(t) for t in tasks]
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_run, tasks))
    total = time.perf_counter() - start
    for r in results:
        found = "chosen" if r.selection == "perturbation" else "ranked first"
        extra = ""
        if r.selection == "perturbation":
            extra = (f"; {sum(r.decided.values())}/{len(r.decided)} edges decided; selection "
                     f"{r.selection_seconds:.1f} s of the wall time")
        print(f"seed {r.seed}: {r.hits}/{len(r.ranks)} planted ops {found}; alpha lr {r.arch_lr:.4g} over "
              f"{r.alpha_steps} alpha steps; last loss {r.final_loss:.3g}; {r.seconds:.1f} s wall, "
              f"{r.cpu_seconds:.1f} s CPU{extra}")
    print(planted_table(results))
    print()
    print(unplanted_table(results))
    passed = all(r.hit_rate >= args.bar for r in results)
    print(f"\ntotal {total:.1f} s wall ({jobs} jobs x {threads} threads); load average at the start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"bar (planted op {'chosen' if args.selection == 'perturbation' else 'first'} on >= {args.bar:.0%} of the "
          "planted edges, every seed): "
          f"{'PASS' if passed else 'FAIL'}")
    if args.json:
        payload = {"args": vars(args), "jobs": jobs, "threads": threads, "total_seconds": total, "passed": passed,
                   "load_average_start": load, "results": [dict(asdict(r), hits=r.hits) for r in results]}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, args.json)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
