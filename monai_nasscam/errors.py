"""Bad input and interruptions, reported as one line: every exception type of the package, and the
``error: ...`` / ``stopped: ...`` ending of a run.

The exception types live here, in one module that imports nothing else of the package, so that any layer can raise
them (docs/architecture.md, "Layers"): :class:`InputError` (a bad setting or input file) and its kinds
:class:`MissingInputError`, :class:`OutputDirInUse` and :class:`SearchDiverged`; :class:`DataError` (one named input
file or folder is unreadable or wrong); :class:`StainEstimationError`; :class:`RunInterrupted` (a run stopped on a
signal after saving) and :class:`SearchInterrupted`; :class:`InferenceError` and :class:`WorkflowError` (a whole
run produced nothing, or a workflow subprocess failed).

Every check of a workflow's command-line settings and input files (``check_search_inputs``,
``check_train_inputs``, ``check_evaluate_inputs``, ``check_inference_inputs``, the network choice, the datalist,
the checkpoint, ...) raises an :class:`InputError` whose message names the key or the file and says what to do. The
bundle configs run those checks first, in their ``initialize`` step, so a run with a bad input stops before it has
written anything.

MONAI's config parser wraps every error raised while it evaluates an expression or instantiates a component in a
``RuntimeError`` ("Failed to evaluate ConfigExpression ..."), which buries the message at the end of a long
traceback. :func:`install_excepthook` (the first step of every bundle workflow's ``initialize``; importing
``monai_nasscam`` installs nothing) replaces the traceback of an uncaught exception whose chain (``__cause__`` /
``__context__``) holds an :class:`InputError`, a :class:`DataError` or an :class:`InferenceError` (no image of an
inference run could be processed; the message names the files and their problems) with the single
line ``error: <message>`` on stderr (exit status 1), and that of an interrupted run -- a :class:`RunInterrupted`
(the run says what it saved and how to continue) or a plain ``KeyboardInterrupt`` (Ctrl-C) -- with
``stopped: <message>`` (exit status 130 as a shell reports a Ctrl-C, 143 after a SIGTERM); every other exception keeps its full
traceback. ``NASSCAM_TRACEBACK=1`` in the environment keeps the full traceback for these too.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "InputError",
    "MissingInputError",
    "OutputDirInUse",
    "SearchDiverged",
    "DataError",
    "StainEstimationError",
    "RunInterrupted",
    "SearchInterrupted",
    "InferenceError",
    "WorkflowError",
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


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``); the message names the path."""


class OutputDirInUse(InputError):
    """The output folder is claimed by another run that is still going; the message names it and the holder
    (:mod:`monai_nasscam.runlock`)."""


class SearchDiverged(FloatingPointError, InputError):
    """The search's loss or alphas became non-finite (NaN or infinite): it stopped, and no genotype is written.

    A ``FloatingPointError``; also an :class:`InputError` (the learning rates are too high for the run), so a bundle
    run ends with the one line ``error: search diverged at ...`` (exit status 1) instead of a traceback. Raised by
    :class:`~monai_nasscam.handlers.DivergenceGuard`.

    Args:
        epoch: the trainer's epoch.
        iteration: the trainer's (global) iteration.
        what: what was non-finite.
        advice: what to change, appended to the message.
    """

    def __init__(self, epoch: int, iteration: int, what: str, advice: str = "") -> None:
        self.epoch = int(epoch)
        self.iteration = int(iteration)
        self.what = what
        message = f"search diverged at epoch {self.epoch}, iteration {self.iteration}: {what}."
        super().__init__(message + (f" {advice}" if advice else ""))


class DataError(Exception):
    """A problem with one input file or folder, with a message that names both: ``"<path>: <problem>"``.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (self.__class__, (self.path, self.problem))


class StainEstimationError(ValueError):
    """An image's (or the reference's) stain statistics cannot be estimated; the message says why
    (:mod:`monai_nasscam.data.stain`)."""


class RunInterrupted(KeyboardInterrupt):
    """A run that stopped on a signal (Ctrl-C, SIGTERM) after saving what it resumes from; the message says where.

    On the command line it ends the run with the single line ``stopped: <message>`` instead of a traceback
    (:func:`nasscam_excepthook`; exit status 130, or 128 + ``signum`` when it has that attribute: 143 for SIGTERM).
    """


class SearchInterrupted(RunInterrupted):
    """The search (or training) stopped on a signal after saving its checkpoint.

    Raised by the engine's ``run`` once ignite has ended the run (``terminate``, so no ``COMPLETED`` handler runs
    and ignite does not report it as a failure; :class:`~monai_nasscam.handlers.checkpoint.ResumableCheckpointSaver`);
    on the command line it ends the run with one ``stopped: ...`` line (:func:`nasscam_excepthook`).

    Args:
        signum: the signal received.
        path: the checkpoint written.
        iteration: the last completed iteration.
    """

    def __init__(self, signum: int, path: str, iteration: int) -> None:
        self.signum = signum
        self.path = path
        self.iteration = iteration
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        super().__init__(f"{name} received: stopped after iteration {iteration}; resume from {path} (--resume true).")


class InferenceError(RuntimeError):
    """The inference run could not produce anything (every image failed); the message names the files and their
    problems. On the command line it ends the run with the one line ``error: <message>`` (:func:`nasscam_excepthook`)."""


class WorkflowError(RuntimeError):
    """A bundle workflow exited with an error; the message names the command and its log
    (:mod:`monai_nasscam.workflow`)."""


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
    ``IsADirectoryError`` or :class:`DataError` it raises becomes an :class:`InputError`
    (a ``FileNotFoundError`` a :class:`MissingInputError`) with the same message, so that the run ends with that one
    line (:func:`nasscam_excepthook`). Other exceptions (bugs) pass unchanged."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError:
            raise
        except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, DataError) as e:
            raise as_input_error(e) from e

    return wrapper  # type: ignore[return-value]


def find_input_error(error: BaseException | None) -> BaseException | None:
    """The first :class:`InputError` or :class:`DataError` in ``error``'s chain
    (``error`` itself, then its ``__cause__`` / ``__context__``), or ``None``."""
    return _find_in_chain(error, (InputError, DataError))


#: the exceptions the hook reports as one line: input errors, an inference run that could process no image (its
#: message names each file and its problem) and interruptions (``RunInterrupted`` is a ``KeyboardInterrupt``)
_REPORTED_TYPES: tuple[type[BaseException], ...] = (InputError, DataError, InferenceError, KeyboardInterrupt)


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
#: set while the previous hook runs: a hook installed after ours that calls ours back ends there
_in_previous_hook = False


def one_line(error: BaseException) -> str | None:
    """The single line that reports ``error``: ``error: <message>`` for an input error anywhere in its chain,
    ``stopped: <message>`` for an interruption (:class:`RunInterrupted`, or a plain ``KeyboardInterrupt`` with
    :data:`INTERRUPTED_MESSAGE`); ``None`` for anything else (a bug: its traceback is shown) or when
    ``NASSCAM_TRACEBACK`` asks for the full traceback."""
    found = None if full_traceback_wanted() else _find_in_chain(error, _REPORTED_TYPES)
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
    global _in_previous_hook
    line = one_line(exc)
    if line is None:
        if _in_previous_hook:  # called back by a hook that wraps ours (torch.distributed's does): end the chain here
            sys.__excepthook__(exc_type, exc, tb)
            return
        _in_previous_hook = True
        try:
            (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
        finally:
            _in_previous_hook = False
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
