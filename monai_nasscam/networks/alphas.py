"""The alphas read as softmax weights, from a searchable network or from a genotype's record, and diagnosed.

Both give the same form, ``{position: {kind: (candidate names, softmax weights (6, K))}}``
(:data:`~monai_nasscam.networks.diagnostics.Weights`), which :func:`~monai_nasscam.networks.diagnostics.diagnose`
turns into figures and a verdict, and the search's figures and handlers draw or log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from monai_nasscam.networks.attentions import block_cells
from monai_nasscam.networks.diagnostics import SearchDiagnostics, VerdictRule, diagnose
from monai_nasscam.networks.genotype import attention_blocks
from monai_nasscam.networks.ops import OPS
from monai_nasscam.networks.utils import unwrap_model

__all__ = ["alpha_weights", "shares_alphas", "search_diagnostics", "genotype_weights", "diagnose_genotype"]


def alpha_weights(network: nn.Module) -> dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]]:
    """``{position: {kind: (candidate names, softmax(alpha) of shape (6, n_candidates))}}`` of a searchable network,
    positions in ``POSITIONS`` order, kinds ``"sam"`` / ``"cam"`` in the order of the blocks' ``cells()``."""
    out: dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]] = {}
    for position, block in attention_blocks(unwrap_model(network)).items():
        cells = block_cells(block, searchable=True)
        if not cells:
            raise ValueError(f"the attention block at {position} has no searchable cell; is this a search network?")
        out[position] = {
            kind: (tuple(cell.candidates), cell.op_weights().detach().float().cpu()) for kind, cell in cells.items()
        }
    return out


def shares_alphas(network: nn.Module) -> bool:
    """One set of alphas for all modules (a non-synchronous search): as many distinct alpha tensors as cell kinds."""
    blocks = attention_blocks(unwrap_model(network)).values()
    cells = [cell for b in blocks for cell in block_cells(b, searchable=True).values()]
    kinds = {c.kind for c in cells}
    return len({id(c.alpha) for c in cells}) == len(kinds) and len(cells) > len(kinds)


def search_diagnostics(
    network: nn.Module,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    rule: VerdictRule | None = None,
    epoch: int | None = None,
) -> SearchDiagnostics:
    """:func:`~monai_nasscam.networks.diagnostics.diagnose` of a searchable network's current softmax(alpha)
    (:func:`alpha_weights`), shared alphas counted once.

    Args:
        network: the searchable network (a ``DataParallel`` / ``DistributedDataParallel`` wrapper is unwrapped).
        previous: the best operations of the previous validation (``SearchDiagnostics.decided_ops()``: ``None`` on
            the edges undecided then), or ``None``.
        rule: the verdict's thresholds (default: the module constants of :mod:`monai_nasscam.networks.verdict`).
        epoch: recorded in the result.
    """
    return diagnose(alpha_weights(network), previous=previous, rule=rule, shared=shares_alphas(network), epoch=epoch)


def genotype_weights(alphas: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, tuple[tuple[str, ...], Any]]]:
    """A genotype's recorded ``alphas`` (``{position: {kind: (6, K) lists}}``) with the candidate names of each kind
    (:data:`~monai_nasscam.networks.ops.OPS` order, the order of the cell's alphas)."""
    out: dict[str, dict[str, tuple[tuple[str, ...], Any]]] = {}
    for position, kinds in alphas.items():
        out[position] = {}
        for kind, rows in kinds.items():
            names = tuple(OPS[kind]) if kind in OPS else ()
            w = torch.as_tensor(rows, dtype=torch.float64)
            if w.ndim != 2 or w.shape[1] != len(names):
                raise ValueError(f"alphas of the {kind} cell at {position} must have shape (6, {len(names)}), got {tuple(w.shape)}.")
            out[position][kind] = (names, w)
    return out


def diagnose_genotype(genotype: Any, rule: VerdictRule | None = None) -> SearchDiagnostics:
    """:func:`diagnose` of a :class:`~monai_nasscam.networks.Genotype`'s recorded alphas, agreeing with the verdict
    its ``search`` section recorded during the search: the section's ``changed`` count (edges whose best operation
    changed since the validation before, which the alphas alone cannot tell), per cell and in total, its
    ``previous_decided`` share (whether the stability was checked; absent in files written before it existed: taken
    as checked when ``changed`` is a count), its ``rule`` (unless ``rule`` is given) and its ``epoch`` are used.
    Without a section (or with ``changed`` null), nothing is counted as changed and the reasons say the stability
    was not checked.

    Args:
        genotype: a :class:`~monai_nasscam.networks.Genotype` with recorded alphas.
        rule: the thresholds; default the section's ``rule``, else :class:`VerdictRule`.

    Raises:
        ValueError: the genotype records no alphas.
    """
    if not genotype.alphas:
        raise ValueError("the genotype records no alphas to diagnose.")
    search = genotype.search if isinstance(getattr(genotype, "search", None), Mapping) else {}
    if rule is None and isinstance(search.get("rule"), Mapping):
        rule = VerdictRule.from_dict(search["rule"])
    changed = search.get("changed")
    result = diagnose(
        genotype_weights(genotype.alphas),
        rule=rule,
        shared=not genotype.synchronous,
        epoch=search.get("epoch"),
        changed=None if changed is None else int(changed),
        previous_decided=search.get("previous_decided"),
    )
    modules = search.get("modules") if isinstance(search.get("modules"), Mapping) else {}
    for position, per in result.cells.items():
        for kind, cell in per.items():
            recorded = ((modules.get(position) or {}).get(kind) or {}).get("changed")
            cell.changed = None if recorded is None else int(recorded)
    return result
