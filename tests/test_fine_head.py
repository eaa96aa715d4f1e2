"""The boundary head (models.fine_head): packing, growing a model without changing its predictions,
decode shapes and prompts, and training only the head without running the decoder backwards."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import voxprompt
from voxprompt.errors import CheckpointError
from voxprompt.models.fine_head import pack, unpack
from voxprompt.session import Session
from voxprompt.train.freeze import apply_freeze
from voxprompt.train.trainer import grow


@pytest.mark.parametrize("shape,patch", [((2, 3, 8, 12, 16), 4), ((1, 2, 6, 9), 3)])
def test_pack_unpack_round_trip(shape, patch):
    x = torch.randn(shape)
    packed = pack(x, patch)
    d = len(shape) - 2
    assert packed.shape == (shape[0], shape[1] * patch**d, *[s // patch for s in shape[2:]])
    # a token carries exactly its own patch
    first = packed[(0, slice(None)) + (0,) * d].reshape(shape[1], *[patch] * d)
    assert torch.equal(first, x[(0, slice(None)) + (slice(0, patch),) * d])
    assert torch.equal(unpack(packed, shape[1], patch), x)


def _grown(tiny_med3d, channels=2):
    g, base, _ = tiny_med3d
    cfg = dataclasses.replace(base.cfg, fine_channels=channels)
    model = voxprompt.load_model("sam-med3d", None, config=cfg, pretrained=False)
    grow(model, {k: v.contiguous() for k, v in g["state_dict"].items()}, "tiny")
    return model.eval()


def test_grown_model_predicts_what_it_grew_from(tiny_med3d):
    """The head's last layer starts at zero: the logits are the old ones, upsampled as a session did."""
    g, base, emb = tiny_med3d
    model = _grown(tiny_med3d)
    assert model.low_res_size == model.img_size and base.low_res_size == 4 * base.cfg.grid_size
    pts = (torch.tensor([[[5.0, 7.0, 9.0], [3.0, 3.0, 3.0]]]), torch.tensor([[1, 0]]))
    prev = torch.randn(1, 1, *(base.low_res_size,) * 3)
    with torch.no_grad():
        femb = model.encode(g["image"].float())
        assert femb.shape[1] == model.cfg.embedding_channels
        for mask in (None, prev):
            old, old_iou = base.decode(emb, points=pts, mask_input=mask)
            factor = model.img_size // base.low_res_size
            fine_mask = None if mask is None else F.interpolate(mask, scale_factor=factor, mode="nearest")
            new, new_iou = model.decode(femb, points=pts, mask_input=fine_mask)
            up = F.interpolate(old, size=(model.img_size,) * 3, mode="trilinear", align_corners=False)
            scale = 1e-5 * (1 + float(up.abs().max()))
            torch.testing.assert_close(new, up, atol=scale, rtol=1e-5)
            torch.testing.assert_close(new_iou, old_iou, atol=1e-5, rtol=1e-5)


def test_fine_decode_shapes_and_checks(tiny_fine):
    _, model, emb = tiny_fine
    size, low = model.img_size, model.low_res_size
    coords = torch.tensor([[[5.0, 6.0, 7.0]]]).repeat(3, 1, 1)
    labels = torch.ones(3, 1, dtype=torch.int64)
    with torch.no_grad():
        one, _ = model.decode(emb, points=(coords[:1], labels[:1]))
        multi, iou = model.decode(emb, points=(coords, labels), multimask=True)  # one embedding, 3 rows
    assert one.shape == (1, 1, size, size, size)
    assert multi.shape == (3, 3, size, size, size) and iou.shape == (3, 3)
    torch.testing.assert_close(multi[0], multi[2])
    with pytest.raises(voxprompt.PromptError, match="mask_input"):
        model.decode(emb, points=(coords[:1], labels[:1]), mask_input=torch.zeros(1, 1, *(low // 4,) * 3))
    with pytest.raises(voxprompt.InputError, match="embedding"):
        model.decode(emb[:, : model.cfg.prompt_embed_dim], points=(coords[:1], labels[:1]))


def test_fine_head_moves_boundaries_with_the_image(tiny_fine):
    """A non-zero head makes the logits depend on the image at full resolution."""
    g, model, emb = tiny_fine
    image = g["image"].float()
    pts = (torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        a, _ = model.decode(emb, points=pts)
        emb2 = model.encode(image.flip(-1))
        sam = model.cfg.prompt_embed_dim
        mixed = torch.cat([emb[:, :sam], emb2[:, sam:]], dim=1)  # same tokens, other fine features
        b, _ = model.decode(mixed, points=pts)
    assert float((a - b).abs().max()) > 1e-3


def test_training_only_the_head(tiny_med3d):
    g, _, _ = tiny_med3d
    model = _grown(tiny_med3d).train()
    apply_freeze(model, "fine")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".fine_" in n for n in trainable)
    emb = model.encode(g["image"].float())
    low, _ = model.decode(emb, points=(torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[1]])))
    low.sigmoid().mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    # the head's features are the only part of the embedding with a gradient: the decoder's
    # transformer never ran backwards (its inputs carried no gradient)
    assert not model.mask_decoder.split(emb)[0].requires_grad or emb[:, :1].requires_grad


def test_grow_refuses_a_checkpoint_that_does_not_fit(tiny_med3d):
    g, _, _ = tiny_med3d
    model = _grown(tiny_med3d)
    sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 3)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        grow(model, sd, "bad")
    sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unknown keys"):
        grow(model, sd, "bad")


def test_session_runs_a_fine_model(tiny_fine):
    """Sessions handle a boundary-head model unchanged (low-res size, mask prompts, embedding cache)."""
    _, model, _ = tiny_fine
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 24, 28)).astype(np.float32)
    sess = Session(model, clean=False)
    sess.set_image(image, spacing=(1.5, 1.5, 1.5))
    pred = sess.add_point((10, 12, 14), positive=True)
    assert pred.mask.shape == image.shape
    sess.add_point((5, 5, 5), positive=False)
    assert sess.memory_bytes() > 0
