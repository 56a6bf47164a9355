"""``nasscam compare``: the paper's Table 2 on a prepared dataset, through the bundle.

For every model and seed: search (NAS models) -> retrain -> evaluate, each a ``python -m monai.bundle run``
into ``OUT/MODEL/seedN/{search,train}``; finished steps are skipped, so an interrupted comparison resumes.
The ``random`` model asks whether the search paid: instead of a search it draws a uniformly random NAS-SCAM-P
genotype from the seed (``OUT/random/seedN/search/genotype.json``), then retrains and evaluates it exactly like
the searched models. Then ``OUT/table.md`` (per-class pooled Dice, mean +- sd across seeds, plus PQ; the paired
difference searched - random per seed with a 95 % interval across the seeds, and per test image with a 95 % bootstrap
interval over the test images; each search's verdict and the agreement of the seeds' derived operations
against chance), ``OUT/results.json``, ``OUT/MODEL/consensus_genotype.json`` (majority vote over the seeds of a
searched model), ``OUT/dice_bars.png`` and ``OUT/panel.png`` (image | ground truth | each model, as the paper's
Fig. 3).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.data.classes import BACKGROUND_COLOR, CLASS_COLORS, CLASS_NAMES
from monai_nasscam.errors import MissingInputError, RunInterrupted
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.metrics.paired import image_differences, seed_interval
from monai_nasscam.networks.attentions import get_attention, registered_attentions
from monai_nasscam.networks.genotype import Genotype, agreement, consensus, random_genotype
from monai_nasscam.runlock import claim_output_dir
from monai_nasscam.workflow import interrupt_workflows, run_workflow

__all__ = [
    "MODELS",
    "INSTANCE_SUMMARY",
    "RANDOM_MODELS",
    "comparison_models",
    "run_comparison",
    "summarize",
    "architectures",
    "paired_differences",
    "table_markdown",
    "write_random_genotype",
]

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
# the palette of class maps in figures: background, then CLASS_NAMES order
PALETTE = np.array([BACKGROUND_COLOR] + [CLASS_COLORS[i + 1] for i in range(len(CLASS_NAMES))], dtype=np.uint8)


def _train_overrides(model: str, run_dir: Path, dataset_dir: str, seed: int, common: Mapping, train: Mapping) -> dict:
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


def run_comparison(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    models: Sequence[str] = tuple(MODELS),
    seeds: Sequence[int] = (0, 1, 2),
    common: Mapping[str, Any] | None = None,
    search: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    evaluate: Mapping[str, Any] | None = None,
    quiet: bool = True,
    echo=print,
    jobs: int = 1,
) -> dict[str, Any]:
    """Search, retrain and evaluate ``models`` x ``seeds``; write the table and figures; return the summary.

    Args:
        dataset_dir: a prepared dataset (``nasscam prepare``).
        output_dir: where every run and the report go.
        models: keys of :data:`MODELS`; ``random`` retrains a random genotype per seed (no search) with the same
            train and evaluate overrides as the searched models.
        seeds: one full run per seed.
        common: overrides for every workflow (e.g. ``roi_size``, ``features``, ``num_workers``).
        search: overrides for the search (train.yaml + search.yaml) only (e.g. ``epochs``, ``warmup_epochs``).
        train: overrides for train.yaml only (e.g. ``epochs``, ``epoch_crops``); the evaluation reuses them.
        evaluate: overrides for evaluate.yaml only (e.g. ``eval_split``).
        quiet: write each workflow's output to its ``workflow.log`` instead of the terminal.
        echo: receives one progress line per step.
        jobs: model x seed runs at a time, each its own chain of workflow processes (a GPU with memory for
            several runs; on a CPU, limit each run's threads with ``OMP_NUM_THREADS``).

    Returns:
        The per-model summary of :func:`summarize`. ``OUT/results.json`` holds it with the settings, every run's
        metrics, ``architectures`` (:func:`architectures`) and ``paired`` (:func:`paired_differences`).

    Raises:
        ValueError: an unknown model or ``jobs`` < 1.
        MissingInputError: ``dataset_dir`` (a ``FileNotFoundError``) does not exist or has no ``datalist.json``.
        OutputDirInUse: another comparison is writing into ``output_dir`` (:mod:`monai_nasscam.runlock`).
        WorkflowError: a workflow failed (after every other run went on to its end).
        RunInterrupted: Ctrl-C; the running workflows were stopped (a search or training saves its checkpoint).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}.")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}.")
    dataset_dir, output_dir = str(Path(dataset_dir).resolve()), Path(output_dir).resolve()
    if not Path(dataset_dir).is_dir():
        raise MissingInputError(f"dataset folder {dataset_dir} does not exist; `nasscam prepare` writes one.")
    if not (Path(dataset_dir) / "datalist.json").is_file():
        raise MissingInputError(f"{dataset_dir} has no datalist.json; run `nasscam prepare` first.")
    common, search, train, evaluate = dict(common or {}), dict(search or {}), dict(train or {}), dict(evaluate or {})
    pairs = [(m, s) for m in models for s in seeds]

    def run_one(i: int, model: str, seed: int) -> dict:
        label, _, search_choice = MODELS[model]
        run_dir = output_dir / model / f"seed{seed}"
        echo(f"[{i + 1}/{len(pairs)}] {label}, seed {seed}: {run_dir}")
        if search_choice is not None:
            overrides = {"dataset_dir": dataset_dir, "seed": seed, **search_choice, **common, **search}
            run_workflow(["train.yaml", "search.yaml"], overrides, run_dir / "search", quiet=quiet)
        elif model in RANDOM_MODELS:
            write_random_genotype(run_dir / "search" / "genotype.json", model, seed)
        overrides = _train_overrides(model, run_dir, dataset_dir, seed, common, train)
        run_workflow(["train.yaml"], overrides, run_dir / "train", quiet=quiet)
        run_workflow(["train.yaml", "evaluate.yaml"], {**overrides, **evaluate}, run_dir / "train", "evaluate.log", quiet)
        return json.loads((run_dir / "train" / "metrics.json").read_text())

    with claim_output_dir(output_dir, "compare"):
        metrics = _run_all(run_one, pairs, jobs)
        return _report(output_dir, dataset_dir, models, seeds, pairs, metrics, common, search, train, evaluate)


def _run_all(run_one: Any, pairs: list[tuple[str, int]], jobs: int) -> list[dict]:
    """``run_one(i, model, seed)`` for every pair, ``jobs`` at a time; every run goes on to its end, then the first
    failure, if any, is raised. A Ctrl-C cancels the runs not started, passes the interrupt on to the running
    workflows (:func:`~monai_nasscam.workflow.interrupt_workflows`), waits for them and raises
    :class:`~monai_nasscam.errors.RunInterrupted`."""
    if jobs == 1:
        return [run_one(i, m, s) for i, (m, s) in enumerate(pairs)]
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(run_one, i, m, s) for i, (m, s) in enumerate(pairs)]
    interrupted = False
    while True:
        try:
            wait(futures)
            break
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
            interrupt_workflows()
    pool.shutdown()
    if interrupted:
        raise RunInterrupted(
            "interrupted: the running workflows stopped; finished runs are kept, and the same command continues "
            "(an interrupted search or training resumes from its checkpoint)."
        )
    return [f.result() for f in futures]


def _report(
    output_dir: Path, dataset_dir: str, models: Sequence[str], seeds: Sequence[int], pairs: list[tuple[str, int]],
    metrics: list[dict], common: dict, search: dict, train: dict, evaluate: dict,
) -> dict[str, Any]:
    """Write ``results.json``, ``table.md``, the consensus genotypes and the figures of finished runs; returns the
    summary (see :func:`run_comparison`)."""
    results: dict[str, dict[str, Any]] = {}
    for (model, seed), run_metrics in zip(pairs, metrics):
        results.setdefault(model, {})[str(seed)] = run_metrics
    summary = summarize(results)
    archs = architectures(output_dir, models, seeds)
    for model, row in archs.items():  # the majority vote over the seeds of a search
        if row["searched"] and len(row["genotypes"]) >= 2:
            path = output_dir / model / "consensus_genotype.json"
            consensus([Genotype.load(output_dir / g) for g in row["genotypes"].values()]).save(path)
            row["consensus"] = str(path.relative_to(output_dir))
    paired = paired_differences(results)
    settings = {"dataset_dir": dataset_dir, "seeds": list(seeds), "common": common, "search": search, "train": train, "evaluate": evaluate}
    report = {"settings": settings, "summary": summary, "runs": results, "architectures": archs, "paired": paired}
    atomic_write_text(output_dir / "results.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(output_dir / "table.md", table_markdown(summary, settings, archs, paired))
    plot_dice_bars(summary, output_dir / "dice_bars.png")
    plot_panel(dataset_dir, output_dir, models, seeds[0], common, train, output_dir / "panel.png")
    return summary


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
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
                key: dict(zip(("mean", "sd"), _mean_sd([r.get(metric, {}).get(key) for r in runs.values()])))
                for key in (*CLASS_NAMES, "mean")
            }
        row["instance"] = {
            key: dict(zip(("mean", "sd"), _mean_sd([_instance_value(r.get(key)) for r in runs.values()])))
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
            mean, sd = _mean_sd(list(diffs.values()))
            row[metric] = {"per_seed": diffs, "mean": mean, "sd": sd, "interval": seed_interval(list(diffs.values()))}
        row["dice_per_image"] = image_differences(runs, base, seeds)
        out[model] = row
    return out


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


def plot_dice_bars(summary: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per-class and mean Dice of each model, with the sd across seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*CLASS_NAMES, "mean")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) * max(1, len(summary)) / 3), 4), dpi=100)
    width = 0.8 / max(1, len(summary))
    for i, row in enumerate(summary.values()):
        # an undefined value (no seed scored the class) is no bar, not a bar at 0
        means = [np.nan if row["dice"][k]["mean"] is None else 100 * row["dice"][k]["mean"] for k in keys]
        sds = [0.0 if row["dice"][k]["sd"] is None else 100 * row["dice"][k]["sd"] for k in keys]
        ax.bar(np.arange(len(keys)) + (i - (len(summary) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=row["label"])
    ax.set_xticks(np.arange(len(keys)), keys)
    ax.set_ylabel("pooled Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Dice per class, mean ± sd across seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def colorize(class_map: np.ndarray) -> np.ndarray:
    """An RGB picture of a class map (0 background, 1-4 the classes)."""
    return PALETTE[np.clip(class_map, 0, len(PALETTE) - 1)]


def _pick_test_image(entries: list[dict], dataset_dir: Path) -> dict:
    """The test image showing the most classes (then the most labelled pixels)."""
    from PIL import Image

    def score(entry):
        label = np.asarray(Image.open(dataset_dir / entry["label"]))
        return len(set(np.unique(label).tolist()) - {0}), int((label > 0).sum())

    return max(entries, key=score)


def plot_panel(dataset_dir, output_dir: Path, models: Sequence[str], seed: int, common, train, path: Path) -> None:
    """Fig. 3 style: one test image, its ground truth, and each model's prediction (seed ``seed``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from monai.inferers import SlidingWindowInferer
    from PIL import Image

    from monai_nasscam.data.datalist import split_entries
    from monai_nasscam.networks.run_folder import build_network

    dataset_dir = Path(dataset_dir)
    entries = split_entries(dataset_dir, "test") or split_entries(dataset_dir, "validation")
    entry = _pick_test_image(entries, dataset_dir)
    image = np.asarray(Image.open(dataset_dir / entry["image"]).convert("RGB"))
    truth = np.asarray(Image.open(dataset_dir / entry["label"]))
    roi = [int(r) for r in common.get("roi_size", train.get("roi_size", [256, 256]))]
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=4, overlap=0.5, cval=1.0)
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    panels = [("image", image), ("ground truth", colorize(truth))]
    for model in models:
        run_dir = output_dir / model / f"seed{seed}"
        overrides = _train_overrides(model, run_dir, str(dataset_dir), seed, common, train)
        kwargs = {k: overrides[k] for k in ("features",) if k in overrides}
        net = build_network(overrides.get("attention"), overrides.get("genotype_path"), **kwargs)
        net.load_state_dict(torch.load(run_dir / "train" / "models" / "model.pt", map_location="cpu", weights_only=True))
        with torch.inference_mode():
            prob = torch.sigmoid(inferer(x, net.eval()))[0].numpy()
        pred = np.where(prob.max(0) > 0.5, prob.argmax(0) + 1, 0)
        panels.append((MODELS[model][0], colorize(pred)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), dpi=100)
    for ax, (title, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[i + 1] / 255) for i in range(len(CLASS_NAMES))]
    fig.legend(handles, CLASS_NAMES, loc="lower center", ncol=len(CLASS_NAMES), fontsize=7, frameon=False)
    fig.suptitle(f"{entry['name']} (test)", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
