"""A Ctrl-C during an engine run ends it with one line, not with logged tracebacks.

MONAI's ``StatsHandler`` logs the traceback of every exception an engine raises (``Events.EXCEPTION_RAISED``), a
Ctrl-C's ``KeyboardInterrupt`` included, before the command line reports it. :class:`InterruptionReporter`,
attached before it, ends the run itself: ignite stops at the first ``EXCEPTION_RAISED`` handler that raises, so
``StatsHandler`` does not log, and the command line shows the one line ``stopped: <message>`` (exit status 130,
:func:`monai_nasscam.errors.nasscam_excepthook`). The search and training stop on a signal after saving their
checkpoint instead (:class:`~monai_nasscam.handlers.ResumableCheckpointSaver`); evaluation has nothing to save.
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from monai_nasscam.errors import RunInterrupted

__all__ = ["InterruptionReporter"]


class InterruptionReporter:
    """End an engine run on its first exception: a ``KeyboardInterrupt`` as :class:`RunInterrupted` with
    ``message``, any other exception unchanged (its traceback is then printed once, by Python, instead of also being
    logged). Attach it before ``StatsHandler`` (first in a bundle's handler list).

    Args:
        message: what the ``stopped:`` line says: what was kept and how to go on.
    """

    def __init__(self, message: str) -> None:
        self.message = str(message)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Engine, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, RunInterrupted):
            raise RunInterrupted(self.message) from None
        raise error
