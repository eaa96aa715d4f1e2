"""Every case of every golden fixture (official code, random seeded weights) reproduced by
``load_model(...).encode/decode`` within the fixtures' documented fp32 tolerances."""
from __future__ import annotations

import pytest
import torch
from numerics import ScoreInputs, assert_scores_close

REL_L2 = 1e-5  # contract: relative L2 error against the official fp32 outputs


def check(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 0.0,
          score_tol: torch.Tensor | None = None) -> None:
    """Elementwise ``atol``/``rtol`` (the fixtures' documented fp32 tolerance), and relative L2 <
    REL_L2; for IoU scores (``score_tol`` given) the relative test is against the size of the
    terms each score sums instead of the score itself (numerics.py): a score near 0 is the sum of
    cancelling terms, and its rounding error is relative to them."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach().double(), expected.double()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    if score_tol is not None:
        assert_scores_close(actual, expected, score_tol)
    elif expected.norm() > 0:
        assert ((actual - expected).norm() / expected.norm()).item() < REL_L2


def tokens(multimask: bool) -> slice:
    """The head outputs ``decode`` returns: tokens 1-3 (multimask) or token 0."""
    return slice(1, 4) if multimask else slice(0, 1)


# ---------------------------------------------------------------- SAM-Med3D
@pytest.fixture(scope="module")
def med3d(tiny_med3d):
    return tiny_med3d


def test_med3d_embedding_and_dense_pe(med3d):
    g, model, emb = med3d
    check(emb, g["outputs"]["image_embeddings"])
    check(model.prompt_encoder.get_dense_pe(), g["intermediates"]["dense_pe"], atol=0)
    assert g["dense_pe_axis_swap_verified"]


MED3D_CASES = {
    # case: (point slice, mask source, multimask)
    "a_click1_nomask": (slice(0, 1), None, False),
    "b_click2_prevmask": (slice(0, 2), "a_click1_nomask", False),
    "o1_click1_zeromask": (slice(0, 1), "zeros", False),
    "o2_click2_accum_prevmask": (slice(0, 2), "o1_click1_zeromask", False),
    "o2b_click2_newonly_prevmask": (slice(1, 2), "o1_click1_zeromask", False),
    "a_click1_nomask_multimask": (slice(0, 1), None, True),
}


@pytest.mark.parametrize("case", list(MED3D_CASES))
def test_med3d_cases(med3d, case):
    g, model, emb = med3d
    sl, mask_from, multimask = MED3D_CASES[case]
    cases = g["intermediates"]["cases"]
    coords, labels = g["points"][:, sl], g["labels"][:, sl]
    mask = None
    if mask_from == "zeros":
        mask = torch.zeros(1, 1, 32, 32, 32)
    elif mask_from is not None:
        mask = cases[mask_from]["low_res_masks"]
    with torch.no_grad(), ScoreInputs(model) as h:
        low, iou = model.decode(emb, points=(coords, labels), mask_input=mask, multimask=multimask)
        sparse, dense = model.prompt_encoder((coords, labels), None, mask)
    iou_tol = h.tolerance(0, REL_L2, tokens(multimask))
    expected = cases[case]
    check(low, expected["low_res_masks"])
    check(iou, expected["iou_predictions"], score_tol=iou_tol)
    if "sparse_embeddings" in expected:
        check(sparse, expected["sparse_embeddings"])
    if "dense_embeddings" in expected:
        check(dense, expected["dense_embeddings"])
    if case in ("a_click1_nomask", "b_click2_prevmask"):
        key = case[0]
        check(low, g["outputs"][key]["low_res_masks"])
        check(iou, g["outputs"][key]["iou_predictions"], score_tol=iou_tol)


def test_med3d_float_labels_match_int_labels(med3d):
    """infer_utils passes labels as floats 0./1.; the result must be the same."""
    g, model, emb = med3d
    coords, labels = g["points"], g["labels"]
    with torch.no_grad():
        a, _ = model.decode(emb, points=(coords, labels))
        b, _ = model.decode(emb, points=(coords, labels.float()))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- SAM (ViT-B family)
def _prompts(p: dict):
    points = None if p.get("point_coords") is None else (p["point_coords"], p["point_labels"])
    return points, p.get("boxes"), p.get("mask_inputs")


@pytest.fixture(scope="module")
def sam(tiny_sam):
    return tiny_sam


def test_sam_embedding(sam):
    g, _, emb = sam
    check(emb, g["outputs"]["image_embeddings"])


@pytest.mark.parametrize("case", ["a_box", "b_one_point", "c_two_points_with_mask"])
def test_sam_cases(sam, case):
    g, model, emb = sam
    points, boxes, mask = _prompts(g["prompts"][case])
    out = g["outputs"][case]
    with torch.no_grad(), ScoreInputs(model) as h:
        low, iou = model.decode(emb, points=points, boxes=boxes, mask_input=mask, multimask=out["multimask_output"])
        sparse, dense = model.prompt_encoder(points, None if boxes is None else boxes.reshape(-1, 4), mask)
        all4, iou4 = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
    check(low, out["low_res_masks"])
    check(iou, out["iou_predictions"], score_tol=h.tolerance(0, REL_L2, tokens(out["multimask_output"])))
    check(sparse, out["sparse_embeddings"])
    check(dense.mean(dim=(2, 3)), out["dense_embeddings_mean"])
    check(all4, out["low_res_masks_all4"])
    check(iou4, out["iou_predictions_all4"], score_tol=h.tolerance(1, REL_L2))


# ---------------------------------------------------------------- SAM-Med2D
@pytest.fixture(scope="module")
def med2d(tiny_med2d):
    return tiny_med2d


def test_med2d_embedding(med2d):
    g, _, emb = med2d
    check(emb, g["outputs"]["image_embeddings"])


@pytest.mark.parametrize("case", ["a_box", "b_one_point", "c_two_points_with_mask", "c_logits_variant"])
def test_med2d_cases(med2d, case):
    g, model, emb = med2d
    points, boxes, mask = _prompts(g["prompts"][case])
    out = g["outputs"][case]
    with torch.no_grad(), ScoreInputs(model) as h:
        multi, multi_iou = model.decode(emb, points=points, boxes=boxes, mask_input=mask, multimask=True)
        single, single_iou = model.decode(emb, points=points, boxes=boxes, mask_input=mask, multimask=False)
        sparse, dense = model.prompt_encoder(points, boxes, mask)
    multi_tol = h.tolerance(0, REL_L2, tokens(True))
    check(multi, out["low_res_masks_multimask"])
    check(multi_iou, out["iou_predictions_multimask"], score_tol=multi_tol)
    check(single, out["low_res_masks_single"])
    check(single_iou, out["iou_predictions_single"], score_tol=h.tolerance(1, REL_L2, tokens(False)))
    check(sparse, out["sparse_embeddings"])
    check(dense.mean(dim=(2, 3)), out["dense_embeddings_mean"])
    # the official test.py keeps the highest-IoU mask of the multimask output
    best = int(multi_iou.argmax(dim=1))
    assert best == out["selected_index"]
    check(multi[:, best : best + 1], out["low_res_masks"])
    check(multi_iou[:, best : best + 1], out["iou_predictions"], score_tol=multi_tol[:, best : best + 1])


def test_med2d_case_c_feeds_sigmoid_of_b(med2d):
    g, _, _ = med2d
    b = g["outputs"]["b_one_point"]["low_res_masks"]
    check(g["prompts"]["c_two_points_with_mask"]["mask_inputs"], torch.sigmoid(b))


# ---------------------------------------------------------------- SAM-UNet
@pytest.fixture(scope="module")
def unet(tiny_unet):
    return tiny_unet


def test_unet_encoder_and_intermediates(unet):
    g, model, emb = unet
    out = g["outputs"]
    check(emb["image_embeddings"], out["image_embeddings"])
    check(emb["multi_scale_feature"], out["multi_scale_feature"])
    with torch.no_grad():
        x = g["image_encoder_input"]
        feats = model.resnet(x)
        assert [list(f.shape) for f in feats] == [list(s) for s in out["resnet_features_shapes"]]
        for i, f in enumerate(feats):
            check(model.adapters_in[i](f), out["adapters_in"][i])
        # bridges: recompute the token stream as SAM-UNet does and compare each bridge map
        tokens = model.vit.embed(x)
        for stage, gi in enumerate((2, 5, 8)):
            for j in range(2):
                tokens = model.vit.blocks[stage * 3 + j](tokens)
            tokens = tokens + model.adapters_in[stage](feats[stage]).permute(0, 2, 3, 1)
            tokens = model.vit.blocks[gi](tokens)
            check(model.adapters_bridge[2 - stage](tokens.permute(0, 3, 1, 2)), out["adapters_bridge"][2 - stage])


@pytest.mark.parametrize("case", ["a_box", "b_one_point", "c_two_points_with_mask"])
def test_unet_cases(unet, case):
    g, model, emb = unet
    points, boxes, mask = _prompts(g["prompts"][case])
    with torch.no_grad():
        low, iou = model.decode(emb, points=points, boxes=boxes, mask_input=mask)
    assert iou is None
    check(low, g["outputs"][case]["low_res_masks"], atol=1e-4, rtol=1e-4)


def test_unet_vit_is_frozen(unet):
    _, model, _ = unet
    assert not any(p.requires_grad for p in model.vit.parameters())
    assert all(p.requires_grad for p in model.resnet.parameters())
