"""bundle/configs/search.yaml, an override of train.yaml: clear errors before training, the same run as the
standalone search.yaml it replaced, and the whole search from another working directory on a tiny synthetic dataset,
interrupted with SIGINT and resumed with --resume true."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from monai.bundle import run as bundle_run

from monai_nasscam.networks import Genotype
from tests.utils import ASSETS, REPO, default_sigint

CONFIGS = REPO / "bundle" / "configs"
SEARCH = [str(CONFIGS / "train.yaml"), str(CONFIGS / "search.yaml")]  # the two-file form
REFERENCE = CONFIGS / "reference.yaml"
TINY = {"roi_size": "[64,64]", "features": "[4,8,8,8,8]", "epoch_crops": "8", "num_workers": "0", "progress": "false"}


def _cause_chain(error: BaseException) -> str:
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def _run_in_process(tmp_path: Path, **overrides) -> None:
    args = {"dataset_dir": str(tmp_path / "missing"), "output_dir": str(tmp_path / "run"), "epochs": 1, "warmup_epochs": 0}
    args.update(overrides)
    bundle_run(config_file=SEARCH, logging_file=False, **args)


def test_missing_datalist(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as info:
        _run_in_process(tmp_path, dataset_dir=str(tmp_path / "empty"))
    assert "datalist.json not found" in _cause_chain(info.value)
    assert not (tmp_path / "run").exists(), "nothing may be written before the inputs are checked"


def test_no_training_images(tmp_path, search_dataset):
    data = json.loads((search_dataset / "datalist.json").read_text())
    data["training"] = []
    bad = tmp_path / "prep"
    bad.mkdir()
    (bad / "datalist.json").write_text(json.dumps(data))
    with pytest.raises(Exception) as info:
        _run_in_process(tmp_path, dataset_dir=str(bad))
    assert "lists no training images" in _cause_chain(info.value)
    assert not (tmp_path / "run").exists()


def test_unknown_attention(tmp_path, search_dataset):
    with pytest.raises(Exception) as info:
        _run_in_process(tmp_path, dataset_dir=str(search_dataset), attention="nas-scam-x")
    chain = _cause_chain(info.value)
    assert "attention 'nas-scam-x' is unknown" in chain and "nas-scam-p" in chain
    with pytest.raises(Exception) as info:
        _run_in_process(tmp_path, dataset_dir=str(search_dataset), attention="cbam")
    assert "is not searchable" in _cause_chain(info.value)
    assert not (tmp_path / "run").exists()


def test_other_bad_overrides(tmp_path, search_dataset):
    for overrides, message in [
        ({"roi_size": [40, 40]}, "multiples of 16"),
        ({"batch_size": 6}, "multiple of 4"),
        ({"synchronous": "maybe"}, "synchronous must be true or false"),
        ({"resume": "true"}, "nothing to resume"),
        ({"epochs": 2, "warmup_epochs": 3}, "warmup_epochs must lie"),
        ({"alpha_temperature": [1.0, 0.0]}, "alpha_temperature must be [start, end], two numbers > 0"),
        ({"alpha_temperature": 0.5}, "alpha_temperature must be [start, end]"),
        ({"alpha_entropy_weight": -0.1}, "alpha_entropy_weight must be a finite number >= 0"),
        ({"selection": "best"}, "selection must be one of ['alpha', 'perturbation'], got 'best'"),
        ({"selection": "perturbation", "selection_crops": 1}, "selection_crops must be an integer >= 2"),
        ({"selection": "perturbation", "selection_unit": "module"}, "selection_unit must be 'cell' or 'edge'"),
        ({"epochs": 2, "warmup_epochs": 2}, "(with --selection perturbation it is the frozen-alpha variant)"),
    ]:
        with pytest.raises(Exception) as info:
            _run_in_process(tmp_path, dataset_dir=str(search_dataset), **overrides)
        assert message in _cause_chain(info.value), overrides
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- the two-file form
STANDALONE = ASSETS / "search_standalone.yaml"  # search.yaml before it became an override


def _same(a, b, where: str = "") -> None:
    """``a == b`` for nested dicts / lists of tensors and plain values, exactly; the assertion names the place."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


def test_two_file_search_runs_as_the_standalone_search_did(tmp_path, search_dataset):
    """train.yaml + search.yaml and the standalone search.yaml it replaced, on one seed: the same files, the same
    genotype.json and the same checkpoint (weights, alphas, both optimisers, trainer, best genotype, diagnostics)."""
    import torch

    settings = {"dataset_dir": str(search_dataset), "epochs": 2, "warmup_epochs": 1, "val_interval": 2, "seed": 3,
                **{k: json.loads(v) for k, v in TINY.items()}, "roi_size": [32, 32], "epoch_crops": 4}
    runs = {}
    for name, config in (("standalone", str(STANDALONE)), ("two_files", SEARCH)):
        runs[name] = tmp_path / name
        bundle_run(config_file=config, logging_file=False, output_dir=str(runs[name]), **settings)
    old, new = runs["standalone"], runs["two_files"]

    def files(run: Path) -> list[str]:
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)

    assert files(old) == files(new) and "genotype.json" in files(new)
    assert json.loads((old / "genotype.json").read_text()) == json.loads((new / "genotype.json").read_text())
    name = "checkpoints/search_checkpoint.pt"
    before, after = (torch.load(run / name, weights_only=True) for run in (old, new))
    _same(before, after)
    assert after["arch_optimizer"]["state"], "no alpha step was made: the comparison would prove nothing"


def test_search_yaml_alone_fails_with_one_line_giving_the_two_file_form(tmp_path):
    search = str(CONFIGS / "search.yaml")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", search, "--dataset_dir", str(tmp_path),
           "--output_dir", str(tmp_path / "run")]
    env = {k: v for k, v in _env().items() if k != "NASSCAM_TRACEBACK"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"""error: {search} overrides train.yaml and comes after it: --config_file "['{CONFIGS / 'train.yaml'}','{search}']\"""", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_command_line_config_files_and_settings_are_checked_on_the_merged_search():
    from monai_nasscam.errors import InputError
    from monai_nasscam.overrides import check_override_keys

    train, search = SEARCH
    patent, multi = str(CONFIGS / "patent.yaml"), str(CONFIGS / "multi_gpu_search.yaml")

    def line(files: str, *settings: str, unused=("genotype_path", "train_mpp")) -> str:
        with pytest.raises(InputError) as info:
            check_override_keys(["m", "run", "--config_file", files, *settings], unused=unused)
        return str(info.value)

    # search.yaml without train.yaml before it: the order to use, other files kept in place
    two = f"""--config_file "['{train}','{search}']\""""
    assert line(f"['{search}','{train}']").endswith(two)
    assert line(search).endswith(two) and line(f"{search},{train}").endswith(two)  # MONAI's comma form too
    assert line(f"['{search}','{patent}']").endswith(f"""--config_file "['{train}','{search}','{patent}']\"""")
    assert line(f"['{search}','{multi}']").endswith(f"""--config_file "['{train}','{search}','{multi}']\"""")
    # the keys of both files are settings; a misspelt one is refused, and so is one the search does not read
    assert check_override_keys(["m", "run", "--config_file", str(SEARCH), "--val_interval", "2", "--warmup_epochs", "1",
                                "--arch_learning_rate", "0.01", "--crop_mode", "pixel"], unused=["genotype_path"])
    assert "did you mean --warmup_epochs" in line(str(SEARCH), "--warmup_epoch", "1")
    assert line(str(SEARCH), "--genotype_path", "g.json") == (
        f"setting --genotype_path is not read by this workflow ({train}, {search}), so it would be ignored."
    )


def test_the_documented_search_settings_reach_the_search(tmp_path, search_dataset):
    """docs/search.md's command-line settings, each set away from its default on the two-file search."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(SEARCH)
    parser.update({"dataset_dir": str(search_dataset), "output_dir": str(tmp_path / "run"), "device": "cpu", "seed": 5,
                   "epochs": 7, "batch_size": 8, "roi_size": [48, 48], "learning_rate": 0.02, "num_workers": 0,
                   "warmup_epochs": 3, "arch_learning_rate": 0.03, "attention": "nas-sam", "synchronous": False,
                   "features": [4, 8, 8, 8, 8], "epoch_crops": 8, "progress": False})
    trainer = parser.get_parsed_content("train#trainer")
    assert (trainer.state.max_epochs, trainer.warmup_epochs, trainer.seed, str(trainer.state.device)) == (7, 3, 5, "cpu")
    assert trainer.optimizer.param_groups[0]["lr"] == 0.02 and trainer.arch_optimizer.param_groups[0]["lr"] == 0.03
    assert trainer.network.attention == "nas-sam" and len(trainer.network.arch_parameters()) == 1  # one shared SAM alpha
    for loader in (trainer.data_loader, trainer.arch_data_loader):
        assert loader.batch_size * 4 == 8 and loader.num_workers == 0 and loader.dataset.roi_size == (48, 48)
    assert parser.get_parsed_content("train#best_genotype").output_path == tmp_path / "run" / "genotype.json"
    assert parser.get_parsed_content("train#checkpointer").filename == "search_checkpoint.pt"
    parser.get_parsed_content("tensorboard").close()


def test_the_drivers_run_the_two_file_search_in_a_folder_it_owns(tmp_path, monkeypatch):
    """demo / compare (run_workflow): the search clears a changed run's folder and resumes an interrupted one, as a
    single-file workflow does; train + evaluate only adds to its folder."""
    import monai_nasscam.workflow as workflow

    commands = []

    class FakeRun:  # the bundle run's process: writes its checkpoint, then fails (exit status 1)
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)
            out = Path(cmd[cmd.index("--output_dir") + 1])
            (out / "checkpoints").mkdir(exist_ok=True)
            (out / "checkpoints" / "search_checkpoint.pt").write_bytes(b"")

        def wait(self):
            return 1

        def poll(self):
            return 1

    monkeypatch.setattr(workflow.subprocess, "Popen", FakeRun)
    run = tmp_path / "search"
    run.mkdir()
    (run / "stale.txt").write_text("an earlier, different run")
    for _ in range(2):
        with pytest.raises(workflow.WorkflowError):
            workflow.run_workflow(["train.yaml", "search.yaml"], {"epochs": 2}, run, quiet=True)
    assert not (run / "stale.txt").exists()
    assert commands[0][commands[0].index("--config_file") + 1] == str([workflow.config_path("train.yaml"),
                                                                         workflow.config_path("search.yaml")])
    assert "--resume" not in commands[0] and commands[1][-2:] == ["--resume", "True"]
    (run / "kept.txt").write_text("the run evaluated")
    with pytest.raises(workflow.WorkflowError):
        workflow.run_workflow(["train.yaml", "evaluate.yaml"], {"epochs": 2}, run, quiet=True)
    assert (run / "kept.txt").exists() and "--resume" not in commands[2]


def _command(search_dataset: Path, run: Path, *extra: str, config=None, **overrides: str) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config or str(SEARCH)]
    cmd += ["--dataset_dir", str(search_dataset), "--output_dir", str(run), "--epochs", "3", "--warmup_epochs", "1"]
    for key, value in {**TINY, **overrides}.items():
        cmd += [f"--{key}", value]
    return cmd + list(extra)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_search_end_to_end_interrupted_and_resumed(tmp_path, search_dataset):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "search_checkpoint.pt"

    proc = subprocess.Popen(_command(search_dataset, run), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint after the first epoch:\n" + (proc.communicate()[0] if proc.poll() is not None else "")
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=300)
    interrupted = "SIGINT received" in log
    if interrupted:  # the usual case: stopped cleanly after an iteration
        assert proc.returncode == 130, log[-3000:]  # as a shell reports a Ctrl-C
        assert "resume from" in log and not (run / "genotype.json").exists()
        # one line for the user, no traceback (neither ignite's nor MONAI's StatsHandler's nor Python's)
        assert "\nstopped: SIGINT received: stopped after iteration" in log and "Traceback" not in log, log[-3000:]
    else:  # the signal came after the last iteration (a very slow machine)
        assert (run / "genotype.json").exists(), log[-3000:]

    done = subprocess.run(
        _command(search_dataset, run, "--resume", "true"), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]

    genotype = Genotype.load(run / "genotype.json")
    assert genotype.attention == "nas-scam-p" and genotype.synchronous
    assert (run / "alpha_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "genotype_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the genotype's epoch
    assert sorted(p.name for p in (run / "genotypes").iterdir()) == [f"genotype_epoch000{e}.json" for e in (1, 2, 3)]
    assert len(list((run / "alpha").glob("alpha_epoch*.png"))) == 3

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train_loss", "val_dice", "arch_loss", "alpha/down1/sam/n0->n1/conv3", "alpha/up4/cam/n2->n3/conv15"} <= tags
    # the search diagnostics: metrics of the validation (logged by the evaluator's TensorBoard handler), per-module figures
    assert {"alpha_entropy", "alpha_margin", "alpha_none_share", "alpha_decided", "alpha_changed"} <= tags
    assert {"alpha_diagnostics/down1/sam/entropy", "alpha_diagnostics/up4/cam/margin", "alpha_diagnostics/up1/cam/changed"} <= tags
    # genotype format 2: the verdict of the best validation's alphas; the verdict is the last thing the run logs
    assert genotype.search["verdict"] in ("not converged", "converged", "collapsed") and genotype.search["epoch"] in (1, 2, 3)
    assert "search verdict for " in done.stdout + done.stderr

    import torch

    state = torch.load(checkpoint, weights_only=True)
    assert state["trainer"]["iteration"] == 6 and state["best_genotype"]["best_genotype"] is not None
    assert state["search_diagnostics"]["previous_epoch"] == 3  # "changed since the last validation" survives a resume


def test_reference_preset_and_shared_search_build(tmp_path, search_dataset):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([*SEARCH, str(REFERENCE)])
    parser.update(
        {
            "dataset_dir": str(search_dataset),
            "output_dir": str(tmp_path / "run"),
            "attention": "nas-scam-s",
            "synchronous": "false",
            "roi_size": [64, 64],
            "features": [4, 8, 8, 8, 8],
            "epoch_crops": 8,
            "num_workers": 0,
        }
    )
    trainer = parser.get_parsed_content("train#trainer")
    assert (trainer.schedule, trainer.warmup_epochs, trainer.epoch_cycle, trainer.state.max_epochs) == ("epoch", 20, 3, 120)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3 == trainer.arch_optimizer.param_groups[0]["lr"]
    assert trainer.loss_function.w_cross == 0.0 and trainer.loss_function.batch
    net = trainer.network
    assert net.attention == "nas-scam-s" and len(net.arch_parameters()) == 2  # shared: one SAM and one CAM alpha
    batch = next(iter(trainer.data_loader))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].shape == (4, 4, 64, 64)
    train_names = {e["name"] for e in parser.get_parsed_content("train#dataset#data")}
    arch_names = {e["name"] for e in parser.get_parsed_content("arch#dataset#data")}
    assert train_names and arch_names and train_names.isdisjoint(arch_names)
    parser.get_parsed_content("tensorboard").close()


def test_sigterm_to_the_process_group_with_loader_workers_saves_cleanly(tmp_path, search_dataset):
    """``timeout`` / ``kill -TERM -PGID`` / batch schedulers signal every process: the workers must survive it."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "search_checkpoint.pt"
    proc = subprocess.Popen(_command(search_dataset, run, num_workers="2"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint after the first epoch:\n" + (proc.communicate()[0] if proc.poll() is not None else "")
    os.killpg(proc.pid, signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert "killed by signal" not in log, log[-3000:]
    if "SIGTERM received" in log:  # the usual case: stopped cleanly after an iteration, with a checkpoint to resume
        assert proc.returncode == 143 and "resume from" in log, log[-3000:]  # 128 + SIGTERM, as a shell reports it
    else:  # the signal came after the last iteration (a very slow machine)
        assert proc.returncode == 0 and (run / "genotype.json").exists(), log[-3000:]


def test_search_with_the_darts_remedies(tmp_path, search_dataset, caplog):
    """Temperature annealing and the entropy penalty through search.yaml: the schedule is logged per epoch, the
    alpha steps' loss carries the penalty, the genotype records softmax(alpha) at temperature 1."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(SEARCH)
    parser.update({key: json.loads(value) for key, value in TINY.items()})
    parser.update({"dataset_dir": str(search_dataset), "output_dir": str(tmp_path / "run"), "epochs": 2, "warmup_epochs": 0,
                   "val_interval": 2, "alpha_temperature": [1.0, 0.1], "alpha_entropy_weight": 0.5})
    arch_loss = parser.get_parsed_content("arch_loss")
    assert arch_loss.weight == 0.5 and arch_loss.loss is parser.get_parsed_content("loss")
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.arch_loss_function is arch_loss
    with caplog.at_level(logging.INFO):
        trainer.run()
    log = caplog.text
    assert "epoch 1: alpha softmax temperature 1" in log and "epoch 2: alpha softmax temperature 0.1" in log
    cells = [m for m in parser.get_parsed_content("network").modules() if getattr(m, "searchable", False)]
    assert cells and all(c.temperature == pytest.approx(0.1) for c in cells)
    saved = sorted((tmp_path / "run" / "genotypes").glob("genotype_epoch*.json"))
    assert saved and Genotype.load(saved[-1]).search["settings"] == {"alpha_temperature": [1.0, 0.1], "alpha_entropy_weight": 0.5}


def test_search_with_selection_by_perturbation(tmp_path, search_dataset, caplog):
    """--selection perturbation with the alphas frozen (warm-up = epochs): genotype.json holds the chosen operations
    with every edge's record, genotype_alpha.json the argmax of the best validation, the log the decided count."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(SEARCH)
    parser.update({key: json.loads(value) for key, value in TINY.items()})
    parser.update({"dataset_dir": str(search_dataset), "output_dir": str(tmp_path / "run"), "epochs": 1, "warmup_epochs": 1,
                   "attention": "nas-cam", "selection": "perturbation", "selection_crops": 6, "selection_interval": 1})
    from monai_nasscam.engines import check_search_inputs

    assert check_search_inputs(search_dataset, epochs=1, warmup_epochs=1, selection="perturbation", selection_crops=4)
    trainer = parser.get_parsed_content("train#trainer")
    with caplog.at_level(logging.INFO):
        trainer.run()
    genotype = Genotype.load(tmp_path / "run" / "genotype.json")
    selection = genotype.selection
    # whole loader batches of 4 crops until there are 6: 8 crops, in one pass
    assert selection["method"] == "perturbation" and selection["crops"] == 8 and selection["edges"] == 48
    assert all(len(genotype.selection["modules"][m["position"]]["cam"]) == 6 for m in genotype.modules)
    assert Genotype.load(tmp_path / "run" / "genotype_alpha.json").selection["method"] == "alpha"
    for figure in ("genotype_heatmap.png", "genotype_alpha_heatmap.png"):
        assert (tmp_path / "run" / figure).stat().st_size > 0
    assert f"the data decided {selection['decided']} of 48 edges" in caplog.text



def test_selection_by_perturbation_on_a_finished_search(tmp_path, search_dataset):
    """An alpha search that finished, run again with ``--selection perturbation --resume true`` (docs/search.md):
    no epoch runs again, genotype_alpha.json holds the genotype the first run wrote and genotype.json the selection's."""
    run = tmp_path / "run"
    first = subprocess.run(_command(search_dataset, run, attention="nas-cam"), env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    assert "BilevelSearchTrainer - INFO - Epoch[3] Complete" in first.stdout + first.stderr
    alpha = Genotype.load(run / "genotype.json")
    assert alpha.selection["method"] == "alpha"

    again = subprocess.run(
        _command(search_dataset, run, "--resume", "true", attention="nas-cam", selection="perturbation", selection_crops="4"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-5000:]
    assert "BilevelSearchTrainer - INFO - Epoch[" not in log and "SupervisedEvaluator" not in log  # no epoch, no validation
    assert "selection by perturbation for " in log and " edges (the winner's 95% interval" in log
    chosen = Genotype.load(run / "genotype.json")
    assert chosen.selection["method"] == "perturbation" and chosen.selection["edges"] == 48
    assert Genotype.load(run / "genotype_alpha.json").modules == alpha.modules
