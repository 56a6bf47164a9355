"""How every command ends: a bad input with one ``error: ...`` line and exit status 1, a Ctrl-C with one
``stopped: ...`` line and exit status 130, never a traceback; one run per output folder; no side effect of
``import monai_nasscam``.

The commands run as a user runs them (subprocesses) where the exit status and the streams are the point: the
interruptions (SIGINT sent once the command is at work) and one refused run. Missing folders are checked in this
process (each stops in its first step).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from monai_nasscam.cli import main as cli_main
from monai_nasscam.errors import INTERRUPTED_STATUS, InputError, find_input_error, one_line
from monai_nasscam.runlock import LOCK_NAME, held_locks, lock_output_dir
from tests.utils import REPO, default_sigint

CONFIGS = REPO / "bundle" / "configs"
SEARCH, TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{n}.yaml") for n in ("search", "train", "evaluate", "inference"))
META = str(CONFIGS / "metadata.json")
FEATURES = [4, 4, 8, 8, 16]
TINY = ["--roi_size", "[32,32]", "--features", json.dumps(FEATURES), "--num_workers", "0", "--epoch_crops", "8",
        "--progress", "false", "--sw_batch_size", "16"]
#: a process that claims a folder as a train run and holds it until its stdin closes (no torch: starts at once)
HOLDER = ("import sys; from monai_nasscam.runlock import lock_output_dir; lock_output_dir(sys.argv[1], 'train'); "
          "print('held', flush=True); sys.stdin.read()")


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> Path:
    """A run folder with an untrained U-Net's weights (``--attention unet``), for evaluate and inference."""
    from monai_nasscam.networks.run_folder import build_network

    run = tmp_path_factory.mktemp("unet_run")
    (run / "models").mkdir()
    torch.save(build_network(attention="unet", features=FEATURES).state_dict(), run / "models" / "model.pt")
    return run


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("NASSCAM_TRACEBACK", None)
    return env


def _bundle(config: str | list[str], *args: str) -> list[str]:
    files = config if isinstance(config, str) else repr(config)
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]


def _nasscam(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai_nasscam.cli", *args]


def _the_line(stderr: str, stdout: str, start: str) -> str:
    """The one line a run ended with (the last of stderr, starting with ``start``); no traceback anywhere."""
    assert "Traceback" not in stderr + stdout, (stderr + stdout)[-4000:]
    ends = [line for line in stderr.splitlines() if line.startswith(start) or ": stopped: " in line or ": error: " in line]
    assert len(ends) == 1 and stderr.strip().splitlines()[-1] == ends[0], stderr[-3000:]
    return ends[0]


def _interrupt(cmd: list[str], started: Callable[[str], bool], cwd: Path) -> tuple[int, str, str]:
    """Start ``cmd``, send it SIGINT once ``started(stdout so far)`` (it is at work); its status, stdout, stderr."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    streams: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda f=f, k=k: streams[k].extend(iter(f.readline, "")), daemon=True)
               for f, k in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 300
    while not started("".join(streams["out"])) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running = proc.poll() is None
    if running:
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    for reader in readers:
        reader.join(timeout=60)
    out, err = "".join(streams["out"]), "".join(streams["err"])
    assert running, f"finished before it could be interrupted:\n{out[-2000:]}\n{err[-2000:]}"
    return proc.returncode, out, err


# ------------------------------------------------------------------------------------------------ interrupts
def _synth(tmp: Path, tiny_dataset: Path, run: Path) -> tuple[list[str], Callable[[str], bool], Callable[[], None]]:
    out = tmp / "raw"

    def nothing_left() -> None:
        assert not out.exists() and not list(tmp.glob(".raw.tmp-*"))

    return _nasscam("synth", str(out), "--images", "2000"), lambda text: any(tmp.glob(".raw.tmp-*")), nothing_left


def _prepare(tmp: Path, tiny_dataset: Path, run: Path):
    # tiny_dataset's 8 small tiles are prepared in tens of milliseconds: the run could end between the check that it
    # started and the signal. 12 tiles of 900-1000 px keep it at work for about a second and a half.
    from monai_nasscam.data import generate_dataset

    raw, out = tmp / "slow_raw", tmp / "prep"
    generate_dataset(raw, n_images=12, n_patients=4, seed=0, min_size=900, max_size=1000)

    def nothing_left() -> None:
        assert not out.exists() and not list(tmp.glob(".prep.tmp-*"))

    cmd = _nasscam("prepare", "--data-dir", str(raw), "--out-dir", str(out), "--workers", "0")
    return cmd, lambda text: any(tmp.glob(".prep.tmp-*")), nothing_left


def _compare(tmp: Path, tiny_dataset: Path, run: Path):
    child = tmp / "cmp" / "unet" / "seed0" / "train"

    def child_stopped() -> None:  # the train workflow got the interrupt and ended, releasing its folder
        assert not (child / LOCK_NAME).exists() and (child / "workflow.log").is_file()

    cmd = _nasscam("compare", "--dataset-dir", str(tiny_dataset), "--output-dir", str(tmp / "cmp"), "--models", "unet",
                   "--seeds", "1", "--set", "roi_size=[32,32]", f"features={json.dumps(FEATURES)}", "num_workers=0",
                   "progress=false", "--train-set", "epochs=50")
    return cmd, lambda text: (child / LOCK_NAME).exists(), child_stopped


def _train(tmp: Path, tiny_dataset: Path, run: Path):
    out = tmp / "run"
    cmd = _bundle(TRAIN, "--dataset_dir", str(tiny_dataset), "--output_dir", str(out), "--attention", "unet",
                  "--epochs", "50", *TINY)
    return cmd, lambda text: (out / LOCK_NAME).exists(), lambda: None


def _evaluate(tmp: Path, tiny_dataset: Path, run: Path):
    cmd = _bundle([TRAIN, EVALUATE], "--dataset_dir", str(tiny_dataset), "--output_dir", str(run), "--attention", "unet",
                  "--eval_split", "all", *TINY)
    # once the evaluator has started (it logs the weights it restored): a Ctrl-C inside the engine's run
    return cmd, lambda text: "Restored all variables from" in text, lambda: None


def _inference(tmp: Path, tiny_dataset: Path, run: Path):
    out = tmp / "pred"
    cmd = _bundle(INFERENCE, "--input_dir", str(tiny_dataset / "images"), "--output_dir", str(out), "--ckpt_path",
                  str(run / "models" / "model.pt"), "--attention", "unet", "--features", json.dumps(FEATURES),
                  "--stain", "none", "--roi_size", "[32,32]")
    return cmd, lambda text: (out / LOCK_NAME).exists(), lambda: None


@pytest.mark.parametrize("command", [_synth, _prepare, _compare, _train, _evaluate, _inference],
                         ids=["synth", "prepare", "compare", "train", "evaluate", "inference"])
def test_an_interrupt_ends_every_command_with_one_stopped_line_and_status_130(command, tiny_dataset, unet_run, tmp_path):
    """SIGINT (a Ctrl-C) once the command is at work: one ``stopped:`` line, status 130, no traceback; what the
    command must not leave behind is not there. (The search's own case is in test_search_bundle.py.)"""
    cmd, started, check = command(tmp_path, tiny_dataset, unet_run)
    rc, out, err = _interrupt(cmd, started, tmp_path)
    line = _the_line(err, out, "stopped: ")
    assert rc == INTERRUPTED_STATUS and "stopped: " in line, (rc, err[-2000:])
    check()
    assert not list(tmp_path.rglob(LOCK_NAME)) and not (unet_run / LOCK_NAME).exists()  # every lock released


# ---------------------------------------------------------------------------------------------- missing folders
@pytest.mark.parametrize("args, expected", [
    (["compare", "--dataset-dir", "{missing}", "--output-dir", "{tmp}/cmp"], "dataset folder {missing} does not exist"),
    (["prepare", "--data-dir", "{missing}", "--out-dir", "{tmp}/prep"], "{missing}: data folder does not exist"),
    (["synth", "{tmp}/raw", "--images", "0"], "--images must be at least 1, got 0."),
])
def test_a_bad_input_ends_a_nasscam_command_with_one_error_line(args, expected, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    args = [a.format(missing=missing, tmp=tmp_path) for a in args]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert err == f"nasscam {args[0]}: error: {expected.format(missing=missing)}\n" or (
        err.count("\n") == 1 and err.startswith(f"nasscam {args[0]}: error: ") and expected.format(missing=missing) in err
    ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli_main(["--debug", "compare", "--dataset-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")])


def _fails_in_process(config: str | list[str], **overrides) -> str:
    """Run a bundle config in this process; it must stop on an input error: the line the hook prints."""
    from monai.bundle import run

    with pytest.raises(Exception) as info:
        run(config_file=config, meta_file=META, logging_file=False, **overrides)
    assert find_input_error(info.value) is not None, f"not an input error: {info.value!r}"
    line = one_line(info.value)
    assert line is not None and line.startswith("error: ") and "\n" not in line
    return line


def test_a_missing_folder_ends_every_workflow_with_one_error_line(tiny_dataset, unet_run, tmp_path):
    missing, out = tmp_path / "missing", tmp_path / "out"
    line = _fails_in_process([TRAIN, SEARCH], dataset_dir=str(missing), output_dir=str(out))
    assert str(missing) in line
    line = _fails_in_process(TRAIN, dataset_dir=str(missing), output_dir=str(out), attention="unet")
    assert str(missing) in line
    line = _fails_in_process([TRAIN, EVALUATE], dataset_dir=str(missing), output_dir=str(unet_run), attention="unet")
    assert str(missing) in line
    line = _fails_in_process(INFERENCE, input_dir=str(missing), output_dir=str(out),
                             ckpt_path=str(unet_run / "models" / "model.pt"), attention="unet", stain="none")
    assert line == f"error: input folder {missing} does not exist."
    assert not out.exists() and not (unet_run / LOCK_NAME).exists()


def test_every_workflow_installs_the_one_line_hook_first():
    """What makes the lines above what a user sees: each workflow's ``initialize`` installs the hook before anything
    else (importing the package does not)."""
    for name in ("search", "train", "evaluate", "inference", "multi_gpu_search", "multi_gpu_train"):
        steps = [s for s in yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["initialize"]
                 if not (isinstance(s, dict) and s["_target_"].startswith("monai_nasscam.engines.distributed."))]
        # (multi-GPU: once the group is joined); an expression, or a _target_ where the config imports nothing
        assert steps[0] in ("$monai_nasscam.errors.install_excepthook()",
                            {"_target_": "monai_nasscam.errors.install_excepthook"}), name


# ----------------------------------------------------------------------------------------- one run per folder
def _hold(folder: Path) -> subprocess.Popen:
    """A process that claims ``folder`` (as a train run) until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_a_second_run_into_a_folder_in_use_is_refused_with_one_line_and_the_first_is_untouched(
    tiny_dataset, unet_run, tmp_path
):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "train_checkpoint.pt").write_bytes(b"the first run's")
        before = _snapshot(run)
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["workflow"] == "train" and record["host"]
        # the train workflow, as a user starts it: one line, status 1
        proc = subprocess.run(_bundle(TRAIN, "--dataset_dir", str(tiny_dataset), "--output_dir", str(run), "--attention",
                                      "unet", *TINY), env=_env(), capture_output=True, text=True, timeout=300)
        line = _the_line(proc.stderr, proc.stdout, "error: ")
        assert proc.returncode == 1
        assert line.startswith(f"error: {run} is in use by another train run (process {holder.pid} on {record['host']}, "
                               f"started {record['started']}): two runs in one folder would overwrite")
        assert "--output_dir" in line
        # search, evaluate and inference too (in this process)
        for config, overrides in (([TRAIN, SEARCH], {"dataset_dir": str(tiny_dataset)}),
                                  ([TRAIN, EVALUATE], {"dataset_dir": str(tiny_dataset), "attention": "unet",
                                                       "ckpt_path": str(unet_run / "models" / "model.pt")}),
                                  (INFERENCE, {"input_dir": str(tiny_dataset / "images"), "attention": "unet",
                                               "ckpt_path": str(unet_run / "models" / "model.pt"), "stain": "none"})):
            assert "is in use by another train run" in _fails_in_process(config, output_dir=str(run), features=FEATURES,
                                                                   roi_size=[32, 32], **overrides)
        assert _snapshot(run) == before  # nothing of the first run touched, its lock included
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (run / LOCK_NAME).exists()  # released when the holder ended
    lock_output_dir(run, "train")  # and free again
    assert run in held_locks()


def test_a_stale_lock_is_taken_over_and_reported_and_released_at_exit(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _hold(run)
    stale = json.loads((run / LOCK_NAME).read_text())
    holder.kill()  # kill -9: no exit handler runs, the file stays
    holder.wait(timeout=60)
    assert (run / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="monai_nasscam.runlock"):
        lock_output_dir(run, "inference")
    assert f"taking over the lock file left by the train run (process {stale['pid']} on {stale['host']}" in caplog.text
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    # a forked child (a data-loader worker) does not keep the claim: its parent dies without an exit handler
    # (the file stays), the child lives on, and the folder can be claimed
    script = ("import os, sys, time; from monai_nasscam.runlock import lock_output_dir; "
              "lock_output_dir(sys.argv[1], 'train'); pid = os.fork()\n"
              "if pid == 0: os.close(1); os.close(2); time.sleep(60); os._exit(0)\n"
              "print(pid, flush=True); os._exit(0)")
    other = tmp_path / "other"
    proc = subprocess.run([sys.executable, "-c", script, str(other)], env=_env(), capture_output=True, text=True,
                          timeout=60)
    child = int(proc.stdout.strip())
    try:
        assert (other / LOCK_NAME).exists()
        lock_output_dir(other, "train")
        assert json.loads((other / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)
    # a process's exit releases its claim and removes the folder the claim made, if the run left it empty
    proc = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "new" / "run")], env=_env(), input="",
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "held" and not (tmp_path / "new").exists()


def test_a_claim_that_fails_leaves_nothing(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        lock_output_dir(afile, "train")
    with pytest.raises(InputError, match="cannot create output_dir"):
        lock_output_dir(afile / "run", "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------------------------------- import effects
def test_importing_the_package_changes_nothing_process_wide():
    """``import monai_nasscam`` and its networks, blocks, engines, handlers and inference leave ``sys.excepthook``,
    torch's checkpoint loading rules and the signal handlers as they were: a user's own bundle keeps MONAI's
    behaviour."""
    script = """
import signal, sys
import torch, torch.serialization as serialization
hook, rules = sys.excepthook, [fn for _, _, fn in serialization._package_registry]
handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
import monai_nasscam, monai_nasscam.networks, monai_nasscam.networks.run_folder, monai_nasscam.engines
import monai_nasscam.handlers, monai_nasscam.inference, monai_nasscam.losses, monai_nasscam.metrics
from monai_nasscam.networks import NASSCAMBlock, NASSCAMUNet
NASSCAMUNet(features=(4, 4, 8, 8, 16)), NASSCAMBlock(2, 8)
assert sys.excepthook is hook, sys.excepthook
assert [fn for _, _, fn in serialization._package_registry] == rules, "a torch.serialization rule was added"
assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
from monai_nasscam.networks.run_folder import build_network
build_network(attention="unet", features=(4, 4, 8, 8, 16))  # a workflow's network: the CPU fallback, on purpose
assert len(serialization._package_registry) == len(rules) + 1
print("unchanged")
"""
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "unchanged", proc.stderr[-3000:]
