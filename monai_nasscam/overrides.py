"""Values as bundle command-line overrides deliver them.

``python -m monai.bundle run ... --synchronous false --genotype_path null`` passes most values through
python-fire, which turns ``false`` into a bool but leaves ``"off"``, ``"no"``, ``"None"`` or an empty string as strings,
and config expressions may pass any of them on. Every workflow reads booleans, integers, "no value" and the window
size the same way through :func:`as_bool`, :func:`as_int`, :func:`is_null` and :func:`check_roi_size`, and refuses a setting that is no key of its config files
(:func:`check_override_keys`: MONAI would add it as a new, unused key), and an override config named without the
config it overrides (:data:`BASE_CONFIGS`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from monai_nasscam.errors import input_check

__all__ = [
    "TRUE_STRINGS",
    "FALSE_STRINGS",
    "NULL_STRINGS",
    "BASE_CONFIGS",
    "as_bool",
    "whole_number",
    "as_int",
    "is_null",
    "check_roi_size",
    "check_override_keys",
]

#: strings read as true / false (case and surrounding spaces ignored)
TRUE_STRINGS = ("true", "yes", "on", "1")
FALSE_STRINGS = ("false", "no", "off", "0")
#: strings read as "no value" by default (case and surrounding spaces ignored)
NULL_STRINGS = ("", "null", "none")
#: the bundle configs that override another one (by file name), which ``--config_file`` must name before them
BASE_CONFIGS = {
    "search.yaml": "train.yaml",
    "evaluate.yaml": "train.yaml",
    "multi_gpu_train.yaml": "train.yaml",
    "multi_gpu_search.yaml": "search.yaml",
}


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


def whole_number(value: Any) -> int | None:
    """``value`` as an int if it is a whole number -- an int, a float or a string (``3``, ``3.0``, ``"3"``), never a
    bool --, else ``None``."""
    try:
        number = int(value)
        return number if float(value) == number and not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None


def as_int(value: Any, name: str = "value", low: int | None = None) -> int:
    """``value`` as an int (a :func:`whole_number`).

    Args:
        value: the override's value.
        name: the override's name, for the error message.
        low: the smallest value allowed (``None``: no bound).

    Raises:
        ValueError: anything else, or a number under ``low``, naming ``name``:
            ``"NAME must be an integer >= LOW, got X."``
    """
    number = whole_number(value)
    if number is None or (low is not None and number < low):
        bound = f" >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}.")
    return number


@input_check
def check_roi_size(roi_size: Any, name: str = "roi_size", multiple: int = 16) -> list[int]:
    """``roi_size`` (an integer or 2 of them) as a list of 2 integers, each a positive multiple of ``multiple`` (the
    U-Net pools 4 times): the one message of every workflow's crop and window size.

    Raises:
        InputError: (a ``ValueError``) anything else, naming ``name``.
    """
    sizes = [roi_size] * 2 if not isinstance(roi_size, (list, tuple)) else list(roi_size)
    values = [whole_number(s) for s in sizes]
    if len(values) != 2 or any(v is None or v < multiple or v % multiple for v in values):
        raise ValueError(
            f"{name} must be multiples of {multiple} (the U-Net pools 4 times): 2 sizes, each a positive multiple "
            f"of {multiple}, e.g. [256, 256]; got {roi_size!r}."
        )
    return [int(v) for v in values]  # type: ignore[arg-type]


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


def _config_names(value: str) -> list[str]:
    """The config files of a ``--config_file`` value as MONAI reads it: a Python list, or paths joined by commas."""
    import ast

    if value.lstrip().startswith(("[", "(")):
        try:
            return [str(n) for n in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            pass
    return value.split(",") if "," in value and not os.path.isfile(value) else [value]


def _with_bases(names: Sequence[str]) -> list[str]:
    """``names`` with the base of each override config (:data:`BASE_CONFIGS`, from the override's folder) put before
    it where it is missing or comes later."""
    out: list[str] = []
    for name in names:
        chain, base = [name], BASE_CONFIGS.get(os.path.basename(name))
        while base:
            chain.insert(0, os.path.join(os.path.dirname(name), base))
            base = BASE_CONFIGS.get(base)
        out += [c for c in chain if os.path.basename(c) not in {os.path.basename(o) for o in out}]
    return out


@input_check
def check_override_keys(argv: Sequence[str] | None = None, unused: Sequence[str] = ()) -> bool:
    """Refuse a command line that would not run what it says: an override config not named after the config it
    overrides, a setting that is no key of the workflow's config files (a misspelt ``--treshold 0.9`` would
    otherwise become a new, unused key, and the run would go on with the default), or a setting given the value
    ``None`` (python-fire reads it as Python's None, and ``monai.bundle run`` drops None overrides: the config's value
    would stay; ``'$None'`` sets None).

    Reads the ``monai.bundle run`` command line (``sys.argv``) and the config files it names (``--config_file``,
    and the keys of ``--args_file``); a key ``a#b`` is checked by its first part ``a``. A run started from Python
    (``monai.bundle.run(...)``: no ``--config_file`` on the command line) is not checked. The bundle configs call
    this first in their ``initialize``.

    Args:
        argv: the command line; ``None``: ``sys.argv``.
        unused: keys of the config files that the workflow does not read (search.yaml: train.yaml's
            ``genotype_path``), refused as well.

    Returns:
        ``True`` when the config files come in order and every key is known, or there is nothing to check.

    Raises:
        InputError: a config of :data:`BASE_CONFIGS` named without its base before it, giving the ``--config_file``
            to use; the first unknown or unused key, naming it, the config files, and the closest known keys; the
            first key given ``None``, naming it and ``'$None'``.
    """
    import difflib
    import sys

    from monai.bundle import ConfigParser

    values, keys = _command_line_keys(sys.argv if argv is None else argv)
    files = values.get("config_file")
    if not files:
        return True
    names = _config_names(files)
    for i, name in enumerate(names):
        base = BASE_CONFIGS.get(os.path.basename(name))
        if base is not None and base not in {os.path.basename(n) for n in names[:i]}:
            suggested = ",".join(repr(n) for n in _with_bases(names))
            raise ValueError(f"{name} overrides {base} and comes after it: --config_file \"[{suggested}]\"")
    known = set(ConfigParser.load_config_files(names))
    if values.get("args_file"):
        extra = ConfigParser.load_config_file(values["args_file"])
        keys += [k for k in extra if k not in _bundle_run_args()]
    shown = ", ".join(str(n) for n in names)
    for key in keys:
        first = key.replace("::", "#").split("#")[0]
        if first in unused:
            raise ValueError(f"setting --{key} is not read by this workflow ({shown}), so it would be ignored.")
        if first in known and values.get(key, "").strip() == "None":  # python-fire's None, which MONAI drops
            raise ValueError(
                f"setting --{key} None would be ignored: monai.bundle run drops None values, so the config's value "
                f"would stay. To set it to None pass --{key} '$None'."
            )
        if first in known:
            continue
        close = difflib.get_close_matches(first, sorted(k for k in known if not k.startswith("_")), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
        raise ValueError(
            f"unknown setting --{key}: {shown} has no key {first!r}, so it would be ignored{hint} "
            "(the settings tables of docs/search.md, docs/train_evaluate.md and docs/inference.md list them)."
        )
    return True
