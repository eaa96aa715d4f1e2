"""Session2D reproduces the official 2D predictors end to end from the raw image (tiny fixtures),
with undo, objects, multimask candidates, mask prompts and clear errors for bad 2D input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from voxprompt.errors import InputError, PromptError, UsageError
from voxprompt.session.image2d import Session2D


def _session(fixture, bgr: bool = False) -> tuple[dict, Session2D]:
    g, model, _ = fixture
    raw = g["image_raw"].numpy()
    s = Session2D(model)
    s.set_image(np.ascontiguousarray(raw[..., ::-1]) if bgr else raw)  # SAM-Med2D flips RGB -> BGR itself
    return g, s


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=atol)


def _run_cases(g: dict, s: Session2D, atol: float = 1e-5) -> dict:
    of, out = g["prompts"]["original_frame"], g["outputs"]
    a = s.add_box(of["box_xyxy"][0].tolist())
    _close(a.low_res, out["a_box"]["low_res_masks"], atol)
    assert np.mean(a.mask == out["a_box"]["masks"][0, 0].numpy()) > 0.999
    s.new_object()
    b = s.add_point(of["point_coords_1"][0].tolist())
    c = s.add_point(of["point_coords_2"][1].tolist(), positive=False)  # accumulates, feeds b back
    _close(c.low_res, out["c_two_points_with_mask"]["low_res_masks"], atol)
    assert np.mean(c.mask == out["c_two_points_with_mask"]["masks"][0, 0].numpy()) > 0.999
    return {"a": a, "b": b, "c": c}


def test_sam_official_predictor(tiny_sam):
    g, s = _session(tiny_sam)
    r = _run_cases(g, s)
    b, ref = r["b"], g["outputs"]["b_one_point"]
    # one point, no box: three candidates, the highest predicted IoU shown (SamPredictor default use)
    assert b.candidates.shape == (3, 200, 300)
    np.testing.assert_allclose(b.scores, ref["iou_predictions"][0].numpy(), atol=1e-5)
    assert np.mean(b.candidates == ref["masks"][0].numpy()) > 0.999
    assert b.selected == int(ref["iou_predictions"].argmax()) and b.score == pytest.approx(float(b.scores.max()))
    assert r["c"].candidates is None  # two points: a single mask


def test_sam_med2d_official_predictor(tiny_med2d):
    g, s = _session(tiny_med2d, bgr=True)
    r = _run_cases(g, s)  # case c only matches with sigmoid feedback of b
    _close(r["b"].low_res, g["outputs"]["b_one_point"]["low_res_masks"])
    assert r["a"].candidates is not None  # SAM-Med2D always decodes 3 and keeps the best IoU
    _close(torch.tensor(r["a"].score), g["outputs"]["a_box"]["iou_predictions"][0, 0])


def test_sam_unet_official_infer(tiny_unet):
    g, s = _session(tiny_unet)
    r = _run_cases(g, s, atol=1e-4)
    assert r["a"].score is None and r["a"].candidates is None
    with pytest.raises(PromptError, match="single mask"):
        s.add_point((10, 10), multimask=True)


def test_undo_objects_candidates_and_mask(tiny_sam):
    g, s = _session(tiny_sam)
    p1 = s.add_point((170, 90))
    first = s.mask.copy()
    other = (p1.selected + 1) % 3
    p2 = s.select_candidate(other)
    assert p2.selected == other and np.array_equal(s.mask, p1.candidates[other])
    s.undo()
    assert np.array_equal(s.mask, first)
    s.add_point((60, 160), positive=False)
    assert s.prompts == [("point", ((170.0, 90.0), True)), ("point", ((60.0, 160.0), False))]
    s.undo()
    assert np.array_equal(s.mask, first) and len(s.prompts) == 1
    oid = s.new_object()
    m = np.zeros((200, 300), bool)
    m[20:60, 30:90] = True
    pm = s.add_mask(m)
    assert oid == 2 and np.array_equal(pm.mask, m) and pm.score is None
    labels = s.label_map()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2} and (labels[30, 40] == 2)
    refined = s.add_point((50, 40))  # refines the mask prompt (fed as logits)
    assert refined.mask.shape == (200, 300)
    s.select_object(1)
    assert np.array_equal(s.mask, first)
    assert not s.mask.flags.writeable
    s.reset()
    assert not s.mask.any() and not s.can_undo
    with pytest.raises(UsageError, match="nothing to undo"):
        s.undo()
    with pytest.raises(UsageError, match="no object 7"):
        s.select_object(7)


def test_bad_2d_input(tiny_sam, tmp_path):
    _, model, _ = tiny_sam
    s = Session2D(model)
    with pytest.raises(UsageError, match="set_image"):
        s.add_point((1, 1))
    with pytest.raises(InputError, match="empty"):
        s.set_image(np.zeros((0, 10), np.uint8))
    with pytest.raises(InputError, match="4 channels"):
        s.set_image(np.zeros((20, 30, 4), np.uint8))
    PILImage.fromarray(np.zeros((20, 30, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="RGBA"):
        s.set_image(tmp_path / "rgba.png")
    s.set_image(np.random.default_rng(0).integers(0, 4000, (40, 50)).astype(np.int16), window="soft-tissue")
    assert s.rgb.shape == (40, 50, 3) and s.shape == (40, 50)
    with pytest.raises(PromptError, match="wrong order"):
        s.add_box((30, 10, 5, 20))
    with pytest.raises(PromptError, match="wrong order"):
        s.add_box((5, 20, 30, 20))
    with pytest.raises(PromptError, match="outside the image of 50x40"):
        s.add_box((0, 0, 51, 10))
    with pytest.raises(PromptError, match="outside the image"):
        s.add_point((50, 3))
    with pytest.raises(PromptError, match="two values"):
        s.add_point((1, 2, 3))
    with pytest.raises(PromptError, match="label"):
        s.add_points([(1, 2), (3, 4)], [True])
    with pytest.raises(PromptError, match="mask shape"):
        s.add_mask(np.zeros((4, 4), bool))
    assert not s.can_undo  # failed calls leave no trace


def test_3d_model_refused(tiny_med3d):
    with pytest.raises(UsageError, match="2D model"):
        Session2D(tiny_med3d[1])
