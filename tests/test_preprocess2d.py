"""2D preprocessing equals the official pipelines on the fixtures' non-square 200x300 image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_golden

from voxprompt.errors import InputError, UsageError
from voxprompt.models.family import policy_for
from voxprompt.preprocess.image2d import (
    Policy2D,
    frame_for,
    longest_side_shape,
    mask_prior,
    parse_window,
    preprocess_image,
    rgb_uint8,
    to_rgb,
    to_uint8,
)

SAM = Policy2D("sam", 256, "longest")
MED2D = Policy2D("sam-med2d", 256, "square", "bgr", mask_feedback="sigmoid", multimask="always", pad_small=True)
UNET = Policy2D("sam-unet", 256, "longest", multimask="never")


@pytest.fixture(scope="module")
def goldens() -> dict:
    return {n: load_golden(f"{n}.pt") for n in ("sam_tiny", "sam_med2d_tiny", "sam_unet_tiny")}


def _of(g: dict, key: str) -> np.ndarray:
    return g["prompts"]["original_frame"][key].numpy()


def test_sam_resize_longest_pad_and_prompts(goldens):
    g = goldens["sam_tiny"]
    x, frame = preprocess_image(g["image_raw"].numpy(), SAM)
    assert torch.equal(x, g["image_encoder_input"])  # bit-exact: PIL bilinear, normalise, pad
    assert frame.content == tuple(g["input_size"]) and frame.original_size == tuple(g["original_size"])
    assert longest_side_shape(200, 300, 256) == (171, 256)
    p = g["prompts"]
    assert torch.equal(torch.from_numpy(frame.box_to_model(_of(g, "box_xyxy"))).float()[None], p["a_box"]["boxes"])
    coords = torch.from_numpy(frame.to_model(_of(g, "point_coords_2"))).float()[None]
    assert torch.equal(coords, p["c_two_points_with_mask"]["point_coords"])
    for case in ("a_box", "b_one_point", "c_two_points_with_mask"):
        out = g["outputs"][case]
        logits = frame.logits_to_original(out["low_res_masks"])
        torch.testing.assert_close(logits.half(), out["mask_logits_original_size"], atol=2e-2, rtol=0)
        assert ((logits > 0) != out["masks"]).float().mean() < 1e-3


def test_sam_med2d_normalise_then_nearest_resize_bgr(goldens):
    g = goldens["sam_med2d_tiny"]
    raw = g["image_raw"].numpy()
    # the fixture fed the raw array without a channel flip; our default flips RGB to BGR first
    x, frame = preprocess_image(np.ascontiguousarray(raw[..., ::-1]), MED2D)
    assert torch.equal(x, g["image"])
    x_rgb, _ = preprocess_image(raw, Policy2D("sam-med2d", 256, "square", "rgb", pad_small=True))
    assert torch.equal(x_rgb, g["image"])
    assert frame.scale == (256 / 200, 256 / 300) and frame.offset == (0, 0)
    p = g["prompts"]
    assert torch.equal(torch.from_numpy(frame.box_to_model(_of(g, "box_xyxy"))).float(), p["a_box"]["boxes"])
    assert torch.equal(torch.from_numpy(frame.to_model(_of(g, "point_coords_2"))).float()[None],
                       p["c_two_points_with_mask"]["point_coords"])
    out = g["outputs"]["a_box"]
    torch.testing.assert_close(frame.logits_to_original(out["low_res_masks"]).half(),
                               out["mask_logits_original_size"], atol=2e-2, rtol=0)
    # the resize rule is F.interpolate(mode="nearest") = cv2.INTER_NEAREST
    ref = F.interpolate(torch.from_numpy(raw.astype(np.float32)).permute(2, 0, 1)[None], (256, 256), mode="nearest")
    assert torch.equal(torch.from_numpy(frame.mask_to_model(raw[..., 0] > 128)).bool(), ref[0, 0] > 128)


def test_sam_med2d_small_image_is_centre_padded_and_cropped_back():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (100, 141, 3), dtype=np.uint8)
    x, frame = preprocess_image(raw, MED2D)
    top, left = (256 - 100) // 2, (256 - 141) // 2
    assert frame.offset == (top, left) and frame.content == (100, 141) and frame.scale == (1.0, 1.0)
    bgr = raw[..., ::-1].astype(np.float32)
    inner = (bgr - np.float32([123.675, 116.28, 103.53])) / np.float32([58.395, 57.12, 57.375])
    assert torch.equal(x[0, :, top:top + 100, left:left + 141], torch.from_numpy(inner).permute(2, 0, 1))
    assert float(x[0, :, :top].abs().max()) == 0.0  # padded with 0 after normalisation
    assert np.allclose(frame.to_model(np.array([[3.0, 5.0]])), [[3 + left, 5 + top]])
    low = torch.randn(1, 1, 64, 64)
    up = F.interpolate(low, (256, 256), mode="bilinear", align_corners=False)[..., top:top + 100, left:left + 141]
    assert torch.equal(frame.logits_to_original(low), up)  # test.py: crop, no resize


def test_sam_unet_preprocess(goldens):
    g = goldens["sam_unet_tiny"]
    x, frame = preprocess_image(g["image_raw"].numpy(), UNET)
    assert torch.equal(x, g["image_encoder_input"])
    assert frame.content == (171, 256)


def test_policies_by_model(tiny_sam, tiny_med2d, tiny_unet):
    assert policy_for(tiny_sam[1]) == Policy2D("sam", 256, "longest")
    med = policy_for(tiny_med2d[1])
    assert (med.channel_order, med.mask_feedback, med.multimask, med.resize) == ("bgr", "sigmoid", "always", "square")
    assert policy_for(tiny_med2d[1], "rgb").channel_order == "rgb"
    assert policy_for(tiny_unet[1]).multimask == "never"
    assert SAM.wants_multimask(1, False) and not SAM.wants_multimask(2, False) and not SAM.wants_multimask(1, True)
    low = torch.tensor([[[[0.0, 2.0]]]])
    assert torch.equal(MED2D.feedback(low), torch.sigmoid(low)) and torch.equal(SAM.feedback(low), low)


def test_windows_and_intensities():
    assert parse_window("soft-tissue") == (400.0, 40.0) and parse_window("lung") == (1500.0, -600.0)
    assert parse_window("bone") == (1800.0, 400.0) and parse_window("350,50") == (350.0, 50.0)
    for bad in ("wide", "0,40", "1,2,3", "nan,1"):
        with pytest.raises(UsageError):
            parse_window(bad)
    hu = np.array([[-1000.0, -160.0], [90.0, 240.0]])
    assert to_uint8(hu, (400, 40)).tolist() == [[0, 0], [159, 255]]  # (90 + 160) * 255 / 400 = 159.4
    assert to_uint8(np.array([[0, 4095]], np.uint16)).tolist() == [[0, 255]]  # min..max
    u8 = np.array([[3, 7]], np.uint8)
    assert to_uint8(u8) is u8
    assert to_uint8(np.full((2, 2), 5.0)).max() == 0  # constant image: black, no division by zero
    assert rgb_uint8(np.array([[0, 10]], np.int16)).shape == (1, 2, 3)


@pytest.mark.parametrize("shape, words", [((0, 5), "empty"), ((4, 4, 4), "4 channels"), ((4, 4, 2), "2 channels"),
                                          ((3, 8, 9), "channels-first"), ((2, 2, 2, 2), "not 2D")])
def test_bad_image_layouts(shape, words):
    with pytest.raises(InputError, match=words):
        rgb_uint8(np.zeros(shape, np.uint8))


def test_nan_and_bad_preprocess_input():
    with pytest.raises(InputError, match="NaN"):
        to_uint8(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="uint8 RGB"):
        preprocess_image(np.zeros((5, 5), np.uint8), SAM)
    assert to_rgb(np.zeros((5, 6, 1))).shape == (5, 6, 3)


def test_mask_prior_fractions():
    frame = frame_for((200, 300), MED2D)
    m = np.zeros((200, 300), bool)
    m[:100] = True
    prob = mask_prior(m, frame, 64, MED2D)
    assert prob.shape == (1, 1, 64, 64) and float(prob[0, 0, 0, 0]) == 1.0 and float(prob[0, 0, -1, 0]) == 0.0
    logits = mask_prior(m, frame, 64, SAM)
    assert float(logits.max()) == 10.0 and float(logits.min()) == -10.0
