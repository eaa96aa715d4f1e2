"""Click/box simulators, the protocol loop and the random-walker baseline."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.clicks import (
    Box3D,
    Click,
    cvpr25_initial_box,
    cvpr25_next_click,
    jitter_click,
    ritm_click,
    sam_med2d_box,
    sam_med2d_points,
    sam_med3d_random_click,
)
from voxprompt.eval.metrics import dice
from voxprompt.eval.protocol import run_click_protocol


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def box_mask(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ---------------------------------------------------------------- CVPR 2025 clicks

def test_cvpr25_click_at_centre_of_missed_cube():
    gt = box_mask((20, 20, 20), (3, 5, 7), (10, 12, 14))  # 7^3 cube, centre (6, 8, 10)
    click = cvpr25_next_click(np.zeros_like(gt), gt)
    assert click == Click((6, 8, 10), 1)


def test_cvpr25_negative_click_on_false_positive():
    gt = box_mask((30, 30, 30), (2, 2, 2), (8, 8, 8))
    pred = gt | box_mask(gt.shape, (15, 15, 15), (24, 24, 24))  # 9^3 FP cube, centre 19
    assert cvpr25_next_click(pred, gt) == Click((19, 19, 19), 0)


def test_cvpr25_picks_largest_component_and_border_is_background():
    gt = box_mask((20, 20, 20), (0, 0, 0), (5, 5, 5))       # FN cube touching the corner
    gt |= box_mask(gt.shape, (12, 12, 12), (15, 15, 15))    # smaller FN cube
    click = cvpr25_next_click(np.zeros_like(gt), gt)
    assert click == Click((2, 2, 2), 1)  # not (0, 0, 0): the array edge counts as boundary


def test_cvpr25_ties_are_deterministic_and_central():
    gt = box_mask((12, 12, 12), (2, 2, 2), (6, 6, 6))  # even cube: 8 equally central voxels
    first = cvpr25_next_click(np.zeros_like(gt), gt)
    assert all(cvpr25_next_click(np.zeros_like(gt), gt) == first for _ in range(3))
    assert all(i in (3, 4) for i in first.index) and first.label == 1


def test_cvpr25_no_error_gives_none_and_works_in_2d():
    gt = box_mask((10, 10, 10), (2, 2, 2), (5, 5, 5))
    assert cvpr25_next_click(gt, gt) is None
    gt2 = box_mask((15, 15), (4, 4), (9, 9))
    assert cvpr25_next_click(np.zeros_like(gt2), gt2) == Click((6, 6), 1)


def test_cvpr25_click_inside_error_with_spacing():
    gt = ball((20, 24, 24), (10, 12, 12), 7)
    pred = ball((20, 24, 24), (10, 12, 14), 7)
    click = cvpr25_next_click(pred, gt, spacing=(3.0, 1.0, 1.0))
    assert (pred != gt)[click.index]
    assert click.label == int(gt[click.index])


# ---------------------------------------------------------------- CVPR 2025 box

def test_cvpr25_initial_box_on_known_shape():
    gt = box_mask((12, 30, 30), (3, 10, 5), (8, 20, 9))
    assert cvpr25_initial_box(gt) == Box3D(z_min=3, z_max=7, z_mid=5, y_min=10, x_min=5,
                                           y_max=19, x_max=8)
    # z_mid is the median voxel's slice, not the middle of the z range
    gt2 = np.zeros((10, 20, 20), dtype=bool)
    gt2[1, 2:18, 2:18] = True         # 256 voxels
    gt2[2:9, 8:10, 8:10] = True       # 7 slices of 4 voxels
    box = cvpr25_initial_box(gt2)
    assert (box.z_min, box.z_max, box.z_mid) == (1, 8, 1)
    assert box.as_cvpr_dict()["z_mid_x_max"] == 17


def test_cvpr25_initial_box_perturbation_contains_tight_box():
    gt = box_mask((6, 512, 512), (1, 100, 200), (4, 150, 260))
    tight = cvpr25_initial_box(gt)
    noisy = cvpr25_initial_box(gt, rng=np.random.default_rng(1))
    assert noisy.y_min <= tight.y_min and noisy.x_max >= tight.x_max
    assert tight.y_min - noisy.y_min <= 10 and noisy.z_mid == tight.z_mid
    with pytest.raises(InputError):
        cvpr25_initial_box(np.zeros((4, 4, 4)))


# ---------------------------------------------------------------- SAM-Med3D clicks

def test_sam_med3d_random_click_labels_and_determinism():
    gt = ball((16, 16, 16), (8, 8, 8), 5)
    pred = ball((16, 16, 16), (8, 8, 10), 5)
    fn, fp = gt & ~pred, pred & ~gt
    rng = np.random.default_rng(0)
    clicks = [sam_med3d_random_click(pred, gt, rng) for _ in range(50)]
    for c in clicks:
        assert (fn | fp)[c.index] and c.label == int(fn[c.index])
    assert {c.label for c in clicks} == {0, 1}
    again = [sam_med3d_random_click(pred, gt, np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == clicks[0]


def test_sam_med3d_random_click_fallbacks():
    gt = ball((10, 10, 10), (5, 5, 5), 3)
    rng = np.random.default_rng(0)
    first = sam_med3d_random_click(np.zeros_like(gt), gt, rng)
    assert gt[first.index] and first.label == 1
    perfect = sam_med3d_random_click(gt, gt, rng)
    assert gt[perfect.index] and perfect.label == 1
    with pytest.raises(InputError):
        sam_med3d_random_click(np.zeros_like(gt), np.zeros_like(gt), rng)


def test_ritm_click_goes_deep_into_larger_error():
    gt = box_mask((30, 30, 30), (2, 2, 2), (13, 13, 13))         # 11^3 FN, max EDT 6
    pred = box_mask(gt.shape, (20, 20, 20), (23, 23, 23))        # 3^3 FP, max EDT 2
    for seed in range(5):
        c = ritm_click(pred, gt, np.random.default_rng(seed))
        assert c.label == 1 and all(4 <= i <= 10 for i in c.index)  # EDT > 3
    a = ritm_click(pred, gt, np.random.default_rng(7))
    assert a == ritm_click(pred, gt, np.random.default_rng(7))


# ---------------------------------------------------------------- SAM-Med2D

def test_sam_med2d_points_counts_and_labels():
    m = box_mask((32, 32), (8, 8), (20, 24))
    rng = np.random.default_rng(0)
    (one,) = sam_med2d_points(m, 1, rng)
    assert one.label == 1 and m[one.index]
    pts = sam_med2d_points(m, 5, rng)
    assert sorted(p.label for p in pts) == [0, 0, 0, 1, 1]
    assert all(m[p.index] == bool(p.label) for p in pts)
    a = sam_med2d_points(m, 6, np.random.default_rng(3))
    assert a == sam_med2d_points(m, 6, np.random.default_rng(3))
    assert [p.label for p in sam_med2d_points(np.zeros((8, 8)), 1, rng)] == [0]
    with pytest.raises(UsageError):
        sam_med2d_points(m, 0, rng)


def test_sam_med2d_box_largest_component_exclusive_xyxy():
    m = np.zeros((40, 50), dtype=bool)
    m[5:9, 30:33] = True        # small
    m[10:25, 2:12] = True       # large: rows 10..24, cols 2..11
    assert sam_med2d_box(m) == (2, 10, 12, 25)
    with pytest.raises(InputError):
        sam_med2d_box(np.zeros((4, 4)))


# ---------------------------------------------------------------- jitter

def test_jitter_stays_in_same_region():
    region = box_mask((20, 20, 20), (2, 2, 2), (9, 9, 9)) | box_mask((20, 20, 20), (11, 2, 2),
                                                                      (18, 9, 9))
    labels, _ = ndimage.label(region)
    start = Click((5, 5, 5), 1)
    rng = np.random.default_rng(0)
    moved = [jitter_click(start, region, rng, sigma_vox=2.0) for _ in range(40)]
    assert any(m.index != start.index for m in moved)
    for m in moved:
        assert region[m.index] and labels[m.index] == labels[start.index] and m.label == 1
    assert jitter_click(start, region, rng, sigma_vox=0.0) == start
    single = np.zeros((5, 5, 5), dtype=bool)
    single[2, 2, 2] = True
    assert jitter_click(Click((2, 2, 2), 0), single, rng, 1.5) == Click((2, 2, 2), 0)


# ---------------------------------------------------------------- protocol loop

GT_CENTRE, GT_RADIUS, SHAPE = (16, 16, 16), 10, (32, 32, 32)


def growing_sphere(clicks, box):
    """A fake engine: a sphere that grows towards the GT with every click."""
    return ball(SHAPE, GT_CENTRE, min(1 + 2 * len(clicks), GT_RADIUS))


def test_protocol_cvpr25_improves_monotonically():
    gt = ball(SHAPE, GT_CENTRE, GT_RADIUS)
    res = run_click_protocol(growing_sphere, gt, "cvpr25", n_clicks=5, spacing=(1.0, 1.0, 1.0))
    assert res.box is not None and len(res.dice) == 6 and len(res.clicks) == 5
    assert all(np.diff(res.dice) > 0) and res.final_dice == 1.0
    assert res.nsd[0] == 0.0  # CVPR25 scores NSD 0 when Dice <= 0.2
    assert all(c.label == 1 and gt[c.index] for c in res.clicks)
    assert 0 < res.dsc_auc <= 4.0 and res.final_nsd <= 1.0
    again = run_click_protocol(growing_sphere, gt, "cvpr25", n_clicks=5)
    assert again.clicks == res.clicks


def test_protocol_sam_med3d_is_seeded():
    gt = ball(SHAPE, GT_CENTRE, GT_RADIUS)
    a = run_click_protocol(growing_sphere, gt, "sam-med3d", 4, np.random.default_rng(5))
    b = run_click_protocol(growing_sphere, gt, "sam-med3d", 4, np.random.default_rng(5))
    assert a.clicks == b.clicks and a.dice == b.dice and len(a.dice) == 4
    assert all(np.diff(a.dice) > 0) and a.best_dice == a.final_dice
    r = run_click_protocol(growing_sphere, gt, "sam-med3d-ritm", 3, np.random.default_rng(5))
    assert gt[r.clicks[0].index] and len(r.dice) == 3


def test_protocol_perfect_engine_and_errors():
    gt = ball(SHAPE, GT_CENTRE, GT_RADIUS)
    res = run_click_protocol(lambda c, b: gt, gt, "cvpr25", 5)
    assert res.clicks == [] and res.dsc_auc == 4.0 and res.nsd_auc == 4.0
    no_box = run_click_protocol(growing_sphere, gt, "cvpr25", 2, use_box=False)
    assert no_box.dice[0] == 0.0 and no_box.box is None and len(no_box.dice) == 3
    with pytest.raises(UsageError):
        run_click_protocol(growing_sphere, gt, "nope")
    with pytest.raises(UsageError):
        run_click_protocol(growing_sphere, gt, "sam-med3d", 2)  # no rng
    with pytest.raises(InputError):
        run_click_protocol(lambda c, b: np.zeros((3, 3, 3)), gt, "cvpr25", 1)


# ---------------------------------------------------------------- random-walker baseline

def test_random_walker_baseline_on_noisy_sphere():
    pytest.importorskip("skimage")
    from voxprompt.eval.baseline import random_walker_predict_fn, random_walker_segment

    rng = np.random.default_rng(0)
    gt = ball((48, 48, 48), (24, 24, 24), 10)
    image = 100.0 * gt + rng.normal(0.0, 30.0, gt.shape) + 500.0
    pred = random_walker_segment(image, [Click((24, 24, 24), 1)])
    assert pred.shape == gt.shape and dice(pred, gt) > 0.8
    assert not random_walker_segment(image, [Click((24, 24, 24), 0)]).any()
    res = run_click_protocol(random_walker_predict_fn(image), gt, "cvpr25", 2, use_box=False)
    assert res.clicks[0] == Click((24, 24, 24), 1) and res.final_dice > 0.8


def test_random_walker_box_mode_on_noisy_sphere():
    """The box alone (centre seed, background shell just outside the box) segments a sphere; the
    protocol with its box scores the box step; nothing leaks outside the box without a click."""
    pytest.importorskip("skimage")
    from voxprompt.eval.baseline import random_walker_predict_fn, random_walker_segment

    rng = np.random.default_rng(0)
    gt = ball((48, 48, 48), (24, 24, 24), 10)
    image = 100.0 * gt + rng.normal(0.0, 30.0, gt.shape) + 500.0
    box = cvpr25_initial_box(gt)
    pred = random_walker_segment(image, [], box=box)
    assert dice(pred, gt) > 0.85
    res = run_click_protocol(random_walker_predict_fn(image), gt, "cvpr25", 2, use_box=True)
    assert res.box == box and res.dice[0] > 0.85 and res.final_dice > 0.85
    # a second, touching bright sphere outside the box stays out
    other = ball(gt.shape, (24, 24, 40), 6) & ~gt
    pred = random_walker_segment(image + 100.0 * other, [], box=box)
    inside = box_mask(gt.shape, (box.z_min, box.y_min, box.x_min), (box.z_max + 1, box.y_max + 1, box.x_max + 1))
    assert not (pred & ~inside).any() and dice(pred, gt) > 0.85


def test_random_walker_box_mode_clicks_and_errors():
    pytest.importorskip("skimage")
    from voxprompt.eval.baseline import random_walker_segment

    rng = np.random.default_rng(1)
    gt = box_mask((32, 48, 32), (12, 6, 12), (20, 42, 20))  # a bar along y
    image = 100.0 * gt + rng.normal(0.0, 10.0, gt.shape)
    box = Box3D(12, 19, 16, 6, 12, 20, 19)  # covers y 6..20 of the bar only
    part = random_walker_segment(image, [], box=box)  # the shell's y = 21 face cuts the bar
    assert part[:, 10:15].sum() > 0.5 * gt[:, 10:15].sum() and not part[:, 21:].any()
    # a positive click beyond the box grows the box to it (and opens the shell near it)
    grown = random_walker_segment(image, [Click((16, 36, 16), 1)], box=box)
    assert dice(grown, gt) > 0.9
    # a negative click on the box centre and no positive click: nothing
    assert not random_walker_segment(image, [Click((16, 13, 15), 0)], box=box).any()
    with pytest.raises(InputError):
        random_walker_segment(image, [], box=Box3D(40, 45, 42, 0, 0, 5, 5))  # outside the image
    with pytest.raises(InputError):
        random_walker_segment(image[16], [], box=box)  # a 3D box on a 2D image
    from voxprompt.eval.baseline import RandomWalkerConfig

    with pytest.raises(UsageError):
        RandomWalkerConfig(box_shell_gap=-1)
