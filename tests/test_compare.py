import json
import os

import pytest

from monai_nasscam.cli import main as nasscam
from monai_nasscam.compare import summarize, table_markdown

TINY = ["roi_size=[32,32]", "num_workers=0", "features=[4,8,8,8,8]", "sw_batch_size=8", "progress=false"]


def _metrics(dice, pq):
    names = ("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage")
    return {"dice": dict(zip(names, dice), mean=sum(dice) / 4), "pq": dict(zip(names, pq), mean=sum(pq) / 4)}


def test_summary_is_mean_and_sample_sd_across_seeds():
    runs = {"unet": {"0": _metrics([0.8, 0.6, 0.2, 0.0], [0.5] * 4), "1": _metrics([0.6, 0.6, 0.4, 0.0], [0.3] * 4)}}
    row = summarize(runs)["unet"]
    assert row["dice"]["Epithelial"]["mean"] == pytest.approx(0.7)
    assert row["dice"]["Epithelial"]["sd"] == pytest.approx(0.1414213562)  # sample sd of 0.8, 0.6
    assert row["dice"]["mean"]["mean"] == pytest.approx(0.4)
    assert row["dice"]["mean"]["sd"] == pytest.approx(0.0)
    assert row["pq"]["mean"]["mean"] == pytest.approx(0.4)
    table = table_markdown(summarize(runs))
    assert "| U-Net | 2 | 40.00 ± 0.00 | 70.00 | 60.00 | 30.00 | 0.00 | 40.00 ± 14.14 |" in table


def test_missing_class_is_left_out_not_zero():
    runs = {"unet": {"0": {"dice": {"Epithelial": 0.5, "Macrophage": None, "mean": 0.5}, "pq": {}}}}
    row = summarize(runs)["unet"]
    assert row["dice"]["Macrophage"] == {"mean": None, "sd": None}
    assert "–" in table_markdown(summarize(runs))


def test_compare_runs_the_bundle_and_resumes(tmp_path, monkeypatch):
    from monai_nasscam.data import generate_dataset, prepare_dataset

    generate_dataset(tmp_path / "raw", n_images=6, n_patients=3, seed=0, min_size=64, max_size=96)
    prepare_dataset(tmp_path / "raw", tmp_path / "prep", workers=0, progress=False, stain="none")
    monkeypatch.chdir(tmp_path)  # relative paths, away from the repository
    args = ["compare", "--dataset-dir", "prep", "--output-dir", "cmp", "--models", "unet", "--seeds", "2", "--jobs", "2",
            "--set", *TINY, "--train-set", "epochs=1", "epoch_crops=4"]
    assert nasscam(args) == 0  # the two seeds run side by side
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    runs = [json.loads((tmp_path / "cmp" / "unet" / f"seed{s}" / "train" / "metrics.json").read_text()) for s in (0, 1)]
    assert results["runs"]["unet"] == {"0": runs[0], "1": runs[1]}
    mean = (runs[0]["dice"]["mean"] + runs[1]["dice"]["mean"]) / 2
    assert results["summary"]["unet"]["dice"]["mean"]["mean"] == pytest.approx(mean)
    for figure in ("dice_bars.png", "panel.png"):
        assert (tmp_path / "cmp" / figure).stat().st_size > 1000
    model = tmp_path / "cmp" / "unet" / "seed0" / "train" / "models" / "model.pt"
    stamp = os.stat(model).st_mtime_ns
    assert nasscam(args) == 0  # finished runs are skipped
    assert os.stat(model).st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        nasscam(["compare", "--dataset-dir", "prep", "--output-dir", "cmp", "--models", "transformer"])


def test_parallel_runs_go_on_to_their_end_before_a_failure_is_raised(tmp_path, monkeypatch):
    import time
    from pathlib import Path

    import monai_nasscam.compare as compare
    from monai_nasscam.workflow import WorkflowError

    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "datalist.json").write_text("{}")
    finished = []

    def fake_workflow(configs, overrides, output_dir, log_name="workflow.log", quiet=False):
        if overrides["seed"] == 1:
            raise WorkflowError("seed 1 failed")
        time.sleep(0.2)  # seed 0 is still running when seed 1 fails
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps(_metrics([0.5] * 4, [0.5] * 4)))
        finished.append(list(configs))
        return True

    monkeypatch.setattr(compare, "run_workflow", fake_workflow)
    with pytest.raises(WorkflowError, match="seed 1"):
        compare.run_comparison(tmp_path / "prep", tmp_path / "cmp", models=["unet"], seeds=[0, 1], jobs=2, echo=lambda m: None)
    assert finished == [["train.yaml"], ["train.yaml", "evaluate.yaml"]]
    with pytest.raises(ValueError, match="jobs"):
        compare.run_comparison(tmp_path / "prep", tmp_path / "cmp", models=["unet"], jobs=0)
