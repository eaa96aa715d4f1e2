"""Mask clean-up (voxprompt.cleanup): seeded 26-connected components, holes filled."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from voxprompt import cleanup
from voxprompt.cleanup import clean_mask, resolve_clean
from voxprompt.errors import InputError, UsageError


def two_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, blob A with its hole filled, blob B): A is a hollow 7x7x7 cube, B a separate 3x3x3 cube."""
    m = np.zeros((12, 20, 20), bool)
    m[2:9, 2:9, 2:9] = True
    m[4:7, 4:7, 4:7] = False  # a 3x3x3 cavity inside A
    a = np.zeros_like(m)
    a[2:9, 2:9, 2:9] = True
    b = np.zeros_like(m)
    b[4:7, 13:16, 13:16] = True
    return m | b, a, b


def test_keeps_the_clicked_blob_and_fills_its_hole():
    m, a, b = two_blobs()
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3)]), a)
    np.testing.assert_array_equal(clean_mask(m, [(5, 14, 14)]), b)
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3), (5, 14, 14)]), a | b)  # every clicked blob
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3)], fill_holes=False), m & ~b)  # the cavity stays
    np.testing.assert_array_equal(clean_mask(m, []), a | b)  # no seed: nothing removed, holes filled
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3)], negatives=[(5, 5, 5)]), m & ~b)  # carved out: open
    out = clean_mask(m.astype(np.uint8), [(3, 3, 3)])
    assert out.dtype == bool and out is not m and m.sum() == (a | b).sum() - 27  # input untouched


def test_no_seed_in_the_mask_keeps_the_nearest_component_in_mm():
    m, a, b = two_blobs()
    # seed at (5, 11, 11): 2 voxels from B's corner along y and x, 3 from A's
    assert clean_mask(m, [(5, 11, 11)])[b].all() and not clean_mask(m, [(5, 11, 11)])[a].any()
    # a seed in A's cavity: A is nearest, and its hole is filled, so the seed is inside the result
    np.testing.assert_array_equal(clean_mask(m, [(5, 5, 5)]), a)
    # distances are in mm: one slice of 10 mm is farther than 4 voxels of 1 mm in-plane
    n = np.zeros((3, 3, 12), bool)
    n[0, 1, 5] = True  # sqrt(2) voxels, sqrt(101) mm from the seed
    n[1, 1, 10] = True  # 4 voxels, 4 mm
    seed = [(1, 1, 6)]
    np.testing.assert_array_equal(np.argwhere(clean_mask(n, seed)), [[0, 1, 5]])
    np.testing.assert_array_equal(np.argwhere(clean_mask(n, seed, spacing=(10.0, 1.0, 1.0))), [[1, 1, 10]])


def test_anchor_keeps_components_and_26_connectivity():
    m, a, b = two_blobs()
    anchor = np.zeros_like(m)
    anchor[6, 15, 15] = True  # a voxel of B: B continues something outside the block
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3)], anchor), a | b)
    anchor[0, 0, 0] = True  # anchors outside the mask change nothing
    np.testing.assert_array_equal(clean_mask(m, [(3, 3, 3)], anchor), a | b)
    # voxels touching only at a corner are one component (26-connectivity)
    d = np.zeros((4, 4, 4), bool)
    d[0, 0, 0] = d[1, 1, 1] = d[2, 2, 2] = True
    d[3, 0, 3] = True  # not touching
    out = clean_mask(d, [(0, 0, 0)])
    assert out[2, 2, 2] and not out[3, 0, 3]


def test_cavities_open_to_the_border_are_not_holes():
    m = np.zeros((6, 6, 6), bool)
    m[:, :, :] = True
    m[2:4, 2:4, 0:4] = False  # a tunnel from the x=0 face: open, stays
    np.testing.assert_array_equal(clean_mask(m, [(0, 0, 0)]), m)
    full = np.ones((5, 5, 5), bool)
    full[2, 2, 2] = False  # a cube filling the array with one enclosed voxel
    assert clean_mask(full, [(0, 0, 0)]).all()
    assert not clean_mask(np.zeros((3, 3, 3), bool), [(1, 1, 1)]).any()


@pytest.mark.parametrize("shape", [(17, 30, 23), (16, 32, 24)])
def test_large_block_path_equals_the_exact_one(monkeypatch, shape):
    """Blocks above COARSE_MIN_VOXELS find candidates on a 2x grid first: the same result (odd sizes too)."""
    rng = np.random.default_rng(3)
    m = ndimage.binary_opening(rng.random(shape) > 0.55)  # many blobs, some touching only diagonally
    m[5:12, 8:20, 6:18] = True
    m[7:10, 11:16, 9:14] = False  # one hole
    anchor = np.zeros(shape, bool)
    anchor[-1] = m[-1]  # the last slice continues outside
    for seeds in ([(8, 9, 7)], [(0, 0, 0)], [(8, 9, 7), (shape[0] - 1, shape[1] - 1, shape[2] - 1)]):
        exact = clean_mask(m, seeds, anchor, spacing=(2.0, 1.0, 1.0))
        monkeypatch.setattr(cleanup, "COARSE_MIN_VOXELS", 0)
        coarse = clean_mask(m, seeds, anchor, spacing=(2.0, 1.0, 1.0))
        monkeypatch.setattr(cleanup, "COARSE_MIN_VOXELS", 10**12)
        np.testing.assert_array_equal(coarse, exact)
        assert ndimage.label(exact, np.ones((3, 3, 3)))[1] < ndimage.label(m, np.ones((3, 3, 3)))[1]


def test_resolve_clean_and_bad_arguments():
    assert resolve_clean(None, SimpleNamespace(refine_band_mm=9.0)) is True  # the default model
    assert resolve_clean(None, SimpleNamespace(refine_band_mm=0.0)) is False  # official models
    assert resolve_clean(None, SimpleNamespace()) is False
    assert resolve_clean(False, SimpleNamespace(refine_band_mm=9.0)) is False
    assert resolve_clean(True, SimpleNamespace()) is True
    with pytest.raises(UsageError, match="clean"):
        resolve_clean("yes", SimpleNamespace())
    with pytest.raises(InputError, match="3D"):
        clean_mask(np.ones((3, 3), bool))
    with pytest.raises(InputError, match="anchor"):
        clean_mask(np.ones((3, 3, 3), bool), anchor=np.ones((3, 3, 2), bool))
