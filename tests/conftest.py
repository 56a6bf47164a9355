import os

# The test networks are tiny: one intra-op thread is faster than several, and far faster on a busy machine.
# Set before torch starts its thread pool; bundle runs started by the tests inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    set_determinism(seed=0)
    yield
    set_determinism(seed=None)


class _ScalarWriter:
    """A stand-in for a TensorBoard ``SummaryWriter`` that keeps ``{(tag, step): value}``."""

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[(tag, step)] = value

    def flush(self):
        pass


@pytest.fixture
def scalar_writer():
    """A summary writer that records scalars in ``.scalars`` instead of writing event files."""
    return _ScalarWriter()
