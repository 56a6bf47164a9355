"""The pure pieces of bench/instance_target.py: the boundary target and the boundary-marker instances."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from tests.utils import REPO

_PATH = REPO / "bench" / "instance_target.py"
_spec = importlib.util.spec_from_file_location("instance_target", _PATH)
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)


def _two_touching_boxes() -> np.ndarray:
    x = np.zeros((10, 10), dtype=np.int32)
    x[2:8, 2:5] = 1
    x[2:8, 5:8] = 2
    return x


def test_instance_boundary_known_answer():
    x = _two_touching_boxes()
    ring = it.instance_boundary(x, width=1)
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:8, 2:8] = True
    expected[3:7, 3] = False  # interior of nucleus 1 (3 columns wide: only its middle column)
    expected[3:7, 6] = False  # interior of nucleus 2
    np.testing.assert_array_equal(ring, expected)
    # 2 px: every pixel of these 3-px-wide nuclei is within 2 px of the outside
    np.testing.assert_array_equal(it.instance_boundary(x, width=2), x > 0)
    # a 7 x 7 nucleus: 2-px ring = 49 - 3 x 3 interior
    y = np.zeros((11, 11), dtype=np.int32)
    y[2:9, 2:9] = 5
    assert int(it.instance_boundary(y, 2).sum()) == 49 - 9
    # channel-first float input (an augmented crop) keeps its shape
    assert it.instance_boundary(torch.as_tensor(y[None], dtype=torch.float32), 2).shape == (1, 11, 11)
    with pytest.raises(ValueError, match="width"):
        it.instance_boundary(y, 0)


def test_boundary_target_transform_appends_channel():
    x = _two_touching_boxes()
    label = torch.zeros((4, 10, 10))
    label[0] = torch.as_tensor(x > 0)
    d = it.InstanceBoundaryd("label", width=1)({"label": label, "instance": torch.as_tensor(x[None]).float()})
    assert "instance" not in d and d["label"].shape == (5, 10, 10)
    np.testing.assert_array_equal(d["label"][4].numpy() == 1, it.instance_boundary(x, 1))


def test_boundary_marker_instances_splits_touching_nuclei():
    x = _two_touching_boxes()
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[1] = x > 0  # class 2
    ring = it.instance_boundary(x, 1).astype(np.float32)
    # the boundary channel separates the two nuclei: two instances of class 2, every mask pixel kept
    out = it.boundary_marker_instances(mask, ring, threshold=0.5, min_size=0, min_marker_size=1)
    assert out.dtype == np.int32 and out.shape == (4, 10, 10)
    assert int(out[1].max()) == 2 and not out[[0, 2, 3]].any()
    np.testing.assert_array_equal(out[1] > 0, mask[1])
    assert len(np.unique(out[1][x == 1])) == 1 and len(np.unique(out[1][x == 2])) == 1
    # without boundary evidence the component stays one nucleus
    flat = it.boundary_marker_instances(mask, np.zeros((10, 10)), threshold=0.5, min_size=0)
    assert int(flat[1].max()) == 1
    # cores under min_marker_size are no markers: the component stays whole; min_size drops instances
    assert int(it.boundary_marker_instances(mask, ring, 0.5, min_size=0, min_marker_size=5)[1].max()) == 1
    assert not it.boundary_marker_instances(mask, ring, 0.5, min_size=19, min_marker_size=1).any()
    with pytest.raises(ValueError, match="do not match"):
        it.boundary_marker_instances(mask, np.zeros((9, 10)))
