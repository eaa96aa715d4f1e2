"""Training and fine-tuning (``voxprompt train CONFIG.yaml``)."""
from .config import AugmentConfig, DataSource, SyntheticSource, TrainConfig, config_from_dict, load_config
from .trainer import Trainer, lr_at, train

__all__ = ["TrainConfig", "DataSource", "SyntheticSource", "AugmentConfig", "load_config", "config_from_dict",
           "Trainer", "train", "lr_at"]
