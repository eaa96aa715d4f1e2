"""What kind of model a zoo name or a model object is: one home for family and dimension checks.

Weights of one family load into any config of it; a family decides the official 2D processing
(:func:`policy_for`) and the training presets (:mod:`voxprompt.train.freeze`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:  # light at import: the command lines ask for dims at --help time
    from ..preprocess.image2d import Policy2D


def family(name: str) -> str:
    """Architecture family of a zoo name: weights of one family load into any config of it."""
    if name.startswith("sam-unet"):
        return "sam-unet"
    return "sam-med3d" if name == "voxprompt-med3d-small" else name


def model_family(model: Any) -> str:
    """Family of a model object, by zoo name, else by architecture: ``sam-unet``, ``sam-med3d``,
    ``sam-med2d`` (SAM with adapters) or ``sam-vit-b``. A model named ``sam-vit-b`` stays one whatever
    its config."""
    from .config import SamUNetConfig

    name = str(getattr(model, "name", ""))
    cfg = getattr(model, "cfg", None)
    if name.startswith("sam-unet") or isinstance(cfg, SamUNetConfig):
        return "sam-unet"
    if model.spatial_dims == 3:
        return "sam-med3d"
    if name == "sam-med2d" or (name != "sam-vit-b" and getattr(cfg, "adapter", False)):
        return "sam-med2d"
    return "sam-vit-b"


def spatial_dims(name: str) -> int:
    """2 or 3: the dimensions a zoo model works in (UnknownModelError for an unknown name)."""
    from .config import SamUNetConfig
    from .zoo import get_spec

    cfg = get_spec(name).config
    return (cfg.sam if isinstance(cfg, SamUNetConfig) else cfg).spatial_dims


def policy_for(model: Any, channel_order: str | None = None) -> Policy2D:
    """The official 2D policy of a model (:func:`~voxprompt.preprocess.image2d.official_policy`).

    ``channel_order`` overrides the default (``"bgr"`` for SAM-Med2D, ``"rgb"`` otherwise).
    """
    from ..preprocess.image2d import official_policy

    if model.spatial_dims != 2:
        raise UsageError(f"{getattr(model, 'name', 'model')} is a 3D model; 2D sessions need a 2D model")
    return official_policy(model_family(model), int(model.img_size), channel_order)


__all__ = ["family", "model_family", "policy_for", "spatial_dims"]
