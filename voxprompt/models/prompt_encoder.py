"""SAM's prompt encoder, generic in 2D and 3D.

Coordinate convention (the official one, kept because trained weights depend on it): a point's
coordinate 0 is paired with tensor axis 1 of the image and coordinate 1 with tensor axis 0; any
further coordinate with its own axis. In 2D that is SAM's (x, y) = (column, row). In 3D it is
SAM-Med3D's "dense-PE axis swap": points are given in tensor-axis order, but the dense PE of cell
(i, j, k) encodes ((j+.5)/8, (i+.5)/8, (k+.5)/8), so a point's PE matches the dense PE of the cell
mirrored across i = j. Models trained by us set ``SamConfig.pe_axis_swap = False`` (3D only): then
cell (i, j, k) encodes ((i+.5)/8, (j+.5)/8, (k+.5)/8) and a point's PE matches its own cell, which
makes clicks far easier to learn. The Fourier PE is always computed in float32.

Outside reference mode the dense PE is computed once and cached (keyed by the Gaussian matrix's
device, storage and version counter, and cleared by ``.to()`` and ``load_state_dict``), and the
mask downscaler runs as channels-last GEMMs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNormNd, conv_cls, token_major
from .config import SamConfig
from .fast import reference_enabled, tensor_key
from .fast.channels_last import PatchSequential


def _swap01(values: list) -> list:
    return [values[1], values[0], *values[2:]]


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features: ``[sin, cos, sin, ...](2*pi*(2c-1) @ G)``, one part per axis."""

    def __init__(self, spatial_dims: int, num_pos_feats: int, swap01: bool = True) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.order = _swap01 if swap01 else list
        self.register_buffer(
            "positional_encoding_gaussian_matrix", torch.randn((spatial_dims, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = 2 * coords.float() - 1
            coords = coords @ self.positional_encoding_gaussian_matrix.float()
            coords = 2 * math.pi * coords
            s, c = torch.sin(coords), torch.cos(coords)
            return torch.cat([s if i % 2 == 0 else c for i in range(self.spatial_dims)], dim=-1)

    def forward(self, size: tuple[int, ...]) -> torch.Tensor:
        """Dense PE of a grid ``size``: ``(C, *size)``."""
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones(size, device=device, dtype=torch.float32)
        embeds = [(grid.cumsum(dim=a) - 0.5) / size[a] for a in range(len(size))]
        pe = self._pe_encoding(torch.stack(self.order(embeds), dim=-1))
        return pe.permute(pe.dim() - 1, *range(pe.dim() - 1))

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, ...]) -> torch.Tensor:
        """PE of points given in input-image pixels/voxels (coordinate order as documented)."""
        norm = torch.tensor(self.order(list(image_size)), dtype=torch.float32, device=coords.device)
        return self._pe_encoding(coords.float() / norm)


class PromptEncoder(nn.Module):
    """Embeds points, boxes and a low-res mask into sparse tokens and a dense map."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        d = cfg.spatial_dims
        self.spatial_dims = d
        self.embed_dim = cfg.prompt_embed_dim
        self.input_image_size = (cfg.img_size,) * d
        self.image_embedding_size = (cfg.grid_size,) * d
        self.low_res_size = cfg.low_res_size
        self.pe_layer = PositionEmbeddingRandom(d, cfg.prompt_embed_dim // d, swap01=d == 2 or cfg.pe_axis_swap)
        self.num_point_embeddings = cfg.num_point_embeddings
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, self.embed_dim) for _ in range(cfg.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, self.embed_dim)
        conv = conv_cls(d)
        mic = cfg.mask_in_chans
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None  # cache, not a buffer
        self.mask_downscaling = PatchSequential(
            conv(1, mic // 4, kernel_size=2, stride=2),
            LayerNormNd(mic // 4),
            nn.GELU(),
            conv(mic // 4, mic, kernel_size=2, stride=2),
            LayerNormNd(mic),
            nn.GELU(),
            conv(mic, self.embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, self.embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, ...]:
        return (self.low_res_size,) * self.spatial_dims

    def downscale_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """Dense embedding of mask logits ``(B, 1, *mask_input_size)``; logits on the input grid
        (the boundary head's) are first averaged onto SAM's grid, 4x the token grid."""
        factor = self.low_res_size // (4 * self.image_embedding_size[0])
        if factor > 1:
            pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
            masks = pool(masks, kernel_size=factor)
        return self.mask_downscaling(masks)

    def get_dense_pe(self) -> torch.Tensor:
        """``(1, C, *grid)`` positional encoding of the image embedding grid (float32).

        Cached outside reference mode: treat the returned tensor as read-only."""
        if reference_enabled() or torch.jit.is_tracing():  # a trace must not leak into the cache
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (tensor_key(g), torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        if self._dense_pe is None or self._dense_pe[0] != key:
            with torch.no_grad():
                pe = token_major(self.pe_layer(self.image_embedding_size).unsqueeze(0))
            self._dense_pe = (key, pe)
        return self._dense_pe[1]

    def clear_cache(self) -> None:
        """Forget the cached dense PE (done automatically on ``.to()`` and ``load_state_dict``)."""
        self._dense_pe = None

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> PromptEncoder:
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # centre of the pixel/voxel
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, points.shape[2]))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        emb[labels == -1] = 0.0
        emb[labels == -1] += self.not_a_point_embed.weight
        emb[labels == 0] += self.point_embeddings[0].weight
        emb[labels == 1] += self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes + 0.5
        corners = boxes.reshape(-1, 2, self.spatial_dims)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[2].weight
        emb[:, 1, :] += self.point_embeddings[3].weight
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse ``(B, N, C)`` (N+1 with the pad token when there is no box) and dense
        ``(B, C, *grid)`` embeddings."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.downscale_mask(masks)
        else:
            shape = (1, -1) + (1,) * self.spatial_dims
            dense = self.no_mask_embed.weight.reshape(shape).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
