"""The watershed's shortcuts give what the full computation gives: a component whose smoothed distance map has one
regional maximum is kept whole without ``h_maxima``, and ``remove_small_instances`` returns a map with nothing to drop
or renumber as it is."""

from __future__ import annotations

import numpy as np
import pytest

import monai_nasscam.inference.instances as instances
from monai_nasscam.data.synth import synth_tile
from monai_nasscam.inference.instances import remove_small_instances, watershed_instances


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_one_regional_maximum_known_answers() -> None:
    region = _disc((21, 21), (10, 10), 8)
    cone = np.where(region, 20.0 - np.hypot(*np.mgrid[-10:11, -10:11]), 0.0)
    assert instances._one_regional_maximum(cone, region)
    plateau = np.where(region, 1.0, 0.0)  # one flat top: one regional maximum
    assert instances._one_regional_maximum(plateau, region)
    two = cone.copy()
    two[3, 10] = 30.0  # a second, separate peak
    assert not instances._one_regional_maximum(two, region)
    apart = np.where(region, 1.0, 0.0)
    apart[10, 10] = 0.5  # a dip: the rest of the plateau is one ring, still one maximum
    assert instances._one_regional_maximum(apart, region)


@pytest.mark.parametrize("sigma,h,min_distance", [(2.0, 0.5, 0), (0.0, 0.5, 0), (1.0, 2.0, 3)])
def test_watershed_with_the_shortcut_equals_the_full_computation(monkeypatch, sigma, h, min_distance) -> None:
    masks = [synth_tile(np.random.default_rng(seed), 256, 256).masks.class_map for seed in (0, 1)]
    dumbbell = _disc((40, 60), (20, 18), 11) | _disc((40, 60), (20, 41), 11)  # two touching nuclei: split
    masks.append(dumbbell.astype(np.uint8))
    taken = []
    check = instances._one_regional_maximum

    def counted(values, region):
        taken.append(check(values, region))
        return taken[-1]

    for class_map in masks:
        for c in np.unique(class_map[class_map > 0]):
            monkeypatch.setattr(instances, "_one_regional_maximum", counted)
            fast = watershed_instances(class_map == c, h=h, min_distance=min_distance, sigma=sigma)
            monkeypatch.setattr(instances, "_one_regional_maximum", lambda values, region: False)
            full = watershed_instances(class_map == c, h=h, min_distance=min_distance, sigma=sigma)
            np.testing.assert_array_equal(fast, full)
    assert any(taken) and not all(taken)  # both paths were compared
    assert watershed_instances(dumbbell, h=h, min_distance=min_distance, sigma=sigma).max() == 2


def test_remove_small_instances_known_answers() -> None:
    kept = np.array([[1, 1, 0], [2, 2, 2]], np.int64)
    out = remove_small_instances(kept, 2)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, kept)
    gap = np.array([[1, 1, 0], [3, 3, 3]])  # id 2 missing: renumbered
    np.testing.assert_array_equal(remove_small_instances(gap, 2), [[1, 1, 0], [2, 2, 2]])
    small = np.array([[1, 0, 2], [2, 2, 3]])  # ids 1 and 3 under 2 px: dropped, 2 becomes 1
    np.testing.assert_array_equal(remove_small_instances(small, 2), [[0, 0, 1], [1, 1, 0]])
