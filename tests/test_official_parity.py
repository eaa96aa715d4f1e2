"""Full-size parity with the official code (not only the tiny fixtures): deterministic weights
with official key names are loaded into the official modules and into voxprompt, and every
output is compared in fp32 (relative L2 < 1e-5)."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from numerics import ScoreInputs, assert_scores_close
from official_ref import medim_sam_med3d, segment_anything_modeling

import voxprompt

pytestmark = pytest.mark.slow


def deterministic_weights(sd: dict, seed: int) -> dict:
    """Non-trivial values for every tensor: N(0, 1/fan_in) for matrices, 1 + 0.1 N for norm
    weights, 0.1 N otherwise (pos_embed and rel_pos non-zero, unlike the official init)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        noise = torch.randn(v.shape, generator=gen)
        if v.dim() >= 2 and "pos_embed" not in k and "rel_pos" not in k:
            out[k] = noise / (v[0].numel() ** 0.5)
        elif k.endswith("weight") and v.dim() == 1:
            out[k] = 1 + 0.1 * noise
        elif "gaussian_matrix" in k:
            out[k] = noise
        else:
            out[k] = 0.1 * noise
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_scores(iou: torch.Tensor, iou_ref: torch.Tensor, ours: ScoreInputs, ref: ScoreInputs,
                 multimask: bool) -> None:
    """IoU scores are sums of cancelling terms (a score near 0 is not known to a small relative
    error): the input of the IoU head's last layer agrees to 1e-5 like every other tensor, and each
    score within the bound that implies, relative to the size of its terms (numerics.py)."""
    assert rel_err(ours.inputs[-1], ref.inputs[-1]) < 1e-5
    assert_scores_close(iou, iou_ref, ref.tolerance(-1, 1e-5, slice(1, 4) if multimask else slice(0, 1)))


def test_sam_med3d_full_size_matches_medim():
    ref_mod = medim_sam_med3d()
    ref = ref_mod.build_sam3D_vit_b_ori().eval()
    sd = deterministic_weights(ref.state_dict(), seed=1)
    ref.load_state_dict(sd)
    ours = voxprompt.load_model("sam-med3d", sd)
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(1, 1, 128, 128, 128, generator=gen)
    coords = torch.tensor([[[40.0, 70.0, 90.0], [100.0, 30.0, 55.0]]])
    labels = torch.tensor([[1, 0]])
    with torch.no_grad():
        emb_ref = ref.image_encoder(image)
        emb = ours.encode(image)
        assert rel_err(emb, emb_ref) < 1e-5
        prev = None
        for n in (1, 2):
            mask = torch.zeros(1, 1, 32, 32, 32) if prev is None else prev
            pts = (coords[:, :n], labels[:, :n])
            sparse, dense = ref.prompt_encoder(points=pts, boxes=None, masks=mask)
            with ScoreInputs(ref) as h_ref:
                low_ref, iou_ref = ref.mask_decoder(
                    image_embeddings=emb_ref,
                    image_pe=ref.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
            with ScoreInputs(ours) as h:
                low, iou = ours.decode(emb, points=pts, mask_input=mask)
            assert rel_err(low, low_ref) < 1e-5
            check_scores(iou, iou_ref, h, h_ref, multimask=False)
            prev = low_ref


def test_sam_vit_b_full_size_matches_segment_anything():
    m = segment_anything_modeling()
    ref = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=12,
            embed_dim=768,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=12,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[2, 5, 8, 11],
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    sd = deterministic_weights(ref.state_dict(), seed=3)
    ref.load_state_dict(sd)
    ours = voxprompt.load_model("sam-vit-b", sd)
    image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb_ref = ref.image_encoder(image)
        emb = ours.encode(image)
        assert rel_err(emb, emb_ref) < 1e-5
        cases = [
            dict(points=None, boxes=torch.tensor([[300.0, 200.0, 700.0, 650.0]]), masks=None, multimask=False),
            dict(points=(torch.tensor([[[512.0, 300.0]]]), torch.tensor([[1]])), boxes=None, masks=None,
                 multimask=True),
            dict(
                points=(torch.tensor([[[512.0, 300.0], [100.0, 900.0]]]), torch.tensor([[1, 0]])),
                boxes=None,
                masks=torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(5)),
                multimask=False,
            ),
        ]
        for c in cases:
            sparse, dense = ref.prompt_encoder(points=c["points"], boxes=c["boxes"], masks=c["masks"])
            with ScoreInputs(ref) as h_ref:
                low_ref, iou_ref = ref.mask_decoder(
                    image_embeddings=emb_ref,
                    image_pe=ref.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=c["multimask"],
                )
            with ScoreInputs(ours) as h:
                low, iou = ours.decode(
                    emb, points=c["points"], boxes=c["boxes"], mask_input=c["masks"], multimask=c["multimask"]
                )
            assert rel_err(low, low_ref) < 1e-5
            check_scores(iou, iou_ref, h, h_ref, multimask=c["multimask"])
