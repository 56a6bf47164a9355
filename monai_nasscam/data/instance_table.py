"""The instance-class table of instance-label masks (``nasscam prepare --instance-masks CLASSES.csv``): which class
each instance id of each mask holds. A plain CSV file, ``name,instance,class``, since an instance map alone says
nothing about classes; read by hand because the checks (one line naming the file and the line) are the point.
"""

from __future__ import annotations

import csv
import os
import re

from ..errors import DataError
from .palette import class_id

__all__ = ["read_instance_classes"]


def read_instance_classes(path: str | os.PathLike) -> dict[str, dict[int, int]]:
    """Read the classes of the instances of instance masks: a CSV file with the columns ``name`` (the image name
    without suffix), ``instance`` (its id in the mask) and ``class`` (a class name, ``background`` for an id that is
    no nucleus, or ``ignore`` to leave it out).

    Returns:
        ``{name: {instance id: class id}}`` (class ids 0-4 or :data:`~monai_nasscam.data.palette.IGNORE_ID`).

    Raises:
        DataError: naming the file (and the line): unreadable, a missing column, a malformed id, an unknown class,
            an instance given two classes.
    """
    path = os.fspath(path)
    table: dict[str, dict[int, int]] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            missing = [c for c in ("name", "instance", "class") if c not in columns]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}: the header must be name,instance,class")
            for row in reader:
                line = reader.line_num
                name, inst, cls = (str(row[columns[c]] or "").strip() for c in ("name", "instance", "class"))
                if not re.fullmatch(r"\d+", inst) or int(inst) == 0:
                    raise DataError(path, f"line {line}: instance {inst!r} is not a positive integer")
                try:
                    cid = class_id(cls, "class")
                except ValueError as e:
                    raise DataError(path, f"line {line}: {e}") from None
                known = table.setdefault(name, {})
                if known.get(int(inst), cid) != cid:
                    raise DataError(path, f"line {line}: instance {inst} of {name} has two classes")
                known[int(inst)] = cid
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"unreadable instance-class table ({type(e).__name__}: {e})") from None
    if not table:
        raise DataError(path, "no rows (name,instance,class)")
    return table
