"""The report of ``nasscam compare`` as Markdown (``OUT/table.md``): the paper's Table 2, the paired differences and the
derived architectures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from monai_nasscam.compare.models import MODELS
from monai_nasscam.compare.summary import INSTANCE_SUMMARY
from monai_nasscam.data.classes import CLASS_NAMES

__all__ = ["table_markdown"]


def _pct(stat: Mapping[str, float | None], sd: bool = False) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}" if sd else f"{100 * stat['mean']:.2f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def _paired_lines(summary: Mapping[str, Any], paired: Mapping[str, Any]) -> list[str]:
    baseline = next(iter(paired.values()))["against"]
    label = summary.get(baseline, {}).get("label", MODELS.get(baseline, (baseline,))[0])
    lines = [
        "", f"## Did the search pay? Searched minus {label}, paired by seed", "",
        "| model | seeds | Dice difference per seed | Dice difference mean ± sd | 95% interval across seeds "
        "| per test image: difference [95% interval] per seed | per test image, all seeds | PQ difference per seed "
        "| PQ difference mean ± sd | 95% interval across seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, row in paired.items():
        cells = [summary.get(model, {}).get("label", MODELS[model][0]), str(len(row["dice"]["per_seed"]))]
        for metric in ("dice", "pq"):
            stat = row[metric]
            cells.append(", ".join(f"{s}: {_signed(d)}" for s, d in stat["per_seed"].items()) or "–")
            cells.append("–" if stat["mean"] is None else f"{_signed(stat['mean'])} ± {100 * stat['sd']:.2f}")
            cells.append(_interval(stat.get("interval")))
            if metric == "dice":
                images = row.get("dice_per_image")
                per_seed = (images or {}).get("per_seed", {})
                per_seed_text = [f"{s}: {_signed(b['difference'])} {_interval(b['interval'])}" for s, b in per_seed.items()]
                cells.append(", ".join(per_seed_text) or "–")
                every = (images or {}).get("all_seeds")
                every_text = every and f"{_signed(every['difference'])} {_interval(every['interval'])} ({every['images']} images)"
                cells.append(every_text or "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean pooled Dice and mean PQ in points (%): the searched model's minus that of the {label} of the "
              "same seed, retrained and evaluated with the same settings; mean ± sd across the seeds. Positive: the "
              "searched genotype did better than a random one. Intervals (95%): across seeds, the Student-t interval of "
              "the mean difference (the seeds as independent searches and retrainings; none for one seed); per test "
              "image, a percentile bootstrap over the test images (both models on the same resampled images, Dice "
              "counts pooled; all seeds: the difference averaged over the seeds), which says whether a difference "
              "holds on other images, for these trained networks. A difference is clear when its interval excludes 0."]
    return lines


def _interval(interval: Sequence[float] | None) -> str:
    return "–" if not interval else f"[{_signed(interval[0])}, {_signed(interval[1])}]"


def _architecture_lines(archs: Mapping[str, Any]) -> list[str]:
    kinds = ("sam", "cam")
    lines = [
        "", "## Derived architectures across seeds", "",
        "| model | search verdict per seed | SAM agreement (chance) | CAM agreement (chance) | consensus genotype |",
        "|---|---|---|---|---|",
    ]
    for row in archs.values():
        if row["searched"]:
            verdicts = ", ".join(f"{s}: {v or 'unknown'}" for s, v in row["verdicts"].items()) or "–"
        else:
            verdicts = "not searched (random)"
        cells = [row["label"], verdicts]
        for kind in kinds:
            stat = (row["agreement"] or {}).get(kind)
            cells.append("–" if stat is None else f"{100 * stat['pairwise']:.1f}% ({100 * stat['chance']:.1f}%)")
        cells.append(f"`{row['consensus']}`" if row["consensus"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Verdict: the search's own judgement recorded in its genotype.json (converged, not converged or "
              "collapsed; unknown when the file records none). Agreement: for each cell kind, the share of "
              "(module, edge) slots on which two seeds derived the same operation, averaged over every pair of "
              "seeds; chance is 1/K for K candidate operations (1/6 SAM, 1/8 CAM), what independent uniform draws "
              "give, and the random genotypes' row measures it. Consensus: the majority vote of the seeds on every "
              "edge (a tie goes to the highest mean softmax weight, then to the lowest seed)."]
    return lines


def table_markdown(
    summary: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    architectures: Mapping[str, Any] | None = None,
    paired: Mapping[str, Any] | None = None,
) -> str:
    """The comparison as Markdown: the table of Dice and PQ in % (mean ± sd across seeds for the means), then,
    when given, the paired differences against the random genotypes (:func:`paired_differences`) and the derived
    architectures' verdicts, agreement and consensus (:func:`architectures`)."""
    head = "| model | seeds | Dice mean ± sd | " + " | ".join(CLASS_NAMES) + " | PQ mean ± sd |"
    lines = ["# Comparison (the paper's Table 2)", "", head, "|" + "---|" * (len(CLASS_NAMES) + 4)]
    for row in summary.values():
        classes = " | ".join(_pct(row["dice"][c]) for c in CLASS_NAMES)
        lines.append(f"| {row['label']} | {row['seeds']} | {_pct(row['dice']['mean'], True)} | {classes} | {_pct(row['pq']['mean'], True)} |")
    instances = sorted({i for row in summary.values() for i in row.get("instances", [])})
    lines += ["", "Dice: per class, pooled over the evaluated split; class values are means across seeds. "
              "PQ: correct panoptic quality, mean over classes"
              + (f"; {' / '.join(instances)}." if instances else ".")]
    if any(stat["mean"] is not None for row in summary.values() for stat in row.get("instance", {}).values()):
        lines += ["", "Instance metrics in % (mean ± sd across seeds; F1 classification: mean over classes):", "",
                  "| model | " + " | ".join(INSTANCE_SUMMARY.values()) + " |", "|---|" + "---|" * len(INSTANCE_SUMMARY)]
        for row in summary.values():
            lines.append(f"| {row['label']} | " + " | ".join(_pct(row["instance"][k], True) for k in INSTANCE_SUMMARY) + " |")
    if paired:
        lines += _paired_lines(summary, paired)
    if architectures:
        lines += _architecture_lines(architectures)
    if settings:
        lines += ["", "Settings:", "", "```json", json.dumps(settings, indent=1), "```"]
    return "\n".join(lines) + "\n"
