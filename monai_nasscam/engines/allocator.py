"""Let the C allocator keep freed tensor memory, so that large CPU activations stop page-faulting.

With glibc, a block above the mmap threshold (128 KiB at start, rising with use to at most 32 MiB) is mapped
fresh from the kernel and unmapped when freed, and the top of the heap is trimmed back. A training step of the
search supernet creates and frees tens of GB of activations (many of them over 32 MiB), so each new tensor is
zero-filled by the kernel one 4 KiB page fault at a time. Raising both thresholds keeps freed blocks in the
process for reuse; `bench/search_step.py` measures the effect (bench/README.md). The price is that the process
holds on to its peak heap instead of returning it. PyTorch's CPU performance guide suggests swapping in
jemalloc or tcmalloc for the same reason; this needs no extra library. Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: set to 1 to leave the allocator as it is
DISABLE_ENV = "NASSCAM_NO_MALLOC_TUNING"


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes for the rest of the process.

    Args:
        threshold: blocks up to this size come from (and return to) the reusable heap; at most ``2**31 - 1``.

    Returns:
        whether the allocator was tuned: ``False`` off glibc/Linux or with ``NASSCAM_NO_MALLOC_TUNING=1``.
    """
    if not sys.platform.startswith("linux") or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    threshold = ctypes.c_int(min(int(threshold), 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
