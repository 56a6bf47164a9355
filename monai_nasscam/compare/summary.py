"""The statistics of ``nasscam compare``: per model, the metrics across seeds; the searched models paired with the
random genotypes, seed by seed; the derived architectures compared across seeds."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_nasscam.compare.models import BASELINE, MODELS, RANDOM_MODELS
from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.metrics.paired import image_differences, seed_interval
from monai_nasscam.networks.genotype import Genotype, agreement

__all__ = ["INSTANCE_SUMMARY", "summarize", "architectures", "paired_differences", "mean_sd"]


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the numbers among ``values`` (0.0 for one, ``(None, None)`` for none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per model: mean and standard deviation across seeds of each class's and the mean pooled Dice and PQ, and of
    the instance metrics (:data:`INSTANCE_SUMMARY`; ``None`` where no run's ``metrics.json`` has them: files written
    before they existed); ``instances``: how each run's PQ cut nuclei (its ``protocol.pq``), the distinct values."""
    summary = {}
    for model, runs in results.items():
        row: dict[str, Any] = {"label": MODELS[model][0], "seeds": len(runs)}
        for metric in ("dice", "pq"):
            row[metric] = {
                key: dict(zip(("mean", "sd"), mean_sd([r.get(metric, {}).get(key) for r in runs.values()])))
                for key in (*CLASS_NAMES, "mean")
            }
        row["instance"] = {
            key: dict(zip(("mean", "sd"), mean_sd([_instance_value(r.get(key)) for r in runs.values()])))
            for key in INSTANCE_SUMMARY
        }
        row["instances"] = sorted({str(r.get("protocol", {}).get("pq")) for r in runs.values() if r.get("protocol", {}).get("pq")})
        summary[model] = row
    return summary


#: instance metrics of ``metrics.json`` summarised across seeds (``f1_classification``: its mean over classes)
INSTANCE_SUMMARY = {"aji": "AJI", "f1_detection": "F1 detection", "f1_classification": "F1 classification", "mpq_plus": "mPQ+"}


def _instance_value(value: Any) -> float | None:
    """A scalar instance metric, or the ``mean`` of a per-class one; ``None`` when absent."""
    if isinstance(value, Mapping):
        value = value.get("mean")
    return None if value is None else float(value)


def _verdict(data: Any) -> str | None:
    """The search's verdict recorded in a genotype's JSON (``search.verdict``), ``None`` when it has none."""
    search = data.get("search") if isinstance(data, Mapping) else None
    verdict = search.get("verdict") if isinstance(search, Mapping) else None
    return verdict if isinstance(verdict, str) else None


def architectures(output_dir: str | os.PathLike, models: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """The genotypes of a comparison's searched and random models, compared across seeds.

    Args:
        output_dir: the comparison's folder (``OUT``); genotypes are read from ``OUT/MODEL/seedN/search/genotype.json``.
        models: keys of :data:`MODELS`; those without a genotype (the fixed baselines) are left out.
        seeds: the seeds to read; a seed without a genotype file is left out.

    Returns:
        Per model: ``label``; ``searched`` (``False`` for random genotypes); ``genotypes`` (seed -> file, relative
        to ``output_dir``); ``verdicts`` (seed -> the search's ``search.verdict``, "converged", "not converged" or
        "collapsed", ``None`` when the genotype records none or was drawn); ``agreement``
        (:func:`~monai_nasscam.networks.genotype.agreement` of the seeds' genotypes, ``None`` under 2 seeds);
        ``consensus`` (``None``; :func:`run_comparison` sets it to the consensus genotype file it writes).

    Raises:
        ValueError: a genotype file is not valid JSON or not a valid genotype (the message names the file).
    """
    output_dir = Path(output_dir)
    out: dict[str, Any] = {}
    for model in models:
        searched = MODELS[model][2] is not None
        if not searched and model not in RANDOM_MODELS:
            continue
        files, verdicts, genotypes = {}, {}, []
        for seed in seeds:
            path = output_dir / model / f"seed{seed}" / "search" / "genotype.json"
            if not path.is_file():
                continue
            genotypes.append(Genotype.load(path))
            files[str(seed)] = str(path.relative_to(output_dir))
            verdicts[str(seed)] = _verdict(json.loads(path.read_text())) if searched else None
        out[model] = {
            "label": MODELS[model][0],
            "searched": searched,
            "genotypes": files,
            "verdicts": verdicts,
            "agreement": agreement(genotypes) if len(genotypes) >= 2 else None,
            "consensus": None,
        }
    return out


def paired_differences(results: Mapping[str, Mapping[str, Mapping[str, Any]]], baseline: str = BASELINE) -> dict[str, Any]:
    """Seed by seed, each searched model's mean pooled Dice and PQ minus the ``baseline`` model's.

    Runs of the same seed share the data order and the retraining budget, so the paired difference isolates the
    architecture: is the searched genotype better than a random one (the default ``baseline``)?

    Args:
        results: model -> seed (str) -> that run's ``metrics.json`` (``{"dice": {"mean": ...}, "pq": {...}}``).
        baseline: the model subtracted; nothing is paired when it is not in ``results``.

    Returns:
        Per searched model (a :data:`MODELS` entry with search overrides): ``{"against": baseline, "seeds": [...],
        "dice": {"per_seed": {seed: difference}, "mean": ..., "sd": ..., "interval": [low, high]}, "pq": {...},
        "dice_per_image": ...}``, differences as fractions (0.01 is one point of Dice), mean and sample sd across the
        seeds where both runs have the metric (sd 0.0 for one seed, ``None`` for none), ``interval`` the 95 %
        :func:`seed_interval` (``None`` under 2 seeds); ``dice_per_image``: per seed and over all seeds, the
        difference of the mean pooled Dice with a 95 % bootstrap interval over the test images
        (:func:`monai_nasscam.metrics.paired.image_bootstrap`, from ``metrics.json``'s ``per_image`` counts; ``None``
        without them).
    """
    if baseline not in results:
        return {}
    base = results[baseline]
    out: dict[str, Any] = {}
    for model, runs in results.items():
        if model == baseline or model not in MODELS or MODELS[model][2] is None:
            continue
        seeds = [s for s in runs if s in base]
        row: dict[str, Any] = {"against": baseline, "seeds": [int(s) if s.isdigit() else s for s in seeds]}
        for metric in ("dice", "pq"):
            diffs = {}
            for s in seeds:
                a, b = (runs[s].get(metric) or {}).get("mean"), (base[s].get(metric) or {}).get("mean")
                if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)):
                    diffs[s] = a - b
            mean, sd = mean_sd(list(diffs.values()))
            row[metric] = {"per_seed": diffs, "mean": mean, "sd": sd, "interval": seed_interval(list(diffs.values()))}
        row["dice_per_image"] = image_differences(runs, base, seeds)
        out[model] = row
    return out
