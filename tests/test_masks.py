"""Mask geometry helpers of voxprompt.masks that no other test covers."""
from __future__ import annotations

import numpy as np
import pytest

from voxprompt.masks import box_fit, component_at


def test_box_fit_is_the_iou_of_the_masks_bounding_box_with_the_box():
    m = np.zeros((10, 12), bool)
    m[2:6, 3:9] = True  # voxel edges 1.5..5.5 x 2.5..8.5: 4 x 6
    assert box_fit(m, (1.5, 2.5), (5.5, 8.5)) == pytest.approx(1.0)
    # a box twice as wide: IoU 24 / 48
    assert box_fit(m, (1.5, 2.5), (5.5, 14.5)) == pytest.approx(0.5)
    # shifted by half its height: 2 x 6 overlap of a 4 x 6 union 4 x 6 + 4 x 6 - 12
    assert box_fit(m, (3.5, 2.5), (7.5, 8.5)) == pytest.approx(12 / 36)
    # holes and gaps do not matter, only the extent (a C-shaped object fills its box)
    c = m.copy()
    c[3:5, 5:9] = False
    assert box_fit(c, (1.5, 2.5), (5.5, 8.5)) == pytest.approx(1.0)
    assert box_fit(np.zeros((4, 4), bool), (0, 0), (2, 2)) == 0.0
    assert box_fit(m, (20.0, 20.0), (22.0, 22.0)) == 0.0  # disjoint
    vol = np.zeros((3, 4, 5), bool)
    vol[1, 1:3, 2] = True
    assert box_fit(vol, (0.5, 0.5, 1.5), (1.5, 2.5, 2.5)) == pytest.approx(1.0)


def test_component_at_is_the_touching_part_only():
    m = np.zeros((6, 8, 8), bool)
    m[1:3, 1:3, 1:3] = True
    m[3, 3, 3] = True  # touches the first block along a corner: 26-connected
    m[1:3, 6:8, 6:8] = True  # apart
    part = component_at(m, (1, 1, 1))
    assert part[3, 3, 3] and part[2, 2, 2] and not part[1, 6, 6] and part.sum() == 9
    assert not component_at(m, (0, 0, 0)).any()  # not in the mask
    assert not component_at(m, (9, 0, 0)).any()  # outside the array
    flat = np.eye(4, dtype=bool)  # 2D: 8-connected along the diagonal
    assert component_at(flat, (0, 0)).sum() == 4


def _edt_deeper(m: np.ndarray, spacing, distance: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.distance_transform_edt(m, sampling=spacing) > distance


def _random_masks(rng: np.random.Generator, count: int):
    """Ellipsoids (some touching the array's edges), speckled ones and clusters of small blobs."""
    from scipy import ndimage

    for i in range(count):
        shape = tuple(int(v) for v in rng.integers(6, 30, 3))
        grid = np.indices(shape).astype(float)
        c = np.array(shape) * rng.uniform(0.0, 1.0, 3)
        r = np.array(shape) * rng.uniform(0.1, 0.8, 3)
        m = (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1
        if i % 3 == 1:
            m &= rng.random(shape) > 0.1
        if i % 3 == 2:
            m = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 3)))
        if m.any() and not m.all():
            yield m, rng.choice([0.5, 0.703125, 1.0, 1.1, 1.5, 2.5], 3)


def test_deeper_than_equals_the_exact_distance_transform():
    from voxprompt.masks import ball_footprint, deeper_than

    rng = np.random.default_rng(0)
    for m, sp in _random_masks(rng, 60):
        # ties included: 2 x 0.703125 mm lies exactly on the footprint's edge
        for distance in (float(max(sp)), 2 * 0.703125, 0.9 * float(min(sp)), 9.0):
            np.testing.assert_array_equal(deeper_than(m, sp, distance), _edt_deeper(m, sp, distance))
    assert deeper_than(np.ones((3, 3, 3), bool), (1, 1, 1), 1.0).shape == (3, 3, 3)
    foot = ball_footprint((1.0, 0.5, 2.0), 1.0)
    assert foot.shape == (5, 7, 3) and foot[2, 3, 1] and foot[2, 5, 1] and not foot[2, 6, 1] and not foot[2, 3, 2]


def test_reaches_depth_is_never_wrong_when_it_says_yes():
    from voxprompt.masks import reaches_depth

    rng = np.random.default_rng(1)
    said = 0
    for m, sp in _random_masks(rng, 60):
        for distance in (1.0, 2.0, 4.0):
            if reaches_depth(m, sp, distance):
                said += 1
                assert _edt_deeper(m, sp, distance).any()
    assert said > 10  # it proves the depth of most large masks
    big = np.zeros((40, 40, 40), bool)
    big[5:35, 5:35, 5:35] = True
    assert reaches_depth(big, (1.0, 1.0, 1.0), 14.0) and not reaches_depth(big, (1.0, 1.0, 1.0), 15.0)
    assert not reaches_depth(np.zeros((4, 4, 4), bool), (1, 1, 1), 1.0)
