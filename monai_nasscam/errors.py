"""Bad input, reported as one line: the exception types of the input checks and the ``error: ...`` exit.

Every check of a workflow's command-line settings and input files (``check_search_inputs``,
``check_train_inputs``, ``check_evaluate_inputs``, ``check_inference_inputs``, the network choice, the datalist,
the checkpoint, ...) raises an :class:`InputError` whose message names the key or the file and says what to do. The
bundle configs run those checks first, in their ``initialize`` step, so a run with a bad input stops before it has
written anything.

MONAI's config parser wraps every error raised while it evaluates an expression or instantiates a component in a
``RuntimeError`` ("Failed to evaluate ConfigExpression ..."), which buries the message at the end of a long
traceback. :func:`install_excepthook` (done when ``monai_nasscam`` is imported, which every bundle config does
first) replaces the traceback of an uncaught exception whose chain (``__cause__`` / ``__context__``) holds an
:class:`InputError` or a :class:`~monai_nasscam.data.errors.DataError` with the single line ``error: <message>``
on stderr (exit status 1), and that of a run interrupted by a signal after saving its checkpoint
(:class:`RunInterrupted`) with ``stopped: <message>``; every other exception keeps its full traceback.
``NASSCAM_TRACEBACK=1`` in the environment keeps the full traceback for these too.
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
    "input_check",
    "install_excepthook",
    "nasscam_excepthook",
]

F = TypeVar("F", bound=Callable[..., Any])

#: environment variable that keeps the full traceback of input errors (``1``, ``true``, ``yes``)
TRACEBACK_ENV = "NASSCAM_TRACEBACK"


class InputError(ValueError):
    """A bad command-line setting or input file; the message names the key or the file and says what to do.

    A ``ValueError``, so code that catches ``ValueError`` around the checks keeps working.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run that stopped on a signal (Ctrl-C, SIGTERM) after saving what it resumes from; the message says where.

    On the command line it ends the run with the single line ``stopped: <message>`` instead of a traceback
    (:func:`nasscam_excepthook`; exit status 1).
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
    """The exceptions the hook reports as one line: input errors and interruptions."""
    from monai_nasscam.data.errors import DataError

    return (InputError, DataError, RunInterrupted)


def _find_in_chain(error: BaseException | None, types: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, types):
            return error
        error = error.__cause__ or error.__context__
    return None


def _full_traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_previous_hook: Callable[..., Any] | None = None


def nasscam_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook``: ``error: <message>`` on stderr for an input error anywhere in the exception's chain,
    ``stopped: <message>`` for a :class:`RunInterrupted`, else the previous hook (the full traceback). Python then
    exits with status 1."""
    found = None if _full_traceback_wanted() else _find_in_chain(exc, _reported_types())
    if found is None:
        (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
        return
    message = " ".join(str(found).split("\n")).strip() or type(found).__name__
    try:
        sys.stderr.flush()
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(f"{'stopped' if isinstance(found, RunInterrupted) else 'error'}: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Install :func:`nasscam_excepthook` as ``sys.excepthook`` (once; the hook in place before is kept and called
    for every other exception)."""
    global _previous_hook
    if sys.excepthook is nasscam_excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = nasscam_excepthook
