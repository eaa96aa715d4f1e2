"""Dataclass configs. One ``SamConfig`` describes SAM ViT-B, SAM-Med2D and SAM-Med3D (and any
smaller model of those families); ``SamUNetConfig`` adds SAM-UNet's ResNet branch."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

FLIP_ENSEMBLES = (1, 2, 4, 8)  # allowed SamConfig.flip_ensemble sizes (session.roi_predictor.FLIP_SETS' keys)

# The model used when none is named (trained by us, shipped in voxprompt/weights/). Defined here, not in
# loading.py, so that the CLI parser and the server settings know it without importing torch.
DEFAULT_MODEL = "voxprompt-med3d-small"


@dataclass
class SamConfig:
    """Sizes of a SAM-style model (image encoder + prompt encoder + mask decoder)."""

    spatial_dims: int = 2
    img_size: int = 1024
    in_chans: int = 3
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    use_rel_pos: bool = True
    qkv_bias: bool = True
    layernorm_eps: float = 1e-6
    adapter: bool = False  # SAM-Med2D: one adapter per block, parallel to the MLP
    adapter_ratio: float = 0.25
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    num_point_embeddings: int = 4  # 2 = points only (SAM-Med3D), 4 = points + box corners
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    roi_spacing_mm: float = 1.5  # 3D: isotropic mm per voxel of the model's input ROI
    pe_axis_swap: bool = True  # 3D: SAM-Med3D's dense-PE axis-0/1 swap (official); False for our models
    refine_band_mm: float = 0.0  # 3D sessions: boundary refinement band (voxprompt.refine); 0 = off (official)
    multimask_first: bool = False  # 3D sessions: a first click chooses among the multimask outputs (trained for it)
    flip_ensemble: int = 1  # 3D sessions: mirror images of each ROI whose logits are averaged (1, 2, 4, 8; 1 = off)
    fine_channels: int = 0  # ours: a boundary head at the input resolution (models.fine_head); 0 = off (official)


    def __post_init__(self) -> None:
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        if self.spatial_dims not in (2, 3):
            raise UsageError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.img_size % self.patch_size:
            raise UsageError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise UsageError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise UsageError(f"global_attn_indexes {self.global_attn_indexes} outside depth {self.depth}")
        if self.prompt_embed_dim % self.spatial_dims:
            raise UsageError(
                f"prompt_embed_dim {self.prompt_embed_dim} must be a multiple of spatial_dims"
            )
        if not self.roi_spacing_mm > 0:
            raise UsageError(f"roi_spacing_mm must be positive, got {self.roi_spacing_mm}")
        if not self.refine_band_mm >= 0:
            raise UsageError(f"refine_band_mm must be >= 0 (0 = off), got {self.refine_band_mm}")
        if self.flip_ensemble not in FLIP_ENSEMBLES:
            raise UsageError(f"flip_ensemble must be one of {FLIP_ENSEMBLES} (1 = off), got {self.flip_ensemble}")
        if self.fine_channels < 0:
            raise UsageError(f"fine_channels must be >= 0 (0 = off), got {self.fine_channels}")
        if self.num_point_embeddings not in (2, 4):
            raise UsageError("num_point_embeddings must be 2 (points) or 4 (points and boxes)")

    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits: 4x the embedding grid, or the input size with the
        boundary head (``fine_channels``)."""
        return self.img_size if self.fine_channels else 4 * self.grid_size

    @property
    def embedding_channels(self) -> int:
        """Channels of the image embedding: SAM's, then the boundary head's features packed per token."""
        return self.prompt_embed_dim + self.fine_channels * self.patch_size**self.spatial_dims

    @property
    def supports_boxes(self) -> bool:
        return self.num_point_embeddings == 4

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamConfig:
        return _from_dict(cls, d)


@dataclass
class SamUNetConfig:
    """SAM-UNet: a frozen SAM ViT (depth 12, globals 2/5/8/11) plus a ResNet branch."""

    sam: SamConfig = field(
        default_factory=lambda: SamConfig(img_size=256, prompt_embed_dim=256)
    )
    resnet_depth: int = 50  # 34 or 50

    def __post_init__(self) -> None:
        if isinstance(self.sam, Mapping):
            self.sam = SamConfig.from_dict(self.sam)
        if self.resnet_depth not in (34, 50):
            raise UsageError(f"resnet_depth must be 34 or 50, got {self.resnet_depth}")
        s = self.sam
        if s.spatial_dims != 2 or s.depth != 12 or s.global_attn_indexes != (2, 5, 8, 11):
            raise UsageError("SAM-UNet needs a 2D ViT of depth 12 with global blocks (2, 5, 8, 11)")
        if s.grid_size != 16 or s.prompt_embed_dim != 256:
            raise UsageError("SAM-UNet needs img_size 256 (16x16 tokens) and a 256-d decoder")

    def to_dict(self) -> dict[str, Any]:
        return {"sam": self.sam.to_dict(), "resnet_depth": self.resnet_depth}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamUNetConfig:
        return _from_dict(cls, d)


def _from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(names)}")
    return cls(**d)
