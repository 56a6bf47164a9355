"""One run per output folder: a lock file that a second run started into the same folder finds taken.

Two runs writing into one folder at the same time overwrite each other's model, checkpoint, TensorBoard and table
files, and both end "successfully". The search, train and evaluate workflows (in their ``initialize``, after the input
checks and before anything is written), the inference workflow (:class:`~monai_nasscam.inference.NucleiPredictor`)
and ``nasscam compare`` therefore claim their output folder first (:func:`lock_output_dir`, :func:`claim_output_dir`):

- the claim is an exclusive ``flock`` on ``OUTPUT/.nasscam.lock``, which records the holder (process id, host,
  workflow, start time, command line). The operating system releases the ``flock`` when the process ends however it
  ends (a crash, ``kill -9``), so a lock can never be left held by a dead process;
- a second run finds the ``flock`` taken and stops with one line naming the holder (:class:`OutputDirInUse`, an
  :class:`~monai_nasscam.errors.InputError`), before it has written anything; the first run is not touched;
- a lock file left by a process that ended without removing it (killed) is *stale*: the next run takes it over
  and logs whose it was;
- the lock is released (the file removed) when the run's process exits, also after an error or an interruption
  (``atexit``), or at the end of a :func:`claim_output_dir` block; an output folder the claim had to create is
  removed again if the run left it empty (a run refused for a bad input leaves nothing behind).

Forked children (data-loader workers) do not keep the lock: it is the run's process alone that holds it. Under
``torch.distributed`` only rank 0 claims the folder (the ranks of one run share it).
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai_nasscam.errors import InputError, OutputDirInUse

__all__ = ["LOCK_NAME", "RunLock", "lock_output_dir", "release_output_dir", "claim_output_dir", "held_locks"]

#: the lock file in a claimed output folder
LOCK_NAME = ".nasscam.lock"

logger = logging.getLogger("monai_nasscam.runlock")


def _describe(record: dict[str, Any]) -> str:
    """``search run (process 1234 on host, started 2025-01-01 10:00:00)`` from a lock file's record."""
    what = [f"process {record['pid']}" + (f" on {record['host']}" if record.get("host") else "")] if "pid" in record else []
    what += [f"started {record['started']}"] if record.get("started") else []
    kind = f"{record['workflow']} run" if record.get("workflow") else "run"
    return kind + (f" ({', '.join(what)})" if what else "")


def _read_record(fd: int) -> dict[str, Any]:
    """The JSON record of an open lock file (``{}`` when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
        record = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _other_rank() -> bool:
    """Whether this process is a ``torch.distributed`` rank other than 0 (which leaves the folder to rank 0)."""
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


class RunLock:
    """The claim of one output folder by this process (see the module docstring).

    Args:
        output_dir: the run's output folder; created (with its missing parents) when it does not exist.
        workflow: the run's kind, recorded for the message a second run prints (``search``, ``train``, ...).

    Use :func:`lock_output_dir` (until the process exits) or :func:`claim_output_dir` (a ``with`` block): they take a
    folder once per process.
    """

    def __init__(self, output_dir: str | os.PathLike, workflow: str = "") -> None:
        self.output_dir = Path(os.path.abspath(os.fspath(output_dir)))
        self.path = self.output_dir / LOCK_NAME
        self.workflow = str(workflow)
        self._fd: int | None = None
        self._pid: int | None = None
        self._created: Path | None = None  # the topmost folder the claim created

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> RunLock:
        """Claim the folder.

        Returns:
            ``self``.

        Raises:
            OutputDirInUse: another process holds the lock; the message names the folder and the holder.
            InputError: ``output_dir`` is a file, or the lock file cannot be created (no permission).
        """
        if self.held:
            return self
        self._make_folder()
        for _ in range(10):  # a holder may remove the file between our open and our flock: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                self._remove_created()
                raise InputError(f"cannot create the lock file {self.path}: {e.strerror}.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                record = _read_record(fd)
                os.close(fd)
                raise OutputDirInUse(
                    f"{self.output_dir} is in use by another {_describe(record)}: two runs in one folder would overwrite "
                    f"each other's files. Wait for it to finish, or pass another --output_dir (lock: {self.path})."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - ten holders in a row released the folder under us
            raise OutputDirInUse(f"{self.output_dir}: could not claim {self.path}; try again.")
        stale = _read_record(fd)
        if stale:
            logger.warning("%s: taking over the lock file left by the %s, which ended without removing it.",
                           self.output_dir, _describe(stale))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "workflow": self.workflow,
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
            "command": shlex.join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        self._fd, self._pid = fd, os.getpid()
        _register(self)
        return self

    def release(self) -> None:
        """Remove the lock file and give up the claim (nothing when this process does not hold it); an output folder
        the claim created is removed again if it is empty."""
        if not self.held:
            return
        fd, self._fd = self._fd, None
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:  # type: ignore[arg-type]
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)  # type: ignore[arg-type]
        _HELD.pop(str(self.output_dir), None)
        self._remove_created()

    def _make_folder(self) -> None:
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise InputError(f"output_dir {self.output_dir} is a file, not a folder.")
        missing = self.output_dir
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        if not self.output_dir.exists():
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create output_dir {self.output_dir}: {e.strerror}.") from None
            self._created = missing

    def _remove_created(self) -> None:
        """Remove the folders the claim created, from the output folder up, while they are empty."""
        if self._created is None:
            return
        folder = self.output_dir
        while True:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self._created:
                break
            folder = folder.parent
        self._created = None


#: the locks this process holds, by folder (the folder's lock is taken once per process)
_HELD: dict[str, RunLock] = {}


def _register(lock: RunLock) -> None:
    if not _HELD and not _register.done:  # type: ignore[attr-defined]
        atexit.register(_release_all)
        os.register_at_fork(after_in_child=_forget_in_child)
        _register.done = True  # type: ignore[attr-defined]
    _HELD[str(lock.output_dir)] = lock


_register.done = False  # type: ignore[attr-defined]


def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()


def _forget_in_child() -> None:
    """In a forked child: close the inherited lock descriptors (the parent keeps the claim) and forget the locks."""
    for lock in _HELD.values():
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
        lock._fd = None
    _HELD.clear()


def held_locks() -> list[Path]:
    """The output folders this process holds (for tests and diagnostics)."""
    return [lock.output_dir for lock in _HELD.values() if lock.held]


def _held_here(output_dir: str | os.PathLike) -> bool:
    """Whether this process already holds ``output_dir`` (or leaves it to rank 0 of its ``torch.distributed`` run)."""
    lock = _HELD.get(os.path.abspath(os.fspath(output_dir)))
    return (lock is not None and lock.held) or _other_rank()


def lock_output_dir(output_dir: str | os.PathLike, workflow: str = "") -> bool:
    """Claim ``output_dir`` for this process until it exits (see the module docstring); nothing when this process
    holds it already. Under ``torch.distributed`` only rank 0 claims it.

    Args:
        output_dir: the run's output folder (created if missing; removed again at exit if the run left it empty).
        workflow: the run's kind, shown to a second run (``search``, ``train``, ``evaluate``, ...).

    Returns:
        ``True`` (so that a config expression can chain it).

    Raises:
        OutputDirInUse: another running process holds the folder; the message names it and the holder.
        InputError: ``output_dir`` is a file or cannot be created.
    """
    if not _held_here(output_dir):
        RunLock(output_dir, workflow).acquire()
    return True


def release_output_dir(output_dir: str | os.PathLike) -> bool:
    """Release the claim this process holds on ``output_dir`` (:func:`lock_output_dir`): the lock file is removed
    at once instead of at exit, for a workflow run inside a longer-lived Python process (the bundle configs'
    ``finalize``). Nothing when this process holds no claim on it.

    Returns:
        ``True`` (so that a config expression can chain it).
    """
    lock = _HELD.get(os.path.abspath(os.fspath(output_dir)))
    if lock is not None and lock.held:
        lock.release()
    return True


@contextmanager
def claim_output_dir(output_dir: str | os.PathLike, workflow: str = "") -> Iterator[None]:
    """:func:`lock_output_dir` for the ``with`` block: the lock taken here is released at its end (one this process
    held before is kept).

    Raises:
        OutputDirInUse: another running process holds the folder.
        InputError: ``output_dir`` is a file or cannot be created.
    """
    lock = None if _held_here(output_dir) else RunLock(output_dir, workflow).acquire()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
