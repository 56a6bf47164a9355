"""The models of ``nasscam compare``: which are compared (from the attention registry), how each one's retraining is
chosen, and the random genotypes that ask whether the search paid."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_nasscam.networks.attentions import get_attention, registered_attentions
from monai_nasscam.networks.genotype import Genotype, random_genotype

__all__ = ["MODELS", "RANDOM_MODELS", "BASELINE", "comparison_models", "train_overrides", "write_random_genotype"]

#: models that draw their genotype instead of searching it: model key -> random_genotype arguments (and the seed)
RANDOM_MODELS: dict[str, dict[str, Any]] = {"random": {"attention": "nas-scam-p", "synchronous": True}}


def comparison_models() -> dict[str, tuple[str, str | None, dict[str, Any] | None]]:
    """The models of the comparison, from the attention registry (:mod:`monai_nasscam.networks.attentions`, the
    entries with ``compare``): every baseline under its public name (retrained as is), every searchable attention
    searched with its own alphas per module (``nas-scam-p``) and with one set for all 8 (``nas-scam-p-shared``), then
    the :data:`RANDOM_MODELS`.

    Returns:
        model key -> (label in the table, train.yaml attention or ``None``, search overrides or ``None``).
    """
    entries = [entry for entry in registered_attentions() if entry.compare]
    models: dict[str, tuple[str, str | None, dict[str, Any] | None]] = {
        entry.public_name: (entry.label, entry.public_name, None) for entry in entries if not entry.searchable
    }
    for synchronous, suffix, what in ((True, "", "synchronous"), (False, "-shared", "non-synchronous")):
        for entry in entries:
            if entry.searchable:
                search = {"attention": entry.name, "synchronous": synchronous}
                models[entry.name + suffix] = (f"{entry.label} ({what})", None, search)
    for key, drawn in RANDOM_MODELS.items():
        models[key] = (f"Random genotype ({get_attention(drawn['attention']).label})", None, None)
    return models


#: model key -> (label in the table, train.yaml attention or None, search overrides or None); see
#: :func:`comparison_models` (the registry's attentions when this module is imported).
MODELS: dict[str, tuple[str, str | None, dict[str, Any] | None]] = comparison_models()
#: the model that searched models are paired with, seed by seed
BASELINE = "random"


def train_overrides(model: str, run_dir: Path, dataset_dir: str, seed: int, common: Mapping, train: Mapping) -> dict:
    """The train.yaml (and evaluate.yaml) overrides of ``model``'s run in ``run_dir``: its baseline ``attention``, or
    the genotype its search (or draw) wrote to ``run_dir/search/genotype.json``."""
    attention = MODELS[model][1]
    choice = {"attention": attention} if attention else {"genotype_path": str(run_dir / "search" / "genotype.json")}
    return {"dataset_dir": dataset_dir, "seed": seed, **choice, **common, **train}


def write_random_genotype(path: str | os.PathLike, model: str, seed: int) -> Genotype:
    """Write the random genotype of ``model`` (a key of :data:`RANDOM_MODELS`) for ``seed`` to ``path``.

    The draw depends only on the model and the seed (:func:`~monai_nasscam.networks.genotype.random_genotype`),
    so an existing file is kept when it holds that draw, which lets an interrupted comparison resume.

    Args:
        path: the genotype JSON to write (atomically).
        model: a key of :data:`RANDOM_MODELS`.
        seed: the run's seed, also the draw's.

    Returns:
        The genotype.

    Raises:
        ValueError: ``path`` exists and holds another genotype (it is not overwritten: delete it, and the run's
            ``train`` folder, to draw again).
    """
    genotype = random_genotype(seed=int(seed), **RANDOM_MODELS[model])
    path = Path(path)
    if path.is_file():
        existing = Genotype.load(path)
        if (existing.attention, existing.synchronous, existing.modules) != (genotype.attention, genotype.synchronous, genotype.modules):
            raise ValueError(
                f"{path} is not the random genotype of seed {seed}; delete it and {path.parent.parent / 'train'} to draw again."
            )
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    genotype.save(path)
    return genotype
