"""voxprompt.preprocess against the official SAM-Med3D (torchio 0.20.23) golden outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import GOLDEN

from voxprompt.errors import InputError, PromptError
from voxprompt.io import Image, read_image
from voxprompt.preprocess import (
    canonical_grid,
    extract_roi,
    postprocess_mask,
    preprocess_label_roi,
    roi_around,
    roi_block_to_original,
    roi_box_to_original,
    roi_to_original,
    zscore_positive,
)

G = GOLDEN / "sam_med3d_preproc"
N = 128


def _unpack(a, shape):
    return np.unpackbits(a)[: int(np.prod(shape))].reshape(shape)


@pytest.fixture(scope="module")
def golden():
    exp = json.load(open(G / "expected.json"))
    npz = np.load(G / "expected.npz")
    img, gt = read_image(G / "img.nii.gz"), read_image(G / "gt.nii.gz")
    out = {c: preprocess_label_roi(img, gt.array, c) for c in (1, 2)}
    return exp, npz, img, gt, out


@pytest.mark.parametrize("c", [1, 2])
def test_golden_geometry(golden, c):
    exp, _, img, _, out = golden
    e = exp["categories"][str(c)]
    roi = out[c].roi
    assert list(roi.grid_shape) == e["canonical_spatial_shape_after_resample"]
    shape, aff = canonical_grid(img, 1.5)
    np.testing.assert_allclose(aff, e["canonical_affine"], atol=1e-4)
    np.testing.assert_allclose(roi.grid_affine, e["canonical_affine"], atol=1e-4)
    np.testing.assert_allclose(roi.affine, e["roi_affine"], atol=1e-4)


@pytest.mark.parametrize("c", [1, 2])
def test_golden_roi_label_exact(golden, c):
    exp, npz, _, _, out = golden
    expected = _unpack(npz[f"cat{c}_roi_label_packed"], (N, N, N))
    np.testing.assert_array_equal(out[c].label, expected)
    assert int(out[c].label.sum()) == exp["categories"][str(c)]["roi_label_voxels"]


@pytest.mark.parametrize("c", [1, 2])
def test_golden_first_click(golden, c):
    """The official first click (np.random.seed(233), argwhere order) lands on our label."""
    exp, _, _, _, out = golden
    pts = np.argwhere(out[c].label > 0)
    np.random.seed(233)
    point = pts[np.random.randint(len(pts))]
    assert point.tolist() == exp["categories"][str(c)]["first_click_seed233"]["coords"]


def test_golden_roi_image(golden):
    _, npz, _, _, out = golden
    ref = npz["cat1_roi_image_f16"].astype(np.float32)
    x = out[1].image
    assert x.dtype == np.float32 and x.shape == (N, N, N)
    # measured: max 0.0149 = fp16 rounding of the golden (|x| up to ~50)
    np.testing.assert_allclose(x, ref, atol=2e-2, rtol=0)


@pytest.mark.parametrize("c", [1, 2])
def test_golden_roi_stats(golden, c):
    exp, _, _, _, out = golden
    s = exp["categories"][str(c)]["roi_image_stats"]
    x = out[c].image
    for got, key in [(x.mean(), "mean"), (x.std(), "std"), (x.min(), "min"), (x.max(), "max"),
                     (x[0, 0, 0], "value_at_0_0_0")]:
        assert float(got) == pytest.approx(s[key], abs=1e-4), key


@pytest.mark.parametrize("c", [1, 2])
def test_golden_roundtrip(golden, c):
    exp, npz, img, gt, out = golden
    roi_label = _unpack(npz[f"cat{c}_roi_label_packed"], (N, N, N))
    back = postprocess_mask(roi_label, out[c].roi)
    expected = _unpack(npz[f"cat{c}_roundtrip_pred_zyx_packed"], img.shape)
    np.testing.assert_array_equal(back, expected)
    truth = gt.array == c
    dice = 2 * np.sum(back.astype(bool) & truth) / (back.sum() + truth.sum())
    expected_dice = exp["categories"][str(c)]["roundtrip_dice_perfect_roi_pred_vs_original_gt"]
    assert dice == pytest.approx(expected_dice, abs=1e-9)


# ---------------------------------------------------------------- synthetic geometry

def _rot(a, b, c):
    def r(axis, t):
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i] = m[j, j] = np.cos(t)
        m[i, j], m[j, i] = -np.sin(t), np.sin(t)
        return m
    return r(0, a) @ r(1, b) @ r(2, c)


def _synthetic(direction, shape=(37, 51, 43), spacing=(0.7, 1.3, 2.9)):
    """Odd-sized anisotropic volume whose intensity is a linear function of world LPS mm."""
    im = Image(np.zeros(shape, np.float32), spacing, (-40.3, 12.7, -101.1), direction)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = im.index_to_world(np.stack([zz, yy, xx], -1).reshape(-1, 3))
    coef = np.array([0.5, -0.25, 0.125])
    im.array = (world @ coef + 100.0).reshape(shape).astype(np.float32)
    return im, coef


DIRECTIONS = {
    "lps_identity": np.eye(3),
    "oblique": _rot(0.2, -0.15, 0.3),
    "permuted_flipped": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_point_maps_to_same_world_point(name):
    im, _ = _synthetic(DIRECTIONS[name])
    p = np.array([17.3, 22.8, 9.6])
    roi = roi_around(im, p, size=(32, 33, 31), spacing=1.5)
    q = roi.from_original_index(p)
    world_orig = im.index_to_world(p)
    np.testing.assert_allclose(roi.roi_to_world(q, "LPS"), world_orig, atol=1e-6)
    np.testing.assert_allclose(roi.roi_to_world(q, "RAS"), im.index_to_world(p, "RAS"), atol=1e-6)
    np.testing.assert_allclose(roi.to_original_index(q), p, atol=1e-9)
    assert np.all(np.floor(q + 0.5) == np.array(roi.size) // 2)  # centre voxel is size // 2
    # canonical: the ROI axes point to +R, +A, +S as closely as possible
    assert np.all(np.argmax(np.abs(roi.affine[:3, :3]), axis=0) == [0, 1, 2])
    assert np.all(np.diag(roi.affine[:3, :3]) > 0)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_extract_roi_samples_the_right_place(name):
    im, coef = _synthetic(DIRECTIONS[name])
    roi = roi_around(im, (18, 25, 21), size=24, spacing=1.5)
    x = extract_roi(im, roi)
    lo, hi = roi.valid_box()
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    expected = roi.roi_to_world(idx.reshape(-1, 3), "LPS") @ coef + 100.0
    got = x[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].reshape(-1)
    inside = np.all((roi.to_original_index(idx.reshape(-1, 3)) >= 0)
                    & (roi.to_original_index(idx.reshape(-1, 3)) <= np.array(im.shape) - 1), axis=1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-3)  # linear is exact on ramps
    outside = np.ones(x.shape, bool)
    outside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = False
    assert np.all(x[outside] == 0)


def test_roi_to_original_world_consistency():
    im, _ = _synthetic(DIRECTIONS["oblique"])
    roi = roi_around(im, (18, 25, 21), size=20, spacing=1.5)
    mask = np.zeros(roi.size, np.uint8)
    mask[5:15, 3:12, 8:17] = 1
    back = roi_to_original(mask, roi, im)
    assert back.shape == im.shape and back.dtype == np.uint8 and back.sum() > 0
    zyx = np.argwhere(back > 0)
    q = np.floor(roi.from_original_index(zyx) + 0.5).astype(int)  # nearest ROI voxel
    assert np.all(mask[q[:, 0], q[:, 1], q[:, 2]] == 1)
    box, part = roi_block_to_original(mask, roi, im)  # the covered sub-block alone (what a click pastes)
    np.testing.assert_array_equal(back[box], part)
    outside = back.copy()
    outside[box] = 0
    assert outside.sum() == 0 and part.size < back.size
    fg = roi_box_to_original(roi, (5, 3, 8), (15, 12, 17), im)  # where the mask's own box maps to
    outside = back.copy()
    outside[fg] = 0
    assert outside.sum() == 0 and back[fg].size < part.size
    np.testing.assert_array_equal(roi_block_to_original(mask, roi, im, box=fg)[1], back[fg])  # any target box
    with pytest.raises(InputError):
        roi_to_original(np.zeros((3, 3, 3)), roi, im)


def test_roi_far_outside_is_padding():
    im, _ = _synthetic(np.eye(3))
    roi = roi_around(im, (500, 500, 500), size=16)
    assert np.all(extract_roi(im, roi) == 0)
    assert roi_to_original(np.ones(roi.size), roi, im).sum() == 0
    assert roi_block_to_original(np.ones(roi.size), roi, im)[0] is None
    with pytest.raises(PromptError):
        roi_around(im, (np.nan, 1, 2))


def test_zscore_positive():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 3, size=(8, 8, 8)).astype(np.float32)
    x[:2] = -5
    pos = x[x > 0].astype(np.float64)
    np.testing.assert_allclose(zscore_positive(x), (x - pos.mean()) / pos.std(ddof=1),
                               rtol=1e-5, atol=1e-6)
    assert np.all(zscore_positive(-np.ones((4, 4, 4))) == -1)  # no positive voxel: unchanged
    flat = np.where(np.arange(64).reshape(4, 4, 4) % 2, 7.0, -1.0)
    np.testing.assert_allclose(zscore_positive(flat), flat - 7.0)  # std 0: mean removed only


def test_label_shape_mismatch_and_empty_label():
    im, _ = _synthetic(np.eye(3))
    with pytest.raises(InputError):
        preprocess_label_roi(im, np.zeros((3, 3, 3)), 1)
    with pytest.raises(InputError, match="empty"):
        preprocess_label_roi(im, np.zeros(im.shape, np.uint8), 1)
