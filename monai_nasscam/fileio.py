"""Atomic writes of files and folders, with ordinary permissions.

``tempfile.mkstemp`` / ``mkdtemp`` create their file or folder readable by the owner only (0600 / 0700); renamed
into place, a genotype, a run's ``stain.json`` or a prepared dataset would keep those modes, and colleagues who
share the run or the dataset could not read them. These helpers write through a temporary path and give the
result the modes a plain ``open`` / ``mkdir`` would (0666 / 0777 less the umask).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["AtomicTextFile", "atomic_path", "atomic_write_text", "default_mode", "staged_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` the permissions ``open`` / ``mkdir`` would have given it."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for any writer to write to; on success it is renamed to ``path``.

    The temporary name keeps ``path``'s suffixes (``.png``, ``.nii.gz``, ``.pt``), so writers that choose the format
    from the name (PIL, matplotlib, NIfTI writers) write the right one. On any error or interruption the temporary
    file is removed and ``path`` is left as it was. Parent folders are created.

    Args:
        path: the final file path.

    Yields:
        the temporary path (not yet existing) in the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicTextFile:
    """A text file written in pieces over time (a stream of nuclei) that appears at ``path`` only when complete.

    The text goes to a temporary file next to ``path`` (:attr:`file`); :meth:`commit` closes it, gives it ordinary
    permissions and renames it to ``path``; :meth:`discard` closes and removes it, leaving ``path`` as it was. Both
    are safe to call more than once. For a file written in one go, :func:`atomic_write_text` or :func:`atomic_path`.

    Args:
        path: the final file path (its folder must exist).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        suffix = "".join(self.path.suffixes[-1:])
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".tmp{suffix}", dir=self.path.parent)
        self.file = os.fdopen(fd, "w", newline="")

    def commit(self) -> Path:
        """Close, and rename into place; returns the path."""
        if not self.file.closed:
            self.file.close()
            default_mode(self._tmp)
            os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary file (nothing is written at ``path``)."""
        if not self.file.closed:
            self.file.close()
        Path(self._tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return Path(path)


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder next to ``target`` to build it in; on success it replaces ``target`` (an existing
    one is moved aside and removed only once the new one is in place), on any error or interruption it is removed.
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:  # from the first statement after mkdtemp: a Ctrl-C while the mode is set still removes the folder
        default_mode(tmp)
        yield tmp
        if not os.path.exists(target):
            os.rename(tmp, target)
            return
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
        os.rmdir(trash)
        os.rename(target, trash)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(trash, target)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
