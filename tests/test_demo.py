import json
import os

from monai_nasscam.demo import load_budgets, main
from monai_nasscam.workflow import BUNDLE_DIR

# the demo pipeline at an even smaller budget than bundle/configs/demo.yaml
TINY = [
    "synth.images=8", "synth.patients=4", "synth.max_size=160", "prepare.stain=none",
    "common.roi_size=[32,32]", "common.features=[4,8,8,8,8]", "common.progress=false",
    "search.epochs=2", "search.warmup_epochs=1", "search.epoch_crops=4", "search.val_interval=1",
    "train.epochs=1", "train.epoch_crops=4", "train.val_interval=1",
]


def test_budget_overrides():
    budgets = load_budgets(BUNDLE_DIR / "configs" / "demo.yaml", ["search.epochs=3", "common.roi_size=[32,32]"])
    assert budgets["search"]["epochs"] == 3 and budgets["common"]["roi_size"] == [32, 32]


def test_demo_end_to_end_and_cached(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--output-dir", str(out), "--set", *TINY]) == 0
    printed = capsys.readouterr().out
    for model, label in (("nas-scam-p", "NAS-SCAM-P (searched)"), ("unet", "U-Net")):
        metrics = json.loads((out / model / "metrics.json").read_text())
        row = [line for line in printed.splitlines() if line.startswith(f"| {label} |")]
        assert row, printed
        assert f"{metrics['dice']['mean']:.4f}" in row[0]  # the table shows metrics.json's figures
    assert json.loads((out / "search" / "genotype.json").read_text())["format"] == "nasscam-genotype"
    assert (out / "search" / "alpha_heatmap.png").is_file()
    listed = [line.split(": ", 1)[-1].lstrip("- ") for line in (out / "report.md").read_text().splitlines() if line.startswith(("- ", "  - "))]
    listed = [p for p in listed if p.startswith("/")]
    assert str(out / "search" / "genotype_heatmap.png") in listed
    assert all(os.path.exists(p) for p in listed), [p for p in listed if not os.path.exists(p)]
    assert list((out / "inference").rglob("*_overlay.png"))
    assert (out / "report.md").read_text().count("|") > 10

    assert main(["--output-dir", str(out), "--set", *TINY]) == 0  # second run: every stage cached
    again = capsys.readouterr().out
    assert again.count("cached") >= 7


def test_demo_jobs_two_runs_the_baseline_beside_the_search(tmp_path, capsys):
    """``jobs=2``: the U-Net baseline trains beside the search, its output in its log files, and the demo ends with
    the same report as one at a time."""
    out = tmp_path / "demo"
    assert main(["--output-dir", str(out), "--set", *TINY, "jobs=2"]) == 0
    printed = capsys.readouterr().out
    assert f"beside the search, output in {out / 'unet'}/workflow.log and evaluate.log" in printed
    assert "Epoch[1] Complete" in (out / "unet" / "workflow.log").read_text()  # the training wrote its log, not the terminal
    assert (out / "unet" / "evaluate.log").is_file() and (out / "unet" / "metrics.json").is_file()
    assert json.loads((out / "nas-scam-p" / "metrics.json").read_text())["dice"]["mean"] is not None
    # the derived network's evaluation ran beside its inference, its output in its log file
    assert f"the evaluation beside the inference, output in {out / 'nas-scam-p'}/evaluate.log" in printed
    assert "dice" in (out / "nas-scam-p" / "evaluate.log").read_text().lower()
    assert list((out / "inference").rglob("*.geojson"))
    assert "\n[7/7] report  (t = " in printed  # every stage numbered out of the right total
    assert [line for line in printed.splitlines() if line.startswith("| U-Net |")]


def test_demo_jobs_must_be_a_positive_integer(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        main(["--output-dir", str(tmp_path / "demo"), "--set", *TINY, "jobs=0"])
    assert not (tmp_path / "demo").exists()  # refused before anything is written
