"""The model zoo: name -> architecture config, and the builder."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownModelError
from .config import SamConfig, SamUNetConfig
from .sam import SamModel
from .sam_unet import SamUNet

Config = SamConfig | SamUNetConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: Config
    description: str
    official_files: tuple[str, ...] = ()


def _sam_unet(depth: int) -> SamUNetConfig:
    return SamUNetConfig(sam=SamConfig(img_size=256), resnet_depth=depth)


# Compact SAM-Med3D-family model: 64^3 ROIs with 8^3 patches keep the official 8^3 token grid (and
# 32^3 low-res logits) at a fraction of the cost; all blocks attend globally (512 tokens). Trained on
# ROIs of 1.2-3 mm; the shipped weights store the inference spacing and refinement band chosen for
# them (docs/default-model.md).
SMALL_MED3D = SamConfig(
    spatial_dims=3, img_size=64, in_chans=1, patch_size=8, embed_dim=192, depth=6, num_heads=6,
    global_attn_indexes=(0, 1, 2, 3, 4, 5), window_size=0, prompt_embed_dim=192, num_point_embeddings=2,
    decoder_mlp_dim=768, iou_head_hidden_dim=192, roi_spacing_mm=2.25, pe_axis_swap=False, refine_band_mm=9.0,
)

ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sam-med3d",
            SamConfig(
                spatial_dims=3,
                img_size=128,
                in_chans=1,
                prompt_embed_dim=384,
                num_point_embeddings=2,
            ),
            "SAM-Med3D vit_b_ori: 3D ViT-B on 128^3 crops at 1.5 mm, points + previous mask",
            ("sam_med3d.pth", "sam_med3d_turbo.pth"),
        ),
        ModelSpec(
            "voxprompt-med3d-small",
            SMALL_MED3D,
            "voxprompt's own compact SAM-Med3D-family model (64^3 ROI at 2.25 mm, 8^3 tokens); "
            "the default, trained by us and shipped with the package",
        ),
        ModelSpec(
            "sam-vit-b",
            SamConfig(),
            "Segment Anything ViT-B at 1024 px",
            ("sam_vit_b_01ec64.pth",),
        ),
        ModelSpec(
            "sam-med2d",
            SamConfig(img_size=256, adapter=True),
            "SAM-Med2D: SAM ViT-B with one adapter per block at 256 px",
            ("sam-med2d_b.pth",),
        ),
        ModelSpec(
            "sam-unet",
            _sam_unet(50),
            "SAM-UNet: frozen SAM ViT-B at 256 px + ResNet-50 branch + fusion decoder",
        ),
        ModelSpec(
            "sam-unet-res34",
            _sam_unet(34),
            "SAM-UNet with a ResNet-34 branch",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    if name not in ZOO:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(ZOO)}")
    return ZOO[name]


def build_model(config: Config, name: str = "model") -> SamModel | SamUNet:
    """A randomly initialised model of ``config`` (official initialisation)."""
    if isinstance(config, SamUNetConfig):
        return SamUNet(config, name=name)
    return SamModel(config, name=name)
