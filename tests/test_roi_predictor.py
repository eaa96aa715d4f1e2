"""RoiPredictor's flip ensemble: each member is the model on a mirror image, mapped back and averaged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_golden
from golden_configs import sam_med3d_config

import voxprompt
from voxprompt.errors import UsageError
from voxprompt.models.config import FLIP_ENSEMBLES
from voxprompt.preprocess import preprocess_roi, roi_around
from voxprompt.session import image_from_array
from voxprompt.session.roi_predictor import FLIP_SETS, RoiPredictor


@pytest.fixture(scope="module")
def model():
    g = load_golden("sam_med3d_tiny.pt")
    return voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"])).eval()


@pytest.fixture(scope="module")
def image():
    arr = np.random.default_rng(0).normal(100, 20, (12, 40, 36)).astype(np.float32)
    arr[3:9, 10:30, 10:26] += 80
    return image_from_array(arr, spacing=(3.0, 0.8, 0.9))


def _one(model, x, points, labels, prior, axes):
    """The model on ``x`` mirrored along ROI ``axes``, its logits mirrored back: by hand."""
    dims = [2 + a for a in axes]
    flip = (lambda t: torch.flip(t, dims)) if axes else (lambda t: t)
    pts = points.clone()
    for a in axes:
        pts[..., a] = model.cfg.img_size - 1 - pts[..., a]
    out, iou = model.decode(model.encode(flip(x)), points=(pts, labels), mask_input=flip(prior), multimask=False)
    return flip(out), iou


@torch.no_grad()
@pytest.mark.parametrize("n", [1, 8])
def test_each_member_is_the_model_on_a_mirror_image(model, image, n):
    roi = roi_around(image, np.array([6, 20, 18]), size=model.cfg.img_size, spacing=1.5)
    pred = RoiPredictor(model, flip_ensemble=n)
    pred.set_image(image)
    pts = [(np.array([10.0, 20.0, 30.0]), 1), (np.array([5.0, 7.0, 9.0]), 0)]
    low = pred.low_res_size
    prior = torch.linspace(-5, 5, low ** 3).reshape(1, 1, low, low, low)
    out, score = pred.decode(roi, pts, prior)
    x = torch.from_numpy(preprocess_roi(image, roi))[None, None]
    points = torch.tensor(np.stack([p for p, _ in pts])[None], dtype=torch.float32)
    labels = torch.tensor([[1, 0]])
    members = [_one(model, x, points, labels, prior, axes) for axes in FLIP_SETS[n]]
    want = torch.stack([o for o, _ in members]).mean(0)
    want_iou = float(torch.stack([i for _, i in members]).mean())
    assert out.shape == (1, 1, low, low, low)
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert score == pytest.approx(want_iou, rel=1e-4, abs=1e-5)
    if n > 1:  # the members differ: a random model is not mirror-symmetric
        assert not torch.allclose(members[0][0], members[1][0], atol=1e-3)


def test_the_encoder_runs_once_per_roi_for_the_whole_ensemble(model, image, monkeypatch):
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: calls.append(x.shape[0]) or encode(x))
    pred = RoiPredictor(model, flip_ensemble=4)
    pred.set_image(image)
    roi = roi_around(image, np.array([6, 20, 18]), size=model.cfg.img_size, spacing=1.5)
    with torch.no_grad():
        pred.decode(roi, [(np.array([10.0, 20.0, 30.0]), 1)], None)
        pred.decode(roi, [(np.array([10.0, 20.0, 30.0]), 1), (np.array([3.0, 3.0, 3.0]), 0)], None)
    assert calls == [4]


def test_the_stored_setting_and_bad_sizes(model):
    assert len(RoiPredictor(model).flips) == model.cfg.flip_ensemble == 1
    for bad in (0, 3, 16, True, "2", 2.0):
        with pytest.raises(UsageError, match="flip_ensemble"):
            RoiPredictor(model, flip_ensemble=bad)
    with pytest.raises(UsageError, match="flip_ensemble"):
        voxprompt.load_model("voxprompt-med3d-small", pretrained=False, config={"flip_ensemble": 3})
    assert tuple(FLIP_SETS) == FLIP_ENSEMBLES
    for n, sets in FLIP_SETS.items():
        assert len(set(sets)) == n and sets[0] == ()
