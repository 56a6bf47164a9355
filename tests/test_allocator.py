"""monai_nasscam.allocator: tuned, glibc keeps a freed 64 MiB block and hands it out again instead of mapping fresh
memory (which the kernel zero-fills one page fault at a time).

Measured in a fresh process per setting, so nothing that ran before in the test session changes the count. The
blocks are numpy buffers (plain ``malloc`` / ``free``): a single torch tensor freed and allocated again in a loop
was seen to fault its 16,384 pages on most rounds even tuned (torch 2.13, 2 of 10 rounds reused), so it cannot give
a deterministic answer; the whole search step's page faults are measured in bench/README.md (7.26 M -> 1.16 M).
"""

import subprocess
import sys

import pytest

from monai_nasscam.allocator import DISABLE_ENV, tune_allocator
from tests.utils import REPO

# five 64 MiB blocks, one after the other: the page faults of each
_FAULTS = """
import resource, sys
import numpy as np
from monai_nasscam.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(16 << 20, np.float32)  # 64 MiB, written, then freed
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


def test_tuning_can_be_turned_off_by_environment(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert not tune_allocator()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_tuned_allocator_keeps_freed_memory():
    """Untuned, glibc maps every 64 MiB block fresh and unmaps it when freed: each one faults its pages in (16,384 of
    4 KiB, or 32 and a few hundred more where the kernel backs it with transparent huge pages). Tuned, the blocks
    after the first reuse the first one's memory: next to no fault."""
    untuned, tuned = _faults("default"), _faults("tuned")
    assert min(untuned) > 30, untuned
    assert max(tuned[1:]) < 30, tuned
