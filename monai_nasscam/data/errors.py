"""The one exception type of the data package: a problem with one named input file or folder."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(Exception):
    """A problem with one input file or folder, with a message that names both.

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
