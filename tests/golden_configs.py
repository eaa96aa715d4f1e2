"""Each golden fixture's ``config`` entry expressed as a voxprompt config."""
from __future__ import annotations

from voxprompt import SamConfig, SamUNetConfig


def sam_med3d_config(c: dict) -> SamConfig:
    return SamConfig(
        spatial_dims=3,
        img_size=c["img_size"],
        in_chans=c["in_chans"],
        patch_size=c["patch_size"],
        embed_dim=c["encoder_embed_dim"],
        depth=c["encoder_depth"],
        num_heads=c["encoder_num_heads"],
        mlp_ratio=c["mlp_ratio"],
        global_attn_indexes=c["encoder_global_attn_indexes"],
        window_size=c["window_size"],
        use_rel_pos=c["use_rel_pos"],
        qkv_bias=c["qkv_bias"],
        layernorm_eps=c["layernorm_eps"],
        prompt_embed_dim=c["prompt_embed_dim"],
        mask_in_chans=c["mask_in_chans"],
        num_point_embeddings=2,
        num_multimask_outputs=c["num_multimask_outputs"],
        iou_head_depth=c["iou_head_depth"],
        iou_head_hidden_dim=c["iou_head_hidden_dim"],
    )


def sam_config(c: dict) -> SamConfig:
    return SamConfig(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        global_attn_indexes=c["global_attn_indexes"],
        window_size=c["window_size"],
        use_rel_pos=c["use_rel_pos"],
        qkv_bias=c["qkv_bias"],
        prompt_embed_dim=c["prompt_embed_dim"],
        mask_in_chans=c["mask_in_chans"],
        decoder_depth=c["decoder_depth"],
        decoder_mlp_dim=c["decoder_mlp_dim"],
        decoder_num_heads=c["decoder_num_heads"],
        num_multimask_outputs=c["num_multimask_outputs"],
        iou_head_depth=c["iou_head_depth"],
        iou_head_hidden_dim=c["iou_head_hidden_dim"],
    )


def sam_med2d_config(c: dict) -> SamConfig:
    a, h = c["builder_args"], c["hard_coded_by_builder"]
    return SamConfig(
        img_size=a["image_size"],
        patch_size=h["patch_size"],
        embed_dim=a["encoder_embed_dim"],
        depth=a["encoder_depth"],
        num_heads=a["encoder_num_heads"],
        mlp_ratio=h["mlp_ratio"],
        global_attn_indexes=a["encoder_global_attn_indexes"],
        window_size=h["window_size"],
        use_rel_pos=h["use_rel_pos"],
        layernorm_eps=h["layernorm_eps"],
        adapter=a["encoder_adapter"],
        adapter_ratio=h["adapter_mlp_ratio"],
        prompt_embed_dim=h["prompt_embed_dim"],
        mask_in_chans=h["mask_in_chans"],
        decoder_depth=h["decoder_depth"],
        decoder_mlp_dim=h["decoder_mlp_dim"],
        decoder_num_heads=h["decoder_num_heads"],
        num_multimask_outputs=h["num_multimask_outputs"],
        iou_head_depth=h["iou_head_depth"],
        iou_head_hidden_dim=h["iou_head_hidden_dim"],
    )


def sam_unet_config(c: dict) -> SamUNetConfig:
    a, h = c["sam_builder_args"], c["hard_coded"]
    sam = SamConfig(
        img_size=a["image_size"],
        patch_size=h["patch_size"],
        embed_dim=a["encoder_embed_dim"],
        depth=a["encoder_depth"],
        num_heads=a["encoder_num_heads"],
        global_attn_indexes=a["encoder_global_attn_indexes"],
        window_size=a["window_size"],
        prompt_embed_dim=h["prompt_embed_dim/transformer_dim"],
        mask_in_chans=h["mask_in_chans"],
        decoder_depth=h["decoder_depth"],
        decoder_mlp_dim=h["decoder_mlp_dim"],
        decoder_num_heads=h["decoder_num_heads"],
    )
    return SamUNetConfig(sam=sam, resnet_depth=c["sam_unet_args"]["resnet_type"])
