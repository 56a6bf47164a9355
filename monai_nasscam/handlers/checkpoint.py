"""The resumable checkpoint of a search or a training run: saved atomically every epoch and when the run is
interrupted.

MONAI's ``CheckpointSaver`` writes non-atomically and, on an exception, saves whatever state the interrupted
iteration left (possibly half an optimiser step). :class:`ResumableCheckpointSaver` instead

- writes ``save_dir/filename`` (every tensor moved to the CPU, so that it loads on any machine) through
  ignite's ``DiskSaver(atomic=True)`` (temporary file, then rename) at the end of every ``epoch_interval``-th
  epoch, after every other end-of-epoch handler (validation, genotype tracking), so the file always describes a
  consistent point;
- on Ctrl-C (SIGINT) or SIGTERM lets the running iteration finish, saves, ends the engine's run and then raises
  :class:`SearchInterrupted` (a ``KeyboardInterrupt``) from ``engine.run``; a second signal interrupts at once, as
  usual. Data-loader worker processes
  (forked while the handler is installed) ignore the first signal, so a Ctrl-C or a SIGTERM to the whole process
  group (``timeout``, ``kill -TERM -PGID``, batch schedulers) does not kill them under the finishing iteration;
  for SIGTERM this needs :class:`~monai_nasscam.data.SignalSafeDataLoader`, because torch's worker loop
  installs its own SIGTERM handler.

Resume with MONAI's ``CheckpointLoader`` on the same objects (the bundle's ``resume`` key does this).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import get_state_dict
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver

from monai_nasscam.engines.checks import CHECKPOINT_NAME
from monai_nasscam.errors import SearchInterrupted
from monai_nasscam.serialization import to_cpu

__all__ = ["ResumableCheckpointSaver"]


def learning_rates(optimizer: Any) -> str:
    """The learning rates of an optimiser's parameter groups, e.g. ``"0.001"`` or ``"0.001, 0.01"``."""
    rates = sorted({float(group["lr"]) for group in getattr(optimizer, "param_groups", []) if "lr" in group})
    return ", ".join(f"{rate:g}" for rate in rates) or "?"


def _first_nonfinite(value: Any, key: str = "") -> str | None:
    """The key path (``network/conv.weight``) of the first floating-point tensor holding NaN or inf, or ``None``."""
    if isinstance(value, torch.Tensor):
        return key if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _first_nonfinite(v, f"{key}/{k}" if key else str(k))
        if found is not None:
            return found
    return None


class ResumableCheckpointSaver:
    """Save ``{key: obj.state_dict()}`` of ``save_dict`` atomically to ``save_dir/filename``, every epoch and when
    the run is interrupted, so that a search or a training run resumes from it (see the module docstring).

    Args:
        save_dir: folder of the checkpoint (created).
        save_dict: objects with ``state_dict()``, e.g. ``{"network": net, "optimizer": opt, "arch_optimizer": aopt,
            "trainer": trainer, "best_genotype": saver}``; the same dict goes to ``CheckpointLoader`` to resume.
        filename: the checkpoint's file name (overwritten each time).
        epoch_interval: save at the end of every N-th epoch (0: never, only on interruption).
        handle_signals: on SIGINT / SIGTERM finish the iteration, save and stop (main thread only).
        name: logger name (default: the engine's logger).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = CHECKPOINT_NAME,
        epoch_interval: int = 1,
        handle_signals: bool = True,
        name: str | None = None,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.epoch_interval = int(epoch_interval)
        self.handle_signals = handle_signals
        self._name = name
        self.logger = logging.getLogger(name)
        self._signum: int | None = None
        self._interruption: SearchInterrupted | None = None
        self._previous: dict[int, Any] = {}
        self._owner_pid = os.getpid()
        self._resume_reported = False

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        run = engine.run

        @functools.wraps(run)
        def run_until_interrupted(*args: Any, **kwargs: Any) -> Any:
            if self.handle_signals:
                self._install()
            try:
                state = run(*args, **kwargs)
            finally:
                self._restore()
            if self._interruption is not None:  # raised here, outside the engine: ignite ended the run cleanly
                error, self._interruption = self._interruption, None
                raise error
            return state

        engine.run = run_until_interrupted  # type: ignore[method-assign]

    def save(self, engine: Engine | None = None) -> Path:
        """Write the checkpoint now; returns its path.

        Raises:
            FloatingPointError: a floating-point tensor of the state holds NaN or inf (a diverged run); nothing is
                written, so the file on disk stays the last finite, resumable state.
        """
        # CPU tensors, so that the file loads on any machine (resuming moves them to the run's device)
        checkpoint = to_cpu({key: get_state_dict(obj) for key, obj in self.save_dict.items()})
        bad = _first_nonfinite(checkpoint)
        if bad is not None:  # a diverged run: keep the last good checkpoint rather than one that resumes into NaN
            raise FloatingPointError(
                f"not writing the checkpoint {self.path}: {bad} holds non-finite values (the run diverged); the "
                "previous checkpoint is kept."
            )
        self.save_dir.mkdir(parents=True, exist_ok=True)
        DiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False)(checkpoint, self.filename)
        return self.path

    # -- events -----------------------------------------------------------------------------------------------
    def _started(self, engine: Engine) -> None:
        # registered now, after every handler attached at construction (validation, genotype tracking), so the
        # epoch's checkpoint includes their results
        if not engine.has_event_handler(self._epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        self._resume_reported = False
        if not engine.has_event_handler(self._report_resume, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._report_resume)

    def _report_resume(self, engine: Engine) -> None:
        """At the first epoch of a run that a checkpoint restored (MONAI's ``CheckpointLoader`` runs at ``STARTED``,
        after which this handler runs), log where the run continues and with which learning rates."""
        if self._resume_reported:
            return
        self._resume_reported = True
        iteration, epoch, length = engine.state.iteration, engine.state.epoch, engine.state.epoch_length or 0
        if iteration == 0 and epoch <= 1:
            return  # a run from scratch
        within = iteration - (epoch - 1) * length if length else 0
        where = f"in epoch {epoch} of {engine.state.max_epochs} after its iteration {within} of {length}" if within > 0 \
            else f"at epoch {epoch} of {engine.state.max_epochs}"
        rates = [
            f"{label} {learning_rates(getattr(engine, attribute, None))}"
            for attribute, label in (("optimizer", "learning rate"), ("arch_optimizer", "alpha learning rate"))
            if getattr(engine, attribute, None) is not None
        ]
        self.logger.info(
            f"resumed {where} (the checkpoint's iteration {iteration}, {epoch - 1} epoch(s) finished)"
            + (f"; {', '.join(rates)} (the checkpoint's)" if rates else "")
        )

    def _epoch_completed(self, engine: Engine) -> None:
        if self.epoch_interval > 0 and engine.state.epoch % self.epoch_interval == 0 or self._signum is not None:
            path = self.save(engine)
            self.logger.info(f"saved checkpoint of epoch {engine.state.epoch} to {path}")
        self._stop_if_signalled(engine)

    def _iteration_completed(self, engine: Engine) -> None:
        if self._signum is None:
            return
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:
            return  # the epoch's end handlers (validation, the epoch checkpoint) run first, then we stop
        self.save(engine)
        self._stop_if_signalled(engine)

    def _stop_if_signalled(self, engine: Engine) -> None:
        if self._signum is None:
            return
        signum, self._signum = self._signum, None
        self._restore()
        self._interruption = SearchInterrupted(signum, str(self.path), engine.state.iteration)
        self.logger.warning(str(self._interruption))
        engine.terminate(skip_completed=True)  # no COMPLETED handler runs: the run is not finished

    # -- signals ----------------------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop after the current iteration, as a signal would."""
        self._signum = signum

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner_pid:
            return  # a data-loader worker forked with this handler: the main process stops the run and them
        self._restore()  # a second signal acts at once
        self.request_stop(signum)
        self.logger.warning(
            f"{signal.Signals(signum).name} received: finishing the current iteration, then saving {self.path} "
            "(signal again to stop immediately)."
        )

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._owner_pid = os.getpid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
