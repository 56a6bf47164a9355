"""What every test shares: one intra-op thread, determinism, the SIGINT guard, the tiny synthetic datasets."""

import os
import signal
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _sigint_unchanged(request):
    """Every test leaves the process's SIGINT handler as it found it (a handler left behind would change how every
    later test, and pytest itself, takes a Ctrl-C): restored, and the test fails naming what it left."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"{request.node.nodeid} left SIGINT's handler {after!r} (it was {before!r})")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny prepared dataset: 8 synthetic tiles of 64-96 px of 4 patients (seed 0), ``nasscam prepare``'s defaults
    (patient split, Macenko); its raw release is the folder ``raw`` beside it. Read only: copy it to change it."""
    from monai_nasscam.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    generate_dataset(root / "raw", n_images=8, n_patients=4, seed=0, min_size=64, max_size=96)
    prepare_dataset(root / "raw", root / "prep", workers=0, progress=False)
    return root / "prep"


@pytest.fixture(scope="session")
def search_dataset(tmp_path_factory) -> Path:
    """The searches' tiny prepared dataset: 8 synthetic tiles of 80-160 px of 4 patients (seed 0), split by image,
    no stain normalisation. Read only: copy it to change it."""
    from monai_nasscam.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("search_dataset")
    generate_dataset(root / "raw", n_images=8, n_patients=4, seed=0, min_size=80, max_size=160)
    prepare_dataset(root / "raw", root / "prep", split="image", stain="none", progress=False, workers=1)
    return root / "prep"


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
