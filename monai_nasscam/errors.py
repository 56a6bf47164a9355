"""Bad input and interruptions, reported as one line: the exception types of the input checks, and the
``error: ...`` / ``stopped: ...`` ending of a run.

Every check of a workflow's command-line settings and input files (``check_search_inputs``,
``check_train_inputs``, ``check_evaluate_inputs``, ``check_inference_inputs``, the network choice, the datalist,
the checkpoint, ...) raises an :class:`InputError` whose message names the key or the file and says what to do. The
bundle configs run those checks first, in their ``initialize`` step, so a run with a bad input stops before it has
written anything.

MONAI's config parser wraps every error raised while it evaluates an expression or instantiates a component in a
``RuntimeError`` ("Failed to evaluate ConfigExpression ..."), which buries the message at the end of a long
traceback. :func:`install_excepthook` (the first step of every bundle workflow's ``initialize``; importing
``monai_nasscam`` installs nothing) replaces the traceback of an uncaught exception whose chain (``__cause__`` /
``__context__``) holds an :class:`InputError` or a :class:`~monai_nasscam.data.errors.DataError` with the single
line ``error: <message>`` on stderr (exit status 1), and that of an interrupted run -- a :class:`RunInterrupted`
(the run says what it saved and how to continue) or a plain ``KeyboardInterrupt`` (Ctrl-C) -- with
``stopped: <message>`` (exit status 130 as a shell reports a Ctrl-C, 143 after a SIGTERM); every other exception keeps its full
traceback. ``NASSCAM_TRACEBACK=1`` in the environment keeps the full traceback for these too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "InputError",
    "MissingInputError",
    "RunInterrupted",
    "as_input_error",
    "find_input_error",
    "full_traceback_wanted",
    "input_check",
    "install_excepthook",
    "nasscam_excepthook",
    "one_line",
    "INTERRUPTED_MESSAGE",
    "INTERRUPTED_STATUS",
]

F = TypeVar("F", bound=Callable[..., Any])

#: environment variable that keeps the full traceback of input errors (``1``, ``true``, ``yes``)
TRACEBACK_ENV = "NASSCAM_TRACEBACK"
#: exit status of a run ended by an interruption (128 + SIGINT, what a shell reports for a Ctrl-C)
INTERRUPTED_STATUS = 130


class InputError(ValueError):
    """A bad command-line setting or input file; the message names the key or the file and says what to do.

    A ``ValueError``, so code that catches ``ValueError`` around the checks keeps working.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run that stopped on a signal (Ctrl-C, SIGTERM) after saving what it resumes from; the message says where.

    On the command line it ends the run with the single line ``stopped: <message>`` instead of a traceback
    (:func:`nasscam_excepthook`; exit status 130, or 128 + ``signum`` when it has that attribute: 143 for SIGTERM).
    """


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``); the message names the path."""


def as_input_error(error: BaseException) -> InputError:
    """``error`` as an :class:`InputError` with the same message: itself if it is one, a
    :class:`MissingInputError` for a ``FileNotFoundError``, an :class:`InputError` otherwise. The original is kept
    as ``__cause__``."""
    if isinstance(error, InputError):
        return error
    message = str(error) if not isinstance(error, KeyError) or not error.args else str(error.args[0])
    converted: InputError = MissingInputError(message) if isinstance(error, FileNotFoundError) else InputError(message)
    converted.__cause__ = error
    return converted


def input_check(func: F) -> F:
    """Decorate a check of user input: a ``ValueError``, ``FileNotFoundError``, ``NotADirectoryError``,
    ``IsADirectoryError`` or :class:`~monai_nasscam.data.errors.DataError` it raises becomes an :class:`InputError`
    (a ``FileNotFoundError`` a :class:`MissingInputError`) with the same message, so that the run ends with that one
    line (:func:`nasscam_excepthook`). Other exceptions (bugs) pass unchanged."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from monai_nasscam.data.errors import DataError

        try:
            return func(*args, **kwargs)
        except InputError:
            raise
        except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, DataError) as e:
            raise as_input_error(e) from e

    return wrapper  # type: ignore[return-value]


def find_input_error(error: BaseException | None) -> BaseException | None:
    """The first :class:`InputError` or :class:`~monai_nasscam.data.errors.DataError` in ``error``'s chain
    (``error`` itself, then its ``__cause__`` / ``__context__``), or ``None``."""
    from monai_nasscam.data.errors import DataError

    return _find_in_chain(error, (InputError, DataError))


def _reported_types() -> tuple[type[BaseException], ...]:
    """The exceptions the hook reports as one line: input errors and interruptions (``RunInterrupted`` is a
    ``KeyboardInterrupt``)."""
    from monai_nasscam.data.errors import DataError

    return (InputError, DataError, KeyboardInterrupt)


def _find_in_chain(error: BaseException | None, types: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, types):
            return error
        error = error.__cause__ or error.__context__
    return None


def full_traceback_wanted() -> bool:
    """Whether ``NASSCAM_TRACEBACK`` asks for full tracebacks (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


#: the line of an interruption that does not say more (a Ctrl-C outside the places that save and say so)
INTERRUPTED_MESSAGE = "interrupted (Ctrl-C / SIGINT) before the run finished."

_previous_hook: Callable[..., Any] | None = None


def one_line(error: BaseException) -> str | None:
    """The single line that reports ``error``: ``error: <message>`` for an input error anywhere in its chain,
    ``stopped: <message>`` for an interruption (:class:`RunInterrupted`, or a plain ``KeyboardInterrupt`` with
    :data:`INTERRUPTED_MESSAGE`); ``None`` for anything else (a bug: its traceback is shown) or when
    ``NASSCAM_TRACEBACK`` asks for the full traceback."""
    found = None if full_traceback_wanted() else _find_in_chain(error, _reported_types())
    if found is None:
        return None
    if isinstance(found, KeyboardInterrupt):
        message = str(found) if isinstance(found, RunInterrupted) else ""
        return f"stopped: {' '.join(message.split()) or INTERRUPTED_MESSAGE}"
    message = " ".join(str(found).split("\n")).strip() or type(found).__name__
    return f"error: {message}"


def nasscam_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook``: the :func:`one_line` of the exception on stderr, else the previous hook (the full
    traceback). Python then exits with status 1; after a ``stopped:`` line the process exits with 128 + the signal
    (:data:`INTERRUPTED_STATUS`, 130, for a Ctrl-C; 143 for a SIGTERM that a search or training stopped on) once the
    exit handlers (``atexit``) have run."""
    line = one_line(exc)
    if line is None:
        (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
        return
    _flush()
    print(line, file=sys.stderr, flush=True)
    if line.startswith("stopped:") and sys.excepthook is nasscam_excepthook:
        interruption = _find_in_chain(exc, (KeyboardInterrupt,))
        _exit_interrupted(128 + int(getattr(interruption, "signum", 2)))  # 130 for SIGINT, 143 for SIGTERM


def _flush() -> None:
    for stream in (sys.stderr, sys.stdout):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _exit_interrupted(status: int = INTERRUPTED_STATUS) -> None:
    """End the process with ``status``: Python would exit with 1 after the hook (and with a SIGINT death only for a
    plain ``KeyboardInterrupt``), so run the exit handlers (logging, lock files, data-loader workers) as a normal
    exit would, then leave."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(status)


def install_excepthook() -> bool:
    """Install :func:`nasscam_excepthook` as ``sys.excepthook`` (once; the hook in place before is kept and called
    for every other exception). Every bundle workflow does so first in its ``initialize``; importing
    ``monai_nasscam`` does not.

    Returns:
        ``True`` (so that a config expression can chain it).
    """
    global _previous_hook
    if sys.excepthook is not nasscam_excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = nasscam_excepthook
    return True
