"""Atomic writes with ordinary permissions.

``tempfile.mkstemp`` / ``mkdtemp`` create their file or folder readable by the owner only (0600 / 0700); renamed
into place, a genotype, a run's ``stain.json`` or a prepared dataset would keep those modes, and colleagues who
share the run or the dataset could not read them. These helpers write through a temporary path and give the
result the modes a plain ``open`` / ``mkdir`` would (0666 / 0777 less the umask).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "default_mode"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` the permissions ``open`` / ``mkdir`` would have given it."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
