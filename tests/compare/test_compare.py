import json
import os
from pathlib import Path

import pytest

from monai_nasscam.cli import main as nasscam
from monai_nasscam.compare import summarize, table_markdown

TINY = ["roi_size=[32,32]", "num_workers=0", "features=[4,8,8,8,8]", "sw_batch_size=8", "progress=false"]


def _metrics(dice, pq, counts=None):
    names = ("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage")
    out = {"dice": dict(zip(names, dice), mean=sum(dice) / 4), "pq": dict(zip(names, pq), mean=sum(pq) / 4)}
    if counts is not None:  # per-image Dice counts of images a, b, c, ...
        out["per_image"] = {"names": [chr(97 + i) for i in range(len(counts))], "dice_counts": counts}
    return out


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


def test_instance_metrics_and_the_instances_used_are_summarised():
    runs = {"unet": {"0": _metrics([0.5] * 4, [0.2] * 4), "1": _metrics([0.5] * 4, [0.4] * 4)}}
    for seed, (aji, f1) in {"0": (0.6, 0.7), "1": (0.8, 0.9)}.items():
        runs["unet"][seed].update(aji=aji, f1_detection=f1, mpq_plus=0.3, protocol={"pq": "instances = watershed"},
                                  f1_classification={"Epithelial": 0.4, "Lymphocyte": 0.2, "mean": 0.3})
    row = summarize(runs)["unet"]
    assert row["instance"]["aji"]["mean"] == pytest.approx(0.7) and row["instance"]["aji"]["sd"] == pytest.approx(0.1414213562)
    assert row["instance"]["f1_classification"]["mean"] == pytest.approx(0.3)
    assert row["instances"] == ["instances = watershed"]
    table = table_markdown(summarize(runs))
    assert "mean over classes; instances = watershed." in table
    assert "| U-Net | 70.00 ± 14.14 | 80.00 ± 14.14 | 30.00 ± 0.00 | 30.00 ± 0.00 |" in table
    # metrics.json files written before the instance metrics: no instance table, no error
    assert "Instance metrics" not in table_markdown(summarize({"unet": {"0": _metrics([0.5] * 4, [0.2] * 4)}}))


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


# ------------------------------------------------------------------------- random genotypes, consensus, agreement
def _genotype(changes=(), attention="nas-scam-p", alphas=None):
    """conv3 on every SAM edge and conv1 on every CAM edge, but for ``changes``: (position, kind, edge, op)."""
    from monai_nasscam.networks import POSITIONS, Genotype

    modules = [{"position": p, "sam": ["conv3"] * 6, "cam": ["conv1"] * 6} for p in POSITIONS]
    for position, kind, edge, op in changes:
        modules[POSITIONS.index(position)][kind][edge] = op
    return Genotype(attention, True, modules, alphas or {})


def test_random_genotype_is_reproducible_uniform_and_valid():
    from collections import Counter

    from monai_nasscam.networks import Genotype, random_genotype
    from monai_nasscam.networks.ops import CAM_OPS, SAM_OPS

    first = random_genotype(seed=0)
    assert (first.attention, first.synchronous, first.alphas) == ("nas-scam-p", True, {})
    assert first == random_genotype("nas-scam-p", True, 0)  # the seed names the draw
    # pinned: a seed must keep naming the same genotype across releases (random.Random(seed).random())
    assert first.modules[0]["sam"] == ["dil_conv5", "dil_conv3", "conv3", "conv1", "conv5", "conv3"]
    assert first.modules != random_genotype(seed=1).modules
    assert Genotype.from_dict(first.to_dict()) == first  # valid: it writes and reads back
    assert len({tuple(m["sam"]) for m in first.modules}) > 1  # synchronous: every module drawn on its own
    counts = {"sam": Counter(), "cam": Counter()}
    for seed in range(60):
        for module in random_genotype(seed=seed).modules:
            for kind in counts:
                counts[kind].update(module[kind])
    # 60 x 48 = 2,880 draws per kind: 480 expected per SAM op, 360 per CAM op ("none" included)
    assert set(counts["sam"]) == set(SAM_OPS) and all(380 < c < 580 for c in counts["sam"].values())
    assert set(counts["cam"]) == set(CAM_OPS) and all(280 < c < 440 for c in counts["cam"].values())
    shared = random_genotype("nas-scam-s", synchronous=False, seed=3)
    assert len({(tuple(m["sam"]), tuple(m["cam"])) for m in shared.modules}) == 1
    with pytest.raises(ValueError, match="attention"):
        random_genotype("cbam")
    with pytest.raises(ValueError, match="seed"):
        random_genotype(seed=-1)


def test_consensus_is_the_majority_and_breaks_ties_by_alpha_then_order():
    from monai_nasscam.networks import POSITIONS, consensus

    a = _genotype([("down1", "sam", 0, "conv5"), ("down2", "cam", 3, "conv9")])
    b = _genotype([("down1", "sam", 0, "conv5"), ("down2", "cam", 3, "conv15")])
    c = _genotype([("down1", "sam", 0, "none"), ("down2", "cam", 3, "conv15"), ("up4", "sam", 5, "dil_conv3")])
    vote = consensus([a, b, c])
    assert vote.entry("down1")["sam"] == ["conv5"] + ["conv3"] * 5  # 2 votes against 1
    assert vote.entry("down2")["cam"][3] == "conv15"
    assert vote.entry("up4")["sam"][5] == "conv3"
    # a tie without alphas: the earliest genotype's choice
    assert consensus([a, b]).entry("down2")["cam"][3] == "conv9"
    assert consensus([b, a]).entry("down2")["cam"][3] == "conv15"
    # a tie with alphas: the higher mean softmax weight (conv15 is index 5 of the CAM candidates)
    uniform = {p: {"sam": [[1 / 6] * 6] * 6, "cam": [[1 / 8] * 8] * 6} for p in POSITIONS}
    tilted = {**uniform, "down2": {"sam": uniform["down2"]["sam"], "cam": [[0.1] * 5 + [0.3, 0.1, 0.1]] * 6}}
    a_alpha = _genotype([("down2", "cam", 3, "conv9")], alphas=uniform)
    b_alpha = _genotype([("down2", "cam", 3, "conv15")], alphas=tilted)
    both = consensus([a_alpha, b_alpha])
    assert both.entry("down2")["cam"][3] == "conv15"
    assert both.alphas["down2"]["cam"][3][5] == pytest.approx((0.125 + 0.3) / 2)
    with pytest.raises(ValueError, match="at least 1"):
        consensus([])


def test_agreement_is_mean_pairwise_per_kind_against_chance():
    from monai_nasscam.networks import agreement

    base = _genotype()
    three_off = _genotype([("down1", "sam", e, "conv5") for e in range(3)])  # agrees on 3 of down1's 6 SAM edges
    pair = agreement([base, three_off])
    assert pair["sam"]["pairwise"] == pytest.approx(45 / 48)
    assert pair["sam"]["positions"]["down1"] == pytest.approx(0.5)
    assert pair["sam"]["positions"]["up4"] == 1.0
    assert pair["sam"]["chance"] == pytest.approx(1 / 6) and pair["cam"]["chance"] == pytest.approx(1 / 8)
    assert pair["cam"]["pairwise"] == 1.0
    one_off = _genotype([("down1", "sam", 0, "none")])
    triple = agreement([base, three_off, one_off])
    # pairs: base-three_off 45/48, base-one_off 47/48, three_off-one_off 45/48; all three agree on 45 of 48 slots
    assert triple["sam"]["pairwise"] == pytest.approx((45 + 47 + 45) / 144)
    assert triple["sam"]["unanimous"] == pytest.approx(45 / 48)
    assert triple["sam"]["unanimous_chance"] == pytest.approx(1 / 36)
    with pytest.raises(ValueError, match="at least 2"):
        agreement([base])
    with pytest.raises(ValueError, match="mix"):
        agreement([base, _genotype(attention="nas-scam-s")])


def test_compare_pairs_searched_models_with_random_genotypes(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    import monai_nasscam.compare as compare
    from monai_nasscam.networks import Genotype, agreement, consensus, random_genotype

    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "datalist.json").write_text("{}")
    calls, verdicts = [], {0: "converged", 1: None}

    def fake_workflow(configs, overrides, output_dir, log_name="workflow.log", quiet=False):
        calls.append((list(configs), dict(overrides), Path(output_dir)))
        output_dir, seed = Path(output_dir), overrides["seed"]
        output_dir.mkdir(parents=True, exist_ok=True)
        if configs == ["train.yaml", "search.yaml"]:  # a searched genotype, with or without the search's verdict
            data = random_genotype(seed=10 + seed).to_dict()
            if verdicts[seed]:
                data["search"] = {"verdict": verdicts[seed]}
            (output_dir / "genotype.json").write_text(json.dumps(data))
        elif configs == ["train.yaml"]:
            Genotype.load(overrides["genotype_path"])  # a valid genotype is where the training reads it
            searched = "nas-scam-p/" in overrides["genotype_path"]
            dice, pq = (0.6 + 0.1 * seed, 0.4) if searched else (0.5, 0.45 + 0.05 * seed)
            # 3 test images, one class: the searched model's Dice 1 on each, the random genotype's 0.5 (I = 5 of 10)
            counts = [[[10, 10, 10], [0, 0, 0], [0, 0, 0], [0, 0, 0]] if searched else
                      [[5, 10, 10], [0, 0, 0], [0, 0, 0], [0, 0, 0]]] * 3
            (output_dir / "metrics.json").write_text(json.dumps(_metrics([dice] * 4, [pq] * 4, counts)))
        return True

    monkeypatch.setattr(compare, "run_workflow", fake_workflow)
    monkeypatch.setattr(compare, "plot_panel", lambda *a, **k: None)
    monkeypatch.setattr(compare, "plot_dice_bars", lambda *a, **k: None)
    args = ["compare", "--dataset-dir", str(tmp_path / "prep"), "--output-dir", str(tmp_path / "cmp"),
            "--models", "nas-scam-p", "random", "--seeds", "2", "--set", "roi_size=[32,32]", "--train-set", "epochs=1",
            "--evaluate-set", "eval_split=validation"]
    assert nasscam(args) == 0
    out = tmp_path / "cmp"
    for seed in (0, 1):  # the random model draws its genotype from the seed instead of searching
        assert Genotype.load(out / "random" / f"seed{seed}" / "search" / "genotype.json") == random_genotype(seed=seed)
    assert not any(c == ["train.yaml", "search.yaml"] and "random" in str(d) for c, _, d in calls)
    trains = {(str(d.parent.parent.name), o["seed"], tuple(c)): o for c, o, d in calls if c[0] == "train.yaml"}
    for seed in (0, 1):  # retrained and evaluated exactly like the searched model, from its own genotype
        for configs in (("train.yaml",), ("train.yaml", "evaluate.yaml")):
            searched, drawn = trains[("nas-scam-p", seed, configs)], trains[("random", seed, configs)]
            assert drawn["genotype_path"] == str(out / "random" / f"seed{seed}" / "search" / "genotype.json")
            assert {k: v for k, v in drawn.items() if k != "genotype_path"} == {k: v for k, v in searched.items() if k != "genotype_path"}
    results = json.loads((out / "results.json").read_text())
    paired = results["paired"]["nas-scam-p"]
    assert paired["against"] == "random" and paired["seeds"] == [0, 1]
    assert paired["dice"]["per_seed"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.2)}
    assert (paired["dice"]["mean"], paired["dice"]["sd"]) == (pytest.approx(0.15), pytest.approx(0.0707106781))
    assert paired["pq"]["per_seed"] == {"0": pytest.approx(-0.05), "1": pytest.approx(-0.1)}
    assert (paired["pq"]["mean"], paired["pq"]["sd"]) == (pytest.approx(-0.075), pytest.approx(0.0353553391))
    # t interval of 2 seeds: 0.15 +- 12.706 * 0.0707 / sqrt(2)
    assert paired["dice"]["interval"] == pytest.approx([0.15 - 0.6353102, 0.15 + 0.6353102])
    # per test image: Dice 1 against 0.5 on every image, whatever the resample
    images = paired["dice_per_image"]
    assert images["per_seed"]["0"] == {"difference": 0.5, "interval": [0.5, 0.5], "images": 3, "per_seed": [0.5]}
    assert images["all_seeds"]["seeds"] == ["0", "1"] and images["all_seeds"]["interval"] == [0.5, 0.5]
    archs = results["architectures"]
    assert archs["nas-scam-p"]["verdicts"] == {"0": "converged", "1": None}
    assert archs["random"]["verdicts"] == {"0": None, "1": None} and not archs["random"]["searched"]
    expected = agreement([random_genotype(seed=10), random_genotype(seed=11)])
    assert archs["nas-scam-p"]["agreement"]["sam"]["pairwise"] == pytest.approx(expected["sam"]["pairwise"])
    assert archs["nas-scam-p"]["consensus"] == "nas-scam-p/consensus_genotype.json"
    written = Genotype.load(out / "nas-scam-p" / "consensus_genotype.json")
    assert written.modules == consensus([random_genotype(seed=10), random_genotype(seed=11)]).modules
    assert archs["random"]["consensus"] is None and not (out / "random" / "consensus_genotype.json").exists()
    table = (out / "table.md").read_text()
    assert ("| NAS-SCAM-P (synchronous) | 2 | 0: +10.00, 1: +20.00 | +15.00 ± 7.07 | [-48.53, +78.53] "
            "| 0: +50.00 [+50.00, +50.00], 1: +50.00 [+50.00, +50.00] | +50.00 [+50.00, +50.00] (3 images) "
            "| 0: -5.00, 1: -10.00 | -7.50 ± 3.54 | [-39.27, +24.27] |") in table
    assert "| Random genotype (NAS-SCAM-P) | 2 | 50.00 ± 0.00 |" in table
    sam = 100 * expected["sam"]["pairwise"]
    assert f"| NAS-SCAM-P (synchronous) | 0: converged, 1: unknown | {sam:.1f}% (16.7%) |" in table
    assert "| Random genotype (NAS-SCAM-P) | not searched (random) |" in table
    assert "Did the search pay?" in capsys.readouterr().out  # the console summary
    # a resumed comparison keeps the draw; a file holding another genotype is not overwritten
    assert nasscam(args) == 0
    random_genotype(seed=5).save(out / "random" / "seed1" / "search" / "genotype.json")
    with pytest.raises(ValueError, match=r"seed1/search/genotype.json is not the random genotype of seed 1"):
        compare.run_comparison(tmp_path / "prep", out, models=["random"], seeds=[0, 1], echo=lambda m: None)


def test_paired_statistics_by_hand():
    import numpy as np

    from monai_nasscam.metrics.paired import image_bootstrap, image_differences, pooled_mean_dice, seed_interval

    assert seed_interval([0.1]) is None and seed_interval([0.2, 0.2, 0.2]) == pytest.approx([0.2, 0.2])
    # 3 seeds: mean 0.2, sd 0.1, t(0.975, 2) = 4.3027 -> 0.2 +- 4.3027 * 0.1 / sqrt(3)
    assert seed_interval([0.1, 0.2, 0.3]) == pytest.approx([0.2 - 0.2484138, 0.2 + 0.2484138])
    # class 0: 2 * 3 / (4 + 6) = 0.6; class 1: 0 / 2 = 0; class 2 absent (left out) -> mean 0.3
    assert pooled_mean_dice(np.array([[3, 4, 6], [0, 2, 0], [0, 0, 0]])) == pytest.approx(0.3)
    assert np.isnan(pooled_mean_dice(np.zeros((4, 3))))
    # image 1 good for both, image 2 lost by the baseline: the difference depends on the resample
    a = np.array([[[10, 10, 10]], [[10, 10, 10]]])
    b = np.array([[[10, 10, 10]], [[0, 10, 10]]])
    result = image_bootstrap([a], [b], samples=4000)
    assert result["difference"] == pytest.approx(1.0 - 20 / 40)  # pooled: 2 * 10 / 40
    low, high = result["interval"]
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)  # only good images, only the lost one
    same = image_differences({"0": _metrics([0.5] * 4, [0.5] * 4, a.tolist())}, {"0": _metrics([0.5] * 4, [0.5] * 4, a.tolist())}, ["0"])
    assert same["all_seeds"]["difference"] == 0.0 and same["all_seeds"]["interval"] == [0.0, 0.0]
    other = _metrics([0.5] * 4, [0.5] * 4, a.tolist())
    other["per_image"]["names"] = ["x", "y"]  # other images: nothing to pair
    assert image_differences({"0": _metrics([0.5] * 4, [0.5] * 4, a.tolist())}, {"0": other}, ["0"]) is None
    with pytest.raises(ValueError, match="per-image Dice counts must be"):
        image_bootstrap([a], [b[:1]])


def test_compare_seeds_and_first_seed(monkeypatch, capsys, tmp_path):
    """--seeds N --first-seed K runs seeds K..K+N-1; a count below 1 or a negative first seed is one line, status 1."""
    import monai_nasscam.compare as compare

    called = {}

    def fake(dataset_dir, output_dir, **kwargs):
        called.update(kwargs)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "table.md").write_text("table\n")

    monkeypatch.setattr(compare, "run_comparison", fake)
    base = ["compare", "--dataset-dir", str(tmp_path), "--output-dir", str(tmp_path / "cmp"), "--models", "unet"]
    assert nasscam([*base, "--seeds", "2", "--first-seed", "3"]) == 0 and called["seeds"] == [3, 4]
    assert nasscam(base) == 0 and called["seeds"] == [0, 1, 2]
    capsys.readouterr()
    assert nasscam([*base, "--seeds", "0"]) == 1
    assert capsys.readouterr().err == "nasscam compare: error: --seeds must be at least 1 (runs per model), got 0.\n"
    assert nasscam([*base, "--first_seed", "-1"]) == 1
    assert capsys.readouterr().err == "nasscam compare: error: --first-seed must be at least 0, got -1.\n"
