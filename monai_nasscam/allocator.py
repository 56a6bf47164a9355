"""Let glibc keep freed memory in the process, so that large CPU tensors stop page-faulting.

By default glibc serves every block above its mmap threshold (128 KiB at start, rising with use to at most 32 MiB)
with a fresh ``mmap`` and unmaps it when freed, and trims the top of the heap back to the system. Training and
inference create and free many activations of tens of MiB per step, so each new tensor is zero-filled by the
kernel one 4 KiB page fault at a time: a large share of CPU time for networks of many cheap operations
(bench/README.md measures it for the search step and for inference). Tuned: one arena for all threads, no
``mmap`` for large blocks, up to 1 GiB of free memory kept for reuse. The price is that the process holds on to
its peak heap. PyTorch's CPU performance guide suggests jemalloc or tcmalloc for the same reason; this needs no
extra library. The search, train and inference workflows call :func:`tune_allocator` on CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["DISABLE_ENV", "tune_allocator"]

#: set this environment variable to 1 to leave the allocator as it is
DISABLE_ENV = "NASSCAM_NO_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def tune_allocator(enable: bool = True) -> bool:
    """Keep freed memory for reuse (``enable``) or restore glibc's defaults, process-wide.

    Returns:
        whether the settings were applied: ``False`` where ``mallopt`` is unavailable (not glibc) or when tuning
        was asked for with ``NASSCAM_NO_MALLOC_TUNING=1`` set.
    """
    if enable and os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if enable:
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20))
    else:
        settings = ((_M_ARENA_MAX, 0), (_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024), (_M_TOP_PAD, 0))
    return all(mallopt(key, value) == 1 for key, value in settings)
