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

The package: running the runs (here), the models (:mod:`~monai_nasscam.compare.models`), the statistics
(:mod:`~monai_nasscam.compare.summary`), the Markdown table (:mod:`~monai_nasscam.compare.table`) and the figures
(:mod:`~monai_nasscam.compare.figures`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from monai_nasscam.compare.figures import plot_dice_bars, plot_panel
from monai_nasscam.compare.models import (
    BASELINE,
    MODELS,
    RANDOM_MODELS,
    comparison_models,
    train_overrides,
    write_random_genotype,
)
from monai_nasscam.compare.summary import INSTANCE_SUMMARY, architectures, paired_differences, summarize
from monai_nasscam.compare.table import table_markdown
from monai_nasscam.errors import MissingInputError
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.genotype import Genotype, consensus
from monai_nasscam.runlock import claim_output_dir
from monai_nasscam.workflow import run_concurrently, run_workflow

__all__ = [
    "BASELINE",
    "MODELS",
    "INSTANCE_SUMMARY",
    "RANDOM_MODELS",
    "comparison_models",
    "run_comparison",
    "summarize",
    "architectures",
    "paired_differences",
    "plot_dice_bars",
    "plot_panel",
    "table_markdown",
    "write_random_genotype",
]


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
    lock = threading.Lock()  # with jobs > 1, one progress line at a time (print writes a line and its end apart)

    def run_one(i: int, model: str, seed: int) -> dict:
        label, _, search_choice = MODELS[model]
        run_dir = output_dir / model / f"seed{seed}"
        with lock:
            echo(f"[{i + 1}/{len(pairs)}] {label}, seed {seed}: {run_dir}")
        if search_choice is not None:
            overrides = {"dataset_dir": dataset_dir, "seed": seed, **search_choice, **common, **search}
            run_workflow(["train.yaml", "search.yaml"], overrides, run_dir / "search", quiet=quiet)
        elif model in RANDOM_MODELS:
            write_random_genotype(run_dir / "search" / "genotype.json", model, seed)
        overrides = train_overrides(model, run_dir, dataset_dir, seed, common, train)
        run_workflow(["train.yaml"], overrides, run_dir / "train", quiet=quiet)
        run_workflow(["train.yaml", "evaluate.yaml"], {**overrides, **evaluate}, run_dir / "train", "evaluate.log", quiet)
        return json.loads((run_dir / "train" / "metrics.json").read_text())

    with claim_output_dir(output_dir, "compare"):
        metrics = run_concurrently([partial(run_one, i, m, s) for i, (m, s) in enumerate(pairs)], jobs)
        return _report(output_dir, dataset_dir, models, seeds, pairs, metrics, common, search, train, evaluate)


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
