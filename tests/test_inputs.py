"""Bad arguments to encode/decode raise typed errors that name the problem."""
from __future__ import annotations

import pytest
import torch
from conftest import load_golden
from golden_configs import sam_unet_config

import voxprompt
from voxprompt import InputError, PromptError


@pytest.fixture(scope="module")
def med3d(tiny_med3d):
    return tiny_med3d[1:]


@pytest.fixture(scope="module")
def sam(tiny_sam):
    return tiny_sam[1:]


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.zeros(1, 1, 64, 128, 128), r"shape \('B', 1, 128, 128, 128\)"),
        (torch.zeros(1, 3, 128, 128, 128), "got \\(1, 3, 128, 128, 128\\)"),
        (torch.zeros(1, 128, 128, 128), "shape"),
        (torch.zeros(1, 1, 128, 128, 128, dtype=torch.int16), "floating-point"),
        (torch.full((1, 1, 128, 128, 128), float("nan")), "NaN"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images(med3d, image, match):
    model, _ = med3d
    with pytest.raises(InputError, match=match):
        model.encode(image)


def test_bad_2d_image_channels(sam):
    model, _ = sam
    with pytest.raises(InputError, match="3, 256, 256"):
        model.encode(torch.zeros(1, 1, 256, 256))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"points": (torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]]))}, r"\(B, N, 3\)"),
        ({"points": (torch.tensor([[[10.0, 10.0, 10.0]]]), torch.tensor([[1, 0]]))}, "does not match"),
        ({"points": (torch.tensor([[[10.0, 200.0, 10.0]]]), torch.tensor([[1]]))}, r"\[0, 128\]"),
        ({"points": (torch.tensor([[[-1.0, 2.0, 10.0]]]), torch.tensor([[1]]))}, r"\[0, 128\]"),
        ({"points": (torch.tensor([[[1.0, 2.0, 10.0]]]), torch.tensor([[2]]))}, "labels must be"),
        ({"points": (torch.tensor([[[1.0, 2.0, 10.0]]]), torch.tensor([[-2]]))}, "labels must be"),
        ({"points": (torch.tensor([[[1.0, float("nan"), 10.0]]]), torch.tensor([[1]]))}, "NaN or infinite"),
        ({"points": (torch.tensor([[[1.0, 2.0, float("inf")]]]), torch.tensor([[1]]))}, "NaN or infinite"),
        ({"mask_input": torch.zeros(1, 1, 32, 32, 32).index_fill_(2, torch.tensor([3]), float("nan"))},
         "mask_input contains NaN"),
        ({"mask_input": torch.zeros(1, 1, 32, 32, 32).index_fill_(4, torch.tensor([31]), -float("inf"))},
         "mask_input contains NaN"),
        ({"points": (torch.tensor([[[1.0, 2.0, 10.0]]]), torch.tensor([[0.5]]))}, "integers"),
        ({"points": torch.tensor([[[1.0, 2.0, 10.0]]])}, "pair"),
        ({"mask_input": torch.zeros(1, 1, 64, 64, 64)}, r"\(B, 1, 32, 32, 32\)"),
        ({"boxes": torch.tensor([[0.0, 0, 0, 10, 10, 10]])}, "not trained with box"),
        (
            {
                "points": (torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.long)),
                "mask_input": torch.zeros(3, 1, 32, 32, 32),
            },
            "different batch sizes",
        ),
    ],
)
def test_bad_prompts_3d(med3d, kwargs, match):
    model, emb = med3d
    with pytest.raises(PromptError, match=match):
        model.decode(emb, **kwargs)


def test_prompt_rows_vs_embeddings(med3d):
    model, emb = med3d
    two = emb.expand(2, -1, -1, -1, -1)
    three = (torch.full((3, 1, 3), 5.0), torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(PromptError, match="3 prompt rows for 2 image embeddings"):
        model.decode(two, points=three)
    low, iou = model.decode(emb, points=three)  # one embedding broadcast to three prompts
    assert low.shape == (3, 1, 32, 32, 32) and iou.shape == (3, 1)


def test_wrong_embedding(med3d):
    model, emb = med3d
    with pytest.raises(InputError, match="embedding must have shape"):
        model.decode(emb[:, :, :4], points=(torch.zeros(1, 1, 3), torch.ones(1, 1, dtype=torch.long)))


def test_bad_boxes_2d(sam):
    model, emb = sam
    with pytest.raises(PromptError, match="ordered"):
        model.decode(emb, boxes=torch.tensor([[100.0, 50, 20, 80]]))
    with pytest.raises(PromptError, match=r"\(B, 4\)"):
        model.decode(emb, boxes=torch.tensor([[1.0, 2, 3]]))
    with pytest.raises(PromptError, match=r"\[0, 256\]"):
        model.decode(emb, boxes=torch.tensor([[10.0, 10, 300, 40]]))


def test_no_prompt_at_all_is_allowed(sam):
    """Official SAM accepts a call without prompts (no_mask_embed, no sparse tokens)."""
    model, emb = sam
    low, iou = model.decode(emb, multimask=True)
    assert low.shape == (1, 3, 64, 64) and iou.shape == (1, 3)


def test_sam_unet_rejects_multimask_and_foreign_embedding():
    g = load_golden("sam_unet_tiny.pt")
    sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
    model = voxprompt.load_model("sam-unet", sd, config=sam_unet_config(g["config"]))
    box = torch.tensor([[10.0, 10, 50, 50]])
    with pytest.raises(InputError, match="dict returned by encode"):
        model.decode(torch.zeros(1, 256, 16, 16), boxes=box)
    with torch.no_grad():
        emb = model.encode(g["image_encoder_input"])
    with pytest.raises(PromptError, match="single mask"):
        model.decode(emb, boxes=box, multimask=True)


def test_bad_device():
    with pytest.raises(voxprompt.UsageError, match="device"):
        voxprompt.load_model("sam-unet-res34", device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(voxprompt.UsageError, match="CUDA is not available"):
            voxprompt.load_model("sam-unet-res34", device="cuda")
