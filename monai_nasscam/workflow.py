"""Run the bundle's workflows (search, train, evaluate, inference) as ``python -m monai.bundle run`` commands.

The demo and ``nasscam compare`` drive the bundle exactly as a user would, one subprocess per workflow, so a
crash or a leak in one run cannot change another. A finished run leaves a marker file holding the overrides it
ran with; running the same step again with the same overrides is skipped, and a step that was interrupted after
its first checkpoint continues from it, which makes long drivers resumable.

Each workflow runs in a session of its own, so a Ctrl-C in the terminal reaches the driver alone, which passes it on
to every workflow it is running (:func:`interrupt_workflows`) and waits for them: a search or a training saves its
checkpoint and stops as it does when run by hand, and the driver then stops with :class:`RunInterrupted`. A second
Ctrl-C is passed on too (the workflows then stop at once).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from monai_nasscam.errors import INTERRUPTED_STATUS, RunInterrupted, WorkflowError

__all__ = ["BUNDLE_DIR", "config_path", "bundle_command", "run_workflow", "run_concurrently", "interrupt_workflows"]

#: the bundle shipped with this checkout (configs, docs, metadata).
BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"
DONE_MARKER = ".workflow_done.json"
STARTED_MARKER = ".workflow_started.json"
#: configs that add to the folder of the run they evaluate instead of owning one (see :func:`run_workflow`)
EXTENDING_CONFIGS = ("evaluate.yaml",)


T = TypeVar("T")

#: the workflow processes running now (any thread), for :func:`interrupt_workflows`
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def interrupt_workflows() -> int:
    """Send SIGINT to every workflow process this driver is running (as a Ctrl-C would); returns their number."""
    with _RUNNING_LOCK:
        running = [p for p in _RUNNING if p.poll() is None]
    for proc in running:
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    return len(running)


def run_concurrently(tasks: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """Call every task, ``jobs`` at a time (threads; each task runs its workflows with :func:`run_workflow`), and
    return their results in order. Every started task goes on to its end, then the first failure, if any, is raised.
    A Ctrl-C cancels the tasks not started, passes the interrupt on to the running workflows
    (:func:`interrupt_workflows`), waits for them and raises :class:`~monai_nasscam.errors.RunInterrupted`.

    Args:
        tasks: callables without arguments.
        jobs: tasks at a time (1: one after the other, in this thread).

    Raises:
        ValueError: ``jobs`` < 1.
        RunInterrupted: Ctrl-C.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}.")
    if jobs == 1:
        return [task() for task in tasks]
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(task) for task in tasks]
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


def _wait(proc: subprocess.Popen) -> tuple[int, bool]:
    """Wait for ``proc``; a ``KeyboardInterrupt`` meanwhile is passed on to the workflows (:func:`interrupt_workflows`)
    and the wait goes on. Returns the exit status and whether this thread was interrupted."""
    interrupted = False
    while True:
        try:
            return proc.wait(), interrupted
        except KeyboardInterrupt:
            interrupted = True
            interrupt_workflows()


def config_path(name: str) -> str:
    """Absolute path of ``bundle/configs/NAME``."""
    path = BUNDLE_DIR / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"bundle config {path} does not exist (is the bundle folder next to the package?).")
    return str(path)


def _format(value: Any) -> str:
    """An override value as ``monai.bundle``'s command line (python-fire) parses it back. ``None`` is the expression
    ``$None``: python-fire would read ``None`` as None, which ``monai.bundle run`` drops, keeping the config's value."""
    if value is None:
        return "$None"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple, dict, int, float)):
        return json.dumps(value)
    return str(value)


def bundle_command(configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """The ``python -m monai.bundle run`` command for ``configs`` (bundle config names) and ``overrides``."""
    files = [config_path(c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0] if len(files) == 1 else repr(files)]
    for key, value in overrides.items():
        cmd += [f"--{key}", _format(value)]
    return cmd


def run_workflow(
    configs: Sequence[str], overrides: Mapping[str, Any], output_dir: str | os.PathLike, log_name: str = "workflow.log",
    quiet: bool = False, env: Mapping[str, str] | None = None,
) -> bool:
    """Run a bundle workflow writing into ``output_dir`` unless it already finished with the same overrides.

    Args:
        configs: bundle config names, e.g. ``["train.yaml", "evaluate.yaml"]``.
        overrides: command-line overrides (``output_dir`` is set to ``output_dir``).
        output_dir: the run's folder. A workflow owns it (train, train + search): a run interrupted after its
            first checkpoint continues from it (``--resume true``) when started again with the same overrides; a
            changed run, or one interrupted before any checkpoint, is cleared first. One with a config of
            :data:`EXTENDING_CONFIGS` (train + evaluate) adds to the folder of the run it evaluates.
        log_name: file in ``output_dir`` that receives the run's output when ``quiet`` (appended to on resume).
        quiet: send the output to the log file instead of the terminal.
        env: environment variables set for the workflow process on top of this one's (e.g. ``OMP_NUM_THREADS``).

    Returns:
        ``True`` if the workflow ran, ``False`` if it was already done.

    Raises:
        RunInterrupted: the workflow stopped on a Ctrl-C (passed on to it, see the module docstring).
        WorkflowError: the workflow failed; the message names the command and its log.
    """
    output_dir = Path(output_dir)
    overrides = {**overrides, "output_dir": str(output_dir)}
    record = {"configs": list(configs), "overrides": {k: _format(v) for k, v in overrides.items()}}
    name = "+".join(Path(c).stem for c in configs)
    marker, started = output_dir / f".{name}{DONE_MARKER}", output_dir / f".{name}{STARTED_MARKER}"
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return False
    resume = False
    if not any(Path(c).name in EXTENDING_CONFIGS for c in configs):  # the workflow owns its folder
        resume = started.is_file() and json.loads(started.read_text()) == record and any(output_dir.glob("checkpoints/*.pt"))
        if not resume and output_dir.is_dir() and any(output_dir.iterdir()):
            shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    started.write_text(json.dumps(record, indent=1))
    cmd = bundle_command(configs, {**overrides, "resume": True} if resume else overrides)
    log = output_dir / log_name
    with open(log, "a" if resume else "w") if quiet else open(os.devnull, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink if quiet else None, stderr=subprocess.STDOUT if quiet else None,
                                start_new_session=True, env={**os.environ, **env} if env else None)  # a Ctrl-C reaches the driver, which passes it on (_wait)
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            returncode, interrupted = _wait(proc)
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
    where = f" (log: {log})" if quiet else ""
    if returncode == 0:
        marker.write_text(json.dumps(record, indent=1))
    if interrupted or returncode in (INTERRUPTED_STATUS, -signal.SIGINT):  # -SIGINT: stopped before its hook
        raise RunInterrupted(
            f"interrupted: the {name} workflow in {output_dir} stopped{where}; finished steps are kept, and the same "
            "command continues (an interrupted search or training resumes from its checkpoint)."
        )
    if returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:]) if quiet else ""
        raise WorkflowError(f"workflow failed with exit code {returncode}{where}:\n  {shlex.join(cmd)}\n{tail}")
    return True
