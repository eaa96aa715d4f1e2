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
