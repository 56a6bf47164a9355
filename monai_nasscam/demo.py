"""``make demo``: the whole method on a synthetic MoNuSAC-format set, through the real bundle workflows.

Stages: synth -> prepare -> a U-Net baseline, trained and evaluated -> search (NAS-SCAM-P, synchronous) -> retrain
the derived network -> evaluate it, and infer the held-out raw tiles with it -> report. With ``jobs: 2`` (demo.yaml's
default) the U-Net baseline, which needs no search, runs beside the search and the retraining, one thread each on a
2-core CPU, and the derived network's evaluation runs beside its inference (``--set jobs=1`` runs the stages one after
the other). Budgets
come from ``bundle/configs/demo.yaml``; every finished stage is cached and skipped when run again with the same
settings.

    python -m monai_nasscam.demo [--config bundle/configs/demo.yaml] [--output-dir DIR] [--set search.epochs=4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from monai_nasscam.data.classes import CLASS_NAMES
from monai_nasscam.fileio import atomic_write_text
from monai_nasscam.networks.attentions import get_attention
from monai_nasscam.overrides import as_int
from monai_nasscam.workflow import BUNDLE_DIR, run_concurrently, run_workflow

__all__ = ["run_demo", "load_budgets"]

#: the searched attention and the baseline of the demo
SEARCHED, BASELINE = "nas-scam-p", "unet"
#: model (output folder) -> label in the report, from the attention registry
MODELS = {SEARCHED: f"{get_attention(SEARCHED).label} (searched)", BASELINE: get_attention(BASELINE).label}


def load_budgets(path: str | Path, sets: Sequence[str] = ()) -> dict[str, Any]:
    """Read demo.yaml and apply ``section.key=value`` (or top-level ``key=value``, e.g. ``jobs=2``) overrides, values
    parsed as YAML."""
    budgets = yaml.safe_load(Path(path).read_text())
    for item in sets:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or (not dot and isinstance(budgets.get(key), dict)):
            raise ValueError(f"--set expects SECTION.KEY=VALUE (e.g. search.epochs=4) or KEY=VALUE (e.g. jobs=2), got {item!r}.")
        if dot:
            budgets.setdefault(section, {})[name] = yaml.safe_load(value)
        else:
            budgets[key] = yaml.safe_load(value)
    return budgets


class _Stages:
    """Numbered stage headers with elapsed times."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.start = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.count += 1
        print(f"\n[{self.count}/{self.total}] {title}  (t = {time.perf_counter() - self.start:.0f} s)", flush=True)


def _cached(marker: Path, record: dict) -> bool:
    return marker.is_file() and json.loads(marker.read_text()) == record


def _synth(raw: Path, settings: dict) -> bool:
    from monai_nasscam.data import generate_dataset

    marker = raw / ".demo_synth.json"
    if _cached(marker, settings):
        return False
    generate_dataset(
        raw, n_images=settings["images"], n_patients=settings["patients"], seed=settings["seed"],
        min_size=settings["min_size"], max_size=settings["max_size"], overwrite=True, progress=True,
    )
    marker.write_text(json.dumps(settings))
    return True


def _prepare(raw: Path, prep: Path, settings: dict) -> bool:
    from monai_nasscam.data import prepare_dataset

    record = {**settings, "raw": json.loads((raw / ".demo_synth.json").read_text())}
    marker = prep / ".demo_prepare.json"
    if _cached(marker, record):
        return False
    prepare_dataset(raw, prep, split=settings["split"], seed=settings["seed"], stain=settings["stain"], overwrite=True, progress=True)
    marker.write_text(json.dumps(record))
    return True


def _test_images(raw: Path, prep: Path, folder: Path) -> Path:
    """A folder of links to the raw tiles of the test split (what a user would bring to inference)."""
    datalist = json.loads((prep / "datalist.json").read_text())
    names = {entry["name"] for entry in datalist["test"]}
    folder.mkdir(parents=True, exist_ok=True)
    for tif in raw.rglob("*.tif"):
        link = folder / tif.name
        if tif.stem in names and not link.exists():
            link.symlink_to(tif.resolve())
    return folder


def _table(metrics: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(CLASS_NAMES) + " | mean Dice | mean PQ |"
    lines = [head, "|" + "---|" * (len(CLASS_NAMES) + 3)]
    for model, m in metrics.items():
        cells = [m["dice"].get(c) for c in CLASS_NAMES] + [m["dice"].get("mean"), m["pq"].get("mean")]
        lines.append(f"| {MODELS[model]} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def run_demo(budgets: dict[str, Any], output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns the metrics of both models and the paths of the outputs."""
    out = Path(output_dir or budgets["output_dir"]).resolve()
    raw, prep = out / "raw", out / "prepared"
    common = dict(budgets.get("common") or {})
    jobs = as_int(budgets.get("jobs", 1), "jobs", low=1)
    stage = _Stages(7)

    stage("synthetic MoNuSAC-format data (nasscam synth)")
    print("generated" if _synth(raw, dict(budgets["synth"])) else "cached", raw)
    stage("prepare: masks, stain normalisation, patient split (nasscam prepare)")
    print("prepared" if _prepare(raw, prep, dict(budgets["prepare"])) else "cached", prep)

    env = _thread_env(jobs)
    search = {"dataset_dir": str(prep), "attention": SEARCHED, "synchronous": True, **common, **(budgets.get("search") or {})}
    genotype = out / "search" / "genotype.json"
    runs = {
        SEARCHED: {"dataset_dir": str(prep), "genotype_path": str(genotype), **common, **(budgets.get("train") or {})},
        BASELINE: {"dataset_dir": str(prep), "attention": BASELINE, **common, **(budgets.get("train") or {})},
    }
    evaluate = dict(budgets.get("evaluate") or {})
    images = _test_images(raw, prep, out / "test_images")
    inference = {
        # the genotype and the stain reference come from the training run's folder (RUN/genotype.json, RUN/stain.json)
        "input_dir": str(images), "ckpt_path": str(out / SEARCHED / "models" / "model.pt"),
        **{k: v for k, v in common.items() if k in ("roi_size", "features", "num_workers", "device")},
        **(budgets.get("inference") or {}),
    }
    beside = jobs > 1  # the U-Net baseline needs no search: it runs beside it, its output going to its log files

    stage("U-Net baseline: train, then evaluate on the test split (train.yaml, train.yaml + evaluate.yaml)"
          + (f"; beside the search, output in {out / BASELINE}/workflow.log and evaluate.log" if beside else ""))

    def baseline() -> None:
        _run(["train.yaml"], runs[BASELINE], out / BASELINE, quiet=beside, env=env)
        _run(["train.yaml", "evaluate.yaml"], {**runs[BASELINE], **evaluate}, out / BASELINE, "evaluate.log", beside, env)

    def searched() -> None:
        stage("search: NAS-SCAM-P, synchronous, bilevel (train.yaml + search.yaml)")
        _run(["train.yaml", "search.yaml"], search, out / "search", env=env)
        stage("retrain the derived NAS-SCAM-P network (train.yaml)")
        _run(["train.yaml"], runs[SEARCHED], out / SEARCHED, env=env)
        stage("evaluate it on the test split (train.yaml + evaluate.yaml), and infer the held-out raw tiles with it "
              "(inference.yaml)" + (f"; the evaluation beside the inference, output in {out / SEARCHED}/evaluate.log" if beside else ""))
        # both only read the retrained network: with jobs > 1 they run at once, the evaluation's output in its log file
        run_concurrently([
            lambda: _run(["train.yaml", "evaluate.yaml"], {**runs[SEARCHED], **evaluate}, out / SEARCHED, "evaluate.log", beside, env),
            lambda: _run(["inference.yaml"], inference, out / "inference"),
        ], jobs)

    run_concurrently([baseline, searched], jobs)
    metrics = {model: json.loads((out / model / "metrics.json").read_text()) for model in MODELS}

    stage("report")
    overlays = sorted((out / "inference").rglob("*_overlay.png"))
    paths = {
        "genotype": genotype,
        "alpha heatmap": out / "search" / "alpha_heatmap.png",
        "heatmap of the genotype's alphas, with the search verdict": out / "search" / "genotype_heatmap.png",
        "alpha heatmaps per epoch": out / "search" / "alpha",
        "overlays": overlays,
        "metrics": [out / m / "metrics.json" for m in MODELS],
        "report": out / "report.md",
    }
    table = _table(metrics)
    report = ["# NAS-SCAM demo", "", f"Pooled per-class Dice and mean PQ on the test split ({out / 'prepared'}).", "", table, ""]
    for name, value in paths.items():
        report += [f"- {name}:", *(f"  - {v}" for v in value)] if isinstance(value, list) else [f"- {name}: {value}"]
    atomic_write_text(out / "report.md", "\n".join(report) + "\n")
    print(table)
    for name, value in paths.items():
        if isinstance(value, list):
            more = f" (+{len(value) - 3} more)" if len(value) > 3 else ""
            value = ", ".join(map(str, value[:3])) + more
        print(f"{name}: {value}")
    return {"metrics": metrics, "paths": paths}


def _run(
    configs: list[str], overrides: dict, output_dir: Path, log_name: str = "workflow.log", quiet: bool = False, env: dict | None = None
) -> None:
    if not run_workflow(configs, overrides, output_dir, log_name, quiet, env):
        print(f"cached {output_dir}")


def _thread_env(jobs: int) -> dict[str, str] | None:
    """The workflows' threads when ``jobs`` run at once: the CPU's cores shared out, unless ``OMP_NUM_THREADS`` is set."""
    if jobs < 2 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_nasscam.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(BUNDLE_DIR / "configs" / "demo.yaml"), help="budgets (default: %(default)s)")
    parser.add_argument("--output-dir", help="where everything goes (default: demo.yaml's output_dir)")
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE", help="budget overrides, e.g. train.epochs=4")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    run_demo(load_budgets(args.config, args.set), args.output_dir)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    from monai_nasscam.errors import install_excepthook

    install_excepthook()  # a Ctrl-C (passed on to the running workflow) or a bad input: one line, not a traceback
    sys.exit(main())
