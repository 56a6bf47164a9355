"""The verdict of a search's alphas: did the search choose? Its rule, the check of its stability and what to do after it.

The figures it judges (:mod:`monai_nasscam.networks.diagnostics`): the normalised entropy and the margin ``p1 - p2`` of
each edge's softmax weights, the share of edges whose best candidate is ``none``, the share of *decided* edges (margin
at least :data:`DECIDED_MARGIN`) and how many edges decided at the previous validation changed their best candidate.

The verdict (:class:`VerdictRule`, thresholds as module-level constants):

1. ``"collapsed"`` when some cell has all 6 edges decided on ``none`` (the cell outputs a constant: the
   attention module does nothing), or when one operation is the decided best operation on at least
   :data:`COLLAPSE_OP_SHARE` of the distinct edges of a cell kind over the whole network, counted only when the
   kind has at least :data:`COLLAPSE_MIN_EDGES` distinct edges (a synchronous search: 8 modules x 6 edges = 48).
   Only decided edges count: the argmax of near-uniform weights (an exactly uniform row's argmax is ``none``,
   the first candidate) is no choice, so an undecided search is never "collapsed". A shared (non-synchronous)
   search has one cell per kind, 6 distinct edges: the same operation on all 6 of them is a possible choice
   rather than evidence of a collapse, so only the all-``none`` rule applies there;
2. otherwise ``"converged"`` when at least :data:`CONVERGED_DECIDED_SHARE` of the distinct edges are decided, the
   stability was checked, and at most :data:`CONVERGED_MAX_CHANGED_SHARE` of the edges changed their best operation
   since the previous validation. The stability is checked only against a previous validation at which at least
   :data:`CONVERGED_DECIDED_SHARE` of the edges were decided too: the decided choices must hold across two
   validations with decided edges. A first validation, or one after a validation with few decided edges (e.g. in
   the warm-up, where the alphas do not move and no edge is decided, so that nothing can count as changed), is not
   ``converged``, and its reasons say ``stability not checked (...)`` (:data:`STABILITY_UNCHECKED`);
3. otherwise ``"not converged"``, with one reason per criterion not met.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DECIDED_MARGIN",
    "CONVERGED_DECIDED_SHARE",
    "CONVERGED_MAX_CHANGED_SHARE",
    "COLLAPSE_OP_SHARE",
    "COLLAPSE_MIN_EDGES",
    "NOT_CONVERGED",
    "CONVERGED",
    "COLLAPSED",
    "VERDICTS",
    "STABILITY_UNCHECKED",
    "VerdictRule",
    "stability_checked",
    "verdict_advice",
]

#: an edge is *decided* when the margin between its two best weights is at least this.
DECIDED_MARGIN = 0.05
#: ``converged`` needs at least this share of the distinct edges decided ...
CONVERGED_DECIDED_SHARE = 0.8
#: ... and at most this share of them with a best operation changed since the previous validation.
CONVERGED_MAX_CHANGED_SHARE = 0.1
#: ``collapsed`` when one operation is the best on at least this share of a kind's distinct edges ...
COLLAPSE_OP_SHARE = 0.9
#: ... counted only when the kind has at least this many distinct edges (a synchronous search has 48).
COLLAPSE_MIN_EDGES = 12

NOT_CONVERGED, CONVERGED, COLLAPSED = "not converged", "converged", "collapsed"
#: the possible verdicts.
VERDICTS: tuple[str, ...] = (NOT_CONVERGED, CONVERGED, COLLAPSED)
#: the start of the reason given when the stability was not checked (no previous validation, or too few edges
#: decided at the previous one): such a verdict is never ``converged``.
STABILITY_UNCHECKED = "stability not checked"


@dataclass(frozen=True)
class VerdictRule:
    """The thresholds of the verdict (see the module docstring).

    Args:
        decided_margin: an edge is decided when ``p1 - p2 >= decided_margin``.
        converged_decided_share: ``converged`` needs at least this share of decided edges.
        converged_max_changed_share: ``converged`` needs at most this share of edges with a changed best
            operation since the previous validation (ignored at the first validation).
        collapse_op_share: ``collapsed`` when one operation is the best on at least this share of a kind's edges.
        collapse_min_edges: ... counted only when the kind has at least this many distinct edges.
    """

    decided_margin: float = DECIDED_MARGIN
    converged_decided_share: float = CONVERGED_DECIDED_SHARE
    converged_max_changed_share: float = CONVERGED_MAX_CHANGED_SHARE
    collapse_op_share: float = COLLAPSE_OP_SHARE
    collapse_min_edges: int = COLLAPSE_MIN_EDGES

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerdictRule:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def stability_checked(changed: int | None, previous_decided: float | None, rule: VerdictRule | None = None) -> bool:
    """Whether a verdict's stability was checked: there was a previous validation (``changed`` is a count) and at
    least ``rule.converged_decided_share`` of the edges were decided at it, so that "changed" compared choices with
    choices.

    Args:
        changed: edges decided at the previous validation whose best operation changed since; ``None``: no previous
            validation.
        previous_decided: share of the edges decided at the previous validation, in [0, 1]; ``None`` with a
            ``changed`` count: not recorded (a genotype written before this figure existed), taken as checked.
        rule: the thresholds; default :class:`VerdictRule`.
    """
    if changed is None:
        return False
    rule = rule or VerdictRule()
    return previous_decided is None or previous_decided >= rule.converged_decided_share


def _unchecked_reason(changed: int | None, previous_decided: float | None, rule: VerdictRule) -> str:
    if changed is None:
        return f"{STABILITY_UNCHECKED} (one validation)"
    return (
        f"{STABILITY_UNCHECKED} (the previous validation decided {previous_decided:.1%} of the edges, "
        f"{rule.converged_decided_share:.0%} needed)"
    )


def verdict_advice(verdict: str, search: Any = None) -> str:
    """What to do after a search with this verdict, in one paragraph (the end of a search log).

    Args:
        verdict: one of :data:`VERDICTS`.
        search: the figures behind the verdict (a :class:`~monai_nasscam.networks.diagnostics.SearchDiagnostics`
            or a genotype's ``search`` section):
            for ``"not converged"``, the advice then names the criterion that failed (too few edges decided, or
            decided edges still changing); ``None``: the advice covers both.

    Raises:
        ValueError: an unknown verdict.
    """
    if verdict == CONVERGED:
        reproducible = (
            " This run decided; whether another seed decides the same, and whether the choice beats a random "
            "genotype, is what `nasscam compare --models nas-scam-p random --seeds 3` measures (on short searches "
            "the choice depends on the seed: docs/search.md)."
        )
        return "the alphas chose: retrain the derived network (train.yaml --genotype_path RUN/genotype.json)." + reproducible
    if verdict == COLLAPSED:
        return (
            "one operation took over: the genotype is degenerate (all-none cells make their attention module "
            "output a constant). Search again with a lower --arch_learning_rate, a longer --warmup_epochs (the weights "
            "learn before the alphas move) or alpha weight decay (--arch_optimizer#weight_decay 1e-3); if none took "
            "over, --exclude_none true derives the best operation other than none."
        )
    if verdict == NOT_CONVERGED:
        undecided = changing = unchecked = True
        if search is not None:
            rule = _get(search, "rule")
            rule = rule if isinstance(rule, VerdictRule) else VerdictRule.from_dict(rule or {})
            decided, changed, edges = _get(search, "decided"), _get(search, "changed"), _get(search, "edges")
            undecided = decided is None or decided < rule.converged_decided_share
            changing = changed is not None and bool(edges) and changed / edges > rule.converged_max_changed_share
            unchecked = not stability_checked(changed, _get(search, "previous_decided"), rule)
            if not (undecided or changing or unchecked):
                undecided = changing = unchecked = True  # figures that do not explain the verdict: all the advice
        parts = []
        if undecided:
            parts.append(
                "the alphas have not chosen yet: the operations derived on undecided edges are close to a random pick. "
                "Give the search more alpha steps (more --epochs after the warm-up, more --epoch_crops / "
                "--arch_epoch_crops), a higher alpha learning rate (--arch_learning_rate auto, or a value above the "
                "current one) or a shorter --warmup_epochs."
            )
        if changing:
            parts.append(
                "decided edges still change their best operation between validations: the choice has not settled. "
                "Search longer (more --epochs) so that it settles, or lower --arch_learning_rate if the choices "
                "keep flipping."
            )
        if unchecked:
            parts.append(
                "the stability of the choice was not checked: only one validation after the alphas decided (the "
                "first validation, or one after the warm-up, where no edge is decided, has nothing to compare with). "
                "Validate at least twice once the alphas decide (a smaller --val_interval, or more --epochs after "
                "--warmup_epochs); the genotype can be retrained (train.yaml --genotype_path RUN/genotype.json), but "
                "its choice is not shown to hold."
            )
        return " ".join(parts)
    raise ValueError(f"unknown verdict {verdict!r}; expected one of {list(VERDICTS)}.")


def _get(search: Any, key: str) -> Any:
    return search.get(key) if isinstance(search, Mapping) else getattr(search, key, None)
