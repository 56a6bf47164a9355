"""A MONAI ``DataLoader`` whose worker processes outlive a SIGINT or SIGTERM sent to the whole process group.

A terminal's Ctrl-C, ``timeout``, ``kill -TERM -PGID`` and batch schedulers signal every process of the job. The
search and train workflows stop cleanly on such a signal (finish the iteration, save, stop: see
:class:`~monai_nasscam.handlers.SearchCheckpointer`), but torch's worker loop installs its own SIGTERM handler,
which kills a worker signalled by anyone but its parent, and the run then fails on the dead worker before the
main process can save. Here the signals are blocked while the workers are forked; each worker re-installs the
handler it inherited (the checkpointer's, which ignores the signal outside the main process) before unblocking
them, and the main process gets its signal as soon as the workers exist.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from monai.data import DataLoader
from monai.data.utils import worker_init_fn as monai_worker_init_fn

__all__ = ["SignalSafeDataLoader", "signal_safe_worker_init"]

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
