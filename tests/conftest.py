import pytest
from monai.utils import set_determinism


@pytest.fixture(autouse=True)
def _deterministic():
    set_determinism(seed=0)
    yield
    set_determinism(seed=None)
