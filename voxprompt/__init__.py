"""voxprompt: promptable medical image segmentation (SAM-Med3D, SAM-Med2D, SAM-UNet, SAM ViT-B).

    import voxprompt
    model = voxprompt.load_model("sam-med3d", "sam_med3d_turbo.pth")
    emb = model.encode(image)                      # (B,1,128,128,128) z-scored ROI
    low_res_logits, iou = model.decode(emb, points=(coords, labels))

The models (and torch) are imported on first use of ``load_model``, ``build_model`` & co., so
``import voxprompt``, ``import voxprompt.errors`` and ``voxprompt --help`` stay fast.
"""
from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from .errors import (
    CheckpointError,
    ImageReadError,
    InputError,
    PromptError,
    UnknownModelError,
    UsageError,
    VoxpromptError,
)
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .models.config import SamConfig, SamUNetConfig
    from .models.loading import convert_checkpoint, load_model
    from .models.zoo import build_model



def list_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    from .models.zoo import ZOO

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

__getattr__, __dir__ = lazy_attributes(__name__, {
    "load_model": ".models.loading",
    "convert_checkpoint": ".models.loading",
    "build_model": ".models.zoo",
    "ZOO": ".models.zoo",
    "SamConfig": ".models.config",
    "SamUNetConfig": ".models.config",
})
