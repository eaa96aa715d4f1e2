"""Label policy (issue 22): locked objects are never overwritten by another object's prompt, and with
``others_negative`` the current object leaves every other object's voxels out."""
from __future__ import annotations

import numpy as np
import pytest
from server_testing import tiny_model

from voxprompt.errors import UsageError
from voxprompt.masks import bbox_of
from voxprompt.session import Session

SHAPE = (16, 40, 40)


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


A = _box((4, 6, 6), (12, 24, 24))  # object 1's known result
B = _box((4, 16, 16), (12, 34, 34))  # object 2's; overlaps A on (4:12, 16:24, 16:24)
OVERLAP = A & B
B_CLICK = (8, 30, 30)  # in B only
A_CLICK = (8, 8, 8)  # in A only


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture
def known_masks(monkeypatch):
    """Each object's pasted result is a known mask (``results[object id]``, the whole image as region),
    so what the policy cuts is exact."""
    results = {1: A, 2: B}

    def pasted(self, mask, roi, mask_roi, cache=True):
        return tuple(slice(0, n) for n in mask.shape), results[self.object_id].copy()

    monkeypatch.setattr(Session, "_pasted", pasted)
    return results


def _session(model, **kw) -> Session:
    s = Session(model, refine=False, clean=kw.pop("clean", False), **kw)
    rng = np.random.default_rng(0)
    s.set_image(rng.normal(0, 1, SHAPE).astype(np.float32))
    return s


def _two_objects(s: Session, lock_first: bool):
    s.add_point(A_CLICK)
    if lock_first:
        s.lock_object(1)
    s.new_object()
    return s.add_point(B_CLICK)


def test_without_a_lock_a_later_object_takes_the_overlap(model, known_masks):
    s = _session(model)
    pred = _two_objects(s, lock_first=False)
    np.testing.assert_array_equal(pred.mask, B)
    labels = s.label_map()
    assert (labels[OVERLAP] == 2).all()
    assert s.locked_objects == [] and not s.others_negative


def test_a_locked_object_keeps_its_voxels(model, known_masks):
    s = _session(model)
    pred = _two_objects(s, lock_first=True)
    np.testing.assert_array_equal(pred.mask, B & ~A)
    assert pred.changed_bbox == bbox_of(B & ~A)
    assert s.locked_objects == [1] and s.is_locked(1) and not s.is_locked(2)
    labels = s.label_map()
    assert (labels[A] == 1).all() and (labels[B & ~A] == 2).all()
    s.select_object(1)
    np.testing.assert_array_equal(s.mask, A)  # untouched
    s.select_object(2)
    undone = s.undo()
    assert not undone.mask.any() and undone.changed_bbox == bbox_of(B & ~A)
    redo = s.add_point(B_CLICK)
    np.testing.assert_array_equal(redo.mask, B & ~A)


def test_undo_restores_exactly_under_a_lock(model, known_masks):
    s = _session(model)
    s.add_point(A_CLICK)
    s.new_object()
    first = s.add_point(B_CLICK)  # unlocked: object 2 holds the overlap
    np.testing.assert_array_equal(first.mask, B)
    s.lock_object(1)
    known_masks[2] = _box((2, 14, 14), (14, 36, 36))
    second = s.add_point((8, 31, 31))  # the new block is cut by object 1, old overlap voxels included
    np.testing.assert_array_equal(second.mask, known_masks[2] & ~A)
    assert second.changed_bbox == bbox_of(first.mask != second.mask)
    back = s.undo()
    np.testing.assert_array_equal(back.mask, B)
    assert back.changed_bbox == second.changed_bbox


def test_label_map_paints_locked_objects_last(model, known_masks):
    s = _session(model)
    _two_objects(s, lock_first=False)
    assert (s.label_map()[OVERLAP] == 2).all()
    s.lock_object(1)
    labels = s.label_map()
    assert (labels[OVERLAP] == 1).all() and (labels[B & ~A] == 2).all()
    s.lock_object(2)  # both locked: id order among them again
    assert (s.label_map()[OVERLAP] == 2).all()
    s.unlock_object(2)
    s.lock_object(1, locked=False)
    assert s.locked_objects == []
    assert (s.label_map()[OVERLAP] == 2).all()


def test_the_locked_object_itself_can_still_be_prompted(model, known_masks):
    s = _session(model)
    _two_objects(s, lock_first=False)  # object 2 (unlocked) holds the overlap
    s.select_object(1)
    s.lock_object(1)
    pred = s.add_point(A_CLICK)
    np.testing.assert_array_equal(pred.mask, A)  # a lock protects from the others only


def test_others_negative_keeps_every_other_object_out(model, known_masks):
    s = _session(model, others_negative=True)
    pred = _two_objects(s, lock_first=False)
    np.testing.assert_array_equal(pred.mask, B & ~A)
    s.select_object(1)
    again = s.add_point(A_CLICK)  # object 1 now leaves object 2's voxels out
    np.testing.assert_array_equal(again.mask, A & ~(B & ~A))
    s.others_negative = False  # a plain attribute
    s.select_object(2)
    np.testing.assert_array_equal(s.add_point(B_CLICK).mask, B)


def test_the_clean_up_does_not_fill_a_locked_object_back_in(model, known_masks):
    inner = _box((6, 14, 14), (10, 20, 20))
    known_masks[1], known_masks[2] = inner, _box((2, 8, 8), (14, 28, 28))
    s = _session(model, clean=True)
    s.add_point((8, 16, 16))
    s.lock_object(1)
    s.new_object()
    pred = s.add_point((8, 10, 10))  # a hole where object 1 is: the clean-up would fill it
    np.testing.assert_array_equal(pred.mask, known_masks[2] & ~inner)
    s.unlock_object(1)
    np.testing.assert_array_equal(s.add_point((8, 10, 10)).mask, known_masks[2])


def test_a_mask_prompt_is_cut_too(model, known_masks):
    s = _session(model)
    s.add_point(A_CLICK)
    s.lock_object(1)
    s.new_object()
    pred = s.add_mask(B)
    np.testing.assert_array_equal(pred.mask, B & ~A)
    np.testing.assert_array_equal(s.undo().mask, np.zeros(SHAPE, bool))


def test_a_background_refinement_lands_under_the_policy(model, known_masks):
    pytest.importorskip("skimage")
    from voxprompt.refine import RefineConfig

    s = Session(model, refine=RefineConfig(band_mm=2.0), clean=False, refine_background=True)
    s.set_image((A | B).astype(np.float32) * 200 + np.random.default_rng(0).normal(0, 5, SHAPE))
    s.add_point(A_CLICK)
    s.wait_refined()
    s.lock_object(1)
    locked = s.label_map() == 1
    s.new_object()
    fast = s.add_point(B_CLICK)
    assert not (fast.mask & locked).any()
    done = s.wait_refined()
    final = s.mask
    assert final.any() and not (final & locked).any()
    if done is not None:
        assert not (done.mask & locked).any()
    s.select_object(1)
    np.testing.assert_array_equal(s.mask, locked)


def test_a_refinement_landing_after_a_switch_protects_the_others_of_its_own_object(model, known_masks,
                                                                                    monkeypatch):
    """Object 2's refinement lands while object 1 (locked) is current: it is still cut by object 1."""
    import threading

    go = threading.Event()

    def held(self, region, block, clicks, cancel=None):  # the refinement returns the model's block, late
        assert go.wait(30)
        return block

    monkeypatch.setattr(Session, "_refined", held)
    s = Session(model, refine=True, clean=False, refine_background=True)
    s.set_image(np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32))
    go.set()
    s.add_point(A_CLICK)
    s.wait_refined()
    s.lock_object(1)
    go.clear()
    s.new_object()
    s.add_point(B_CLICK)
    s.select_object(1)  # while object 2's refinement still runs
    go.set()
    done = s.wait_refined()
    assert done is not None and done.object_id == 2
    np.testing.assert_array_equal(done.mask, B & ~A)
    np.testing.assert_array_equal(s.mask, A)  # object 1, current, untouched


def test_locking_an_unknown_object_is_a_usage_error(model):
    s = Session(model, refine=False, clean=False)
    with pytest.raises(UsageError, match="no image"):
        s.lock_object(1)
    s.set_image(np.zeros(SHAPE, np.float32))
    with pytest.raises(UsageError, match=r"no object 7; objects are \[1\]"):
        s.lock_object(7)
    with pytest.raises(UsageError, match="object id must be an integer"):
        s.lock_object("1")
    s.lock_object(1)
    s.set_image(np.zeros(SHAPE, np.float32))  # a new image starts without locks
    assert s.locked_objects == []


def test_session2d_mask_prompts_follow_the_policy(tiny_sam):
    from voxprompt.session.image2d import Session2D

    g, model, _ = tiny_sam
    s = Session2D(model)
    s.set_image(g["image_raw"].numpy())
    h, w = s.shape
    a = np.zeros((h, w), bool)
    a[: h // 2, : w // 2] = True
    b = np.zeros((h, w), bool)
    b[h // 4:, w // 4:] = True
    s.add_mask(a)
    s.new_object()
    np.testing.assert_array_equal(s.add_mask(b).mask, b)  # no lock: the overlap is taken
    s.lock_object(1)
    np.testing.assert_array_equal(s.add_mask(b).mask, b & ~a)
    pred = s.add_point((w - 2, h - 2))
    assert not (pred.mask & a).any()
    assert (s.label_map()[a] == 1).all()


def test_slice_session_writes_follow_the_policy():
    from fake2d import BrightInBox, tube_volume

    from voxprompt.session.propagate import PropagationConfig
    from voxprompt.session.slices import SliceSession

    vol, tube = tube_volume()
    s = SliceSession(BrightInBox(), axis=0, config=PropagationConfig(box_margin=2))
    s.set_image(vol)
    click = (15, 32, int(20 + 0.8 * 15))
    s.add_point(click)
    s.new_object()
    assert np.array_equal(s.add_point(click).mask, tube)  # no lock: object 2 takes the tube too
    s.undo()
    s.lock_object(1)
    pred = s.add_point(click)
    assert not pred.mask.any() and not s.mask.any()  # every slice written is cut by object 1
    assert (s.label_map()[tube] == 1).all()
    s.undo()
    s.unlock_object(1)
    s.others_negative = True
    assert not s.add_point(click).mask.any()
