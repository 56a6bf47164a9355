"""``nasscam compare``: the paper's Table 2 (SPEC.md §8) on a prepared dataset, through the bundle.

For every model and seed: search (NAS models) -> retrain -> evaluate, each a ``python -m monai.bundle run``
into ``OUT/MODEL/seedN/{search,train}``; finished steps are skipped, so an interrupted comparison resumes.
Then ``OUT/table.md`` (per-class pooled Dice, mean +- sd across seeds, plus PQ), ``OUT/results.json``,
``OUT/dice_bars.png`` and ``OUT/panel.png`` (image | ground truth | each model, as the paper's Fig. 3).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.workflow import run_workflow

__all__ = ["MODELS", "run_comparison", "summarize", "table_markdown"]

#: model key -> (label in the table, train.yaml attention or None, search overrides or None)
MODELS: dict[str, tuple[str, str | None, dict[str, Any] | None]] = {
    "unet": ("U-Net", "unet", None),
    "deeplabv3plus": ("DeepLab V3+", "deeplabv3plus", None),
    "cbam": ("U-Net + CBAM", "cbam", None),
    "scse": ("U-Net + scSE", "scse", None),
    "nas-scam-s": ("NAS-SCAM-S (synchronous)", None, {"attention": "nas-scam-s", "synchronous": True}),
    "nas-scam-p": ("NAS-SCAM-P (synchronous)", None, {"attention": "nas-scam-p", "synchronous": True}),
    "nas-scam-s-shared": ("NAS-SCAM-S (non-synchronous)", None, {"attention": "nas-scam-s", "synchronous": False}),
    "nas-scam-p-shared": ("NAS-SCAM-P (non-synchronous)", None, {"attention": "nas-scam-p", "synchronous": False}),
}
# the palette of class maps in figures: background, then CLASS_NAMES order
PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 120, 230], [250, 200, 40], [60, 200, 90]], dtype=np.uint8)


def _train_overrides(model: str, run_dir: Path, dataset_dir: str, seed: int, common: Mapping, train: Mapping) -> dict:
    attention = MODELS[model][1]
    choice = {"attention": attention} if attention else {"genotype_path": str(run_dir / "search" / "genotype.json")}
    return {"dataset_dir": dataset_dir, "seed": seed, **choice, **common, **train}


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
        models: keys of :data:`MODELS`.
        seeds: one full run per seed.
        common: overrides for every workflow (e.g. ``roi_size``, ``features``, ``num_workers``).
        search: overrides for search.yaml only (e.g. ``epochs``, ``warmup_epochs``).
        train: overrides for train.yaml only (e.g. ``epochs``, ``epoch_crops``); the evaluation reuses them.
        evaluate: overrides for evaluate.yaml only (e.g. ``eval_split``).
        quiet: write each workflow's output to its ``workflow.log`` instead of the terminal.
        echo: receives one progress line per step.
        jobs: model x seed runs at a time, each its own chain of workflow processes (a GPU with memory for
            several runs; on a CPU, limit each run's threads with ``OMP_NUM_THREADS``).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}.")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}.")
    dataset_dir, output_dir = str(Path(dataset_dir).resolve()), Path(output_dir).resolve()
    if not (Path(dataset_dir) / "datalist.json").is_file():
        raise FileNotFoundError(f"{dataset_dir} has no datalist.json; run `nasscam prepare` first.")
    common, search, train, evaluate = dict(common or {}), dict(search or {}), dict(train or {}), dict(evaluate or {})
    pairs = [(m, s) for m in models for s in seeds]

    def run_one(i: int, model: str, seed: int) -> dict:
        label, _, search_choice = MODELS[model]
        run_dir = output_dir / model / f"seed{seed}"
        echo(f"[{i + 1}/{len(pairs)}] {label}, seed {seed}: {run_dir}")
        if search_choice is not None:
            overrides = {"dataset_dir": dataset_dir, "seed": seed, **search_choice, **common, **search}
            run_workflow(["search.yaml"], overrides, run_dir / "search", quiet=quiet)
        overrides = _train_overrides(model, run_dir, dataset_dir, seed, common, train)
        run_workflow(["train.yaml"], overrides, run_dir / "train", quiet=quiet)
        run_workflow(["train.yaml", "evaluate.yaml"], {**overrides, **evaluate}, run_dir / "train", "evaluate.log", quiet)
        return json.loads((run_dir / "train" / "metrics.json").read_text())

    if jobs > 1:  # every run goes on to its end; then the first failure, if any, is raised
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, i, m, s) for i, (m, s) in enumerate(pairs)]
        metrics = [f.result() for f in futures]
    else:
        metrics = [run_one(i, m, s) for i, (m, s) in enumerate(pairs)]
    results: dict[str, dict[str, Any]] = {}
    for (model, seed), run_metrics in zip(pairs, metrics):
        results.setdefault(model, {})[str(seed)] = run_metrics
    summary = summarize(results)
    settings = {"dataset_dir": dataset_dir, "seeds": list(seeds), "common": common, "search": search, "train": train, "evaluate": evaluate}
    (output_dir / "results.json").write_text(json.dumps({"settings": settings, "summary": summary, "runs": results}, indent=1))
    (output_dir / "table.md").write_text(table_markdown(summary, settings))
    plot_dice_bars(summary, output_dir / "dice_bars.png")
    plot_panel(dataset_dir, output_dir, models, seeds[0], common, train, output_dir / "panel.png")
    return summary


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per model: mean and standard deviation across seeds of each class's and the mean pooled Dice and PQ."""
    summary = {}
    for model, runs in results.items():
        row: dict[str, Any] = {"label": MODELS[model][0], "seeds": len(runs)}
        for metric in ("dice", "pq"):
            row[metric] = {
                key: dict(zip(("mean", "sd"), _mean_sd([r.get(metric, {}).get(key) for r in runs.values()])))
                for key in (*CLASS_NAMES, "mean")
            }
        summary[model] = row
    return summary


def _pct(stat: Mapping[str, float | None], sd: bool = False) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}" if sd else f"{100 * stat['mean']:.2f}"


def table_markdown(summary: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> str:
    """The comparison as a Markdown table (Dice and PQ in %, mean ± sd across seeds for the means)."""
    head = "| model | seeds | Dice mean ± sd | " + " | ".join(CLASS_NAMES) + " | PQ mean ± sd |"
    lines = ["# Comparison (SPEC.md §8, Table 2)", "", head, "|" + "---|" * (len(CLASS_NAMES) + 4)]
    for row in summary.values():
        classes = " | ".join(_pct(row["dice"][c]) for c in CLASS_NAMES)
        lines.append(f"| {row['label']} | {row['seeds']} | {_pct(row['dice']['mean'], True)} | {classes} | {_pct(row['pq']['mean'], True)} |")
    lines += ["", "Dice: per class, pooled over the evaluated split; class values are means across seeds. "
              "PQ: correct panoptic quality on connected components, mean over classes."]
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
        means = [100 * (row["dice"][k]["mean"] or 0.0) for k in keys]
        sds = [100 * (row["dice"][k]["sd"] or 0.0) for k in keys]
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

    from monai_nasscam.engines.train_inputs import build_network, split_entries

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
