"""Hand-computed cases for voxprompt.eval.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from voxprompt.errors import InputError
from voxprompt.eval.metrics import auc_trapezoid, dice, hd95, nsd, surface_distances, surface_mask


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    """Voxels whose centre lies within ``radius`` (same unit as ``spacing``) of ``centre``."""
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius ** 2


def cube(shape, start, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_identical_masks():
    m = ball((20, 20, 20), (10, 10, 10), 6)
    assert dice(m, m) == 1.0
    assert nsd(m, m, (2.0, 1.0, 0.5), 0.0) == 1.0
    assert hd95(m, m, (2.0, 1.0, 0.5)) == 0.0


def test_disjoint_single_voxels_with_spacing():
    a = np.zeros((3, 3, 8), dtype=bool)
    b = np.zeros_like(a)
    a[0, 0, 0] = True
    b[0, 0, 5] = True
    spacing = (1.0, 1.0, 2.0)
    assert dice(a, b) == 0.0
    assert hd95(a, b, spacing) == 10.0
    assert nsd(a, b, spacing, 9.99) == 0.0
    assert nsd(a, b, spacing, 10.0) == 1.0  # "within tolerance" is <=


def test_disjoint_cubes():
    a = cube((10, 10, 30), (2, 2, 2), 4)
    b = cube((10, 10, 30), (2, 2, 20), 4)
    assert dice(a, b) == 0.0
    assert nsd(a, b, None, 2.0) == 0.0
    # the far face of a (z=2) to the near face of b (z=20)
    assert hd95(a, b, None, percentile=100) == 18.0


def test_empty_masks():
    empty = np.zeros((5, 5, 5), dtype=np.uint8)
    full = cube((5, 5, 5), (1, 1, 1), 2)
    assert dice(empty, empty) == 1.0
    assert math.isnan(dice(empty, empty, empty_value=float("nan")))
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert nsd(empty, empty, None, 1.0) == 1.0
    assert math.isnan(nsd(empty, empty, None, 1.0, empty_value=float("nan")))
    assert nsd(full, empty, None, 1.0) == 0.0 and nsd(empty, full, None, 1.0) == 0.0
    assert math.isnan(hd95(empty, empty))
    assert hd95(full, empty) == math.inf and hd95(empty, full) == math.inf


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_shifted_cube_dice_closed_form(k):
    a_side = 8
    a = cube((12, 12, 24), (2, 2, 2), a_side)
    b = cube((12, 12, 24), (2, 2, 2 + k), a_side)
    # overlap a*a*(a-k) over 2*a^3
    assert dice(a, b) == pytest.approx((a_side - k) / a_side, abs=1e-12)
    # the moved faces are k voxels (k * 0.5 mm) apart, the others coincide
    if k:
        assert hd95(a, b, (1.0, 1.0, 0.5), percentile=100) == pytest.approx(k * 0.5)


def test_shifted_square_2d():
    a = np.zeros((20, 20), dtype=bool)
    a[4:14, 4:14] = True
    b = np.roll(a, 2, axis=1)
    assert dice(a, b) == pytest.approx(0.8)
    assert hd95(a, b, (1.0, 3.0), percentile=100) == pytest.approx(6.0)
    assert nsd(a, b, (1.0, 3.0), 6.0) == 1.0
    assert nsd(a, b, (1.0, 3.0), 2.9) < 1.0


def test_voxel_spheres_one_voxel_apart_anisotropic():
    spacing = (2.0, 1.0, 1.0)
    inner = ball((24, 32, 32), (12, 16, 16), 8)
    outer = ball((24, 32, 32), (12, 16, 16), 9)
    # surfaces never share a voxel, so below the finest 1-voxel gap nothing matches
    assert nsd(inner, outer, spacing, 0.9) == 0.0
    assert 0.0 < nsd(inner, outer, spacing, 1.0) < 1.0
    assert nsd(inner, outer, spacing, 2.5) == 1.0
    assert 1.0 <= hd95(inner, outer, spacing) <= 2.0  # one voxel: 1 mm in-plane, 2 mm across


def test_physical_spheres_one_mm_apart_anisotropic():
    spacing = (1.5, 0.5, 0.75)
    shape = (16, 40, 28)
    centre = tuple((n - 1) / 2 for n in shape)
    inner = ball(shape, centre, 8.0, spacing)
    outer = ball(shape, centre, 9.0, spacing)
    assert nsd(inner, outer, spacing, 1.0 + max(spacing)) == 1.0
    assert nsd(inner, outer, spacing, 0.5) < 0.5
    assert 1.0 <= hd95(inner, outer, spacing) <= 1.0 + max(spacing)
    # ignoring the spacing gives a very different answer
    assert hd95(inner, outer, None) != pytest.approx(hd95(inner, outer, spacing))


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(3)
    spacing = (1.7, 0.6, 1.1)
    for _ in range(3):
        a = rng.random((9, 11, 10)) > 0.7
        b = rng.random((9, 11, 10)) > 0.6
        d_ab, d_ba = surface_distances(a, b, spacing)
        pa = np.argwhere(surface_mask(a)) * spacing
        pb = np.argwhere(surface_mask(b)) * spacing
        full = cdist(pa, pb)
        np.testing.assert_allclose(np.sort(d_ab), np.sort(full.min(axis=1)), atol=1e-9)
        np.testing.assert_allclose(np.sort(d_ba), np.sort(full.min(axis=0)), atol=1e-9)


def test_border_voxels_are_surface():
    m = np.ones((5, 5, 5), dtype=bool)
    s = surface_mask(m)
    assert s.sum() == 125 - 27 and not s[1:4, 1:4, 1:4].any()
    assert surface_mask(np.ones((4, 4), dtype=bool)).sum() == 12


def test_disc_2d():
    inner = ball((30, 30), (15, 15), 8, (1.0, 1.0))
    outer = ball((30, 30), (15, 15), 9, (1.0, 1.0))
    assert dice(inner, outer) == pytest.approx(2 * inner.sum() / (inner.sum() + outer.sum()))
    assert nsd(inner, outer, (1.0, 1.0), 0.5) == 0.0
    assert nsd(inner, outer, (1.0, 1.0), 1.5) == 1.0
    assert 1.0 <= hd95(inner, outer, (1.0, 1.0)) <= 1.5


def test_auc_trapezoid():
    assert auc_trapezoid([1.0] * 5) == 4.0
    assert auc_trapezoid([0.0, 0.5, 1.0, 1.0, 1.0]) == pytest.approx(3.0)
    assert auc_trapezoid([0.2, 0.4], dx=2.0) == pytest.approx(0.6)
    with pytest.raises(InputError):
        auc_trapezoid([0.5])
    with pytest.raises(InputError):
        auc_trapezoid([0.5, float("nan")])


def test_bad_inputs():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(InputError):
        dice(a, np.zeros((4, 4, 5)))
    with pytest.raises(InputError):
        nsd(a, a, (1.0, 1.0), 1.0)
    with pytest.raises(InputError):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError):
        dice(np.array(1), np.array(1))
    with pytest.raises(InputError):
        nsd(a, a, None, -1.0)
