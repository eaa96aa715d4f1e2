"""SAM's two-way transformer (token <-> image cross-attention). Works on flattened tokens, so the
same code serves 2D and 3D.

Fast path (outside reference mode), exact up to fp32 rounding: a cross-attention between a few
prompt tokens and thousands of image tokens never projects the image tokens. Few queries: the
scores ``(W_k x_j + b_k).q = x_j.(W_k^T q) + const`` and the output
``sum_j a_j (W_v x_j + b_v) = W_v (sum_j a_j x_j) + b_v``. Few keys: the scores
``(W_q x_j + b_q).k_t = x_j.(W_q^T k_t) + b_q.k_t`` and the output projection folds into the values,
``W_o concat_h(sum_t a_jt v_t) = sum_(h,t) a_jt (W_o^h v_t)``. Both are two GEMMs of size
``n_image x C x (heads * n_tokens)`` instead of ``n_image x C x internal_dim`` projections.

With ``gemm_dtype`` set (the CPU mixed-precision inference copy), those two image-side GEMMs run in
that dtype and everything else, token-side products and softmax included, in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock
from .fast import reference_enabled


class Attention(nn.Module):
    """Attention with separate q/k/v projections and an optional internal downsampling."""

    gemm_dtype: torch.dtype | None = None  # see the module docstring

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not reference_enabled():
            return self._forward_fast(q, k, v)
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = q @ k.permute(0, 1, 3, 2)
        attn = torch.softmax(attn / math.sqrt(q.shape[-1]), dim=-1)
        out = attn @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def _forward_fast(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        nq, nk, h = q.shape[1], k.shape[1], self.num_heads
        if h * nq < self.internal_dim and nk > nq:
            return self._few_queries(q, k, v)
        if h * nk < self.internal_dim and nq > nk:
            return self._few_keys(q, k, v)
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Keys and values stay unprojected: one-head attention of ``heads * nq`` back-projected
        queries over the raw inputs, then the value projection of the ``heads * nq`` results."""
        b, nq, _ = q.shape
        h, d = self.num_heads, self.internal_dim // self.num_heads
        qh = self._heads(self.q_proj(q))  # (B, H, nq, d)
        wk = self.k_proj.weight.view(h, d, -1)
        qk = torch.matmul(qh, wk.to(qh.dtype)).reshape(b, h * nq, -1)  # (B, H*nq, C); b_k is softmax-invariant
        dt = self.gemm_dtype
        if dt is None:
            z = F.scaled_dot_product_attention(
                qk.unsqueeze(1), k.unsqueeze(1).to(qk.dtype), v.unsqueeze(1).to(qk.dtype), scale=d**-0.5
            ).view(b, h, nq, -1)
        else:  # the two image-side GEMMs in ``dt``, the softmax in float32
            scores = torch.bmm((qk * d**-0.5).to(dt), k.to(dt).transpose(1, 2)).to(qk.dtype)
            z = torch.bmm(torch.softmax(scores, dim=-1).to(dt), v.to(dt)).to(qk.dtype).view(b, h, nq, -1)
        wv = self.v_proj.weight.view(h, d, -1).transpose(1, 2)
        out = torch.matmul(z, wv.to(z.dtype)) + self.v_proj.bias.view(h, 1, d)  # (B, H, nq, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * d))

    def _few_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Queries stay unprojected: scores ``x_j . (W_q^h)^T k_t + b_q^h . k_t`` for all (head,
        token) pairs in one GEMM, softmax per head, and the output projection folded into the
        values ``W_o^h v_t`` -- so the head concat + projection is the second GEMM."""
        b, nk, _ = k.shape
        h, d = self.num_heads, self.internal_dim // self.num_heads
        scale = d**-0.5
        kh = self._heads(self.k_proj(k))  # (B, H, nk, d)
        vh = self._heads(self.v_proj(v))
        wq = self.q_proj.weight.view(h, d, -1)
        kq = (torch.matmul(kh, wq.to(kh.dtype)) * scale).reshape(b, h * nk, -1)  # (B, H*nk, C)
        const = ((kh * self.q_proj.bias.view(h, 1, d)).sum(-1) * scale).reshape(b, 1, h * nk)
        wo = self.out_proj.weight.view(-1, h, d).permute(1, 2, 0)  # (H, d, C_out)
        u = torch.matmul(vh, wo.to(vh.dtype)).reshape(b, h * nk, -1)  # (B, H*nk, C_out)
        dt = self.gemm_dtype or kq.dtype  # the two image-side GEMMs run in ``dt``
        scores = torch.baddbmm(const.to(dt), q.to(dt), kq.to(dt).transpose(1, 2)).to(kq.dtype)  # (B, nq, H*nk)
        attn = _softmax_short(scores.view(b, -1, h, nk)).view(b, -1, h * nk)
        out = torch.baddbmm(self.out_proj.bias.to(dt), attn.to(dt), u.to(dt))
        return out if self.gemm_dtype is None else out.to(q.dtype)


def _softmax_short(x: Tensor) -> Tensor:
    """Softmax over a short last axis (a few prompt tokens): the same math as ``softmax(-1)``,
    written out because the fused kernel vectorises poorly when that axis has ~7 entries."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, tokens->image, MLP, image->tokens; post-norm."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe  # keys are unchanged since k was formed above
        # under autocast the attention comes back in bf16/fp16: a mixed-dtype add is several times
        # slower on CPU than the explicit cast (same result)
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries).to(keys.dtype))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token->image attention and LayerNorm."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """image_embedding/image_pe ``(B, C, *grid)``, point_embedding ``(B, N, C)``.

        Returns the processed tokens ``(B, N, C)`` and image tokens ``(B, prod(grid), C)``."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        if not reference_enabled():  # token-major rows: adds and norms on strided views are ~10x slower
            keys, key_pe = keys.contiguous(), key_pe.contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
