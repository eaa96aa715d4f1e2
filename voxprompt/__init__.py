"""voxprompt: promptable medical image segmentation (SAM-Med3D, SAM-Med2D, SAM-UNet, SAM ViT-B).

    import voxprompt
    model = voxprompt.load_model("sam-med3d", "sam_med3d_turbo.pth")
    emb = model.encode(image)                      # (B,1,128,128,128) z-scored ROI
    low_res_logits, iou = model.decode(emb, points=(coords, labels))
"""
from .errors import (
    CheckpointError,
    ImageReadError,
    InputError,
    PromptError,
    UnknownModelError,
    UsageError,
    VoxpromptError,
)
from .models.config import SamConfig, SamUNetConfig
from .models.loading import convert_checkpoint, load_model
from .models.zoo import ZOO, build_model

__version__ = "0.1.0"


def list_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(ZOO)


__all__ = [
    "load_model",
    "convert_checkpoint",
    "build_model",
    "list_models",
    "SamConfig",
    "SamUNetConfig",
    "VoxpromptError",
    "UsageError",
    "UnknownModelError",
    "CheckpointError",
    "InputError",
    "PromptError",
    "ImageReadError",
]
