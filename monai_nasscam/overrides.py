"""Values as bundle command-line overrides deliver them.

``python -m monai.bundle run ... --synchronous false --genotype_path null`` passes most values through
python-fire, which turns ``false`` into a bool but leaves ``"off"``, ``"no"``, ``"None"`` or an empty string as strings,
and config expressions may pass any of them on. Every workflow reads booleans and "no value" the same way through
:func:`as_bool` and :func:`is_null`, and refuses a setting that is no key of its config files
(:func:`check_override_keys`: MONAI would add it as a new, unused key).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from monai_nasscam.errors import input_check

__all__ = ["TRUE_STRINGS", "FALSE_STRINGS", "NULL_STRINGS", "as_bool", "is_null", "check_override_keys"]

#: strings read as true / false (case and surrounding spaces ignored)
TRUE_STRINGS = ("true", "yes", "on", "1")
FALSE_STRINGS = ("false", "no", "off", "0")
#: strings read as "no value" by default (case and surrounding spaces ignored)
NULL_STRINGS = ("", "null", "none")


@input_check
def as_bool(value: Any, name: str = "value") -> bool:
    """``value`` as a bool.

    Args:
        value: a bool, 0 / 1, or one of :data:`TRUE_STRINGS` / :data:`FALSE_STRINGS` in any case.
        name: the override's name, for the error message.

    Raises:
        InputError: (a ``ValueError``) for anything else, naming ``name``: ``"NAME must be true or false, got X."``
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS + FALSE_STRINGS:
        return value.strip().lower() in TRUE_STRINGS
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def is_null(value: Any, nulls: Sequence[str] = NULL_STRINGS) -> bool:
    """Whether ``value`` means "no value": ``None`` or a string in ``nulls`` (case and surrounding spaces ignored).

    Args:
        value: the override's value.
        nulls: the strings that mean no value; pass ``("", "null")`` where ``"none"`` is a real choice (for
            example the attention ``none``).
    """
    return value is None or (isinstance(value, str) and value.strip().lower() in nulls)


@functools.lru_cache(maxsize=None)
def _bundle_run_args() -> frozenset[str]:
    """The named arguments of ``monai.bundle run`` itself; every other ``--key`` of its command line overrides a
    config key."""
    import inspect

    from monai.bundle.scripts import run

    params = inspect.signature(run).parameters.values()
    return frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD)


def _command_line_keys(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The ``--key value`` / ``--key=value`` pairs of a ``monai.bundle run`` command line (``-`` read as ``_``, as
    python-fire does) and the override keys among them, in order."""
    values: dict[str, str] = {}
    keys: list[str] = []
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if token == "--":  # python-fire's own flags follow
            break
        if not token.startswith("--") or len(token) == 2:
            continue
        name, _, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
        values[name] = value
        if name not in _bundle_run_args():
            keys.append(name)
    return values, keys


@input_check
def check_override_keys(argv: Sequence[str] | None = None) -> bool:
    """Refuse a command-line setting that is no key of the workflow's config files: a misspelt ``--treshold 0.9``
    would otherwise become a new, unused key, and the run would go on with the default.

    Reads the ``monai.bundle run`` command line (``sys.argv``) and the config files it names (``--config_file``,
    and the keys of ``--args_file``); a key ``a#b`` is checked by its first part ``a``. A run started from Python
    (``monai.bundle.run(...)``: no ``--config_file`` on the command line) is not checked. The bundle configs call
    this first in their ``initialize``.

    Args:
        argv: the command line; ``None``: ``sys.argv``.

    Returns:
        ``True`` when every key is known or there is nothing to check.

    Raises:
        InputError: the first unknown key, naming it, the config files, and the closest known keys.
    """
    import ast
    import difflib
    import sys

    from monai.bundle import ConfigParser

    values, keys = _command_line_keys(sys.argv if argv is None else argv)
    files = values.get("config_file")
    if not files:
        return True
    try:
        names = ast.literal_eval(files) if files.lstrip().startswith(("[", "(")) else files
    except (ValueError, SyntaxError):
        names = files
    names = [names] if isinstance(names, str) else list(names)
    known = set(ConfigParser.load_config_files(names))
    if values.get("args_file"):
        extra = ConfigParser.load_config_file(values["args_file"])
        keys += [k for k in extra if k not in _bundle_run_args()]
    for key in keys:
        first = key.replace("::", "#").split("#")[0]
        if first in known:
            continue
        close = difflib.get_close_matches(first, sorted(k for k in known if not k.startswith("_")), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
        shown = ", ".join(str(n) for n in names)
        raise ValueError(
            f"unknown setting --{key}: {shown} has no key {first!r}, so it would be ignored{hint} "
            "(the settings tables of docs/search.md, docs/train_evaluate.md and docs/inference.md list them)."
        )
    return True
