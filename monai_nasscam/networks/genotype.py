"""Genotype: the architecture chosen by a search, derived from alphas and stored as versioned JSON.

The file names, for each of the 8 attention positions, the 6 operations of each searched cell in edge order,
and keeps the softmax weights for the record. It is enough to rebuild the network without the search
checkpoint. Version 2 adds a ``search`` section: the figures and the verdict of the alphas the genotype was
derived from (:mod:`monai_nasscam.networks.diagnostics`). Version 3 adds a ``selection`` section: how the operations
were chosen (:mod:`monai_nasscam.networks.importance`). Version-1 and -2 files still load.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.attentions import attention_names, block_cells, get_attention
from monai_nasscam.networks.cell import EDGES, NASAttentionCell
from monai_nasscam.networks.diagnostics import diagnose
from monai_nasscam.networks.importance import check_selection_record
from monai_nasscam.networks.ops import OPS
from monai_nasscam.networks.verdict import VERDICTS

__all__ = ["POSITIONS", "Genotype", "attention_blocks", "random_genotype", "consensus", "agreement"]

FORMAT = "nasscam-genotype"
VERSION = 3
#: the versions this release reads (1: no ``search`` section; 2: no ``selection`` section).
READ_VERSIONS = (1, 2, 3)
#: the 8 attention positions, shallow to deep along the encoder, then deep to shallow along the decoder.
POSITIONS: tuple[str, ...] = ("down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4")
# where add_attention puts the blocks in a MONAI BasicUNet (its upcat_4 is the deepest up block)
BASIC_UNET_POSITIONS = dict(zip(POSITIONS, ("down_1", "down_2", "down_3", "down_4", "upcat_4", "upcat_3", "upcat_2", "upcat_1")))


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The attention block at each position of ``model`` (a ``NASSCAMUNet`` or a BasicUNet given attention)."""
    if hasattr(model, "attention_blocks"):
        return model.attention_blocks()
    blocks = {}
    for position, name in BASIC_UNET_POSITIONS.items():
        wrapped = getattr(model, name, None)
        if isinstance(wrapped, nn.Sequential) and len(wrapped) == 2 and getattr(wrapped, "is_attention_wrapper", False):
            blocks[position] = wrapped[1]
    if len(blocks) != len(POSITIONS):
        raise ValueError(f"{type(model).__name__} has no attention blocks at the 8 positions {list(POSITIONS)}.")
    return blocks


def _cells(block: nn.Module) -> tuple[str, dict[str, NASAttentionCell]]:
    """The attention name of a NAS block (its ``attention_name``) and its cells by kind (its ``cells()``)."""
    cells = block_cells(block)
    if not cells:
        raise ValueError(f"{type(block).__name__} is not a NAS attention block; only NAS blocks have a genotype.")
    return block.attention_name, cells


def _kinds(attention: str) -> tuple[str, ...]:
    """The cell kinds a searchable attention searches, else a ``ValueError`` naming the searchable attentions."""
    if attention not in attention_names(searchable=True, aliases=False):
        raise ValueError(f"'attention' must be one of {list(attention_names(searchable=True))}, got {attention!r}.")
    return get_attention(attention).cells


@dataclass
class Genotype:
    """A derived NAS-SCAM architecture.

    Args:
        attention: one of "nas-sam", "nas-cam", "nas-scam-s", "nas-scam-p".
        synchronous: whether each module was searched with its own alphas.
        modules: one entry per position (:data:`POSITIONS` order): ``{"position": ..., "sam": [6 names],
            "cam": [6 names]}``, with only the cell kinds the attention uses.
        alphas: softmax weights per position and kind, for the record (not needed to rebuild); finite numbers.
        search: the figures and the verdict of the alphas it was derived from
            (:meth:`monai_nasscam.networks.diagnostics.SearchDiagnostics.to_dict`: ``verdict``, ``epoch``,
            aggregates, per-module figures, ``rule``); ``None`` when unknown (a version-1 file, a hand-made genotype).
            For the record: not compared by ``==``.
        selection: how the operations were chosen: ``{"method": "alpha"}`` (the argmax), ``{"method": "random"}``, or
            a selection by perturbation's record (:meth:`~monai_nasscam.networks.selection.PerturbationSelection.record`,
            each edge's importances and decided flag); ``None`` when unknown. Not compared by ``==``.
    """

    attention: str
    synchronous: bool
    modules: list[dict[str, Any]]
    alphas: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = field(default=None, compare=False)
    selection: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_model(cls, model: nn.Module, exclude_none: bool = False, search: Mapping[str, Any] | None = None) -> Genotype:
        """Derive the genotype of a searchable model: the argmax operation of every edge's alpha.

        Args:
            model: a searchable ``NASSCAMUNet`` (or a BasicUNet given searchable NAS attention).
            exclude_none: never choose ``none`` (the DARTS habit); by default ``none`` may win, as in the paper.
            search: the ``search`` section to record (e.g. a validation's diagnostics with its epoch and changed
                count); default: :func:`~monai_nasscam.networks.diagnostics.diagnose` of the model's alphas
                (no epoch, no previous validation).

        Raises:
            ValueError: a fixed cell, mixed attention types, or non-finite alphas ("model: ... the search diverged").
        """
        modules, alphas, names, shared = [], {}, set(), set()
        weights_by_cell: dict[str, dict[str, Any]] = {}
        for position, block in attention_blocks(model).items():
            name, cells = _cells(block)
            names.add(name)
            entry: dict[str, Any] = {"position": position}
            alphas[position] = {}
            for kind, cell in cells.items():
                if cell.alpha is None:
                    raise ValueError(f"the {kind} cell at {position} is fixed; derive a genotype from a searchable model.")
                shared.add(id(cell.alpha))
                weights = cell.op_weights().detach().float().cpu()
                if not bool(torch.isfinite(cell.alpha.detach()).all() and torch.isfinite(weights).all()):
                    raise ValueError(
                        f"model: the alphas of the {kind} cell at {position} hold non-finite values (the search "
                        "diverged); no genotype can be derived."
                    )
                weights_by_cell.setdefault(position, {})[kind] = (tuple(cell.candidates), weights)
                choice = weights.clone()
                if exclude_none:
                    choice[:, cell.candidates.index("none")] = -1.0
                entry[kind] = [cell.candidates[i] for i in choice.argmax(dim=-1).tolist()]
                alphas[position][kind] = [[round(v, 6) for v in row] for row in weights.tolist()]
            modules.append(entry)
        if len(names) != 1:
            raise ValueError(f"the model mixes attention types {sorted(names)}; a genotype describes one.")
        kinds = len(_kinds(next(iter(names))))
        synchronous = len(shared) > kinds  # shared alphas: one object per kind for all 8 modules
        if search is None:
            search = diagnose(weights_by_cell, shared=not synchronous).to_dict()
        return cls(
            attention=names.pop(), synchronous=synchronous, modules=modules, alphas=alphas, search=dict(search),
            selection={"method": "alpha", "exclude_none": bool(exclude_none)},
        )

    def entry(self, position: str) -> dict[str, list[str]]:
        """The op lists of the module at ``position``: ``{"sam": [...], "cam": [...]}``."""
        for module in self.modules:
            if module["position"] == position:
                return {k: v for k, v in module.items() if k != "position"}
        raise KeyError(f"no module at position {position!r}; positions are {list(POSITIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure (current :data:`VERSION`); ``search`` only when known."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "attention": self.attention,
            "synchronous": self.synchronous,
            "edges": [list(e) for e in EDGES],
            "modules": self.modules,
            "alphas": self.alphas,
        }
        if self.search is not None:
            data["search"] = self.search
        if self.selection is not None:
            data["selection"] = self.selection
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "genotype") -> Genotype:
        """Build from the JSON structure; ``source`` names the file in error messages."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: 'format' must be {FORMAT!r}, got {data.get('format')!r}.")
        version = data.get("version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise ValueError(f"{source}: unknown genotype version {version!r}; this release reads versions {list(READ_VERSIONS)}.")
        edges = data.get("edges", [list(e) for e in EDGES])
        if [list(e) for e in edges] != [list(e) for e in EDGES]:
            raise ValueError(f"{source}: 'edges' must be {[list(e) for e in EDGES]}, got {edges}.")
        missing = [k for k in ("attention", "synchronous", "modules") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}.")
        try:
            alphas, search, selection = dict(data.get("alphas") or {}), data.get("search"), data.get("selection")
            return cls(data["attention"], data["synchronous"], data["modules"], alphas, search, selection)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (temporary file, then rename); returns the path.

        Raises:
            ValueError: the genotype is invalid or holds non-finite numbers (the message names ``path``); nothing
                is written.
        """
        try:
            self._validate()
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        except ValueError as e:
            raise ValueError(f"{path}: not written: {e}") from None
        return atomic_write_text(path, text + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Read and validate a genotype JSON file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"genotype file {path} does not exist.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from None
        return cls.from_dict(data, source=str(path))

    def _validate(self) -> None:
        kinds = _kinds(self.attention)
        if not isinstance(self.synchronous, bool):
            raise ValueError(f"'synchronous' must be true or false, got {self.synchronous!r}.")
        _check_positions(self.modules)
        for module, position in zip(self.modules, POSITIONS):
            for kind in kinds:
                ops = module.get(kind)
                if not isinstance(ops, list) or len(ops) != len(EDGES):
                    raise ValueError(f"module {position}: {kind!r} must list {len(EDGES)} operations (one per edge), got {ops!r}.")
                unknown = [o for o in ops if o not in OPS[kind]]
                if unknown:
                    raise ValueError(f"module {position}: unknown {kind} operation(s) {unknown}; known: {list(OPS[kind])}.")
        if not self.synchronous:
            first = {k: self.modules[0][k] for k in kinds}
            if any({k: m[k] for k in kinds} != first for m in self.modules):
                raise ValueError("a non-synchronous genotype must have the same operations at all 8 positions.")
        if not isinstance(self.alphas, Mapping):
            raise ValueError(f"'alphas' must be a JSON object, got {type(self.alphas).__name__}.")
        for position, per in self.alphas.items():
            if position not in POSITIONS:
                raise ValueError(f"'alphas': unknown position {position!r}; positions are {list(POSITIONS)}.")
            if not isinstance(per, Mapping):
                raise ValueError(f"'alphas' of {position} must be a JSON object of cell kinds, got {type(per).__name__}.")
            for kind, rows in per.items():
                if kind not in kinds:
                    raise ValueError(
                        f"'alphas' of {position}: {kind!r} is not a cell kind of {self.attention} (it searches "
                        f"{list(kinds)})."
                    )
                if not _all_finite(rows):
                    raise ValueError(
                        f"the alphas of the {kind} cell at {position} hold non-finite or non-numeric values (the search "
                        "diverged?)."
                    )
                _check_weights(rows, position, kind)
        if self.search is not None:
            if not isinstance(self.search, Mapping):
                raise ValueError(f"'search' must be a JSON object or absent, got {type(self.search).__name__}.")
            if "verdict" in self.search and self.search["verdict"] not in VERDICTS:
                raise ValueError(f"'search': unknown verdict {self.search['verdict']!r}; expected one of {list(VERDICTS)}.")
            if not _all_finite(self.search, numbers_only=False):
                raise ValueError("'search' holds non-finite numbers.")
        if self.selection is not None:
            check_selection_record(self.selection, self.modules, kinds)



def _check_positions(modules: Any) -> None:
    """``modules`` lists one module per position in :data:`POSITIONS` order; else a ``ValueError`` naming the
    missing, repeated, unknown or misplaced positions."""
    if not isinstance(modules, list):
        raise ValueError(f"'modules' must be a list of {len(POSITIONS)} modules, got {type(modules).__name__}.")
    for i, module in enumerate(modules):
        if not isinstance(module, Mapping):
            raise ValueError(f"module {i} must be a JSON object with a 'position', got {module!r}.")
    positions = [module.get("position") for module in modules]
    if positions == list(POSITIONS):
        return
    missing = [p for p in POSITIONS if p not in positions]
    repeated = [p for p in POSITIONS if positions.count(p) > 1]
    unknown = [p for p in positions if p not in POSITIONS]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"{', '.join(repeated)} listed more than once"] if repeated else []
    problems += [f"unknown position(s) {unknown}"] if unknown else []
    if not problems:
        problems = [f"listed in the order {positions}"]
    raise ValueError(
        f"'modules' must list the {len(POSITIONS)} positions {', '.join(POSITIONS)} once each, in this order; got "
        f"{len(modules)} module(s): {'; '.join(problems)}."
    )


#: how far a recorded softmax row may sum from 1 (the weights are rounded to 6 decimals).
_SUM_TOLERANCE = 1e-3


def _check_weights(rows: Any, position: str, kind: str) -> None:
    """``rows`` are the softmax weights of one cell: one row per edge, one weight in [0, 1] per candidate operation
    of ``kind``, each row summing to 1; else a ``ValueError`` naming the cell and what is wrong."""
    names = list(OPS[kind])
    what = f"the alphas of the {kind} cell at {position}"
    shape = f"{len(EDGES)} rows (one per edge) of {len(names)} weights (one per {kind} operation: {', '.join(names)})"
    if not isinstance(rows, list) or len(rows) != len(EDGES):
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise ValueError(f"{what} must be {shape}, got {got}.")
    for e, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(names):
            got = f"{len(row)} weights" if isinstance(row, list) else repr(row)
            raise ValueError(f"{what} must be {shape}; edge {e} ({EDGES[e][0]}->{EDGES[e][1]}) has {got}.")
        if min(row) < 0.0 or max(row) > 1.0 or abs(sum(row) - 1.0) > _SUM_TOLERANCE:
            raise ValueError(
                f"{what} must be softmax weights (each in [0, 1], each edge's summing to 1); edge {e} "
                f"({EDGES[e][0]}->{EDGES[e][1]}) has weights from {min(row):g} to {max(row):g} summing to {sum(row):g}."
            )


def _all_finite(value: Any, numbers_only: bool = True) -> bool:
    """Whether every number in a nested structure of lists / dicts is finite (``numbers_only``: and nothing else
    than numbers and lists)."""
    if isinstance(value, bool):
        return not numbers_only
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v, numbers_only) for v in value)
    if isinstance(value, Mapping) and not numbers_only:
        return all(_all_finite(v, numbers_only) for v in value.values())
    return not numbers_only


# ----------------------------------------------------------------- random draws, and seeds compared with each other

def _op_names(kind: str) -> list[str]:
    return list(OPS[kind])


def random_genotype(attention: str = "nas-scam-p", synchronous: bool = True, seed: int = 0) -> Genotype:
    """A genotype drawn uniformly at random: the baseline a search has to beat.

    Every edge of every cell kind that ``attention`` uses is an independent uniform draw among that kind's
    candidates, ``none`` included (probability 1/6 each for SAM, 1/8 for CAM), for each of the 8 modules when
    ``synchronous``, once for all 8 otherwise. The draw depends only on the arguments: it is made with
    ``random.Random(seed).random()``, a sequence Python keeps the same across versions and platforms, so a
    seed names one genotype for good. Edges are drawn in :data:`POSITIONS` order, then SAM before CAM, then
    edge order.

    Args:
        attention: a NAS attention: "nas-sam", "nas-cam", "nas-scam-s" or "nas-scam-p".
        synchronous: one draw per module (``True``) or one draw shared by all 8 modules.
        seed: a non-negative integer.

    Returns:
        A valid :class:`Genotype` with no ``alphas`` (nothing was searched).

    Raises:
        ValueError: ``attention`` is not a NAS attention, or ``seed`` is not a non-negative integer.
    """
    kinds = _kinds(attention)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"'seed' must be a non-negative integer, got {seed!r}.")
    rng = random.Random(seed)

    def draw() -> dict[str, list[str]]:
        cells = {}
        for kind in kinds:
            names = _op_names(kind)
            cells[kind] = [names[int(rng.random() * len(names))] for _ in EDGES]
        return cells

    shared = None if synchronous else draw()
    modules = [{"position": p, **(draw() if synchronous else {k: list(v) for k, v in shared.items()})} for p in POSITIONS]
    return Genotype(attention=attention, synchronous=bool(synchronous), modules=modules, selection={"method": "random"})


def _same_space(genotypes: Sequence[Genotype], least: int) -> list[Genotype]:
    genotypes = list(genotypes)
    if len(genotypes) < least:
        raise ValueError(f"need at least {least} genotype(s), got {len(genotypes)}.")
    bad = [type(g).__name__ for g in genotypes if not isinstance(g, Genotype)]
    if bad:
        raise ValueError(f"expected Genotype objects, got {bad}.")
    spaces = sorted({(g.attention, g.synchronous) for g in genotypes})
    if len(spaces) > 1:
        raise ValueError(f"the genotypes mix (attention, synchronous) settings {spaces}; compare genotypes of one search space.")
    return genotypes


def _recorded_weights(genotype: Genotype, position: str, kind: str) -> list[list[float]] | None:
    """The softmax weights a genotype recorded for one cell, or ``None`` if absent or not 6 rows of finite numbers."""
    rows = (genotype.alphas.get(position) or {}).get(kind) if isinstance(genotype.alphas, Mapping) else None
    size = len(OPS[kind])
    if not isinstance(rows, list) or len(rows) != len(EDGES):
        return None
    try:
        rows = [[float(v) for v in row] for row in rows]
    except (TypeError, ValueError):
        return None
    if any(len(row) != size or not all(math.isfinite(v) for v in row) for row in rows):
        return None
    return rows


def consensus(genotypes: Sequence[Genotype]) -> Genotype:
    """The majority vote of several genotypes (e.g. one per seed) on every edge of every module and cell kind.

    On each (position, kind, edge) slot the operation chosen by the most genotypes wins. A tie is broken by
    the highest mean softmax weight over all the genotypes (their recorded ``alphas``), when every genotype
    recorded the weights of that cell; otherwise, or if the means tie too, by the order of ``genotypes``: the
    tied operation chosen by the earliest genotype (the first seed's, when they are listed by seed). Votes of
    non-synchronous genotypes are taken once and the result is shared by all 8 modules.

    Args:
        genotypes: one or more genotypes of the same ``attention`` and ``synchronous``.

    Returns:
        A :class:`Genotype`; its ``alphas`` are the mean of the genotypes' recorded softmax weights for the cells
        where every genotype recorded them (rounded to 6 decimals), for the record.

    Raises:
        ValueError: no genotypes, something that is not a Genotype, or genotypes of different search spaces.
    """
    genotypes = _same_space(genotypes, 1)
    first = genotypes[0]
    kinds = get_attention(first.attention).cells
    modules, alphas = [], {}
    for position in POSITIONS if first.synchronous else POSITIONS[:1]:
        entry: dict[str, Any] = {"position": position}
        for kind in kinds:
            choices = [g.entry(position)[kind] for g in genotypes]
            weights = [_recorded_weights(g, position, kind) for g in genotypes]
            mean = None
            if all(w is not None for w in weights):
                mean = [[sum(w[e][i] for w in weights) / len(weights) for i in range(len(OPS[kind]))] for e in range(len(EDGES))]
                alphas.setdefault(position, {})[kind] = [[round(v, 6) for v in row] for row in mean]
            ops = []
            for e in range(len(EDGES)):
                votes = [c[e] for c in choices]
                top = max(votes.count(op) for op in votes)
                tied = [op for op in dict.fromkeys(votes) if votes.count(op) == top]  # in order of first vote
                if len(tied) > 1 and mean is not None:
                    names = _op_names(kind)
                    best = max(mean[e][names.index(op)] for op in tied)
                    tied = [op for op in tied if mean[e][names.index(op)] == best]
                ops.append(tied[0])
            entry[kind] = ops
        modules.append(entry)
    if not first.synchronous:
        shared = {k: v for k, v in modules[0].items() if k != "position"}
        modules = [{"position": p, **{k: list(v) for k, v in shared.items()}} for p in POSITIONS]
        alphas = {p: alphas[POSITIONS[0]] for p in POSITIONS} if alphas else {}
    return Genotype(attention=first.attention, synchronous=first.synchronous, modules=modules, alphas=alphas)


def agreement(genotypes: Sequence[Genotype]) -> dict[str, dict[str, Any]]:
    """How often genotypes (e.g. one per seed) chose the same operation for the same edge, per cell kind.

    The agreement of a kind is the mean, over every pair of genotypes and every (position, edge) slot, of
    "both chose the same operation": the mean pairwise agreement. Two independent uniform draws among K
    candidates agree with probability 1/K, its chance level (1/6 for SAM, 1/8 for CAM); a search that finds
    the same cells from different seeds scores well above it. Also given: the share of slots where all the
    genotypes agree (chance ``K ** -(n - 1)`` for n genotypes) and the pairwise agreement per position.

    Args:
        genotypes: at least 2 genotypes of the same ``attention`` and ``synchronous``.

    Returns:
        ``{kind: {"pairwise": float, "chance": 1/K, "unanimous": float, "unanimous_chance": float,
        "candidates": K, "genotypes": n, "slots": 8 * 6, "positions": {position: float}}}``
        for each kind the attention uses; shares are in [0, 1].

    Raises:
        ValueError: fewer than 2 genotypes, something that is not a Genotype, or different search spaces.
    """
    genotypes = _same_space(genotypes, 2)
    n = len(genotypes)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    out: dict[str, dict[str, Any]] = {}
    for kind in get_attention(genotypes[0].attention).cells:
        k = len(OPS[kind])
        positions, unanimous = {}, 0
        for position in POSITIONS:
            choices = [g.entry(position)[kind] for g in genotypes]
            same = sum(choices[i][e] == choices[j][e] for i, j in pairs for e in range(len(EDGES)))
            positions[position] = same / (len(pairs) * len(EDGES))
            unanimous += sum(len({c[e] for c in choices}) == 1 for e in range(len(EDGES)))
        out[kind] = {
            "pairwise": sum(positions.values()) / len(positions),
            "chance": 1.0 / k,
            "unanimous": unanimous / (len(POSITIONS) * len(EDGES)),
            "unanimous_chance": float(k) ** -(n - 1),
            "candidates": k,
            "genotypes": n,
            "slots": len(POSITIONS) * len(EDGES),
            "positions": positions,
        }
    return out
