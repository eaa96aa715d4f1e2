"""Slice-to-slice propagation and the 2D-model-on-a-volume session, on a synthetic tube."""
from __future__ import annotations

import numpy as np
import pytest
from fake2d import BrightInBox, tube_volume

from voxprompt.errors import InputError, PromptError, UsageError
from voxprompt.session.propagate import (
    PropagationConfig,
    SliceEncoder,
    SliceStack,
    box_of,
    deepest_point,
    propagate,
    take_slice,
)
from voxprompt.session.slices import SliceSession

CFG = PropagationConfig(box_margin=2)


def _tube_x(z: int) -> int:
    return int(20 + 0.8 * z)


def test_prompts_from_a_mask():
    m = np.zeros((20, 30), bool)
    m[5:9, 10:20] = True
    m[15, 2] = True  # a smaller component is ignored
    assert box_of(m) == (10, 5, 20, 9) and box_of(m, 2) == (8, 3, 22, 11)
    x, y = deepest_point(m)
    assert m[y, x] and y in (6, 7) and 11 <= x <= 18  # distance 2 from the border: first in raster order


def test_tube_is_followed_exactly_and_stops_where_it_ends():
    vol, tube = tube_volume()
    enc = SliceEncoder(BrightInBox(), SliceStack(vol, 0))
    start = 15
    res = propagate(enc, start, tube[start], CFG)
    assert sorted(res.slices) == [i for i in range(5, 25) if i != start]
    assert all(np.array_equal(r.mask, tube[i]) for i, r in res.slices.items())
    assert res.stopped == {1: "vanished", -1: "vanished"}
    assert enc.encoded == 21  # 19 propagated slices + the empty one past each end
    # without a margin the drifting tube is cut by the previous box: it shrinks, never grows
    lean = propagate(SliceEncoder(BrightInBox(), SliceStack(vol, 0)), start, tube[start], PropagationConfig())
    assert all(not (r.mask & ~tube[i]).any() for i, r in lean.slices.items())


def test_stopping_rules_limits_and_claims():
    vol, tube = tube_volume()
    enc = SliceEncoder(BrightInBox(score=0.4), SliceStack(vol, 0))
    res = propagate(enc, 15, tube[15], CFG)
    assert not res.slices and res.stopped[1].startswith("score 0.400 < 0.5")
    res = propagate(enc, 15, tube[15], PropagationConfig(box_margin=2, min_score=None, max_slices=3),
                    limits=(12, 30), may_claim=lambda i: i != 17)
    assert sorted(res.slices) == [12, 13, 14, 16]
    assert res.stopped == {1: "claimed", -1: "range"}
    unscored = SliceEncoder(BrightInBox(score=None), SliceStack(vol, 0))
    assert len(propagate(unscored, 15, tube[15], CFG).slices) == 19  # no IoU head: never stops on score
    with pytest.raises(InputError, match="slice shape"):
        propagate(enc, 15, tube[15][:10], CFG)
    with pytest.raises(UsageError, match="prompt"):
        PropagationConfig(prompt="lasso")


def test_point_prompts_and_other_axes():
    vol, tube = tube_volume()
    enc = SliceEncoder(BrightInBox(), SliceStack(vol, 0))
    res = propagate(enc, 15, tube[15], PropagationConfig(prompt="point"))
    assert sorted(res.slices) == [i for i in range(5, 25) if i != 15]
    # along axis 1 (rows = z, columns = x) the tube is one blob per slice: still followed
    stack = SliceStack(vol, 1)
    assert stack.slice_shape == (30, 64) and len(stack) == 64
    mid = take_slice(tube, 1, 32)
    res = propagate(SliceEncoder(BrightInBox(), stack), 32, mid, CFG)
    covered = {i for i in range(64) if take_slice(tube, 1, i).any()} - {32}
    assert set(res.slices) == covered
    assert all(np.array_equal(r.mask, take_slice(tube, 1, i)) for i, r in res.slices.items())


def test_slice_session_click_box_refine_undo():
    vol, tube = tube_volume()
    s = SliceSession(BrightInBox(), axis=0, config=CFG)
    s.set_image(vol)
    p = s.add_point((15, 32, _tube_x(15)))
    assert np.array_equal(s.mask, tube) and p.anchor == 15 and p.score == pytest.approx(0.9)
    assert p.stopped == {1: "vanished", -1: "vanished"} and len(p.slices) == 20
    s.undo()
    assert not s.mask.any() and not s.anchors
    assert np.array_equal(p.mask, tube) and not p.mask.flags.writeable  # results handed out never change
    # a thick box: prompt its middle slice, propagate inside its slice range only
    p = s.add_box((10, 20, 10), (20, 45, 50))
    assert p.anchor == 14 and np.flatnonzero(s.mask.any(axis=(1, 2))).tolist() == list(range(10, 20))
    assert np.array_equal(s.mask[10:20], tube[10:20])
    # a second anchor claims the slices nearer to it and stops at the first anchor's
    p = s.add_point((18, 32, _tube_x(18)))
    assert s.anchors == [14, 18] and p.slices == [17, 18, 19, 20, 21, 22, 23, 24]
    assert p.stopped == {1: "vanished", -1: "claimed"}
    s.undo()
    assert s.anchors == [14] and np.flatnonzero(s.mask.any(axis=(1, 2))).tolist() == list(range(10, 20))
    single = SliceSession(BrightInBox(), axis=0, config=CFG, propagate=False)
    single.set_image(vol)
    single.add_point((15, 32, _tube_x(15)))
    assert np.flatnonzero(single.mask.any(axis=(1, 2))).tolist() == [15]


def test_slice_session_objects():
    """Several objects: each keeps its own mask, anchors, prompts and undo history; label_map
    stacks them; unknown ids are usage errors."""
    vol, tube = tube_volume()
    s = SliceSession(BrightInBox(), axis=0, config=CFG)
    s.set_image(vol)
    assert s.object_ids == [1] and s.object_id == 1
    p1 = s.add_point((15, 32, _tube_x(15)))
    assert p1.object_id == 1 and np.array_equal(s.mask, tube)
    first = s.mask.copy()
    assert s.new_object() == 2 and not s.mask.any() and not s.anchors and not s.can_undo
    p2 = s.add_box((12, 20, 10), (14, 45, 50))  # the same tube, slices 12-13 only
    assert p2.object_id == 2 and s.anchors == [12]
    assert np.flatnonzero(s.mask.any(axis=(1, 2))).tolist() == [12, 13]
    assert s.prompts == [("box", ((12, 20, 10), (14, 45, 50)))]
    s.select_object(1)
    assert np.array_equal(s.mask, first) and s.anchors == [15]
    assert s.prompts == [("point", ((15, 32, _tube_x(15)), True))]
    labels = s.label_map()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    assert np.array_equal(labels > 0, tube) and (labels[12:14][tube[12:14]] == 2).all()  # later ids win
    s.select_object(2)
    s.undo()  # object 2's box only
    assert not s.mask.any() and s.prompts == [] and not s.can_undo
    s.select_object(1)
    assert np.array_equal(s.mask, first) and s.can_undo
    with pytest.raises(UsageError, match="no object 7"):
        s.select_object(7)
    r = s.reset()  # object 1 cleared, object 2 untouched
    assert r.slices == list(range(5, 25)) and not s.mask.any() and not s.anchors and not s.can_undo
    assert s.object_ids == [1, 2] and s.prompts == []
    s.set_image(vol)  # a new image starts over
    assert s.object_ids == [1] and not s.mask.any()


def test_slice_session_bad_prompts():
    vol, _ = tube_volume()
    s = SliceSession(BrightInBox(), axis=0)
    with pytest.raises(UsageError, match="set_image"):
        s.add_point((1, 2, 3))
    s.set_image(vol)
    with pytest.raises(PromptError, match="outside the volume"):
        s.add_point((30, 2, 3))
    with pytest.raises(PromptError, match="wrong order"):
        s.add_box((10, 40, 10), (11, 20, 50))
    with pytest.raises(PromptError, match="share one slice"):
        s.add_prompts(points=[((3, 4, 5), True), ((4, 4, 5), True)])
    with pytest.raises(PromptError, match="slice range"):
        s.add_box((10, 20, 10), (20, 45, 50), slice_index=25)
    with pytest.raises(PromptError, match="integer"):  # as Session: never truncated to (11, 20, 45)
        s.add_box((10, 10, 10), (11.5, 20, 45))
    assert not s.can_undo and not s.mask.any()
    with pytest.raises(UsageError, match="2D model"):
        SliceSession(type("M3", (BrightInBox,), {"spatial_dims": 3})())


def test_tiny_real_models_on_a_volume(tiny_med2d, tiny_unet):
    vol, tube = tube_volume(depth=8, size=40, z0=2, z1=6)
    for fixture in (tiny_med2d, tiny_unet):
        s = SliceSession(fixture[1], axis=0, config=PropagationConfig(min_score=None, max_slices=2))
        s.set_image(vol)
        p = s.add_box((3, 10, 5), (4, 30, 35))
        assert s.mask.shape == vol.shape and p.anchor == 3
        assert set(p.slices) <= {1, 2, 3, 4, 5} and 3 in p.slices
