"""SAM-UNet: a frozen SAM ViT at 256 px, a parallel ResNet branch feeding the ViT before each
global block ("reshapers"), bridges from the ViT to the decoder, and an HQ-SAM-style fusion
decoder predicting one mask without IoU. Module names follow the official state dict
(``image_encoder.sam_img_encoder.*``, ``prompt_encoder.sam_prompt_encoder.*``, ...)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError, PromptError
from .common import MLP, LayerNormNd, channels_first, channels_last, token_major
from .config import SamUNetConfig
from .fast import reference_enabled
from .image_encoder import ImageEncoder
from .mask_decoder import broadcast_batch, run_two_way, upscaler
from .prompt_encoder import PromptEncoder
from .resnet import ResNetBranch
from .sam import Points, PromptableModel
from .transformer import TwoWayTransformer


class Holder(nn.Module):
    """A named container, only there to reproduce the official key prefixes."""


class Reshaper(nn.Module):
    """Maps a ResNet feature map (C_in, s_in, s_in) to the ViT grid (C_out, s_out, s_out):
    stride-2 convs down, stride-2 transposed convs up, each + LayerNorm2d + GELU, then a 1x1 conv."""

    def __init__(self, size_in: int, channel_in: int, size_out: int, channel_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if size_in > size_out:
            for _ in range(int(math.log2(size_in // size_out))):
                layers += [nn.Conv2d(channel_in, channel_in * 2, 3, stride=2, padding=1), LayerNormNd(channel_in * 2),
                           nn.GELU()]
                channel_in *= 2
        elif size_in < size_out:
            for _ in range(int(math.log2(size_out // size_in))):
                layers += [nn.ConvTranspose2d(channel_in, channel_in // 2, 2, stride=2), LayerNormNd(channel_in // 2),
                           nn.GELU()]
                channel_in //= 2
        layers.append(nn.Conv2d(channel_in, channel_out, kernel_size=1))
        self.reshaper = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.reshaper:
            x = layer(x)
        return x


class FusionMaskDecoder(nn.Module):
    """SAM's two-way transformer and upscaler plus a learned ``med_token`` whose hypernetwork
    output is dotted with (refined upscaled features + the multi-scale feature map)."""

    def __init__(self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.sam_mask_decoder = Holder()
        self.sam_mask_decoder.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.sam_mask_decoder.output_upscaling = upscaler(2, dim, dim // 4, dim // 8)
        self.med_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1),
            LayerNormNd(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1),
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multi_scale_feature: torch.Tensor,
    ) -> torch.Tensor:
        hs, src = run_two_way(
            self.sam_mask_decoder.transformer,
            self.med_token.weight,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        b = hs.shape[0]
        upscaled = self.sam_mask_decoder.output_upscaling(src)
        fused = self.embedding_maskfeature(upscaled) + broadcast_batch(multi_scale_feature, b)
        hyper_in = self.hf_mlp(hs[:, 0, :]).unsqueeze(1)
        _, c, h, w = upscaled.shape
        return (hyper_in @ fused.view(b, c, h * w)).view(b, -1, h, w)


class SamUNet(PromptableModel):
    """SAM-UNet (ResNet-34 or -50 branch). ``encode`` returns a dict with ``image_embeddings``
    ``(B,256,16,16)`` and ``multi_scale_feature`` ``(B,32,64,64)``; ``decode`` one mask, IoU None."""

    def __init__(self, cfg: SamUNetConfig, name: str = "sam-unet") -> None:
        super().__init__()
        s = cfg.sam
        self.cfg = cfg
        self.name = name
        self.spatial_dims = 2
        self.img_size = s.img_size
        self.in_chans = s.in_chans
        self.low_res_size = s.low_res_size
        self.supports_boxes = True
        dim = s.prompt_embed_dim
        self.image_encoder = Holder()
        self.image_encoder.sam_img_encoder = ImageEncoder(s)
        self.image_encoder.requires_grad_(False)  # the ViT is frozen in SAM-UNet
        self.prompt_encoder = Holder()
        self.prompt_encoder.sam_prompt_encoder = PromptEncoder(s)
        self.mask_decoder = FusionMaskDecoder(dim, s.decoder_depth, s.decoder_num_heads, s.decoder_mlp_dim)
        self.resnet = ResNetBranch(cfg.resnet_depth)
        grid = s.grid_size
        sizes = (s.img_size // 4, s.img_size // 8, s.img_size // 16, s.img_size // 32)
        self.adapters_in = nn.ModuleList(
            Reshaper(size, ch, grid, s.embed_dim) for size, ch in zip(sizes, self.resnet.channels)
        )
        self.adapters_bridge = nn.ModuleList(
            upscaler(2, s.embed_dim, dim, dim // 8, final_act=False) for _ in range(3)
        )
        self.embedding_encoder = upscaler(2, dim, dim // 4, dim // 8, final_act=False)

    @property
    def vit(self) -> ImageEncoder:
        return self.image_encoder.sam_img_encoder

    @property
    def prompts(self) -> PromptEncoder:
        return self.prompt_encoder.sam_prompt_encoder

    def encode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised, padded ``(B,3,256,256)`` -> ``{"image_embeddings", "multi_scale_feature"}``."""
        image = self.check_image(image)
        with self.autocast():
            out = self._encode(image)
        if self.amp_dtype is not None:
            out = {k: v.float() for k, v in out.items()}
        if not reference_enabled():
            out["image_embeddings"] = token_major(out["image_embeddings"])
        return out

    def _encode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.resnet(image)
        tokens = self.vit.embed(image)
        bridges: list[torch.Tensor | None] = [None] * 3
        for stage, g in enumerate(self.cfg.sam.global_attn_indexes):
            for j in range(2):
                tokens = self.vit.run_block(stage * 3 + j, tokens)
            tokens = tokens + channels_last(self.adapters_in[stage](feats[stage]))
            tokens = self.vit.run_block(g, tokens)
            if stage < 3:  # U-Net order: the shallowest ViT stage feeds bridge 2
                bridges[2 - stage] = self.adapters_bridge[2 - stage](channels_first(tokens))
        emb = self.vit.forward_neck(tokens)
        msf = self.embedding_encoder(emb)
        for bridge in bridges:
            msf = msf + bridge
        return {"image_embeddings": emb, "multi_scale_feature": msf}

    def decode(
        self,
        emb: dict[str, torch.Tensor],
        points: Points = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """One raw low-res mask ``(B,1,64,64)`` per prompt row; SAM-UNet has no IoU head."""
        if multimask:
            raise PromptError(f"{self.name}: SAM-UNet predicts a single mask; use multimask=False")
        if not isinstance(emb, dict) or set(emb) != {"image_embeddings", "multi_scale_feature"}:
            raise InputError(f"{self.name}: embedding must be the dict returned by encode()")
        image_embeddings, msf = emb["image_embeddings"], emb["multi_scale_feature"]
        points, boxes, mask_input = self.check_prompts(image_embeddings.shape[0], points, boxes, mask_input)
        with self.decode_autocast():
            sparse, dense = self.prompts(points=points, boxes=boxes, masks=mask_input)
            pe = self.prompts.get_dense_pe()
            low = self.low_precision(self.mask_decoder)(image_embeddings, pe, sparse, dense, msf)
        return low.float(), None

    def forward(self, image: torch.Tensor, **prompts: Any) -> tuple[torch.Tensor, None]:
        return self.decode(self.encode(image), **prompts)
