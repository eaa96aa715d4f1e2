"""Session mechanics on the tiny random SAM-Med3D: geometry, caching, undo, errors (not accuracy)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_golden
from golden_configs import sam_med3d_config

import voxprompt
from voxprompt.errors import PromptError, UsageError
from voxprompt.io.image import Image
from voxprompt.preprocess import extract_roi_label, extract_roi_labels, postprocess_mask, preprocess_roi, roi_around
from voxprompt.session import CenteredRoiPlanner, Prediction, Session, from_slicer_ijk, image_from_array, to_slicer_ijk

SHAPE = (12, 40, 36)
SPACING_ZYX = (3.0, 0.8, 0.9)


@pytest.fixture(scope="module")
def model():
    g = load_golden("sam_med3d_tiny.pt")
    return voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, SHAPE).astype(np.float32)
    arr[3:9, 10:30, 10:26] += 80
    return arr


class Spy:
    """Counts encode calls and records decode arguments of a (shared) model."""

    def __init__(self, model, monkeypatch):
        self.encodes, self.decodes = 0, []
        enc, dec = model.encode, model.decode

        def encode(x):
            self.encodes += 1
            return enc(x)

        def decode(emb, points=None, mask_input=None, multimask=False, **kw):
            self.decodes.append((points[0].clone(), points[1].clone(), mask_input.clone()))
            return dec(emb, points=points, mask_input=mask_input, multimask=multimask, **kw)

        monkeypatch.setattr(model, "encode", encode)
        monkeypatch.setattr(model, "decode", decode)


def _session(model, volume, **kw) -> Session:
    s = Session(model, **kw)
    s.set_image(volume, spacing=SPACING_ZYX)
    return s


def test_prompt_before_image_is_refused(model):
    s = Session(model)
    with pytest.raises(UsageError, match="set_image"):
        s.add_point((1, 2, 3))
    with pytest.raises(UsageError):
        s.label_map()


def test_first_click_matches_the_official_pipeline(model, volume):
    s = _session(model, volume)
    p = s.add_point((6, 20, 18))
    assert isinstance(p, Prediction)
    assert p.mask.shape == SHAPE and p.mask.dtype == np.bool_
    assert p.probabilities.shape == (128, 128, 128) and p.probabilities.dtype == np.float32
    assert isinstance(p.score, float) and p.object_id == 1
    # by hand: ROI centred on the click, z-scored crop, click at the ROI voxel, zero mask_input
    img = s.image
    roi = roi_around(img, (6, 20, 18))
    assert tuple(p.roi.start) == tuple(roi.start)
    with torch.inference_mode():
        emb = model.encode(torch.from_numpy(preprocess_roi(img, roi))[None, None])
        c = np.floor(roi.from_original_index(np.array([6.0, 20, 18])) + 0.5)
        low, iou = model.decode(emb, points=(torch.tensor(c[None, None], dtype=torch.float32),
                                             torch.tensor([[1]])), mask_input=torch.zeros(1, 1, 32, 32, 32))
        prob = torch.sigmoid(F.interpolate(low, size=(128,) * 3, mode="trilinear", align_corners=False))[0, 0]
    expected = postprocess_mask((prob > 0.5).numpy().astype(np.uint8), roi, img).astype(bool)
    np.testing.assert_array_equal(p.mask, expected)
    np.testing.assert_allclose(p.probabilities, prob.numpy(), atol=1e-6)
    assert p.score == pytest.approx(float(iou[0, 0]), abs=1e-6)


def test_refinement_reuses_embedding_and_accumulates_clicks(model, volume, monkeypatch):
    spy = Spy(model, monkeypatch)
    s = _session(model, volume)
    s.add_point((6, 20, 18))
    assert spy.encodes == 1
    assert torch.count_nonzero(spy.decodes[0][2]) == 0  # first click: zero mask_input
    first_logits = s._obj.logits.clone()
    p2 = s.add_point((5, 22, 15), positive=False)
    p3 = s.add_point((7, 18, 20))
    assert spy.encodes == 1  # same ROI: decoder only
    coords, labels, mask_in = spy.decodes[1]
    assert coords.shape == (1, 2, 3) and labels.tolist() == [[1, 0]]
    torch.testing.assert_close(mask_in, first_logits)  # previous raw logits
    assert spy.decodes[2][1].tolist() == [[1, 0, 1]]
    assert p2.roi is p3.roi
    assert [k for k, _ in s.prompts] == ["point"] * 3
    assert s.prompts[1] == ("point", ((5, 22, 15), False))


def test_click_outside_roi_opens_a_new_roi_and_keeps_the_rest(model, monkeypatch):
    spy = Spy(model, monkeypatch)
    arr = np.random.default_rng(1).normal(50, 10, (8, 24, 240)).astype(np.float32)  # 240 mm along x
    s = Session(model)
    s.set_image(arr, spacing=(4.0, 1.0, 1.0))
    p1 = s.add_point((4, 12, 10))
    before = p1.mask.copy()
    p2 = s.add_point((4, 12, 230))
    assert spy.encodes == 2 and tuple(p2.roi.start) != tuple(p1.roi.start)
    assert spy.decodes[1][0].shape[1] == 1  # the new ROI starts over with that click alone
    assert torch.count_nonzero(spy.decodes[1][2]) == 0
    cover = postprocess_mask(np.ones((128,) * 3, np.uint8), p2.roi, s.image).astype(bool)
    assert cover.any() and not cover.all()
    np.testing.assert_array_equal(p2.mask[~cover], before[~cover])
    if p2.changed_bbox is not None:
        changed = np.zeros_like(cover)
        changed[p2.changed_bbox] = True
        assert not (p2.mask != before)[~changed].any()
    # the first click's ROI again: its embedding is still cached
    s.add_point((4, 12, 10), positive=False)
    assert spy.encodes == 2


def test_undo_restores_exact_state_and_reset_clears(model, volume):
    s = _session(model, volume)
    m0 = s.mask.copy()
    p1 = s.add_point((6, 20, 18))
    m1, l1, pr1 = p1.mask.copy(), s._obj.logits.clone(), s.prompts
    s.add_point((6, 10, 8), positive=False)
    s.add_box((4, 12, 12), (8, 28, 24))
    np.testing.assert_array_equal(p1.mask, m1)  # earlier predictions are snapshots
    s.undo()
    s2 = s.undo()
    np.testing.assert_array_equal(s2.mask, m1)
    np.testing.assert_array_equal(s.mask, m1)
    torch.testing.assert_close(s._obj.logits, l1, rtol=0, atol=0)
    assert s.prompts == pr1 and s2.score == pytest.approx(p1.score)
    np.testing.assert_array_equal(s.undo().mask, m0)
    with pytest.raises(UsageError, match="nothing to undo"):
        s.undo()
    s.add_point((6, 20, 18))
    r = s.reset()
    assert not r.mask.any() and s.prompts == [] and r.roi is None and not s.can_undo
    with pytest.raises(ValueError):
        s.mask[0, 0, 0] = True  # read-only view


def test_masks_handed_out_stay_and_dropped_ones_are_reused(model, volume):
    """A mask someone still holds (a Prediction, a view) is copied before the next change; one
    nobody holds is written in place (no full-volume copy per click). Both through undo too."""
    s = _session(model, volume)
    s.add_point((6, 20, 18))  # result dropped
    buf = s._obj.mask.__array_interface__["data"][0]
    p = s.add_point((6, 10, 8), positive=False)  # nothing held the old mask: written in place
    changed = p.changed_bbox is not None
    assert not changed or s._obj.mask.__array_interface__["data"][0] == buf
    held, snap = p.mask, p.mask.copy()
    s.add_point((6, 24, 20))
    np.testing.assert_array_equal(held, snap)  # still held: the session copied first
    view = s.mask[2:5]
    before = view.copy()
    s.undo()
    np.testing.assert_array_equal(view, before)
    del p, held, view
    buf = s._obj.mask.__array_interface__["data"][0]
    r = s.undo()  # nothing holds it now: in place
    assert r.changed_bbox is None or s._obj.mask.__array_interface__["data"][0] == buf
    assert changed  # the in-place check above was not vacuous


def test_box_prompts_and_clipping(model, volume, monkeypatch):
    spy = Spy(model, monkeypatch)
    s = _session(model, volume)
    before = s.mask.copy()
    p = s.add_box((3, 10, 10), (9, 30, 26))
    coords, labels, mask_in = spy.decodes[-1]
    assert labels[0, 0] == 1 and (labels[0, 1:] == 0).all() and labels.shape[1] == 7  # centre + 6 faces
    outside = np.ones(SHAPE, bool)
    outside[3:9, 10:30, 10:26] = False
    assert not p.mask[outside].any()
    np.testing.assert_array_equal(p.mask[outside], before[outside])
    # a 2D box on one slice of a volume asks for the 3D object: in-plane negatives only; its own slice is
    # clipped to the rectangle, the other slices take the result as it is
    s.reset()
    p2 = s.add_box((6, 10, 10), (7, 30, 26))
    assert spy.decodes[-1][1].shape[1] == 5
    assert p2.mask[:6].any() or p2.mask[7:].any()
    ring = np.ones(SHAPE[1:], bool)
    ring[10:30, 10:26] = False
    assert not p2.mask[6][ring].any() and p2.mask[6].any()


def test_add_mask_becomes_the_prior(model, volume, monkeypatch):
    spy = Spy(model, monkeypatch)
    s = _session(model, volume)
    prior = np.zeros(SHAPE, np.uint8)
    prior[4:8, 14:26, 12:24] = 3
    p = s.add_mask(prior)
    np.testing.assert_array_equal(p.mask, prior != 0)
    assert p.score is None and spy.encodes == 0 and p.changed_bbox == (slice(4, 8), slice(14, 26), slice(12, 24))
    s.add_point((6, 20, 18))
    mask_in = spy.decodes[-1][2]
    assert spy.decodes[-1][0].shape[1] == 1  # only the click, plus the prior as mask_input
    assert mask_in.max() == pytest.approx(10.0) and mask_in.min() == pytest.approx(-10.0)
    centre = p.roi.from_original_index(np.array([6.0, 20, 18])) / 4
    assert mask_in[0, 0][tuple(int(v) for v in centre)] > 0
    with pytest.raises(PromptError, match="shape"):
        s.add_mask(np.zeros((3, 3, 3)))


def test_multi_object_label_map(model, volume):
    s = _session(model, volume)
    a = np.zeros(SHAPE, bool)
    a[2:8, 5:20, 5:20] = True
    b = np.zeros(SHAPE, bool)
    b[4:10, 15:30, 15:30] = True
    s.add_mask(a)
    assert s.new_object() == 2 and s.object_id == 2
    s.add_mask(b)
    lm = s.label_map()
    assert lm.dtype == np.uint8 and set(np.unique(lm)) == {0, 1, 2}
    assert (lm[b] == 2).all() and (lm[a & ~b] == 1).all()  # later objects win overlaps
    s.select_object(1)
    np.testing.assert_array_equal(s.mask, a)
    assert s.object_ids == [1, 2]


@pytest.mark.parametrize("call, match", [
    (lambda s: s.add_point((12, 0, 0)), r"outside the volume of shape \(12, 40, 36\)"),
    (lambda s: s.add_point((-1, 0, 0)), "outside"),
    (lambda s: s.add_point((1, 2)), "3 coordinates"),
    (lambda s: s.add_point((1, 2, float("nan"))), "finite"),
    (lambda s: s.add_box((2, 2, 2), (2, 5, 5)), "empty"),
    (lambda s: s.add_box((2, 2, 2), (5, 50, 5)), "outside"),
    (lambda s: s.add_box((2, 2), (5, 5)), "3 coordinates"),
    (lambda s: s.add_mask(np.zeros((12, 40))), "shape"),
])
def test_invalid_prompts_raise_typed_errors(model, volume, call, match):
    s = _session(model, volume)
    with pytest.raises(PromptError, match=match):
        call(s)
    assert not s.mask.any() and not s.can_undo


def test_one_slice_volume_is_padded(model, volume, caplog):
    s = Session(model)
    with caplog.at_level(logging.INFO, logger="voxprompt.session"):
        s.set_image(volume[5:6], spacing=SPACING_ZYX)
    assert "2D model" in caplog.text
    p = s.add_point((0, 20, 18))
    assert p.mask.shape == (1, 40, 36)


def test_world_round_trip_on_lps_anisotropic_image(model):
    theta = np.deg2rad(20)
    direction = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    img = Image(np.zeros((10, 20, 30), np.float32), spacing=(0.7, 1.1, 3.5), origin=(12.0, -40.0, 7.5),
                direction=direction)
    s = Session(model)
    s.set_image(img)
    ijk = (25, 4, 8)  # what Slicer shows
    zyx = from_slicer_ijk(ijk)
    assert zyx == (8, 4, 25) and to_slicer_ijk(zyx) == ijk
    lps = s.point_to_world(zyx)
    expected = np.array(img.origin) + direction @ (np.array(ijk) * np.array(img.spacing))
    np.testing.assert_allclose(lps, expected, atol=1e-9)
    np.testing.assert_allclose(s.point_from_world(lps), zyx, atol=1e-9)
    ras = lps * np.array([-1, -1, 1])
    np.testing.assert_allclose(s.point_from_world(ras, frame="RAS"), zyx, atol=1e-9)
    with pytest.raises(PromptError):
        s.point_from_world((1.0, 2.0))


def test_array_with_affine_keeps_callers_axis_order():
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])  # nibabel-style
    img = image_from_array(np.zeros((30, 20, 8), np.float32), affine=affine)
    idx = np.array([3.0, 7.0, 2.0])
    np.testing.assert_allclose(img.index_to_world(idx, frame="RAS"), affine[:3, :3] @ idx + affine[:3, 3])
    with pytest.raises(UsageError):
        image_from_array(np.zeros((3, 3, 3)), spacing=(1, 1, 1), affine=affine)
    assert isinstance(CenteredRoiPlanner().size, int)


# ----------------------------------------------------------------------------- clean-up and confidence
FULL = tuple(slice(0, n) for n in SHAPE)


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _results(monkeypatch, s: Session, blocks: list, score=None) -> None:
    """The model's result of each next call, pasted on the image grid, becomes the next (region, block)
    of ``blocks`` (then the refinement and clean-up run on it as usual); ``score`` fixes the IoU."""
    it = iter(blocks)
    monkeypatch.setattr(s, "_pasted", lambda mask, roi, mask_roi, cache=True: next(it))
    if score is not None:
        decode = s._decode
        monkeypatch.setattr(s, "_decode", lambda *a: (decode(*a)[0], score))


def _sessions(model, volume, **kw) -> tuple[Session, Session]:
    out = []
    for clean in (True, False):
        s = Session(model, clean=clean, low_confidence_iou=0.0, **kw)
        s.set_image(volume, spacing=SPACING_ZYX)
        out.append(s)
    return out[0], out[1]


def test_clean_up_keeps_the_clicked_blob_fills_its_hole_and_undoes_exactly(model, volume, monkeypatch):
    a, b = _box((2, 5, 5), (9, 15, 15)), _box((3, 25, 25), (6, 30, 30))
    hole = _box((4, 8, 8), (7, 12, 12))
    raw = (a & ~hole) | b  # what the model returned: two blobs, one with a hole
    on, off = _sessions(model, volume)
    assert on.clean and not off.clean and not Session(model).clean  # official models: off by default
    for s in (on, off):
        _results(monkeypatch, s, [(FULL, raw.copy()), (FULL, raw.copy())])
    p = on.add_point((3, 6, 6))
    np.testing.assert_array_equal(p.mask, a)  # only the clicked blob, its hole filled
    assert not p.low_confidence and p.warning is None
    np.testing.assert_array_equal(off.add_point((3, 6, 6)).mask, raw)  # clean=False keeps everything
    first, logits, prompts = p.mask.copy(), on._obj.logits.clone(), on.prompts
    np.testing.assert_array_equal(on.add_point((4, 27, 27)).mask, a | b)  # a click in B keeps it too
    np.testing.assert_array_equal(on.undo().mask, first)  # undo restores exactly
    _results(monkeypatch, on, [(FULL, raw.copy())])
    np.testing.assert_array_equal(on.add_point((5, 9, 9), positive=False).mask, a & ~hole)  # a carved hole stays
    on.undo()
    torch.testing.assert_close(on._obj.logits, logits, rtol=0, atol=0)
    assert on.prompts == prompts
    assert not on.undo().mask.any()


def test_clean_up_keeps_what_continues_the_mask_outside_the_region(model, volume, monkeypatch):
    """A result pasted over part of the image keeps components that touch the object's mask just
    outside that region (multi-ROI, auto-zoom), the clicked ones, and nothing else."""
    s, _ = _sessions(model, volume)
    left, right = (slice(0, 12), slice(0, 20), slice(0, 36)), (slice(0, 12), slice(20, 40), slice(0, 36))
    a = _box((3, 5, 5), (8, 20, 15))  # reaches the left region's face at y = 19
    c = _box((3, 20, 5), (8, 24, 15))  # continues a across the face
    d, e = _box((3, 30, 20), (6, 34, 25)), _box((8, 30, 2), (10, 34, 6))
    _results(monkeypatch, s, [(left, a[left]), (right, (c | d | e)[right])])
    s.add_point((5, 10, 10))
    p = s.add_point((4, 31, 22))  # clicks d
    np.testing.assert_array_equal(p.mask, a | c | d)  # e: no click, not connected: removed


def test_box_whose_centre_misses_the_object_keeps_the_nearest_part(model, volume, monkeypatch):
    s, _ = _sessions(model, volume)
    yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
    ring2d = (np.hypot(yy - 20, xx - 18) >= 4) & (np.hypot(yy - 20, xx - 18) <= 7)
    ring = np.zeros(SHAPE, bool)
    ring[2:9] = ring2d  # a tube around the box centre (6, 20, 18), open at both ends
    speck = _box((9, 34, 29), (11, 36, 31))
    _results(monkeypatch, s, [(FULL, ring | speck)])
    p = s.add_box((1, 3, 3), (11, 37, 33))
    np.testing.assert_array_equal(p.mask, ring)  # the nearest component, not an empty mask
    assert p.warning is None  # the box holds a result (the centre is not a click)


def test_add_mask_is_never_cleaned_and_its_parts_stay(model, volume, monkeypatch):
    s, _ = _sessions(model, volume)
    a, b = _box((2, 5, 5), (9, 15, 15)), _box((3, 25, 25), (6, 30, 30))
    user = (a & ~_box((4, 8, 8), (7, 12, 12))) | b
    np.testing.assert_array_equal(s.add_mask(user).mask, user)  # the user's mask is theirs: holes, parts
    speck = _box((9, 34, 2), (11, 36, 4))
    _results(monkeypatch, s, [(FULL, user | speck)])
    np.testing.assert_array_equal(s.add_point((3, 6, 6)).mask, a | b)  # b overlaps the user's mask


def test_low_confidence_flags(model, volume, monkeypatch):
    s = Session(model, clean=False, low_confidence_iou=0.5)
    s.set_image(volume, spacing=SPACING_ZYX)
    a, b = _box((2, 5, 5), (9, 15, 15)), _box((3, 25, 25), (6, 30, 30))
    _results(monkeypatch, s, [(FULL, a), (FULL, b), (FULL, np.zeros(SHAPE, bool)), (FULL, a)], score=0.31)
    p = s.add_point((3, 6, 6))
    assert p.low_confidence and p.warning == "low confidence: predicted IoU 0.31 < 0.5"
    s.low_confidence_iou = 0.3
    p = s.add_point((3, 6, 6))  # the result is b: the click is not in it
    assert p.low_confidence and p.warning == "the positive click at (3, 6, 6) is outside the result"
    p = s.add_point((4, 27, 27))
    assert p.warning == "empty mask after a positive click" and not p.mask.any()
    p = s.add_point((8, 30, 30), positive=False)  # the last positive click (4, 27, 27) is outside a
    assert p.warning == "the positive click at (4, 27, 27) is outside the result"
    assert s.undo().warning == "empty mask after a positive click"  # the flag follows the state
    assert s.add_mask(a).warning is None and s.reset().warning is None
    with pytest.raises(UsageError, match="low_confidence_iou"):
        Session(model, low_confidence_iou=1.5)
    with pytest.raises(UsageError, match="clean"):
        Session(model, clean="no")


def test_shipped_default_model_cleans_by_default():
    s = Session()
    assert s.clean and s.refine is not None and s.low_confidence_iou == voxprompt.session.LOW_CONFIDENCE_IOU
    assert not Session(s.model, clean=False).clean


def test_carry_over_starts_a_new_roi_from_the_objects_mask_and_clicks(model, monkeypatch):
    spy = Spy(model, monkeypatch)
    arr = np.random.default_rng(1).normal(50, 10, (8, 24, 240)).astype(np.float32)  # 240 mm along x
    bar = np.zeros(arr.shape, bool)
    bar[2:6, 8:16, 5:235] = True
    s = Session(model, carry_over=True)
    s.set_image(arr, spacing=(4.0, 1.0, 1.0))
    s.add_mask(bar)
    s.add_point((4, 12, 200))  # in the mask's ROI
    before, old_roi = s.mask.copy(), s._obj.roi
    p = s.add_point((4, 12, 236))  # beyond it: a new ROI that still holds part of the bar and the last click
    assert tuple(p.roi.start) != tuple(old_roi.start)
    coords, labels, mask_in = spy.decodes[-1]
    assert labels.tolist() == [[1, 1]]  # the earlier click that falls in the new ROI, then this one
    expected = [np.floor(p.roi.from_original_index(np.array(c, float)) + 0.5) for c in ((4, 12, 200), (4, 12, 236))]
    np.testing.assert_array_equal(coords[0].numpy(), np.stack(expected))
    torch.testing.assert_close(mask_in, s.predictor.prior(before, p.roi))  # the mask shown, as the prior
    assert mask_in.max() > 0 and mask_in.min() < 0

    s2 = Session(model, carry_over=True)
    s2.set_image(arr, spacing=(4.0, 1.0, 1.0))
    near = np.zeros(arr.shape, bool)
    near[2:6, 8:16, :30] = True
    s2.add_mask(near)  # a mask the far ROI does not reach
    s2.add_point((4, 12, 236))
    assert spy.decodes[-1][1].tolist() == [[1]] and torch.count_nonzero(spy.decodes[-1][2]) == 0  # official start


def test_carry_over_and_box_negatives_follow_the_models_stored_setting(model):
    from voxprompt.session.volume import resolve_model_setting

    default_cfg = type("Cfg", (), {"refine_band_mm": 9.0})()
    assert Session(model).carry_over is False  # an official model: published behaviour
    assert Session(model).box_negatives is True
    assert resolve_model_setting("carry_over", None, default_cfg) is True  # the default model's
    assert resolve_model_setting("box_negatives", None, default_cfg, default_model_value=False) is False
    for name in ("carry_over", "box_negatives"):
        for value in (True, False):
            assert getattr(Session(model, **{name: value}), name) is value
        with pytest.raises(UsageError, match=name):
            Session(model, **{name: "yes"})


def test_a_box_without_negatives_is_its_centre_click(model, volume, monkeypatch):
    spy = Spy(model, monkeypatch)
    s = _session(model, volume, box_negatives=False)
    p = s.add_box((3, 10, 10), (9, 30, 26))
    assert spy.decodes[-1][1].tolist() == [[1]]
    outside = np.ones(SHAPE, bool)
    outside[3:9, 10:30, 10:26] = False
    assert not p.mask[outside].any()  # still clipped to the box


def _c_shape() -> tuple[np.ndarray, np.ndarray]:
    """A C-shaped slab (open towards +x) whose bounding box's centre lies in its opening: (image, mask)."""
    c = np.zeros((20, 64, 64), bool)
    c[4:16, 8:56, 8:56] = True
    c[4:16, 22:42, 22:56] = False
    img = np.where(c, 200.0, 50.0).astype(np.float32) + np.random.default_rng(3).normal(0, 5, c.shape)
    return img.astype(np.float32), c


def _oracle(monkeypatch, s: Session, truth: np.ndarray) -> None:
    """Every decode returns the (low-res) truth if its first click lies in it, else nothing."""
    def decode(roi, points_roi, logits, multimask=False):
        label = extract_roi_label(s.image, truth, roi)
        p = tuple(int(v) for v in points_roi[0][0])
        empty = torch.full((1, 1) + (s.predictor.low_res_size,) * 3, -10.0)
        return (s.predictor.label_prior(label) if label[p] else empty), 0.9
    monkeypatch.setattr(s, "_decode", decode)


def test_a_click_refines_and_cleans_only_around_what_can_change(model, monkeypatch):
    """A small object in a large ROI: the refinement and clean-up see its surroundings only, and every
    result equals that of pasting over the ROI's whole footprint."""
    truth = np.zeros((30, 90, 90), bool)
    truth[10:16, 20:34, 50:62] = True
    img = (np.where(truth, 180.0, 60.0) + np.random.default_rng(5).normal(0, 8, truth.shape)).astype(np.float32)
    masks, regions = {}, []
    for tight in (True, False):
        s = Session(model, refine=True, clean=True, low_confidence_iou=0.0)
        s.set_image(img, spacing=(1.5, 1.5, 1.5))
        _oracle(monkeypatch, s, truth)
        if tight:
            refined = s._refined
            monkeypatch.setattr(s, "_refined", lambda region, *a, f=refined: (regions.append(region), f(region, *a))[1])
        else:
            monkeypatch.setattr(s, "_pasted", lambda mask, roi, mask_roi, cache=True, s=s:
                                s.predictor.paste(mask, roi, mask_roi, cache))
        preds = [s.add_point((12, 25, 55)), s.add_point((13, 30, 58), positive=False), s.add_point((11, 22, 52))]
        masks[tight] = [p.mask for p in preds] + [s.undo().mask]
    assert masks[True][0].any()
    for a, b in zip(masks[True], masks[False]):
        np.testing.assert_array_equal(a, b)
    assert len(regions) == 3 and all(np.prod([r.stop - r.start for r in reg]) < truth.size / 3 for reg in regions)


def _stubborn(monkeypatch, s: Session, parts: np.ndarray, alone_only: bool) -> None:
    """A model that follows its prior and ignores new clicks; without a prior it returns the parts
    (labels of ``parts``) holding its positive clicks, or only the first click's with ``alone_only``."""
    def decode(roi, points_roi, logits, multimask=False):
        if logits is not None and bool((logits > 0).any()):
            return logits, 0.9
        labels = extract_roi_labels(s.image, parts, roi)
        hit = [int(labels[tuple(int(v) for v in p)]) for p, lab in points_roi if lab]
        keep = np.isin(labels, [h for h in hit[:1 if alone_only else None] if h])
        return s.predictor.label_prior(keep), 0.9
    monkeypatch.setattr(s, "_decode", decode)


@pytest.mark.parametrize("alone_only", [False, True])
def test_retry_missed_decodes_again_when_a_positive_click_is_left_out(model, monkeypatch, alone_only):
    parts = np.zeros((20, 64, 64), np.int32)
    parts[6:14, 10:26, 10:26], parts[6:14, 38:54, 38:54] = 1, 2
    img = np.where(parts > 0, 200.0, 50.0).astype(np.float32)
    for retry in (False, True):
        s = Session(model, retry_missed=retry, refine=False, clean=True, low_confidence_iou=0.0)
        s.set_image(img, spacing=(1.5, 1.5, 1.5))
        _stubborn(monkeypatch, s, parts, alone_only)
        first = s.add_point((10, 18, 18))
        assert first.mask[10, 18, 18] and not first.mask[10, 46, 46]
        p = s.add_point((10, 46, 46))
        if not retry:  # the prior wins: the click is left out, and flagged
            np.testing.assert_array_equal(p.mask, first.mask)
            assert "outside the result" in p.warning
            continue
        assert p.mask[10, 46, 46] and p.warning is None
        assert p.mask[10, 18, 18]  # the retry adds to the first result
        q = s.add_point((10, 12, 12), positive=False)  # a negative click is never retried
        assert q.mask[10, 46, 46]


def _fixed(monkeypatch, s: Session, answers: list) -> None:
    """A model whose n-th decode returns the n-th of ``answers`` (full-size bool masks), whatever it is given."""
    calls = iter(answers)

    def decode(roi, points_roi, logits, multimask=False):
        return s.predictor.label_prior(extract_roi_label(s.image, next(calls), roi)), 0.9
    monkeypatch.setattr(s, "_decode", decode)


def test_monotone_clicks_a_positive_click_only_adds_and_a_negative_removes_only_what_it_touches(model, monkeypatch):
    shape = (20, 64, 64)  # the ROI (128 x 1.5 mm) covers it: each answer is pasted over the whole image
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[6:14, 8:32, 8:32] = True  # the first click's answer
    b[6:14, 20:44, 20:44] = True  # the second (positive) click's: moves the object
    c[:] = b
    c[6:14, 36:44, 36:44] = False  # the third (negative) click's: drops the first part and a far corner
    img = np.full(shape, 100.0, np.float32)
    runs = {}
    for monotone in (False, True):
        s = Session(model, refine=False, clean=False, low_confidence_iou=0.0, monotone_clicks=monotone)
        s.set_image(img, spacing=(1.5, 1.5, 1.5))
        _fixed(monkeypatch, s, [a, b, c])
        runs[monotone] = [s.add_point((10, 15, 15)).mask, s.add_point((10, 35, 35)).mask,
                          s.add_point((10, 11, 11), positive=False).mask, s.undo().mask]
    (a1, b1, c1, _), (a2, b2, c2, undone) = runs[False], runs[True]  # off: the model's answers as pasted
    assert (a1 & ~b1).any() and not c1[10, 40, 40] and not c1[10, 11, 11]  # the answers drop voxels
    np.testing.assert_array_equal(a2, a1)  # the first click has nothing to keep
    np.testing.assert_array_equal(b2, a1 | b1)  # nothing the first click settled is lost
    # the negative click takes away the dropped part it touches, not the far corner, and adds nothing
    assert not c2[10, 11, 11] and c2[10, 40, 40] and not (c2 & ~b2).any()
    from voxprompt.masks import component_at
    np.testing.assert_array_equal(c2, b2 & ~component_at(b2 & ~c1, (10, 11, 11)))
    np.testing.assert_array_equal(undone, b2)


def test_multimask_first_takes_the_best_multimask_output_on_a_first_click_only(model, monkeypatch):
    shape = (20, 64, 64)
    single, multi = np.zeros(shape, bool), np.zeros(shape, bool)
    single[6:14, 24:40, 24:40] = True  # a part
    multi[4:16, 12:52, 12:52] = True  # the whole: the multimask output the model scores higher
    img = np.full(shape, 100.0, np.float32)
    for on in (False, True):
        s = Session(model, refine=False, clean=False, low_confidence_iou=0.0, multimask_first=on)
        s.set_image(img, spacing=(1.5, 1.5, 1.5))
        calls = []

        def decode(roi, points_roi, logits, multimask=False, s=s, calls=calls):
            calls.append(multimask)
            label = extract_roi_label(s.image, multi if multimask else single, roi)
            return s.predictor.label_prior(label), 0.8 if multimask else 0.3
        monkeypatch.setattr(s, "_decode", decode)
        first = s.add_point((10, 32, 32))
        assert first.mask[10, 16, 16] == on and first.mask[10, 32, 32]
        assert first.score == pytest.approx(0.8 if on else 0.3)
        calls.clear()
        s.add_point((10, 16, 16))  # a second click: the single output, fed the first's logits
        assert calls == [False]
    other = Session(model, multimask_first=True)
    other.set_image(img, spacing=(1.5, 1.5, 1.5))
    monkeypatch.setattr(other, "_decode", lambda roi, pts, logits, multimask=False, s=other: (
        calls.append(multimask), (s.predictor.label_prior(extract_roi_label(s.image, single, roi)), 0.5))[1])
    calls.clear()
    other.add_point((10, 5, 5), positive=False)  # a negative first click is no ambiguous object
    assert calls == [False]
    with pytest.raises(UsageError, match="multimask_first"):
        Session(model, multimask_first="yes")


def test_monotone_clicks_default_follows_the_model():
    default = Session().model
    assert Session(default).monotone_clicks is True
    g = load_golden("sam_med3d_tiny.pt")
    official = voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))
    assert Session(official).monotone_clicks is False
    with pytest.raises(UsageError, match="monotone_clicks"):
        Session(default, monotone_clicks="yes")


def test_retry_missed_is_an_option():
    model = Session().model  # the default model too: one decode per click unless asked for
    assert Session(model).retry_missed is False
    assert Session(model, retry_missed=True).retry_missed is True
    with pytest.raises(UsageError, match="retry_missed"):
        Session(model, retry_missed="yes")


@pytest.mark.parametrize("one_slice", [True, False])
def test_box_search_finds_an_object_whose_box_centre_misses_it(model, monkeypatch, one_slice):
    img, c = _c_shape()
    lo, hi = ((10, 8, 8), (11, 56, 56)) if one_slice else ((4, 8, 8), (16, 56, 56))
    inside = tuple(slice(a, b) for a, b in zip(lo, hi))
    for search in (False, True):
        s = Session(model, box_search=search, box_negatives=False, clean=True, low_confidence_iou=0.0)
        s.set_image(img, spacing=(1.5, 1.5, 1.5))
        _oracle(monkeypatch, s, c)
        p = s.add_box(lo, hi)
        if not search:  # the centre (10, 32, 32) lies in the opening: nothing
            assert not p.mask[inside].any() and "empty mask inside the box" in p.warning
            continue
        got, want = p.mask[inside], c[inside]
        assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.85  # the C, kept by the clean-up
        p = s.add_point((10, 50, 15))  # later clicks refine from it as usual
        assert p.mask[10, 50, 15]


def test_box_seeds_are_the_centre_then_a_grid_on_the_boxs_slice():
    from voxprompt.session.strokes import box_seeds

    seeds = box_seeds(np.array([10, 8, 8]), np.array([11, 56, 56]), plane=0)
    assert seeds[0].tolist() == [10, 32, 32] and len(seeds) == 9
    assert all(q[0] == 10 for q in seeds)
    assert sorted({int(q[1]) for q in seeds}) == [20, 32, 44]
    assert len({tuple(q) for q in seeds}) == 9
    tiny = box_seeds(np.array([3, 5, 5]), np.array([4, 6, 7]), plane=0)  # 1 x 2 voxels: no room for a grid
    assert [q.tolist() for q in tiny] == [[3, 5, 6], [3, 5, 5]]


def test_box_search_is_an_option():
    model = Session().model  # the default model too: the centre click unless asked for
    assert Session(model).box_search is False
    assert Session(model, box_search=True).box_search is True
    with pytest.raises(UsageError, match="box_search"):
        Session(model, box_search=1)


def test_box_clip_of_a_one_slice_box_keeps_the_rest_of_its_slice():
    from voxprompt.session.volume import _Clip

    shape = (4, 6, 6)
    old = np.zeros(shape, bool)
    old[2, 0, 0] = old[0, 5, 5] = True
    block = np.ones(shape, bool)
    block[2, 5, 5] = False
    region = tuple(slice(0, n) for n in shape)
    clip = _Clip.of_box(np.array([2, 1, 1]), np.array([3, 4, 4]), shape)
    assert clip.plane == 0
    out = clip.apply(old, block, region)
    expected = block.copy()
    expected[2] = old[2]
    expected[2, 1:4, 1:4] = True
    np.testing.assert_array_equal(out, expected)
    # a region without the box's slice takes the block as it is
    part = (slice(0, 2), slice(0, 6), slice(0, 6))
    np.testing.assert_array_equal(clip.apply(old[part], block[part], part), block[part])
    # a 3D box, and a box on a one-slice image: the box clips on every axis
    for lo, hi, shp in (([1, 1, 1], [3, 4, 4], shape), ([0, 1, 1], [1, 4, 4], (1, 6, 6))):
        c = _Clip.of_box(np.array(lo), np.array(hi), shp)
        assert c.plane is None
        reg = tuple(slice(0, n) for n in shp)
        o = np.zeros(shp, bool)
        got = c.apply(o, np.ones(shp, bool), reg)
        assert got.sum() == np.prod(np.subtract(hi, lo))
