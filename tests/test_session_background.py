"""Boundary refinement after the fast mask (Session(refine_background=True), voxprompt.session.background)."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

import voxprompt
from voxprompt.models.zoo import SMALL_MED3D
from voxprompt.refine import RefineCancelled, RefineConfig, refine_mask
from voxprompt.session import Session

pytest.importorskip("skimage")

SPACING = (2.0, 1.0, 1.0)
CFG = RefineConfig(band_mm=3.0)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    grid = np.indices((24, 48, 48)).astype(float)
    gt = sum(((g - c) * s / r) ** 2 for g, c, r, s in zip(grid, (12, 24, 24), (14.0, 12.0, 9.0), SPACING)) <= 1.0
    image = 300.0 * gt + rng.normal(0.0, 40.0, gt.shape) + 100.0
    return image, gt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tiny = {**SMALL_MED3D.to_dict(), "img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "global_attn_indexes": [0], "prompt_embed_dim": 24, "decoder_num_heads": 2, "decoder_mlp_dim": 32,
            "iou_head_hidden_dim": 16, "mask_in_chans": 4, "roi_spacing_mm": 2.0}
    return voxprompt.load_model("voxprompt-med3d-small", pretrained=False, config=tiny)


@pytest.fixture
def fast_masks(monkeypatch, scene):
    """The model's pasted result replaced by a coarse, shifted copy of the object (shrunk after a
    negative click), so the fast masks are known and the refinement has something to do."""
    _, gt = scene
    coarse = np.roll(ndimage.binary_erosion(gt, iterations=2), 2, axis=2)

    def pasted(self, mask, roi, mask_roi, cache=True):
        negatives = sum(1 for kind, (_, pos) in ((k, d) for k, d in self._obj.prompts if k == "point") if not pos)
        block = ndimage.binary_erosion(coarse, iterations=negatives) if negatives else coarse
        return tuple(slice(0, n) for n in mask.shape), block.copy()

    monkeypatch.setattr(Session, "_pasted", pasted)
    return coarse


def _sessions(model, image):
    sync = Session(model, refine=CFG, clean=True)
    later = Session(model, refine=CFG, clean=True, refine_background=True)
    for s in (sync, later):
        s.set_image(image, spacing=SPACING)
    return sync, later


def test_background_refinement_ends_where_the_synchronous_one_does(model, scene, fast_masks):
    image, _ = scene
    sync, later = _sessions(model, image)
    expected = sync.add_point((12, 24, 24))
    fast = later.add_point((12, 24, 24))
    assert fast.refining and not expected.refining
    np.testing.assert_array_equal(fast.mask, fast_masks)  # the model's mask, at once
    assert not np.array_equal(expected.mask, fast.mask)  # the refinement has work to do here
    done = later.wait_refined()
    assert done is not None and not done.refining and not later.refining
    np.testing.assert_array_equal(done.mask, expected.mask)
    np.testing.assert_array_equal(later.mask, expected.mask)
    changed = np.zeros(fast.mask.shape, bool)
    changed[done.changed_bbox] = True
    assert not (fast.mask != done.mask)[~changed].any()  # changed_bbox: relative to the fast mask
    assert later.wait_refined() is None  # nothing pending any more
    # a second click, then undo: the same states as the synchronous session, step by step
    second = sync.add_point((12, 24, 33), positive=False)
    later.add_point((12, 24, 33), positive=False)
    np.testing.assert_array_equal(later.wait_refined().mask, second.mask)
    np.testing.assert_array_equal(later.undo().mask, sync.undo().mask)
    np.testing.assert_array_equal(later.undo().mask, sync.undo().mask)
    assert not later.mask.any()


def test_mask_shows_the_refined_result_once_it_is_ready(model, scene, fast_masks):
    image, _ = scene
    sync, later = _sessions(model, image)
    expected = sync.add_point((12, 24, 24)).mask
    later.add_point((12, 24, 24))
    later._job.wait()
    np.testing.assert_array_equal(later.mask, expected)
    np.testing.assert_array_equal(later.label_map() == 1, expected)


def test_a_new_prompt_cancels_a_running_refinement(model, scene, fast_masks, monkeypatch):
    image, _ = scene
    _, later = _sessions(model, image)
    started, seen = threading.Event(), []

    def slow(self, region, block, clicks, cancel=None):  # a solve that only ends when cancelled
        started.set()
        assert cancel is not None and cancel.wait(30)
        seen.append(cancel.is_set())
        raise RefineCancelled("cancelled")

    monkeypatch.setattr(Session, "_refined", slow)
    first = later.add_point((12, 24, 24))
    assert started.wait(30) and later.refining
    second = later.add_point((12, 24, 33), positive=False)  # returns although the first never finishes
    assert seen == [True] and second.refining
    np.testing.assert_array_equal(later.undo().mask, first.mask)  # the cancelled step keeps the model's mask
    assert not later.refining and later.wait_refined() is None


def test_a_refinement_applies_to_its_own_object(model, scene, fast_masks, monkeypatch):
    image, _ = scene
    sync, later = _sessions(model, image)
    gate, refined = threading.Event(), Session._refined

    def held(self, region, block, clicks, cancel=None):  # the background solve waits for the new object
        if self.refine_background:
            assert gate.wait(30)
        return refined(self, region, block, clicks, cancel)

    monkeypatch.setattr(Session, "_refined", held)
    expected = sync.add_point((12, 24, 24)).mask
    later.add_point((12, 24, 24))
    assert later.new_object() == 2  # a new object does not cancel object 1's refinement
    gate.set()
    done = later.wait_refined()
    assert done is not None and done.object_id == 1
    np.testing.assert_array_equal(done.mask, expected)
    assert not later.mask.any()  # object 2, the current one, is untouched
    later.select_object(1)
    np.testing.assert_array_equal(later.mask, expected)


def test_a_failed_refinement_keeps_the_fast_mask_and_says_so(model, scene, fast_masks, monkeypatch, caplog):
    image, _ = scene
    _, later = _sessions(model, image)

    def broken(self, region, block, clicks, cancel=None):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(Session, "_refined", broken)
    with caplog.at_level(logging.ERROR, logger="voxprompt.session.background"):
        fast = later.add_point((12, 24, 24))
        assert later.wait_refined() is None
    assert "refinement failed" in caplog.text
    np.testing.assert_array_equal(later.mask, fast.mask)


def test_refine_mask_stops_when_cancelled(scene):
    image, gt = scene
    coarse = np.roll(gt, 2, axis=2)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RefineCancelled):
        refine_mask(image, coarse, [((12, 24, 24), 1)], SPACING, CFG, cancel)
    cancel.clear()  # an event that is never set changes nothing
    np.testing.assert_array_equal(refine_mask(image, coarse, [((12, 24, 24), 1)], SPACING, CFG, cancel),
                                  refine_mask(image, coarse, [((12, 24, 24), 1)], SPACING, CFG))


def test_the_solver_checks_cancel_at_every_iteration(scene, monkeypatch):
    """Cancelled while CG runs (after its set-up), the solve stops at the next iteration."""
    from voxprompt.refine import walker

    image, gt = scene
    cancel = threading.Event()
    iterations = []
    original = walker.check_cancel

    def counting(event):
        iterations.append(1)
        if len(iterations) == 3:
            event.set()  # the user clicks again during the solve
        original(event)

    monkeypatch.setattr(walker, "check_cancel", counting)
    with pytest.raises(RefineCancelled):
        refine_mask(image, np.roll(gt, 2, axis=2), [((12, 24, 24), 1)], SPACING, RefineConfig(band_mm=3.0, grid_mm=0),
                    cancel)
    assert len(iterations) == 3
