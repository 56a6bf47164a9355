"""Values as bundle command-line overrides deliver them.

``python -m monai.bundle run ... --synchronous false --genotype_path null`` passes most values through
python-fire, which turns ``false`` into a bool but leaves ``"off"``, ``"no"``, ``"None"`` or an empty string as strings,
and config expressions may pass any of them on. Every workflow reads booleans and "no value" the same way through
these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai_nasscam.errors import input_check

__all__ = ["TRUE_STRINGS", "FALSE_STRINGS", "NULL_STRINGS", "as_bool", "is_null"]

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
