"""Training and fine-tuning (``voxprompt train CONFIG.yaml``).

The names below load their modules (the trainer: torch) on first use."""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .config import AugmentConfig, DataSource, SyntheticSource, TrainConfig, config_from_dict, load_config
    from .trainer import Trainer, lr_at, train

__all__ = ["TrainConfig", "DataSource", "SyntheticSource", "AugmentConfig", "load_config", "config_from_dict",
           "Trainer", "train", "lr_at"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    **dict.fromkeys(["AugmentConfig", "DataSource", "SyntheticSource", "TrainConfig", "config_from_dict",
                     "load_config"], ".config"),
    **dict.fromkeys(["Trainer", "lr_at", "train"], ".trainer"),
})
