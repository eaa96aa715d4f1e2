"""SAM's mask decoder (IoU token + mask tokens + hypernetworks), generic in 2D and 3D."""
from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNormNd, conv_transpose_cls
from .config import SamConfig
from .fast import reference_enabled
from .fast.channels_last import PatchSequential, patch_layout_dot, run_patch_layout, unshuffle
from .fine_head import FineHead, unpack
from .transformer import TwoWayTransformer


def upscaler(spatial_dims: int, cin: int, cmid: int, cout: int, final_act: bool = True) -> nn.Sequential:
    """Two stride-2 transposed convs (cin -> cmid -> cout) with LayerNorm + GELU between: 4x larger.

    Outside reference mode it runs as channels-last GEMMs (:mod:`.channels_last`)."""
    convt = conv_transpose_cls(spatial_dims)
    layers = [
        convt(cin, cmid, kernel_size=2, stride=2),
        LayerNormNd(cmid),
        nn.GELU(),
        convt(cmid, cout, kernel_size=2, stride=2),
    ]
    if final_act:
        layers.append(nn.GELU())
    return PatchSequential(*layers)


def broadcast_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a batch-1 tensor to ``batch`` rows (one image embedding for several prompts)."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1 and not reference_enabled():
        return x.expand(batch, *x.shape[1:])
    return torch.repeat_interleave(x, batch, dim=0)


def run_two_way(
    transformer: TwoWayTransformer,
    output_tokens: torch.Tensor,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the learned output tokens to the prompt tokens, add the dense prompt to the image
    embedding and run the two-way transformer. Returns tokens ``(B, N, C)`` and the attended image
    features reshaped back to ``(B, C, *grid)``."""
    b = sparse_prompt_embeddings.size(0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1)
    src = broadcast_batch(image_embeddings, b) + dense_prompt_embeddings.to(image_embeddings.dtype)
    pos_src = broadcast_batch(image_pe, b)
    c, grid = src.shape[1], src.shape[2:]
    hs, src = transformer(src, pos_src, tokens)
    return hs, src.transpose(1, 2).view(b, c, *grid)


class MaskDecoder(nn.Module):
    """Predicts ``1 + num_multimask_outputs`` masks and their IoU from image and prompt embeddings."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.transformer = TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=dim,
            num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim,
        )
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = upscaler(cfg.spatial_dims, dim, dim // 4, dim // 8)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth)
        # ours: logits moved to the input grid (models.fine_head); its features follow SAM's channels
        self.sam_channels, self.patch_size = dim, cfg.patch_size
        self.fine_head = FineHead(cfg.spatial_dims, cfg.fine_channels) if cfg.fine_channels else None
        self._unpacked: tuple | None = None  # (embedding, its version, its unpacked features): not state

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
        fine: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns masks ``(B, M, *low_res)`` and IoU ``(B, M)``: M = 1 (token 0) or the
        multimask tokens 1.. With the boundary head, ``image_embeddings`` is the whole embedding,
        or SAM's part with the head's features given unpacked as ``fine`` (:meth:`split`)."""
        sl = slice(1, None) if multimask_output else slice(0, 1)
        if self.fine_head is not None and fine is None:
            image_embeddings, fine = self.split(image_embeddings)
        if reference_enabled():
            masks, iou = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )
            masks, iou = masks[:, sl], iou[:, sl]
        else:
            masks, iou = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, sl
            )
        if fine is not None:
            masks = self.fine_head(masks, fine.to(masks.dtype))
        return masks, iou

    def split(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A boundary-head model's embedding -> SAM's part ``(B, C, *grid)`` and the head's
        features ``(B, F, *input)``."""
        c = self.sam_channels
        hit, version = self._unpacked, -1 if embedding.is_inference() else embedding._version
        if hit is not None and hit[0] is embedding and hit[1] == version:
            return embedding[:, :c], hit[2]  # the same embedding clicked again: unpacked once
        fine = unpack(embedding[:, c:], self.fine_head.from_logits.out_channels, self.patch_size)
        if not torch.jit.is_tracing():
            self._unpacked = (embedding, version, fine)
        return embedding[:, :c], fine

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        tokens: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask tokens ``tokens`` (default all): ``(B, M, *low_res)`` and their IoU."""
        if not reference_enabled():
            return self._predict_masks_fast(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, tokens
            )
        masks, iou = self._predict_masks_ref(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, tokens], iou[:, tokens]

    def _predict_masks_fast(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        tokens: slice,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the requested mask tokens' hypernetworks and products; channels-last upscaling."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, src = run_two_way(self.transformer, output_tokens, image_embeddings, image_pe,
                              sparse_prompt_embeddings, dense_prompt_embeddings)
        b = hs.shape[0]
        # with autograd on, every token takes part (unused ones get zero gradients, as in the
        # official code, so optimizer state and weight decay evolve identically)
        keep = slice(None) if torch.is_grad_enabled() else tokens
        idx = range(self.num_mask_tokens)[keep]
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in idx], dim=1)
        iou = self.iou_prediction_head(hs[:, 0, :])[:, tokens]
        # inference only: autograd needs the plain graph, and a trace cannot record the out= writes
        eager = not (torch.is_grad_enabled() or torch.jit.is_tracing())
        fused = patch_layout_dot(self.output_upscaling, src, hyper_in) if eager else None
        patched = None if fused is not None else run_patch_layout(self.output_upscaling, src)
        if fused is not None:  # inference: chunked last conv + activation + dot, then unshuffle
            masks = unshuffle(fused[0], src.dim() - 2, fused[1])
        elif patched is not None:  # dot products in patch order, then unshuffle M channels only
            y, levels = patched
            masks = hyper_in @ y.reshape(b, -1, y.shape[-1]).transpose(1, 2)
            masks = unshuffle(masks.view(b, len(idx), *y.shape[1:-1]), src.dim() - 2, levels)
        else:
            upscaled = self.output_upscaling(src)
            c_up, up_grid = upscaled.shape[1], upscaled.shape[2:]
            masks = (hyper_in @ upscaled.reshape(b, c_up, -1)).view(b, len(idx), *up_grid)
        return (masks[:, tokens] if keep != tokens else masks), iou

    def _predict_masks_ref(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official computation of all mask tokens."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, src = run_two_way(self.transformer, output_tokens, image_embeddings, image_pe,
                              sparse_prompt_embeddings, dense_prompt_embeddings)
        b = hs.shape[0]
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        c_up, up_grid = upscaled.shape[1], upscaled.shape[2:]
        masks = (hyper_in @ upscaled.view(b, c_up, -1)).view(b, -1, *up_grid)
        return masks, self.iou_prediction_head(iou_token_out)
