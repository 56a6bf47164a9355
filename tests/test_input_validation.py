"""Bad input ends a run with one ``error: ...`` line, before the run has written anything; checkpoints move between
machines (saved with CPU tensors; a CUDA-tagged file loads and exports on a machine without CUDA).

The search and train configs are run in this process (a failing run stops in its first step, in well under a
second); one inference run goes through ``python -m monai.bundle`` to check the exit status and stderr as a user
sees them.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.serialization as serialization

from monai_nasscam.errors import (
    InputError,
    MissingInputError,
    find_input_error,
    input_check,
    nasscam_excepthook,
)
from tests.utils import REPO

CONFIGS = REPO / "bundle" / "configs"
TRAIN, INFERENCE = (str(CONFIGS / f"{n}.yaml") for n in ("train", "inference"))
SEARCH = [TRAIN, str(CONFIGS / "search.yaml")]  # the search: an override of train.yaml
META = str(CONFIGS / "metadata.json")
FEATURES = [4, 4, 8, 8, 16]
TINY = {"roi_size": [32, 32], "features": FEATURES, "num_workers": 0, "epoch_crops": 8, "progress": False,
        "sw_batch_size": 16}


def _one_line(error: BaseException) -> str:
    """What the installed ``sys.excepthook`` prints for ``error`` (stderr)."""
    stream = io.StringIO()
    with redirect_stderr(stream):
        nasscam_excepthook(type(error), error, error.__traceback__)
    return stream.getvalue()


def _run_fails(config: str | list[str], output_dir: Path, **overrides) -> str:
    """Run a bundle config that must fail its input checks; returns the line the user sees."""
    from monai.bundle import run

    with pytest.raises(Exception) as info:
        run(config_file=config, meta_file=META, logging_file=False, output_dir=str(output_dir), **overrides)
    assert find_input_error(info.value) is not None, f"not an input error: {info.value!r}"
    printed = _one_line(info.value)
    assert printed.count("\n") == 1 and printed.startswith("error: "), printed
    return printed


# ------------------------------------------------------------------------------------------ one line, exit 1
def test_excepthook_prints_one_line_for_input_errors_only(monkeypatch):
    monkeypatch.delenv("NASSCAM_TRACEBACK", raising=False)
    try:
        try:
            raise MissingInputError("dataset_dir '/x' does not exist")
        except MissingInputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from e  # as MONAI's parser wraps it
    except RuntimeError as e:
        wrapped = e
    assert _one_line(wrapped) == "error: dataset_dir '/x' does not exist\n"

    bug = ZeroDivisionError("division by zero")  # anything else keeps its traceback
    printed = _one_line(bug)
    assert "ZeroDivisionError: division by zero" in printed and not printed.startswith("error:")
    monkeypatch.setenv("NASSCAM_TRACEBACK", "1")  # the full traceback on request
    assert "Traceback" in _one_line(wrapped) or "RuntimeError" in _one_line(wrapped)


def test_excepthook_installed_again_over_a_hook_that_wraps_it_prints_the_traceback_once(monkeypatch):
    """torch.distributed wraps the hook in place and calls it back; a workflow run after that installs ours again,
    which then holds torch's as its previous hook: a bug's traceback is printed once, with no endless chain."""
    import monai_nasscam.errors as errors

    monkeypatch.delenv("NASSCAM_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(errors, "_previous_hook", None)
    errors.install_excepthook()
    calls = []
    wrapped = sys.excepthook

    def wrapping_hook(*args):  # what torch.distributed installs: note the error, then call the hook it replaced
        calls.append(args[0])
        wrapped(*args)

    sys.excepthook = wrapping_hook
    errors.install_excepthook()
    assert sys.excepthook is errors.nasscam_excepthook and errors._previous_hook is wrapping_hook
    printed = _one_line(ZeroDivisionError("division by zero"))
    assert printed.count("ZeroDivisionError: division by zero") == 1 and calls == [ZeroDivisionError]
    assert _one_line(errors.MissingInputError("genotype /g.json does not exist")) == "error: genotype /g.json does not exist\n"


def test_input_check_turns_check_errors_into_input_errors_keeping_their_type():
    @input_check
    def check(kind: str) -> None:
        if kind == "missing":
            raise FileNotFoundError("genotype /g.json does not exist")
        if kind == "bad":
            raise ValueError("epochs must be >= 1, got 0.")
        raise KeyError("a bug")

    with pytest.raises(MissingInputError, match="/g.json") as info:
        check("missing")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, InputError)
    with pytest.raises(InputError, match="epochs"):
        check("bad")
    with pytest.raises(KeyError):  # not an input problem: unchanged
        check("bug")


def test_a_search_without_an_alpha_step_is_an_input_error(tmp_path):
    """warmup_epochs == epochs would write a genotype of untouched alphas: refused before the dataset is read."""
    from monai_nasscam.engines import check_search_inputs

    for epochs in (1, 3):
        with pytest.raises(InputError) as info:
            check_search_inputs(tmp_path / "no_prep", epochs=epochs, warmup_epochs=epochs)
        assert str(info.value) == (
            f"warmup_epochs ({epochs}) must be smaller than epochs ({epochs}): no alpha step would run, and the "
            "genotype would be a random pick (with --selection perturbation it is the frozen-alpha variant)."
        )
    with pytest.raises(MissingInputError):  # one alpha epoch: the epochs pass, the missing dataset is named
        check_search_inputs(tmp_path / "no_prep", epochs=3, warmup_epochs=2)


# ----------------------------------------------------------------------- nothing written by a failing run
@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"crop_mode": "diagonal"}, "crop_mode"),
        ({"device": "gpu"}, "device"),
        ({"features": [4, 4]}, "features"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"arch_learning_rate": "fast"}, "arch_learning_rate"),
        ({"epoch_crops": 0}, "epoch_crops"),
        ({"dropout": 1.5}, "dropout"),
        ({"epochs": 2, "val_interval": 3}, "val_interval"),
        ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs (2) must be smaller than epochs (2)"),
        ({"roi_size": [40, 40]}, "roi_size"),
        ({"progress": "maybe"}, "progress"),
        ({"resume": True}, "--resume true"),
    ],
)
def test_search_with_a_bad_override_writes_nothing(tiny_dataset, tmp_path, overrides, key):
    out = tmp_path / "out"
    line = _run_fails(SEARCH, out, dataset_dir=str(tiny_dataset), **{"epochs": 1, "warmup_epochs": 0, **TINY, **overrides})
    assert key in line
    assert not out.exists(), f"{sorted(out.rglob('*'))} written before the inputs were checked"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"attention": "unet", "features": [4, 4]}, "features"),
        ({"attention": "unet", "epoch_crops": 0}, "epoch_crops"),
        ({"attention": "unet", "crop_mode": "diagonal"}, "crop_mode"),
        ({"attention": "unet", "num_workers": -1}, "num_workers"),
        ({"attention": "unet", "sw_overlap": 1}, "sw_overlap"),
        ({"attention": "unet", "device": "cuda:99"}, "device"),
        ({"attention": "unet", "seed": "abc"}, "seed"),
        ({"attention": "transformer"}, "attention"),
        ({}, "genotype.json"),  # nothing chosen, no search output
        ({"attention": "unet", "resume": True}, "train_checkpoint.pt"),
        ({"attention": "unet", "dataset_dir": "/no/such/prep"}, "dataset_dir"),
    ],
)
def test_train_with_a_bad_override_writes_nothing(tiny_dataset, tmp_path, overrides, key):
    out = tmp_path / "out"
    settings = {"dataset_dir": str(tiny_dataset), "epochs": 1, **TINY, **overrides}
    line = _run_fails(TRAIN, out, **settings)
    assert key in line
    assert not out.exists(), f"{sorted(out.rglob('*'))} written before the inputs were checked"


def test_a_dataset_dir_that_is_a_file_is_said_to_be_a_file(tiny_dataset, tmp_path):
    """The reported case: --dataset_dir naming a file said it did not exist."""
    not_a_folder = tmp_path / "x.txt"
    not_a_folder.write_text("not a dataset")
    out = tmp_path / "out"
    line = _run_fails(TRAIN, out, dataset_dir=str(not_a_folder), attention="unet", epochs=1, **TINY)
    assert line == (
        f"error: dataset_dir {str(not_a_folder)!r} is a file, not a folder; pass --dataset_dir PREP, the folder "
        "written by `nasscam prepare --data-dir RAW --out-dir PREP`.\n"
    )
    assert not out.exists(), f"{sorted(out.rglob('*'))} written before the inputs were checked"


@pytest.mark.parametrize("workflow", ["train", "search"])
def test_a_dataset_without_an_annotated_nucleus_is_refused_before_anything_is_written(tiny_dataset, tmp_path, workflow):
    """The reported case: label maps that are background everywhere crashed the training (two tracebacks from the
    crop dataset) after network.json and stain.json had been written."""
    import shutil

    import numpy as np
    from PIL import Image

    prep = tmp_path / "prep"
    shutil.copytree(tiny_dataset, prep)
    for label in sorted((prep / "labels").glob("*.png")):
        with Image.open(label) as im:
            blank = np.zeros_like(np.asarray(im))
        Image.fromarray(blank).save(label)
    training = len(json.loads((prep / "datalist.json").read_text())["training"])
    out = tmp_path / "out"
    if workflow == "train":
        line = _run_fails(TRAIN, out, dataset_dir=str(prep), attention="unet", epochs=1, **TINY)
    else:
        line = _run_fails(SEARCH, out, dataset_dir=str(prep), epochs=1, warmup_epochs=0, **TINY)
    assert line == (
        f"error: no training image of {prep / 'datalist.json'} holds an annotated nucleus: its {training} label "
        "map(s) are background (0) everywhere, so there is nothing to train on (the crops are centred on nuclei). "
        "Check the raw data's annotations and run `nasscam prepare` again.\n"
    )
    assert not out.exists(), f"{sorted(out.rglob('*'))} written before the inputs were checked"


def test_inference_without_a_network_exits_with_one_line_and_writes_nothing(tiny_dataset, tmp_path):
    """The reported case: a checkpoint whose folder records no network (no network.json, no genotype.json)."""
    from monai_nasscam.networks.run_folder import build_network

    run = tmp_path / "lonely"
    (run / "models").mkdir(parents=True)
    torch.save(build_network(attention="unet", features=FEATURES).state_dict(), run / "models" / "model.pt")
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE,
           "--input_dir", str(tiny_dataset / "images"), "--output_dir", str(out),
           "--ckpt_path", str(run / "models" / "model.pt"), "--stain", "none", "--roi_size", "[32,32]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NASSCAM_TRACEBACK", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no network chosen") and str(run / "genotype.json") in last, proc.stderr[-2000:]
    assert "network.json" in last and "--attention" in last
    assert "Traceback" not in proc.stderr and "ConfigExpression" not in proc.stderr
    assert not out.exists()

    # a checkpoint of another architecture is refused in the same way, before the output folder is made
    line = _run_fails(INFERENCE, out, input_dir=str(tiny_dataset / "images"), ckpt_path=str(run / "models" / "model.pt"),
                      attention="cbam", features=FEATURES, stain="none", roi_size=[32, 32])
    assert "model.pt" in line and "another architecture" in line
    assert not out.exists()
    # and so is a bad setting of the predictor itself
    line = _run_fails(INFERENCE, out, input_dir=str(tiny_dataset / "images"), ckpt_path=str(run / "models" / "model.pt"),
                      attention="unet", features=FEATURES, stain="none", roi_size=[32, 32], object_type="polygon")
    assert "object_type" in line
    assert not out.exists()


# ------------------------------------------------------------------------------ checkpoints between machines
def _save_cuda_tagged(state: dict, path: Path) -> None:
    """``torch.save`` as on a GPU machine: every storage tagged ``cuda:0`` (the values stay the same)."""
    with mock.patch.object(serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(state, path)


def test_a_cuda_tagged_checkpoint_loads_and_exports_on_cpu(tmp_path, monkeypatch):
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    from monai_nasscam.networks.run_folder import build_network, check_checkpoint
    from monai_nasscam.serialization import _restore_on_cpu

    torch.manual_seed(0)
    net = build_network(attention="unet", features=FEATURES).eval()
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    _save_cuda_tagged(net.state_dict(), ckpt)

    if not torch.cuda.is_available():  # the file is what a GPU writes: without the fallback, torch refuses it
        registry = [entry for entry in serialization._package_registry if entry[2] is not _restore_on_cpu]
        monkeypatch.setattr(serialization, "_package_registry", registry)
        with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
            torch.load(ckpt, weights_only=True)
        monkeypatch.undo()

    # what the project loads itself (map_location="cpu")
    assert check_checkpoint(ckpt, build_network(attention="unet", features=FEATURES))
    # MONAI's ckpt_export, exactly as documented (ignite loads the file without a map_location)
    with mock.patch.object(torch.cuda, "is_available", lambda: False):
        ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt), meta_file=META,
                    config_file=TRAIN, use_trace=True, input_shape=[1, 3, 32, 32], attention="unet",
                    features=FEATURES)
    exported = load_net_with_metadata(str(tmp_path / "model.ts"))[0]
    x = torch.rand(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), rtol=1e-5, atol=1e-5)


def test_savers_write_cpu_tensors(tmp_path):
    from ignite.engine import Engine

    from monai_nasscam.handlers import ResumableCheckpointSaver
    from monai_nasscam.handlers.training import BestModelSaver, CPUStateDict
    from monai_nasscam.serialization import to_cpu

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = net.state_dict()
    moved = to_cpu({"network": state, "list": [torch.ones(2)], "n": 3})
    assert moved["network"]._metadata == state._metadata  # load_state_dict's version information survives
    assert all(t.device.type == "cpu" for t in moved["network"].values()) and moved["n"] == 3
    wrapped = CPUStateDict(torch.nn.DataParallel(net))  # saved without the module. prefix
    assert list(wrapped.state_dict()) == list(state)

    saver = BestModelSaver(tmp_path / "models", net)
    assert isinstance(saver._key_metric_checkpoint.to_save["model"], CPUStateDict)

    seen = []
    checkpointer = ResumableCheckpointSaver(tmp_path / "ckpt", {"network": net})
    with mock.patch("monai_nasscam.handlers.checkpoint.to_cpu", side_effect=lambda c: seen.append(c) or to_cpu(c)):
        path = checkpointer.save(Engine(lambda e, b: None))
    assert seen and set(torch.load(path, weights_only=True)["network"]) == set(state)


def test_a_run_folder_as_checkpoint_names_the_weights_file(tmp_path):
    from monai_nasscam.networks.run_folder import build_network, check_checkpoint

    net = build_network(attention="unet", features=FEATURES)
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"is a folder, not a weights file: pass the file as --ckpt_path; did you mean .*models/model\.pt\?"):
        check_checkpoint(tmp_path, net)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is a folder, not a weights file: .*\(train\.yaml writes RUN/models/model\.pt\)"):
        check_checkpoint(tmp_path / "empty", net)


# ------------------------------------------------------------------------------------- None as a setting
def test_a_none_setting_is_refused_and_the_drivers_pass_none_as_an_expression():
    """``--key None``: python-fire gives None and ``monai.bundle run`` drops it, so the config's value would stay
    (``nasscam compare --train-set loss#class_weights=null`` ran with the default weights). Refused on the command
    line; the drivers (compare, demo) write None as ``$None``, which the workflow receives and evaluates to None."""
    import fire.parser
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import update_kwargs

    from monai_nasscam.overrides import check_override_keys
    from monai_nasscam.workflow import bundle_command

    with pytest.raises(InputError, match=r"^setting --loss#class_weights None would be ignored: monai\.bundle run drops "
                                         r"None values, so the config's value would stay\. To set it to None pass "
                                         r"--loss#class_weights '\$None'\.$"):
        check_override_keys(["m", "run", "--config_file", TRAIN, "--loss#class_weights", "None"])
    assert check_override_keys(["m", "run", "--config_file", TRAIN, "--loss#class_weights", "$None"])
    assert update_kwargs({}, **{"loss#class_weights": fire.parser.DefaultParseValue("None")}) == {}  # MONAI drops it

    cmd = bundle_command(["train.yaml"], {"loss#class_weights": None})
    value = fire.parser.DefaultParseValue(cmd[cmd.index("--loss#class_weights") + 1])
    parser = ConfigParser({"loss": {"class_weights": "$[1.0, 2.0]"}})
    parser.update(update_kwargs({}, **{"loss#class_weights": value}))
    assert parser.get_parsed_content("loss#class_weights") is None


# ------------------------------------------------------------------------------------- misspelt settings
def test_a_misspelt_setting_is_refused_naming_the_closest_keys(tmp_path):
    from monai_nasscam.overrides import check_override_keys

    inference = ["monai/bundle/__main__.py", "run", "--config_file", INFERENCE, "--input_dir", "x", "--treshold", "0.9"]
    with pytest.raises(InputError, match=r"^unknown setting --treshold: .*inference\.yaml has no key 'treshold', so it "
                                         r"would be ignored; did you mean --threshold\?"):
        check_override_keys(inference)
    evaluate = f"['{TRAIN}', '{CONFIGS / 'evaluate.yaml'}']"
    with pytest.raises(InputError, match=r"unknown setting --instance_methd: .*; did you mean --instance_method"):
        check_override_keys(["m", "run", "--config_file", evaluate, "--instance-methd=watershed"])  # fire's - as _
    # known keys, nested keys by their first part, MONAI's own arguments, fire's flags after "--": all accepted
    assert check_override_keys(["m", "run", "--config_file", evaluate, "--instance_method", "watershed",
                                "--watershed#h", "1", "--meta_file", "m.json", "--logging_file", "l.conf", "--", "--help"])
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"input_dir": "x", "theshold": 0.4}))
    with pytest.raises(InputError, match=r"unknown setting --theshold"):
        check_override_keys(["m", "run", "--config_file", INFERENCE, "--args_file", str(args)])
    assert check_override_keys(["pytest", "tests"])  # monai.bundle.run(...) from Python: nothing to check


def test_a_search_checkpoint_where_weights_are_expected_says_to_retrain_first(tmp_path):
    from PIL import Image

    from monai_nasscam.engines import check_evaluate_inputs
    from monai_nasscam.inference import check_inference_inputs
    from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet
    from monai_nasscam.networks.run_folder import check_checkpoint

    supernet = NASSCAMUNet(2, 3, 4, attention="nas-sam", features=FEATURES)
    path = tmp_path / "run" / "checkpoints" / "search_checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save({"network": supernet.state_dict(), "arch_optimizer": {}, "trainer": {"epoch": 1}}, path)
    message = (
        f"{path} is a search checkpoint (the supernet with its alphas and every candidate operation), not trained "
        "weights: retrain the derived network (train.yaml --genotype_path RUN/genotype.json) and pass --ckpt_path "
        "RUN/models/model.pt (the weights train.yaml writes)."
    )
    modules = [{"position": p, "sam": ["conv3"] * 6} for p in POSITIONS]
    derived = NASSCAMUNet(2, 3, 4, attention=None, genotype=Genotype("nas-sam", True, modules), features=FEATURES)
    with pytest.raises(InputError) as info:
        check_checkpoint(path, derived)
    assert str(info.value) == message
    # inference and evaluation say it before they look for the network (the run folder has no genotype, no record):
    # one run to the real message, not three
    Image.fromarray(torch.full((32, 32, 3), 200, dtype=torch.uint8).numpy()).save(tmp_path / "a.png")
    with pytest.raises(InputError) as info:
        check_inference_inputs(tmp_path / "a.png", path, stain="none")
    assert str(info.value) == message
    with pytest.raises(InputError) as info:
        check_evaluate_inputs(tmp_path / "no_prep", "test", path, derived)
    assert str(info.value) == message
    # its network alone (no optimiser): still recognised by the alphas
    torch.save({"network": supernet.state_dict()}, path)
    with pytest.raises(InputError, match=r"is a search checkpoint \(the supernet"):
        check_checkpoint(path, derived)
    # as a resume checkpoint (key="network") it is what a search resumes from: accepted
    assert check_checkpoint(path, supernet, key="network")


def test_a_file_that_is_no_checkpoint_is_named_with_its_cause_not_torchs_advice(tmp_path):
    from monai_nasscam.networks.run_folder import check_checkpoint, check_trained_weights

    net = torch.nn.Linear(2, 2)
    good = tmp_path / "model.pt"
    torch.save(net.state_dict(), good)
    text, json_file, empty, binary, pickled, cut = (tmp_path / n for n in ("notes.pt", "j.pt", "e.pt", "b.pt", "w.pt", "c.pt"))
    text.write_text("hello, this is not a checkpoint\nsecond line\n")
    json_file.write_text('{"a": 1}')
    empty.write_bytes(b"")
    binary.write_bytes(bytes([0, 1, 2, 250, 251, 252, 253, 254, 255]))
    torch.save(net, pickled)  # a whole model: unpickling it would run code
    cut.write_bytes(good.read_bytes()[:200])  # an interrupted copy
    advice = "; pass --ckpt_path RUN/models/model.pt (the weights train.yaml writes)."
    cases = {
        text: f"{text} is not a PyTorch checkpoint (it is a text file, starting 'hello, this is not a checkpoint'){advice}",
        json_file: f"""{json_file} is not a PyTorch checkpoint (it is a text file, starting '{{"a": 1}}'){advice}""",
        empty: f"{empty} is not a PyTorch checkpoint (it is empty){advice}",
        binary: f"{binary} is not a PyTorch checkpoint (it starts with the bytes 00 01 02 fa fb fc fd fe){advice}",
        pickled: f"{pickled} holds Python objects besides weights (a torch.nn.modules.linear.Linear), which this "
        "project never unpickles (unpickling can run any code); a weights file holds a state dict: "
        f"torch.save(model.state_dict(), path){advice}",
    }
    for path, message in cases.items():
        for check in (lambda p: check_checkpoint(p, net), check_trained_weights):
            with pytest.raises(InputError) as info:
                check(path)
            assert str(info.value) == message
            assert "weights_only" not in message
    with pytest.raises(InputError, match=rf"^{cut} is a damaged or incomplete PyTorch checkpoint \(RuntimeError: "
                                         r"PytorchStreamReader failed reading zip archive[^)]*\)" + re.escape(advice) + "$"):
        check_checkpoint(cut, net)
    # a resume checkpoint gets the advice that fits it
    with pytest.raises(InputError, match=r"not a PyTorch checkpoint .*; start afresh in another --output_dir\.$"):
        check_checkpoint(text, net, key="network")
    assert check_checkpoint(good, net) and check_trained_weights(good) == good


def test_the_run_folder_of_a_training_checkpoint_is_the_run(tmp_path):
    from monai_nasscam.inference import check_inference_inputs, run_dir_of
    from monai_nasscam.networks.run_folder import build_network

    run = tmp_path / "run"
    assert run_dir_of(run / "models" / "model.pt") == str(run.absolute())
    assert run_dir_of(run / "checkpoints" / "train_checkpoint.pt") == str(run.absolute())
    assert run_dir_of(tmp_path / "weights.pt") == str(tmp_path.absolute())
    # --ckpt_path RUN/checkpoints/train_checkpoint.pt: the network comes from RUN/network.json, not checkpoints/
    net = build_network(attention="unet", features=FEATURES)
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"network": net.state_dict(), "trainer": {"epoch": 1}}, run / "checkpoints" / "train_checkpoint.pt")
    (run / "network.json").write_text(json.dumps({"attention": "none", "features": FEATURES, "mpp": 0.5}))
    from PIL import Image

    Image.fromarray(torch.full((32, 32, 3), 200, dtype=torch.uint8).numpy()).save(tmp_path / "a.png")
    assert check_inference_inputs(tmp_path / "a.png", run / "checkpoints" / "train_checkpoint.pt", stain="none",
                                  roi_size=(32, 32))


def test_a_fresh_run_never_starts_over_an_earlier_runs_checkpoint(tmp_path):
    from monai_nasscam.engines import check_fresh_run
    from monai_nasscam.engines import TRAIN_CHECKPOINT_NAME

    assert check_fresh_run(tmp_path, None)  # an empty folder
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "search_checkpoint.pt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"search_checkpoint\.pt exists: .* holds an earlier run\. --resume true continues it"):
        check_fresh_run(tmp_path, None)
    assert check_fresh_run(tmp_path, str(tmp_path / "checkpoints" / "search_checkpoint.pt"))  # resuming it
    assert check_fresh_run(tmp_path, None, TRAIN_CHECKPOINT_NAME)  # a training run beside the search's outputs


def test_troubleshooting_quotes_the_messages_the_code_prints():
    # a user who searches docs/troubleshooting.md for the line on the screen finds it, word for word
    from monai_nasscam.overrides import check_roi_size
    from monai_nasscam.inference.tiling import window_geometry
    from monai_nasscam.inferers import validation_roi_size
    from monai_nasscam.networks.diagnostics import _unchecked_reason, VerdictRule

    text = (REPO / "docs" / "troubleshooting.md").read_text()
    printed = []
    for check in (check_roi_size, lambda r: window_geometry(r, 0.5), lambda r: validation_roi_size(None, r)):
        with pytest.raises(InputError) as info:  # search and training, inference, validation: one message
            check([40, 40])
        printed.append(str(info.value))
    assert len(set(printed)) == 1 and printed[0].startswith("roi_size must be multiples of 16")
    printed += [_unchecked_reason(None, None, VerdictRule()), _unchecked_reason(3, 0.0, VerdictRule())]
    for message in printed:
        assert message in text, message


def test_integers_and_window_sizes_as_overrides_deliver_them():
    from monai_nasscam.overrides import as_int, check_roi_size, whole_number

    assert [whole_number(v) for v in (3, 3.0, "3", -2)] == [3, 3, 3, -2]
    assert [whole_number(v) for v in (2.5, "3.0", "three", True, None, float("inf"), float("nan"))] == [None] * 7
    assert as_int("8", "epochs", 1) == 8
    for value, message in ((0, "epochs must be an integer >= 1, got 0."),
                           ("x", "epochs must be an integer >= 1, got 'x'.")):
        with pytest.raises(ValueError) as info:
            as_int(value, "epochs", 1)
        assert str(info.value) == message
    assert check_roi_size(32) == [32, 32] and check_roi_size(["64", 48.0]) == [64, 48]
    for bad in ([32], [32, 40], [0, 32], [32, True], "x"):
        with pytest.raises(InputError, match=r"^roi_size must be multiples of 16"):
            check_roi_size(bad)
