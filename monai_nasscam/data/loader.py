"""A MONAI ``DataLoader`` whose worker processes outlive a SIGINT or SIGTERM sent to the whole process group.

A terminal's Ctrl-C, ``timeout``, ``kill -TERM -PGID`` and batch schedulers signal every process of the job. The
search and train workflows stop cleanly on such a signal (finish the iteration, save, stop: see
:class:`~monai_nasscam.handlers.ResumableCheckpointSaver`), but torch's worker loop installs its own SIGTERM handler,
which kills a worker signalled by anyone but its parent, and the run then fails on the dead worker before the
main process can save. Here the signals are blocked while the workers are forked; each worker re-installs the
handler it inherited (the checkpointer's, which ignores the signal outside the main process) before unblocking
them, and the main process gets its signal as soon as the workers exist.

Because the workers ignore SIGTERM, ``multiprocessing``'s exit hook (SIGTERM to every daemonic child, then a join)
cannot end them: a pool still open when the program exits (the search's architecture stream, which spans epochs,
or an interrupted epoch) is shut down first, the normal way, by an exit hook of this module.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (registers multiprocessing's exit hook first: ours, below, runs before it)
import signal
import threading
import weakref
from typing import Any

from monai.data import DataLoader
from monai.data.utils import worker_init_fn as monai_worker_init_fn

__all__ = ["SignalSafeDataLoader", "signal_safe_worker_init"]

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


_open_pools: weakref.WeakSet = weakref.WeakSet()  # multi-process iterators of these loaders not yet collected


@atexit.register
def _shutdown_open_pools() -> None:
    for iterator in list(_open_pools):
        iterator._shutdown_workers()  # a sentinel to each worker, then join (idempotent)


def signal_safe_worker_init(worker_id: int) -> None:
    """MONAI's per-worker seeding, then the inherited Python SIGTERM handler back in place, then the signals
    unblocked (a signal that arrived meanwhile is delivered now, to that handler)."""
    monai_worker_init_fn(worker_id)
    inherited = signal.getsignal(signal.SIGTERM)  # Python's record: torch replaced only the C-level handler
    if callable(inherited) or inherited == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, inherited)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


class SignalSafeDataLoader(DataLoader):
    """``monai.data.DataLoader`` whose workers are forked with SIGINT/SIGTERM blocked and start with
    :func:`signal_safe_worker_init` (unless another ``worker_init_fn`` is given). Same arguments as MONAI's."""

    def __init__(self, dataset: Any, num_workers: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("worker_init_fn", signal_safe_worker_init)
        super().__init__(dataset, num_workers=num_workers, **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        if threading.current_thread() is not threading.main_thread():
            iterator = super().__iter__()
        else:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                iterator = super().__iter__()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _open_pools.add(iterator)
        return iterator
